"""Box coder: hand-computed deltas, round trip, clamping, and parity with torchvision's BoxCoder."""

import math

import numpy as np
import pytest

from maskprop_jax.model import box_coder

ANCHORS = np.array([[0, 0, 10, 20], [10, 10, 30, 30]], np.float32)
GT = np.array([[5, 0, 15, 40], [10, 10, 30, 30]], np.float32)


def test_encode_golden_values():
  deltas = np.asarray(box_coder.encode(GT, ANCHORS, (1.0, 1.0, 1.0, 1.0)))
  # Anchor 0: center (5, 10) size (10, 20); gt 0: center (10, 20) size (10, 40).
  np.testing.assert_allclose(deltas[0], [0.5, 0.5, 0.0, math.log(2.0)], rtol=1e-6)
  np.testing.assert_allclose(deltas[1], [0.0, 0.0, 0.0, 0.0], atol=0)
  weighted = np.asarray(box_coder.encode(GT, ANCHORS, box_coder.ROI_HEAD_WEIGHTS))
  np.testing.assert_allclose(weighted[0], [5.0, 5.0, 0.0, 5 * math.log(2.0)], rtol=1e-6)


def test_decode_inverts_encode_and_broadcasts_per_class():
  weights = box_coder.ROI_HEAD_WEIGHTS
  deltas = box_coder.encode(GT, ANCHORS, weights)
  np.testing.assert_allclose(box_coder.decode(deltas, ANCHORS, weights), GT, rtol=1e-5, atol=1e-4)
  per_class = np.stack([np.asarray(deltas), np.zeros_like(deltas)], axis=1)  # [N, C=2, 4]
  decoded = np.asarray(box_coder.decode(per_class, ANCHORS[:, None, :], weights))
  assert decoded.shape == (2, 2, 4)
  np.testing.assert_allclose(decoded[:, 1], ANCHORS, atol=1e-5)


def test_decode_clamps_scale():
  huge = np.array([[0.0, 0.0, 50.0, 50.0]], np.float32)
  decoded = np.asarray(box_coder.decode(huge, np.array([[0, 0, 16, 16]], np.float32), (1.0, 1.0, 1.0, 1.0)))
  np.testing.assert_allclose(decoded[0], [8 - 500, 8 - 500, 8 + 500, 8 + 500], rtol=1e-5)


def test_parity_with_torchvision():
  torch = pytest.importorskip("torch")
  det_utils = pytest.importorskip("torchvision.models.detection._utils")
  rng = np.random.default_rng(1)
  xy = rng.uniform(0, 300, (200, 2))
  ref = np.concatenate([xy, xy + rng.uniform(1, 100, (200, 2))], 1).astype(np.float32)
  xy = rng.uniform(0, 300, (200, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(1, 100, (200, 2))], 1).astype(np.float32)
  for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
    coder = det_utils.BoxCoder(weights)
    expected = coder.encode_single(torch.from_numpy(ref), torch.from_numpy(boxes)).numpy()
    np.testing.assert_allclose(box_coder.encode(ref, boxes, weights), expected, rtol=1e-6, atol=1e-6)
    deltas = rng.normal(0, 2, (200, 3 * 4)).astype(np.float32)  # 3 classes, some clamped
    expected = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(boxes)).numpy().reshape(200, 3, 4)
    got = box_coder.decode(deltas.reshape(200, 3, 4), boxes[:, None, :], weights)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)
