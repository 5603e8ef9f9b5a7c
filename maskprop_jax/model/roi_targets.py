"""Training targets and losses of Mask R-CNN's RoI heads (torchvision's RoIHeads training path), static-shape.

Per image: ground-truth boxes are appended to the proposals, every box is matched to the gt (IoU >= 0.5
foreground, < 0.5 background), a fixed-size balanced sample is drawn (512 RoIs, at most 25% positive), and the
sampled RoIs get class labels, box regression targets and, for the positives, 28x28 mask targets (the matched gt
mask pooled over the RoI with roi_align, aligned=False, adaptive sampling -- exactly torchvision's
project_masks_on_boxes, computed with separable operators; aligned=True is detectron2's grid).

Shapes: B images, P proposal slots, G gt slots, N = P + G candidate boxes, S sampled slots, Q positive slots.
Sampled indices index the candidate list [proposals; gt] of an image.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from maskprop_jax.model import box_coder, box_ops, matcher, sampler
from maskprop_jax.model.roi_align import roi_align_single_channel

SMOOTH_L1_BETA = 1.0 / 9


class RoISample(NamedTuple):
  """The sampled RoIs of a batch and their targets."""
  index: jax.Array  # [B, S] int32 into [proposals; gt] of each image, ascending like torchvision's
  valid: jax.Array  # [B, S] bool
  boxes: jax.Array  # [B, S, 4]
  labels: jax.Array  # [B, S] int32 class, 0 background
  matched_gt: jax.Array  # [B, S] int32 gt slot each RoI was matched to (0 for background, as torchvision)
  regression_targets: jax.Array  # [B, S, 4] encoded matched gt box (0 where not positive)


class PositiveRoIs(NamedTuple):
  """The positive sampled RoIs, the only ones the mask branch trains on."""
  boxes: jax.Array  # [B, Q, 4]
  labels: jax.Array  # [B, Q] int32
  matched_gt: jax.Array  # [B, Q] int32
  valid: jax.Array  # [B, Q] bool


def label_candidates(
    candidates: jax.Array,
    candidate_valid: jax.Array,
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
    gt_valid: jax.Array,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
) -> tuple[jax.Array, jax.Array]:
  """One image's candidates [N, 4] -> (labels [N]: class, 0 background, -1 ignored; matched gt [N] >= 0)."""
  iou = box_ops.box_iou(gt_boxes, candidates)  # [G, N]
  matches = matcher.match(iou, gt_valid, fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False,
                          pred_valid=candidate_valid)
  matched_gt = jnp.maximum(matches, 0)  # [N]
  labels = gt_labels[matched_gt].astype(jnp.int32)
  labels = jnp.where(matches == matcher.BELOW_LOW_THRESHOLD, 0, labels)
  labels = jnp.where(matches == matcher.BETWEEN_THRESHOLDS, -1, labels)
  # Padding slots (of proposals or of appended gt) can never be sampled.
  labels = jnp.where(candidate_valid, labels, -1)
  return labels, matched_gt


def chosen_indices(chosen: jax.Array, num_slots: int) -> tuple[jax.Array, jax.Array]:
  """Indices of the True entries of chosen [N], ascending, in num_slots slots: (index [num_slots], valid)."""
  order = jnp.argsort(~chosen, stable=True)  # chosen entries first, each group in index order
  if num_slots > order.shape[0]:
    order = jnp.pad(order, (0, num_slots - order.shape[0]))
  index = order[:num_slots].astype(jnp.int32)
  valid = jnp.arange(num_slots) < jnp.sum(chosen)
  return jnp.where(valid, index, 0), valid


