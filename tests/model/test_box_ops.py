"""Box arithmetic: hand-computed values and parity with torchvision.ops."""

import numpy as np
import pytest

from maskprop_jax.model import box_ops

BOXES_A = np.array([[0, 0, 10, 10], [5, 5, 15, 25]], np.float32)
BOXES_B = np.array([[0, 0, 10, 10], [10, 10, 20, 20], [2, 4, 6, 8], [20, 20, 30, 30]], np.float32)


def test_area_and_iou_golden():
  np.testing.assert_allclose(box_ops.box_area(BOXES_A), [100.0, 200.0])
  iou = np.asarray(box_ops.box_iou(BOXES_A, BOXES_B))
  # [5,5,15,25] vs [10,10,20,20]: intersection 5 x 10 = 50, union 200 + 100 - 50 = 250.
  expected = np.array([[1.0, 0.0, 16 / 100, 0.0], [25 / 275, 50 / 250, 3 / 213, 0.0]], np.float32)
  np.testing.assert_allclose(iou, expected, rtol=1e-6)
  assert iou.shape == (2, 4)


def test_iou_batched_leading_dims():
  stacked = np.stack([BOXES_A, BOXES_A[::-1]])  # [2, 2, 4]
  iou = np.asarray(box_ops.box_iou(stacked, BOXES_B[None]))
  np.testing.assert_array_equal(iou[0], box_ops.box_iou(BOXES_A, BOXES_B))
  np.testing.assert_array_equal(iou[1], box_ops.box_iou(BOXES_A[::-1], BOXES_B))


def test_clip_static_and_per_image_sizes():
  boxes = np.array([[-5, -5, 30, 12], [3, 4, 5, 6]], np.float32)
  np.testing.assert_array_equal(box_ops.clip_boxes(boxes, (10, 20)), [[0, 0, 20, 10], [3, 4, 5, 6]])
  per_image = np.stack([boxes, boxes])[:, :, None, :]  # [B=2, N=2, C=1, 4]
  clipped = np.asarray(box_ops.clip_boxes(per_image, np.array([[10, 20], [5, 4]])))
  np.testing.assert_array_equal(clipped[0, :, 0], [[0, 0, 20, 10], [3, 4, 5, 6]])
  np.testing.assert_array_equal(clipped[1, :, 0], [[0, 0, 4, 5], [3, 4, 4, 5]])


def test_large_enough_is_inclusive():
  boxes = np.array([[0, 0, 1e-3, 1], [0, 0, 1, 5e-4], [0, 0, 2, 2]], np.float32)
  np.testing.assert_array_equal(box_ops.large_enough(boxes, 1e-3), [True, False, True])


def test_center_size_round_trip():
  cxcywh = np.asarray(box_ops.xyxy_to_cxcywh(BOXES_A))
  np.testing.assert_array_equal(cxcywh, [[5, 5, 10, 10], [10, 15, 10, 20]])
  np.testing.assert_array_equal(box_ops.cxcywh_to_xyxy(cxcywh), BOXES_A)


def test_parity_with_torchvision():
  torch = pytest.importorskip("torch")
  tv_ops = pytest.importorskip("torchvision.ops")
  rng = np.random.default_rng(0)
  xy = rng.uniform(-20, 200, (64, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(0, 60, (64, 2))], 1).astype(np.float32)
  a, b = torch.from_numpy(boxes[:40]), torch.from_numpy(boxes[40:])
  np.testing.assert_array_equal(box_ops.box_iou(boxes[:40], boxes[40:]), tv_ops.box_iou(a, b).numpy())
  np.testing.assert_array_equal(box_ops.box_area(boxes), tv_ops.box_area(torch.from_numpy(boxes)).numpy())
  np.testing.assert_array_equal(
      box_ops.clip_boxes(boxes, (120, 90)), tv_ops.clip_boxes_to_image(torch.from_numpy(boxes), (120, 90)).numpy()
  )
  keep = tv_ops.remove_small_boxes(torch.from_numpy(boxes), 5.0).numpy()
  np.testing.assert_array_equal(np.nonzero(np.asarray(box_ops.large_enough(boxes, 5.0)))[0], keep)
  np.testing.assert_allclose(
      box_ops.xyxy_to_cxcywh(boxes), tv_ops.box_convert(torch.from_numpy(boxes), "xyxy", "cxcywh").numpy(), rtol=1e-6
  )
