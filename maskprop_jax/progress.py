"""Progress of a long loop on one stderr line: items done of the total, their rate, the time left.

    progress = Progress("valid: inference", total=num_frames, unit="frames")
    for frame in progress.wrap(frames): ...
    progress.finish()

On a terminal the line is rewritten in place (every `interval_s`); elsewhere (a log file, a pipe) a line is
written every `log_every_s`, so a batch job's log shows progress without thousands of lines.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")


def format_duration(seconds: float) -> str:
  """1 h 02 min, 3 min 05 s, 12 s."""
  seconds = max(0, round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours} h {minutes:02d} min"
  return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class Progress:
  """Counts items as a consumer pulls them (`wrap`) or as the caller reports them (`advance`).

  `finish()` writes the final line: a consumer that stops at the last item never resumes the generator.
  """

  def __init__(self, label: str, total: int, *, unit: str = "frames", stream: TextIO | None = None,
               interval_s: float = 0.5, log_every_s: float = 30.0):
    self.label, self.total, self.unit = label, total, unit
    self.stream = stream or sys.stderr
    self.live = self.stream.isatty()
    self.interval_s = interval_s if self.live else log_every_s
    self.count = 0
    self.note = ""  # shown after the numbers, e.g. "video 3/12"
    self.start = self.last = time.perf_counter()

  def wrap(self, items: Iterable[T]) -> Iterator[T]:
    """The items, counted as the consumer pulls them (a streaming consumer may never return for the last)."""
    for item in items:
      self.count += 1
      yield item  # resumed: the consumer is done with this item and asks for the next one
      self.advance(0)

  def advance(self, n: int = 1, note: str | None = None) -> None:
    self.count += n
    note = self.note if note is None else note
    now = time.perf_counter()
    if now - self.last >= self.interval_s:
      self.stream.write(("\r" if self.live else "") + self.line(now, note) + ("" if self.live else "\n"))
      self.stream.flush()
      self.last = now

  def finish(self, note: str = "") -> None:
    """The last line, with the time it all took."""
    self.stream.write(("\r" if self.live else "") + self.line(time.perf_counter(), note, done=True) + "\n")
    self.stream.flush()

  def line(self, now: float, note: str = "", done: bool = False) -> str:
    elapsed = max(now - self.start, 1e-9)
    rate = self.count / elapsed
    text = f"{self.label}: {self.count}/{self.total} {self.unit}, {rate:.1f} {self.unit}/s"
    if done:
      text += f", {format_duration(elapsed)}"
    elif rate > 0 and self.count < self.total:
      text += f", {format_duration((self.total - self.count) / rate)} left"
    return text + (f" ({note})" if note else "")