def sample_rois(
    proposals: jax.Array,
    proposal_valid: jax.Array,
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
    gt_valid: jax.Array,
    key: jax.Array | None,
    *,
    batch_size_per_image: int = 512,
    positive_fraction: float = 0.25,
    fg_iou_thresh: float = 0.5,
    bg_iou_thresh: float = 0.5,
    bbox_reg_weights: tuple[float, ...] = box_coder.ROI_HEAD_WEIGHTS,
    sampled_index: jax.Array | None = None,
    sampled_valid: jax.Array | None = None,
) -> RoISample:
  """torchvision's RoIHeads.select_training_samples for a padded batch.

  Args:
    proposals: [B, P, 4]; proposal_valid: [B, P] bool.
    gt_boxes: [B, G, 4]; gt_labels: [B, G] int classes >= 1; gt_valid: [B, G] bool.
    key: PRNG key of the random sample (unused when sampled_index is given).
    sampled_index, sampled_valid: optional [B, S] choice to use instead of sampling (parity tests inject
      torchvision's choice this way), indices into [proposals; gt] of each image.

  Returns:
    RoISample with S = min(batch_size_per_image, P + G) slots unless a choice is injected.

  Raises:
    ValueError: sampled_index without sampled_valid.
  """
  candidates = jnp.concatenate([proposals, gt_boxes.astype(proposals.dtype)], axis=1)  # [B, N, 4]
  candidate_valid = jnp.concatenate([proposal_valid, gt_valid], axis=1)  # [B, N]
  labels, matched_gt = jax.vmap(
      lambda c, cv, gb, gl, gv: label_candidates(c, cv, gb, gl, gv, fg_iou_thresh, bg_iou_thresh))(
          candidates, candidate_valid, gt_boxes, gt_labels, gt_valid)  # [B, N] each

  if sampled_index is None:
    num_slots = min(batch_size_per_image, candidates.shape[1])
    keys = jax.random.split(key, candidates.shape[0])

    def draw(image_labels, image_key):
      positive, negative = sampler.sample(image_labels, batch_size_per_image, positive_fraction, image_key)
      return chosen_indices(positive | negative, num_slots)

    sampled_index, sampled_valid = jax.vmap(draw)(labels, keys)  # [B, S]
  elif sampled_valid is None:
    raise ValueError("sampled_valid must accompany sampled_index")

  take = jax.vmap(lambda x, i: x[i])
  boxes = take(candidates, sampled_index)  # [B, S, 4]
  roi_labels = jnp.where(sampled_valid, take(labels, sampled_index), 0)  # [B, S]
  roi_matched = jnp.where(sampled_valid, take(matched_gt, sampled_index), 0)  # [B, S]
  matched_boxes = take(gt_boxes.astype(boxes.dtype), roi_matched)  # [B, S, 4]
  positive = roi_labels > 0
  # Background and padding RoIs may be degenerate (their encoding is inf/NaN); their targets are never used,
  # but they must not be NaN, or NaN would leak into the gradient through the masked loss.
  safe_boxes = jnp.where(positive[..., None], boxes, jnp.array([0.0, 0.0, 1.0, 1.0], boxes.dtype))
  safe_matched = jnp.where(positive[..., None], matched_boxes, safe_boxes)
  targets = box_coder.encode(safe_matched, safe_boxes, bbox_reg_weights)  # [B, S, 4]
  return RoISample(sampled_index.astype(jnp.int32), sampled_valid, boxes, roi_labels, roi_matched,
                   jnp.where(positive[..., None], targets, 0.0))


def positive_rois(sample: RoISample, max_positives: int) -> PositiveRoIs:
  """The positive RoIs of each image, in sampled order, in max_positives slots."""
  slots = min(max_positives, sample.labels.shape[1])
  index, valid = jax.vmap(lambda labels: chosen_indices(labels > 0, slots))(sample.labels)  # [B, Q]
  take = jax.vmap(lambda x, i: x[i])
  return PositiveRoIs(take(sample.boxes, index), jnp.where(valid, take(sample.labels, index), 0),
                      take(sample.matched_gt, index), valid)


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
  """torch.nn.functional.smooth_l1_loss per element (reduction none)."""
  abs_x = jnp.abs(x)
  return jnp.where(abs_x < beta, 0.5 * x * x / beta, abs_x - 0.5 * beta)


