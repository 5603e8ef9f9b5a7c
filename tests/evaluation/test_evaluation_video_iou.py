"""Video IoU on RLE against a brute-force computation on decoded masks."""

import numpy as np
import pytest
from pycocotools import mask as mask_api
from ytvis_random_cases import random_case

from maskprop_jax import rle
from maskprop_jax.evaluation import load_ground_truth, load_results
from maskprop_jax.evaluation.tracks import Track, frame_areas
from maskprop_jax.evaluation.video_iou import video_iou


def _decoded(track: Track, height: int, width: int) -> np.ndarray:
  """[L, H, W] bool, zeros where the frame has no mask."""
  return np.stack([mask_api.decode(r).astype(bool) if r is not None else np.zeros([height, width], bool)
                   for r in track.rles])


def _brute_force(preds, gts, height, width):
  out = np.zeros([len(preds), len(gts)])
  for i, p in enumerate(preds):
    pm = _decoded(p, height, width)
    for j, g in enumerate(gts):
      gm = _decoded(g, height, width)
      union = (pm | gm).sum()
      out[i, j] = (pm & gm).sum() / union if union else 0.0
  return out


@pytest.mark.parametrize("seed", range(5))
def test_matches_decoded_masks(seed):
  gt_json, results_json = random_case(seed, frame_shapes=((24, 32), (61, 45)))
  ground_truth = load_ground_truth(gt_json)
  predictions = load_results(results_json, ground_truth)
  checked = 0
  for video in ground_truth.videos.values():
    preds = [t for t in predictions if t.video_id == video.id]
    gts = [t for t in ground_truth.tracks if t.video_id == video.id]
    expected = _brute_force(preds, gts, video.height, video.width)
    np.testing.assert_array_equal(video_iou(preds, gts), expected)  # exact, not approximate
    checked += expected.size
  assert checked > 0


def _track(masks):
  rles = [rle.encode(m) if m is not None else None for m in masks]
  areas = frame_areas([rles])[0]
  return Track(id=1, video_id=1, category_id=1, rles=rles, areas=areas, avg_area=0.0)


def test_one_sided_frames_add_to_the_union_only():
  box = np.zeros([4, 4], np.uint8)
  box[:2, :2] = 1  # 4 px
  other = np.zeros([4, 4], np.uint8)
  other[:2, 1:3] = 1  # 4 px, 2 shared with box
  pred = _track([box, box, None])
  gt = _track([other, None, box])
  # frame 0: I 2, U 6; frame 1: prediction only, U 4; frame 2: ground truth only, U 4.
  assert video_iou([pred], [gt])[0, 0] == 2 / 14


def test_empty_union_is_zero():
  empty = _track([np.zeros([3, 3], np.uint8), None])
  assert video_iou([empty], [empty])[0, 0] == 0.0
  assert video_iou([], [empty]).shape == (0, 1)
