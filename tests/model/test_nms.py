"""Static-shape NMS: hand-built cases and exact parity with torchvision.ops.nms / batched_nms."""

import numpy as np
import pytest

from maskprop_jax.model import nms


def _random_boxes(rng, n, size=200.0, max_side=80.0):
  xy = rng.uniform(0, size, (n, 2))
  return np.concatenate([xy, xy + rng.uniform(1, max_side, (n, 2))], 1).astype(np.float32)


def _kept(keep_idx, keep_valid):
  return np.asarray(keep_idx)[np.asarray(keep_valid)]


def test_chain_keeps_first_and_third():
  # Box 1 overlaps both neighbours (IoU 0.6); 0 and 2 do not overlap. Greedy keeps 0, drops 1, keeps 2.
  boxes = np.array([[0, 0, 10, 10], [2.5, 0, 12.5, 10], [10, 0, 20, 10]], np.float32)
  scores = np.array([0.9, 0.8, 0.7], np.float32)
  keep = nms.nms(boxes, scores, np.ones(3, bool), iou_threshold=0.5, max_output=3)
  np.testing.assert_array_equal(_kept(*keep), [0, 2])
  np.testing.assert_array_equal(keep[1], [True, True, False])
  np.testing.assert_array_equal(keep[0], [0, 2, 0])


def test_ties_invalid_and_max_output():
  boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [0, 0, 10, 10]], np.float32)
  scores = np.array([0.5, 0.5, 0.9, 0.99], np.float32)
  valid = np.array([True, True, True, False])
  # The invalid box 3 would otherwise suppress box 0; equal scores keep index order.
  np.testing.assert_array_equal(_kept(*nms.nms(boxes, scores, valid, 0.5, 4)), [2, 0, 1])
  np.testing.assert_array_equal(_kept(*nms.nms(boxes, scores, valid, 0.5, 2)), [2, 0])


def test_iou_equal_to_threshold_is_kept():
  boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)  # IoU exactly 1/3
  scores = np.array([1.0, 0.5], np.float32)
  iou = float(np.float32(50) / np.float32(150))
  np.testing.assert_array_equal(_kept(*nms.nms(boxes, scores, np.ones(2, bool), iou, 2)), [0, 1])


def test_float32_threshold_matches_double_comparison():
  for threshold in (0.3, 0.5, 0.7, 0.1, 0.9):
    t32 = nms.float32_threshold(threshold)
    t = np.float32(threshold)
    for v in (np.nextafter(t, np.float32(-1)), t, np.nextafter(t, np.float32(2))):
      assert (float(v) > threshold) == bool(v > t32)


def test_tile_size_does_not_change_result():
  rng = np.random.default_rng(3)
  boxes = _random_boxes(rng, 300)
  scores = rng.uniform(size=300).astype(np.float32)
  valid = np.ones(300, bool)
  a = nms.nms(boxes, scores, valid, 0.5, 300, tile_size=256)
  b = nms.nms(boxes, scores, valid, 0.5, 300, tile_size=7)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])


def test_batched_categories_do_not_suppress_each_other():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10]], np.float32)
  scores = np.array([0.9, 0.8, 0.7], np.float32)
  idxs = np.array([0, 1, 0])
  for trick_max in (1000, 0):  # coordinate-offset trick and per-category IoU
    keep = nms.batched_nms(boxes, scores, idxs, np.ones(3, bool), 0.5, 3, coordinate_trick_max_boxes=trick_max)
    np.testing.assert_array_equal(_kept(*keep), [0, 1])


@pytest.mark.parametrize(
    "num_boxes,threshold,max_output,ties",
    [(40, 0.5, 40, True), (900, 0.7, 1000, True), (2500, 0.3, 1000, False)],
)
def test_parity_with_torchvision(num_boxes, threshold, max_output, ties):
  torch = pytest.importorskip("torch")
  tv_ops = pytest.importorskip("torchvision.ops")
  rng = np.random.default_rng(num_boxes)
  boxes = _random_boxes(rng, num_boxes)
  scores = rng.normal(size=num_boxes).astype(np.float32)  # negative scores too: the sort key handles the sign
  if ties:
    scores[::7] = scores[0]
  valid = rng.uniform(size=num_boxes) > 0.1
  idxs = rng.integers(0, 5, num_boxes)
  valid_idx = np.nonzero(valid)[0]
  b, s, c = (torch.from_numpy(x[valid]) for x in (boxes, scores, idxs))

  expected = valid_idx[tv_ops.nms(b, s, threshold).numpy()][:max_output]
  np.testing.assert_array_equal(_kept(*nms.nms(boxes, scores, valid, threshold, max_output)), expected)

  # Above 1000 boxes torchvision's batched_nms re-sorts kept boxes with an unstable sort, so tied scores may come
  # out in any order there: that case is tested without ties.
  expected = valid_idx[tv_ops.batched_nms(b, s, c, threshold).numpy()][:max_output]
  got = _kept(*nms.batched_nms(boxes, scores, idxs, valid, threshold, max_output))
  np.testing.assert_array_equal(got, expected)
