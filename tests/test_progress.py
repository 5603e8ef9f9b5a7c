"""Progress lines: count, rate, time left, and the final line with the elapsed time."""

import io

from maskprop_jax import progress


def test_format_duration_reads_as_people_say_it():
  assert [progress.format_duration(s) for s in (4.4, 65, 3725)] == ["4 s", "1 min 05 s", "1 h 02 min"]


def test_progress_counts_what_the_consumer_pulled_and_says_how_long_is_left():
  stream = io.StringIO()  # not a terminal: one line per interval, none rewritten in place
  meter = progress.Progress("valid: inference", total=4, unit="frames", stream=stream, log_every_s=0.0)
  meter.start -= 2.0  # two seconds ago
  pulled = []
  for item in meter.wrap(range(4)):
    pulled.append(item)
    if item == 1:
      break
  assert pulled == [0, 1] and meter.count == 2  # counted as pulled: a streaming consumer may stop at the last
  meter.advance(note="video 1/2")
  lines = stream.getvalue().splitlines()
  assert lines[0].startswith("valid: inference: 1/4 frames, 0.5 frames/s, 6 s left")
  assert lines[1].startswith("valid: inference: 3/4 frames, 1.5 frames/s, 1 s left") and "(video 1/2)" in lines[1]
  meter.finish()
  assert stream.getvalue().splitlines()[-1].startswith("valid: inference: 3/4 frames, 1.5 frames/s, 2 s")
  assert "\r" not in stream.getvalue()
