"""Streaming clip inference: clip windows, a video shorter than one clip, memory bounded by the clip window."""

import dataclasses
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
  # Compile outside the measurement: one program per number of reference frames (T to 2T) and of instance slots;
  # the square's motion repeats every 32 frames, so 100 frames meet every pair that 400 do.
  predictor(moving_square_frames(100), 100, VIDEO_HW)
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


def _padded_clip_masks(model, levels, clip, masks):
  """A clip's masks as inference computed them before frame terms were cached (the reference): every frame of the
  window padded to 2T+1 with the video's end frames, the center frame's features repeated once per reference
  frame and each difference f_t - f_{t+d} convolved, sample-then-GEMM deformable convolution; then the window's
  rows, the center frame's own mask on its row. levels: FPN levels per frame; masks [K, h, w]."""
  from maskprop_jax.model import propagation

  level = model.propagation_level
  frames = [min(max(f, clip.start), clip.stop - 1)
            for f in range(clip.center - HALF_WINDOW, clip.center + HALF_WINDOW + 1)]
  refs = np.concatenate([levels[f][level] for f in frames])  # [2T+1, h', w', C]
  centers = np.repeat(levels[clip.center][level], len(frames), axis=0)
  feature_masks = np.repeat(np.asarray(model.feature_grid_masks(masks[None])), len(frames), axis=0)
  logits, fg_logits = model.propagation(centers, feature_masks, refs)
  probs = np.array(propagation.mask_probabilities(logits, fg_logits))  # [2T+1, K, h, w]
  first = clip.start - (clip.center - HALF_WINDOW)
  probs = probs[first:first + clip.stop - clip.start]
  probs[clip.center - clip.start] = masks
  return probs


def test_cached_terms_and_skipped_frames_give_the_masks_of_the_padded_clip():
  """Per-frame terms (the offset block's first conv, the foreground logits) computed once per frame, the center
  frame projected once for all its reference frames (impl "auto": xla_projected here), and no propagation to the
  center or to padding frames: the clip tracks' masks equal the old computation's up to float32 rounding.

  Measured: 3e-5 at most (probabilities; the same with impl "xla", so the caching, not the kernel); 8e-5 on an
  AVX2-only AMD EPYC (2026-12-07), whose float rounding differs, on a probability near 0.5, where the sigmoid
  passes a quarter of the logits' difference on: the band is 2e-4. The cached
  offset conv, conv'(f_t) - conv'(f_{t+d}) + b, agrees with conv(f_t - f_{t+d}) within 1.3e-6 relative and the
  offsets within 1e-5 pixels, but this random model's offsets reach 14 pixels over random features, and the
  bilinear sampling passes those rounding differences on, amplified.
  """
  config = tiny_config(half_window=HALF_WINDOW)
  config.model.propagation.impl = "auto"
  model = tiny_model(config)
  settings = inference.ClipSettings.from_config(config)
  predictor = inference.VideoPredictor(model, settings)
  reference_model = tiny_model(config)
  reference_model.propagation.impl = "xla"
  geometry = inference.maskprop.InputGeometry.for_video(model.config, VIDEO_HW)
  timer = inference.Timer(sync=False)
  num_frames = 2 * HALF_WINDOW + 3  # clips cut at both ends of the video and whole ones
  frames = list(moving_square_frames(num_frames))
  graphdef, state = predictor._graphdef, predictor._state

  def features(frame):
    return inference.frame_features_and_terms(graphdef, state, frame, geometry, timer)

  levels = {}
  compared = 0
  for clip in inference.video_clips(iter(frames), num_frames, VIDEO_HW, HALF_WINDOW, 1, features):
    levels.update({f: [np.asarray(a) for a in clip.features[f].levels] for f in range(clip.start, clip.stop)})
    detections = inference.detect(graphdef, state, clip.features[clip.center].levels,
                                  np.asarray([geometry.resized_hw], np.int32))
    center_masks = np.asarray(detections.masks[0])  # [D, h, w]
    mask_h, mask_w = geometry.mask_hw
    for track in predictor.clip_tracks(clip, geometry, timer):
      assert track.masks.shape[0] == clip.stop - clip.start
      own = track.masks[clip.center - clip.start]
      (d,) = [d for d in range(center_masks.shape[0]) if np.array_equal(center_masks[d, :mask_h, :mask_w], own)]
      want = _padded_clip_masks(reference_model, levels, clip, center_masks[d:d + 1])[:, 0, :mask_h, :mask_w]
      np.testing.assert_allclose(track.masks, want, rtol=0, atol=2e-4)
      compared += 1
  assert compared >= num_frames  # every clip has tracks (zero score threshold)


