"""Linking hand-made clip tracks: one object, crossing objects, an occlusion gap, late entry, leaving."""

import dataclasses

import numpy as np
import pytest

from maskprop_jax import linking
from maskprop_jax import rle

H, W = 24, 40
T = 3  # clip window 2T+1 = 7 frames


def disc(cy, cx, r=4.0):
  yy, xx = np.mgrid[:H, :W]
  return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.float32)


def clips_from_scene(paths, num_frames, label_of, num_classes=3, stride=1, seed=0):
  """Clip tracks as a perfect propagation would give them, with a little noise.

  paths: per object, a function frame -> (cy, cx) or None when the object is not visible.
  Every clip is centred at a frame c; each object visible at c gives one clip track on the window.
  """
  rng = np.random.default_rng(seed)
  clips = []
  for center in range(0, num_frames, stride):
    start, stop = max(0, center - T), min(num_frames, center + T + 1)
    tracks = []
    for obj, path in enumerate(paths):
      if path(center) is None:
        continue
      masks = np.zeros([stop - start, H, W], np.float32)
      for i, f in enumerate(range(start, stop)):
        if path(f) is not None:
          masks[i] = disc(*path(f))
      masks = np.clip(0.9 * masks + 0.05 * rng.random(masks.shape, dtype=np.float32), 0, 1)
      probs = np.full([num_classes], 0.1, np.float32)
      probs[label_of[obj] - 1] = 0.8
      tracks.append(linking.ClipTrack(start=start, masks=masks, class_probs=probs, center=center))
    # Detections come in no particular order.
    tracks = [tracks[i] for i in rng.permutation(len(tracks))]
    clips.append(tracks)
  return clips


def decoded(track, frame):
  mask = track.segmentations[frame]
  return None if mask is None else rle.decode(mask).astype(bool)


def assert_follows(track, path, num_frames, min_iou=0.9):
  for f in range(num_frames):
    expected = path(f)
    got = decoded(track, f)
    if expected is None:
      assert got is None, f"frame {f}: expected no mask"
    else:
      assert got is not None, f"frame {f}: expected a mask"
      gt = disc(*expected) > 0.5
      iou = (got & gt).sum() / (got | gt).sum()
      assert iou > min_iou, f"frame {f}: IoU {iou:.2f}"


def link(clips, num_frames, **kw):
  return linking.link_clip_tracks(clips, num_frames, (H, W), num_classes=3, settings=linking.LinkSettings(**kw))


def test_one_object():
  path = lambda f: (12, 5 + f)
  tracks = link(clips_from_scene([path], 30, {0: 2}), 30)
  assert len(tracks) == 1
  assert tracks[0].label == 2
  assert tracks[0].score == pytest.approx(0.8)
  assert tracks[0].num_clips == 30
  assert_follows(tracks[0], path, 30)


def test_two_crossing_objects_keep_identity():
  a = lambda f: (10, 4 + f)
  b = lambda f: (14, 35 - f)
  tracks = link(clips_from_scene([a, b], 32, {0: 1, 1: 3}), 32)
  assert len(tracks) == 2
  by_label = {t.label: t for t in tracks}
  assert_follows(by_label[1], a, 32)
  assert_follows(by_label[3], b, 32)


def test_occlusion_gap_that_clips_span_is_bridged():
  path = lambda f: None if 10 <= f < 12 else (12, 8 + f)  # gap of T - 1 frames
  tracks = link(clips_from_scene([path], 26, {0: 1}), 26)
  assert len(tracks) == 1
  assert_follows(tracks[0], path, 26)


def test_object_appearing_late_and_one_leaving():
  late = lambda f: None if f < 12 else (6, 30 - f)
  leaving = lambda f: (18, 20 + 2 * f) if 20 + 2 * f < W else None
  tracks = link(clips_from_scene([late, leaving], 25, {0: 1, 1: 2}), 25)
  assert len(tracks) == 2
  by_label = {t.label: t for t in tracks}
  assert_follows(by_label[1], late, 25)
  assert_follows(by_label[2], leaving, 25)


def test_clip_stride_larger_than_one():
  path = lambda f: (12, 5 + f)
  tracks = link(clips_from_scene([path], 30, {0: 2}, stride=3), 30)
  assert len(tracks) == 1
  assert_follows(tracks[0], path, 30)


def test_memory_is_bounded_by_the_window():
  path = lambda f: (12, 5 + (f % 30))
  linker = linking.TrackLinker(200, (H, W), (H, W), num_classes=3)
  most_live_frames = 0
  for clip in clips_from_scene([path], 200, {0: 1}):
    linker.add_clip(clip)
    most_live_frames = max(most_live_frames, sum(len(t.mask_sum) for t in linker._live))
  linker.finish()
  assert most_live_frames <= 2 * T + 1


