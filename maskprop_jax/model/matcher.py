"""torchvision's Matcher: assigns every prediction (anchor or proposal) its best ground-truth box, for padded gt.

quality[m, n] is the match quality (IoU) of gt m and prediction n. A prediction whose best quality is
  >= high:            matched to that gt (index >= 0),
  in [low, high):     BETWEEN_THRESHOLDS (-2, ignored by the losses),
  < low:              BELOW_LOW_THRESHOLD (-1, background).
With `allow_low_quality_matches`, every prediction that reaches the highest quality some gt attains with any
prediction (ties included, even when that quality is 0) gets back its best gt, as torchvision does. Padded gt rows
(gt_valid False) and padded predictions (pred_valid False) take no part; an image without valid gt makes every
prediction BELOW_LOW_THRESHOLD, which is how torchvision labels a background image.
"""

from __future__ import annotations

import jax.numpy as jnp

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(
    quality: jnp.ndarray,
    gt_valid: jnp.ndarray,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool,
    pred_valid: jnp.ndarray | None = None,
) -> jnp.ndarray:
  """Matched gt index per prediction, or BELOW_LOW_THRESHOLD / BETWEEN_THRESHOLDS.

  Args:
    quality: [M, N] float, gt x predictions (e.g. box_ops.box_iou(gt_boxes, anchors)).
    gt_valid: [M] bool, False for padding slots.
    high_threshold, low_threshold: thresholds as above (low <= high).
    allow_low_quality_matches: restore the best gt of predictions that are some gt's best match.
    pred_valid: optional [N] bool; padded predictions never count as a gt's best match. Their own output is
      meaningless and must be masked by the caller.

  Returns:
    [N] int32.
  """
  if low_threshold > high_threshold:
    raise ValueError(f"low_threshold {low_threshold} must be <= high_threshold {high_threshold}")
  if quality.ndim != 2 or gt_valid.shape != quality.shape[:1]:
    raise ValueError(f"match expects quality [M, N] and gt_valid [M], got {quality.shape} and {gt_valid.shape}")
  quality = jnp.where(gt_valid[:, None], quality, -jnp.inf)  # [M, N]
  best_quality = jnp.max(quality, axis=0)  # [N]
  best_gt = jnp.argmax(quality, axis=0).astype(jnp.int32)  # [N] first maximum, as torch.max
  matches = jnp.where(best_quality >= high_threshold, best_gt, BETWEEN_THRESHOLDS)
  matches = jnp.where(best_quality < low_threshold, BELOW_LOW_THRESHOLD, matches)
  if not allow_low_quality_matches:
    return matches

  if pred_valid is None:
    pred_valid = jnp.ones(quality.shape[1:], bool)
  counted = jnp.where(pred_valid[None, :], quality, -jnp.inf)  # [M, N]
  best_for_gt = jnp.max(counted, axis=1, keepdims=True)  # [M, 1]
  is_best_for_some_gt = jnp.any((counted == best_for_gt) & gt_valid[:, None], axis=0)  # [N]
  return jnp.where(is_best_for_some_gt, best_gt, matches)
