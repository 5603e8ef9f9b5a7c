"""Matcher: hand-computed matches with padded gt, and parity with torchvision's Matcher."""

import numpy as np
import pytest

from maskprop_jax.model import matcher

# 3 gt slots (the last is padding) x 5 predictions.
QUALITY = np.array(
    [
        [0.9, 0.5, 0.2, 0.35, 0.0],
        [0.1, 0.6, 0.25, 0.35, 0.0],
        [1.0, 1.0, 1.0, 1.0, 1.0],
    ],
    np.float32,
)
GT_VALID = np.array([True, True, False])


def test_thresholds_without_low_quality():
  got = matcher.match(QUALITY, GT_VALID, 0.7, 0.3, allow_low_quality_matches=False)
  np.testing.assert_array_equal(got, [0, -2, -1, -2, -1])


def test_low_quality_matches_restore_best_prediction_of_each_gt():
  # gt 1's best prediction is 1 (0.6): it gets gt 1 back. gt 0's best is 0, already matched.
  got = matcher.match(QUALITY, GT_VALID, 0.7, 0.3, allow_low_quality_matches=True)
  np.testing.assert_array_equal(got, [0, 1, -1, -2, -1])


def test_ties_and_padded_predictions():
  quality = np.array([[0.4, 0.4, 0.1, 0.4]], np.float32)
  got = matcher.match(quality, np.array([True]), 0.7, 0.3, True, pred_valid=np.array([True, True, True, False]))
  np.testing.assert_array_equal(got[:3], [0, 0, -1])


def test_no_valid_gt_is_background():
  got = matcher.match(QUALITY, np.zeros(3, bool), 0.7, 0.3, True)
  np.testing.assert_array_equal(got, [-1] * 5)


def test_rejects_inverted_thresholds():
  with pytest.raises(ValueError, match="low_threshold"):
    matcher.match(QUALITY, GT_VALID, 0.3, 0.7, True)


@pytest.mark.parametrize("allow_low_quality", [False, True])
def test_parity_with_torchvision(allow_low_quality):
  torch = pytest.importorskip("torch")
  det_utils = pytest.importorskip("torchvision.models.detection._utils")
  tv_ops = pytest.importorskip("torchvision.ops")
  rng = np.random.default_rng(2)
  xy = rng.uniform(0, 100, (500, 2))
  anchors = np.concatenate([xy, xy + rng.uniform(4, 40, (500, 2))], 1).astype(np.float32)
  gt = np.concatenate([anchors[:3] + 1.5, np.array([[300, 300, 310, 310]], np.float32)])  # gt 3 overlaps nothing
  iou = tv_ops.box_iou(torch.from_numpy(gt), torch.from_numpy(anchors))
  expected = det_utils.Matcher(0.7, 0.3, allow_low_quality)(iou).numpy()
  padded = np.concatenate([iou.numpy(), np.full((2, 500), 0.99, np.float32)])
  got = matcher.match(padded, np.array([True] * 4 + [False] * 2), 0.7, 0.3, allow_low_quality)
  np.testing.assert_array_equal(got, expected)