def test_masks_are_upsampled_to_the_video_size():
  path = lambda f: (12, 5 + f)
  small = [[linking.ClipTrack(t.start, t.masks[:, ::2, ::2], t.class_probs, t.center) for t in clip]
           for clip in clips_from_scene([path], 12, {0: 1})]
  tracks = linking.link_clip_tracks(small, 12, (H, W), num_classes=3)
  assert len(tracks) == 1
  assert tracks[0].segmentations[5]["size"] == [H, W]
  # A radius-4 disc sampled at half resolution and upsampled again loses its rim.
  assert_follows(tracks[0], path, 12, min_iou=0.7)


def _box_mask(cy, cx, r=4.0):
  """The disc drawn on a 28x28 box around it (detectron2's rule: cell centres spread over the box)."""
  box = np.array([cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1], np.float32)
  centres = (np.arange(28) + 0.5) / 28
  ys, xs = box[1] + centres * (box[3] - box[1]), box[0] + centres * (box[2] - box[0])
  inside = ((ys[:, None] - cy - 0.5) ** 2 + (xs[None, :] - cx - 0.5) ** 2) <= r * r
  return linking.BoxMask(inside.astype(np.float32), box, aligned=True)


def test_box_masks_are_pasted_at_the_video_size_and_matching_reads_the_grid():
  path = lambda f: (12, 5 + f)
  clips = clips_from_scene([path], 12, {0: 1})
  coarse = [[linking.ClipTrack(t.start, t.masks[:, ::2, ::2], t.class_probs, t.center) for t in clip]
            for clip in clips]
  # Every clip track has its center frame's mask on a box too, as the predictor gives Mask R-CNN's.
  boxed = [[linking.ClipTrack(t.start, t.masks, t.class_probs, t.center, {t.center: _box_mask(*path(t.center))})
            for t in clip] for clip in coarse]
  plain, = linking.link_clip_tracks(coarse, 12, (H, W), num_classes=3)
  sharp, = linking.link_clip_tracks(boxed, 12, (H, W), num_classes=3, settings=linking.LinkSettings(
      temporal_decay=0.2))  # the frame's own mask weighs most: e^-5 for a clip one frame away
  assert sharp.num_clips == plain.num_clips == 12  # linked alike: matching reads the same grid masks
  # The coarse grid loses the disc's rim (IoU about 0.7, test_masks_are_upsampled_to_the_video_size); the
  # pasted box masks keep it.
  assert_follows(sharp, path, 12, min_iou=0.95)
  with pytest.raises(ValueError, match="beyond the clip window"):
    linking.link_clip_tracks([[linking.ClipTrack(0, coarse[0][0].masks, coarse[0][0].class_probs, 0,
                                                 {5: _box_mask(12, 5)})]], 12, (H, W), num_classes=3)


def test_bad_clips_are_refused():
  linker = linking.TrackLinker(10, (H, W), (H, W), num_classes=3)
  probs = np.ones([3], np.float32) / 3
  linker.add_clip([linking.ClipTrack(4, np.zeros([3, H, W], np.float32), probs, 5)])
  with pytest.raises(ValueError, match="temporal order"):
    linker.add_clip([linking.ClipTrack(2, np.zeros([3, H, W], np.float32), probs, 3)])
  with pytest.raises(ValueError, match="leaves the video"):
    linker.add_clip([linking.ClipTrack(8, np.zeros([3, H, W], np.float32), probs, 9)])
  with pytest.raises(ValueError, match="masks must be"):
    linker.add_clip([linking.ClipTrack(5, np.zeros([3, H, 2], np.float32), probs, 6)])


def test_temporal_decay_weighs_a_clip_by_its_distance_from_the_frame():
  """Two clips of one object over frames 0..2, centred at 0 (mask 1.0) and at 2 (mask 0.6): uniform weights give
  0.8 everywhere; with decay 1 frame 0 is (1 + 0.6 e^-2) / (1 + e^-2) = 0.95 and frame 2 is 0.65."""
  block = np.zeros([3, H, W], np.float32)
  block[:, 4:10, 6:12] = 1.0
  probs = np.ones([3], np.float32) / 3
  present = {}
  for decay in (0.0, 1.0):
    linker = linking.TrackLinker(3, (H, W), (H, W), num_classes=3,
                                 settings=linking.LinkSettings(mask_threshold=0.7, temporal_decay=decay))
    linker.add_clip([linking.ClipTrack(0, block, probs, center=0)])
    linker.add_clip([linking.ClipTrack(0, 0.6 * block, probs, center=2)])
    (track,) = linker.finish()
    present[decay] = [seg is not None for seg in track.segmentations]
  assert present[0.0] == [True, True, True]
  assert present[1.0] == [True, True, False]
  with pytest.raises(ValueError, match="temporal_decay"):
    linking.TrackLinker(3, (H, W), (H, W), num_classes=3, settings=linking.LinkSettings(temporal_decay=-1.0))
  linker = linking.TrackLinker(3, (H, W), (H, W), num_classes=3)
  with pytest.raises(ValueError, match="outside its window"):
    linker.add_clip([linking.ClipTrack(0, block, probs, center=3)])


