"""Streaming clip inference: clip windows, a video shorter than one clip, memory bounded by the clip window."""

import gc
import tracemalloc

import jax
import numpy as np
import pytest

from maskprop_jax import rle
from maskprop_jax.inference import predictor as inference
from tiny_maskprop import tiny_config, tiny_model

HALF_WINDOW = 2
VIDEO_HW = (30, 44)  # resized to 32x47 and padded to a 32x64 canvas: the mask grid does not cover the canvas


@pytest.fixture(scope="module")
def predictor():
  config = tiny_config(half_window=HALF_WINDOW)
  return inference.VideoPredictor(tiny_model(config), inference.ClipSettings.from_config(config))


def moving_square_frames(num_frames: int):
  """A bright square sliding over a dark frame, made one frame at a time (the video is never whole in memory)."""
  height, width = VIDEO_HW
  for index in range(num_frames):
    frame = np.full((height, width, 3), 30, np.uint8)
    x = index % (width - 12)
    frame[8:20, x:x + 12] = (220, 60, 40)
    yield frame


def test_clip_windows_cover_every_frame_and_cut_at_the_ends():
  assert inference.clip_windows(5, half_window=2, stride=1) == [
      (0, 0, 3), (1, 0, 4), (2, 0, 5), (3, 1, 5), (4, 2, 5)]
  # A stride that misses the last frame gets a clip centred on it.
  assert inference.clip_windows(8, half_window=1, stride=3) == [(0, 0, 2), (3, 2, 5), (6, 5, 8), (7, 6, 8)]
  assert inference.clip_windows(7, half_window=1, stride=3) == [(0, 0, 2), (3, 2, 5), (6, 5, 7)]
  assert inference.clip_windows(1, half_window=6, stride=1) == [(0, 0, 1)]
  with pytest.raises(ValueError, match="at least one frame"):
    inference.clip_windows(0, half_window=2, stride=1)


def test_video_shorter_than_one_clip(predictor):
  num_frames = 3  # a clip spans 2T+1 = 5 frames
  tracks = predictor(moving_square_frames(num_frames), num_frames, VIDEO_HW)
  assert tracks, "the random model with confident masks detects something"
  assert [t.id for t in tracks] == list(range(len(tracks)))
  for track in tracks:
    assert len(track.segmentations) == num_frames
    assert 1 <= track.label <= 6 and 0.0 <= track.score <= 1.0
    assert 1 <= track.num_clips <= num_frames
    rles = [s for s in track.segmentations if s is not None]
    assert rles, "every track has a mask on its own center frame"
    for mask in rles:
      assert tuple(mask["size"]) == VIDEO_HW
      assert rle.decode(mask).any()


def test_frames_of_another_size_or_too_few_frames_are_rejected(predictor):
  with pytest.raises(ValueError, match="frame 0 is"):
    predictor(iter([np.zeros((20, 20, 3), np.uint8)]), 1, VIDEO_HW)
  with pytest.raises(ValueError, match="promised 4 frames but ended after 2"):
    predictor(moving_square_frames(2), 4, VIDEO_HW)


def working_memory(predictor, num_frames: int) -> tuple[int, int]:
  """Bytes inference needs beyond what it keeps: (host, device).

  Host: tracemalloc's peak during the call (Python objects and NumPy buffers, which NumPy reports to
  tracemalloc) less what is still allocated when it returns: the tracks' RLEs, which a video's results need at
  any length, and jax's bounded dispatch caches. The garbage collector is off meanwhile, so garbage only grows
  and cancels out like the results instead of being freed at random moments.
  Device: the largest total size of live jax arrays, sampled each time the predictor asks for the next frame,
  less the arrays that were live before (the model's). A cache that kept every frame's features would show
  there; a linker that kept every frame's soft masks would show on the host side.
  """
  # Garbage of earlier calls (jax arrays in reference cycles) goes first: counted in the baseline and freed during
  # the call, it would hide part of the call's own peak.
  gc.collect()
  baseline_device = sum(a.nbytes for a in jax.live_arrays())
  device_peak = 0

  def sampled_frames():
    nonlocal device_peak
    for frame in moving_square_frames(num_frames):
      device_peak = max(device_peak, sum(a.nbytes for a in jax.live_arrays()) - baseline_device)
      yield frame

  gc.disable()
  tracemalloc.start()
  try:
    tracks = predictor(sampled_frames(), num_frames, VIDEO_HW)
    retained, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
    gc.enable()
  assert tracks
  return peak - retained, device_peak


def test_peak_memory_does_not_grow_with_video_length(predictor):
  predictor(moving_square_frames(HALF_WINDOW + 1), HALF_WINDOW + 1, VIDEO_HW)  # compile outside the measurement
  host_short, device_short = working_memory(predictor, 100)
  host_long, device_long = working_memory(predictor, 400)
  short, long = host_short + device_short, host_long + device_long
  assert abs(long - short) < 0.3 * short, (
      f"working memory: 100 frames {host_short} B host + {device_short} B device, "
      f"400 frames {host_long} B host + {device_long} B device")
  # The window of 2T+1 frames' features is on the device while clips run.
  assert device_short > 0 and device_long > 0


def test_suppress_duplicates_keeps_the_best_of_overlapping_masks():
  masks = np.zeros((4, 8, 8), np.float32)
  masks[0, :4, :4] = 1.0
  masks[1, :4, :3] = 0.9  # the same object again, under another class
  masks[2, 4:, 4:] = 1.0
  masks[3, :4, 2:6] = 1.0  # overlaps the first by a third
  np.testing.assert_array_equal(inference.suppress_duplicates(masks, 0.5), [0, 2, 3])


def test_clip_settings_of_a_run_config_saved_before_the_linking_options_existed():
  config = tiny_config(half_window=HALF_WINDOW)
  config.inference.update(dict(mask_scoring=True, reid_max_gap=5))
  assert inference.ClipSettings.from_config(config).link.reid_max_gap == 5
  for name in ("mask_scoring", "clip_prior", "reid_max_gap", "reid_distance"):
    del config.inference[name]
  settings = inference.ClipSettings.from_config(config)
  assert settings.half_window == HALF_WINDOW
  assert (settings.link.mask_scoring, settings.link.clip_prior, settings.link.reid_max_gap) == (False, 0.0, 0)