def _clip_centred_at_2(predictor):
  """(the clip centred at frame 2 of a 5-frame moving square, its geometry, a timer, its center's detections)."""
  geometry = inference.maskprop.InputGeometry.for_video(predictor.model.config, VIDEO_HW)
  timer = inference.Timer(sync=False)
  graphdef, state = predictor._graphdef, predictor._state

  def features(frame):
    return inference.frame_features_and_terms(graphdef, state, frame, geometry, timer)

  clip = next(c for c in inference.video_clips(moving_square_frames(5), 5, VIDEO_HW, HALF_WINDOW, 1, features)
              if c.center == 2)  # the cache drops frames once later clips no longer need them: take it live
  detections = inference.detect(graphdef, state, clip.features[clip.center].levels,
                                np.asarray([geometry.resized_hw], np.int32))
  return clip, geometry, timer, detections


def test_center_frames_keep_mask_rcnns_box_mask_for_linking_to_paste_at_the_video_size(predictor):
  """full_resolution_masks: each clip track carries the mask Mask R-CNN drew on its center frame (28x28 on the
  box, the box scaled to the video's pixels as torchvision's postprocess scales it); off, none; the grid masks
  that matching reads are the same either way."""
  clip, geometry, timer, detections = _clip_centred_at_2(predictor)
  plain = inference.VideoPredictor(predictor.model, dataclasses.replace(predictor.settings,
                                                                        full_resolution_masks=False))
  assert predictor.settings.full_resolution_masks
  tracks, plain_tracks = predictor.clip_tracks(clip, geometry, timer), plain.clip_tracks(clip, geometry, timer)
  assert tracks and len(tracks) == len(plain_tracks)
  scale = np.array([VIDEO_HW[1], VIDEO_HW[0]] * 2, np.float32) / np.array(geometry.resized_hw[::-1] * 2, np.float32)
  for track, plain_track in zip(tracks, plain_tracks):
    np.testing.assert_array_equal(track.masks, plain_track.masks)
    assert plain_track.box_masks == {} and list(track.box_masks) == [clip.center]
    box_mask = track.box_masks[clip.center]
    (d,) = [d for d in range(detections.box_masks.shape[1])
            if np.array_equal(np.asarray(detections.box_masks[0, d]), box_mask.probs)]
    np.testing.assert_allclose(box_mask.box, np.asarray(detections.boxes[0, d]) * scale, rtol=1e-6)
    assert box_mask.aligned == bool(predictor.model.config.detector.roi_heads.aligned)


def test_detections_under_the_score_threshold_give_extends_only_tracks(predictor):
  """With extend_score_thresh below score_thresh, the detections scoring between the two give the same clip tracks
  as at the lower threshold, marked extends_only (linking lets them lengthen a track, never start one)."""
  clip, geometry, timer, detections = _clip_centred_at_2(predictor)
  every = predictor.clip_tracks(clip, geometry, timer)  # score threshold 0: every detection
  scores = np.asarray(detections.scores[0])[np.asarray(detections.valid[0])]
  threshold = float(np.median(scores))

  def tracks(**settings):
    changed = inference.VideoPredictor(predictor.model, dataclasses.replace(predictor.settings, **settings))
    return changed.clip_tracks(clip, geometry, timer)

  confident = tracks(score_thresh=threshold)
  split = tracks(score_thresh=threshold, extend_score_thresh=0.0)
  assert 0 < len(confident) < len(every) == len(split)
  assert [t.extends_only for t in split] == [False] * len(confident) + [True] * (len(every) - len(confident))
  assert not any(t.extends_only for t in every + confident)
  for a, b in zip(split, every):
    np.testing.assert_array_equal(a.masks, b.masks)