def fastrcnn_loss(
    class_logits: jax.Array,
    box_regression: jax.Array,
    sample: RoISample,
) -> tuple[jax.Array, jax.Array]:
  """torchvision's fastrcnn_loss over all sampled RoIs of the batch.

  Args:
    class_logits: [B, S, K]; box_regression: [B, S, K * 4].
    sample: the sampled RoIs (labels, regression targets, validity).

  Returns:
    (classification loss: mean cross entropy over valid RoIs,
     box loss: smooth-L1 (beta 1/9) of the gt-class deltas of positive RoIs, summed, / number of valid RoIs).
  """
  valid = sample.valid
  count = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
  log_probs = jax.nn.log_softmax(class_logits.astype(jnp.float32), axis=-1)  # [B, S, K]
  nll = -jnp.take_along_axis(log_probs, sample.labels[..., None], axis=-1)[..., 0]  # [B, S]
  classification = jnp.sum(jnp.where(valid, nll, 0.0)) / count

  batch, slots, num_classes = class_logits.shape
  deltas = box_regression.reshape(batch, slots, num_classes, 4).astype(jnp.float32)
  chosen = jnp.take_along_axis(deltas, sample.labels[..., None, None], axis=2)[:, :, 0]  # [B, S, 4]
  positive = valid & (sample.labels > 0)
  per_roi = jnp.sum(smooth_l1(chosen - sample.regression_targets, SMOOTH_L1_BETA), axis=-1)  # [B, S]
  box_loss = jnp.sum(jnp.where(positive, per_roi, 0.0)) / count
  return classification, box_loss


def project_masks_on_boxes(
    gt_masks: jax.Array,
    boxes: jax.Array,
    matched_gt: jax.Array,
    image_hw: jax.Array,
    mask_size: int,
    max_sampling_grid: int | None = None,
    aligned: bool = False,
) -> jax.Array:
  """Mask targets: each RoI's matched gt mask pooled over the RoI, as torchvision's project_masks_on_boxes, or
  with aligned RoIAlign as detectron2's BitMasks.crop_and_resize (the inverse of its paste, see paste_masks).

  Args:
    gt_masks: [B, G, H, W] 0/1 (any numeric dtype) in the padded frame; boxes: [B, Q, 4]; matched_gt: [B, Q].
    image_hw: [B, 2] image size before padding: torchvision's masks end there, which matters for samples
      within a pixel of the image's bottom or right edge.
    mask_size: M (28 for Mask R-CNN).
    aligned: detectron2's half-pixel-correct grid instead of torchvision's.
    max_sampling_grid: cap of the adaptive grid; the default covers every RoI inside the mask frame.

  Returns:
    [B, Q, M, M] float32 in [0, 1].
  """
  batch, num_gt, height, width = gt_masks.shape
  slots = boxes.shape[1]
  maps = gt_masks.reshape(batch * num_gt, height, width)
  map_index = (jnp.arange(batch)[:, None] * num_gt + matched_gt).reshape(-1)  # [B * Q]
  valid_hw = jnp.repeat(image_hw.astype(jnp.int32), slots, axis=0)  # [B * Q, 2]
  targets = roi_align_single_channel(
      maps, boxes.reshape(-1, 4), map_index, mask_size, 1.0, -1, aligned, max_sampling_grid,
      valid_hw)  # [B * Q, M, M]
  return targets.reshape(batch, slots, mask_size, mask_size)


def maskrcnn_loss(mask_logits: jax.Array, positives: PositiveRoIs, mask_targets: jax.Array) -> jax.Array:
  """torchvision's maskrcnn_loss: mean BCE of the gt-class mask logits over every pixel of every positive RoI.

  mask_logits: [B, Q, M, M, K]; mask_targets: [B, Q, M, M]. Zero when the batch has no positive RoI.
  """
  logits = jnp.take_along_axis(mask_logits, positives.labels[:, :, None, None, None], axis=-1)[..., 0]
  logits = logits.astype(jnp.float32)  # [B, Q, M, M]
  bce = jnp.maximum(logits, 0.0) - logits * mask_targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  pixels = mask_targets.shape[-1] * mask_targets.shape[-2]
  count = jnp.maximum(jnp.sum(positives.valid) * pixels, 1).astype(jnp.float32)
  return jnp.sum(jnp.where(positives.valid[:, :, None, None], bce, 0.0)) / count