def test_mask_scoring_and_clip_prior_rescale_a_tracks_class_probability():
  """One track of two clips over frames 0..1, class probability 0.8. Frame 0's mean mask is 0.9 on the block and
  0.2 beside it, frame 1's 0.7 on the block: maskness (0.9 + 0.7) / 2 = 0.8 (pixels under 0.5 do not count);
  clip prior 2 gives 2 / (2 + 2) = 0.5."""
  first = np.zeros([2, H, W], np.float32)
  first[0, 4:10, 6:12], first[1, 4:10, 6:12] = 0.9, 0.7
  first[0, 4:10, 12:14] = 0.2
  probs = np.array([0.8, 0.1, 0.1], np.float32)
  scores = {}
  for mask_scoring, clip_prior in ((False, 0.0), (True, 0.0), (False, 2.0), (True, 2.0)):
    linker = linking.TrackLinker(2, (H, W), (H, W), num_classes=3,
                                 settings=linking.LinkSettings(mask_scoring=mask_scoring, clip_prior=clip_prior))
    linker.add_clip([linking.ClipTrack(0, first, probs, center=0)])
    linker.add_clip([linking.ClipTrack(0, first.copy(), probs, center=1)])
    (track,) = linker.finish()
    assert track.num_clips == 2 and track.label == 1
    scores[mask_scoring, clip_prior] = track.score
  assert scores == pytest.approx({(False, 0.0): 0.8, (True, 0.0): 0.64, (False, 2.0): 0.4, (True, 2.0): 0.32})
  with pytest.raises(ValueError, match="clip_prior"):
    linking.TrackLinker(2, (H, W), (H, W), num_classes=3, settings=linking.LinkSettings(clip_prior=-1.0))


def test_a_fragment_ranks_below_a_long_track_with_the_clip_prior():
  """A track all seven clips agree on and a one-clip fragment elsewhere, with the same class probability."""
  block = np.zeros([7, H, W], np.float32)
  block[:, 2:8, 2:8] = 1.0
  fragment = np.zeros([7, H, W], np.float32)
  fragment[3, 14:20, 24:30] = 1.0
  probs = np.array([0.8, 0.1, 0.1], np.float32)
  linker = linking.TrackLinker(7, (H, W), (H, W), num_classes=3, settings=linking.LinkSettings(clip_prior=1.0))
  for center in range(7):
    tracks = [linking.ClipTrack(0, block, probs, center=center)]
    if center == 3:
      tracks.append(linking.ClipTrack(0, fragment, probs, center=center))
    linker.add_clip(tracks)
  long_track, short_track = sorted(linker.finish(), key=lambda t: -t.num_clips)
  assert (long_track.num_clips, short_track.num_clips) == (7, 1)
  assert long_track.score == pytest.approx(0.8 * 7 / 8) and short_track.score == pytest.approx(0.8 / 2)


def _hidden_then_back(reappear_x: float, label_after: int = 1):
  """An object moving right 1 pixel a frame, hidden on frames 10..17 (longer than a clip), back on frame 18 at
  column reappear_x (23 is where its motion leads) with class label_after."""
  def path(f):
    if 10 <= f <= 17:
      return None
    return (12, 5 + f) if f < 10 else (12, reappear_x + f - 18)
  before = lambda f: path(f) if f < 10 else None
  after = lambda f: path(f) if f >= 18 else None
  return clips_from_scene([before, after], 24, label_of=[1, label_after])


def test_an_object_hidden_longer_than_a_clip_keeps_its_track_with_reidentification():
  clips = _hidden_then_back(reappear_x=23)
  assert len(link(clips, 24)) == 2, "without re-identification nothing bridges the 8 hidden frames"
  (track,) = link(clips, 24, reid_max_gap=9, reid_distance=1.0)
  assert [f for f in range(24) if track.segmentations[f] is not None] == list(range(10)) + list(range(18, 24))
  assert len(link(clips, 24, reid_max_gap=8, reid_distance=1.0)) == 2, "a gap of 9 frames is more than 8"


def test_reidentification_needs_the_same_class_and_a_reappearance_where_the_motion_leads():
  assert len(link(_hidden_then_back(reappear_x=23, label_after=2), 24, reid_max_gap=9, reid_distance=5.0)) == 2
  # 12 pixels off the extrapolated path is 1.7 object sizes (a disc of radius 4 covers 49 pixels).
  far = _hidden_then_back(reappear_x=35)
  assert len(link(far, 24, reid_max_gap=9, reid_distance=1.0)) == 2
  assert len(link(far, 24, reid_max_gap=9, reid_distance=2.0)) == 1
  with pytest.raises(ValueError, match="reid_distance > 0"):
    linking.TrackLinker(2, (H, W), (H, W), num_classes=3,
                        settings=linking.LinkSettings(reid_max_gap=4, reid_distance=0.0))


