"""The one soft IoU: pairs of soft or binary masks, batched, and the convention for two empty masks."""

import numpy as np
import pytest

from maskprop_jax.linking.iou import mask_iou, soft_iou


def test_mask_iou_counts_agreeing_empty_masks_as_a_match():
  a = np.zeros((4, 5), bool)
  b = a.copy()
  assert mask_iou(a, b) == 1.0
  a[:2, :2] = True
  assert mask_iou(a, b) == 0.0
  b[1:3, :2] = True
  assert mask_iou(a, b) == pytest.approx(2 / 6)


def test_soft_iou_of_every_pair_in_a_batch_of_frames():
  rng = np.random.default_rng(0)
  a, b = rng.random((3, 2, 10)).astype(np.float32), rng.random((3, 4, 10)).astype(np.float32)
  got = soft_iou(a, b)  # [frames, 2, 4]
  for f in range(3):
    for i in range(2):
      for j in range(4):
        inter = (a[f, i] * b[f, j]).sum()
        np.testing.assert_allclose(got[f, i, j], inter / (a[f, i].sum() + b[f, j].sum() - inter), rtol=1e-6)
  empty = np.zeros((1, 10), np.float32)
  assert soft_iou(empty, empty)[0, 0] == 0.0 and soft_iou(empty, empty, both_empty=1.0)[0, 0] == 1.0