def test_disjoint_masks_leave_a_shared_pixel_to_the_more_confident_track():
  front, behind = (lambda f: (12, 14)), (lambda f: (12, 20))  # discs of radius 4 sharing a lens of pixels
  clips = clips_from_scene([front, behind], 10, {0: 1, 1: 2})
  for clip in clips:  # the object behind is drawn less confidently (0.72 against 0.9)
    for i, track in enumerate(clip):
      if track.class_probs.argmax() == 1:
        clip[i] = linking.ClipTrack(start=track.start, masks=track.masks * 0.8, class_probs=track.class_probs,
                                    center=track.center)
  overlapping = {t.label: t for t in link(clips, 10, match_threshold=0.1)}
  disjoint = {t.label: t for t in link(clips, 10, match_threshold=0.1, disjoint_masks=True)}
  assert len(overlapping) == len(disjoint) == 2
  for f in range(10):
    shared = decoded(overlapping[1], f) & decoded(overlapping[2], f)
    assert shared.sum() >= 5  # of 49 pixels each: two objects meeting, not one drawn twice
    np.testing.assert_array_equal(decoded(disjoint[1], f), decoded(overlapping[1], f))
    np.testing.assert_array_equal(decoded(disjoint[2], f), decoded(overlapping[2], f) & ~shared)


def _leaving_scene(num_frames=24, hesitant_from=12):
  """One object moving right; the detector is sure of it on centers < hesitant_from and hesitant after (its clip
  tracks there only extend), plus a hesitant detection of nothing the track has (a false positive elsewhere)."""
  path = lambda f: (12, 4 + f)
  clips = clips_from_scene([path], num_frames, {0: 2})
  for center, tracks in enumerate(clips):
    if center >= hesitant_from:
      tracks[:] = [dataclasses.replace(t, extends_only=True, class_probs=np.full([3], 1 / 3, np.float32))
                   for t in tracks]
    if center == 5:
      start, stop = tracks[0].start, tracks[0].stop
      stray = np.stack([disc(4, 34)] * (stop - start))
      tracks.append(linking.ClipTrack(start, stray, np.full([3], 1 / 3, np.float32), center, extends_only=True))
  return path, clips


def test_extends_only_clip_tracks_lengthen_a_track_and_start_none():
  path, clips = _leaving_scene()
  # The scene's noise (0.05 on every pixel) keeps a soft IoU of the one object's masks near 0.45.
  linker = linking.TrackLinker(24, (H, W), (H, W), num_classes=3,
                               settings=linking.LinkSettings(extend_match_threshold=0.3))
  joined = [linker.add_clip(tracks) for tracks in clips]
  (track,) = linker.finish()
  assert joined[5][-1] == -1  # the stray detection matched nothing and was dropped
  # It covers every frame, though only centers 0..11 were sure of it; their class evidence alone counts.
  assert_follows(track, path, 24)
  assert (track.num_clips, track.label, track.score) == (12, 2, pytest.approx(0.8))
  # Without the hesitant clips the track ends 3 frames after the last sure center.
  without = [[t for t in tracks if not t.extends_only] for tracks in clips]
  (short,) = link(without, 24)
  assert decoded(short, 14) is not None and decoded(short, 15) is None


def test_an_extends_only_clip_track_needs_the_stricter_threshold_and_yields_to_a_confident_one():
  """Two clip tracks of one clip on the same video track: the confident one joins it, the hesitant one (it would
  score higher) is dropped; a hesitant one below extend_match_threshold is dropped too."""
  block = np.zeros([3, H, W], np.float32)
  block[:, 4:10, 4:10] = 1.0
  shifted = np.zeros_like(block)
  shifted[:, 6:12, 4:10] = 1.0  # soft IoU with the block 24 / 48 = 0.5
  probs = np.array([0.8, 0.1, 0.1], np.float32)
  for threshold, expected in ((0.4, 0), (0.6, -1)):
    linker = linking.TrackLinker(3, (H, W), (H, W), num_classes=3,
                                 settings=linking.LinkSettings(extend_match_threshold=threshold))
    linker.add_clip([linking.ClipTrack(0, block, probs, center=0)])
    assert linker.add_clip([linking.ClipTrack(0, shifted, probs, center=1, extends_only=True)]) == [expected]
    assert linker.add_clip([linking.ClipTrack(0, shifted, probs, center=2),
                            linking.ClipTrack(0, block, probs, center=2, extends_only=True)]) == [0, -1]
    (track,) = linker.finish()
    assert track.num_clips == 2
