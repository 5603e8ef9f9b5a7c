"""Region proposal network of torchvision's Mask R-CNN: head, proposal selection and losses, with static shapes.

Module and parameter names follow torchvision's state dict: `rpn.head.conv[i][0]` (3x3 conv + ReLU; one block in
v1, two in v2), `rpn.head.cls_logits`, `rpn.head.bbox_pred`. Anchors and head outputs of all levels are flattened
level by level in (y, x, anchor) order, as torchvision's concat_box_prediction_layers does.

Proposal selection (torchvision's filter_proposals) per image: top `pre_nms_top_n` objectness logits per level,
sigmoid, decode, clip to the image, drop boxes with a side < min_size and scores < score_thresh (as a mask), NMS
per level, keep the first `post_nms_top_n`. The result is padded: boxes [B, P, 4] with valid [B, P].
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskprop_jax.model import box_coder, box_ops, matcher, nms, precision, sampler
from maskprop_jax.model.anchors import FPN_ANCHOR_SIZES, FPN_ASPECT_RATIOS, AnchorGenerator
from maskprop_jax.model.conv_lowering import conv_general_dilated

SMOOTH_L1_BETA = 1.0 / 9


class Proposals(NamedTuple):
  boxes: jax.Array  # [B, P, 4] in pixels of the padded image, 0 where not valid
  scores: jax.Array  # [B, P] objectness probability
  logits: jax.Array  # [B, P] objectness logit (for debugging and comparisons)
  valid: jax.Array  # [B, P] bool


class RPNHead(nnx.Module):
  """3x3 conv(s) + ReLU shared by all levels, then 1x1 convs for objectness [A] and box deltas [A * 4]."""

  def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1, *, rngs: nnx.Rngs):
    init = dict(kernel_init=nnx.initializers.normal(0.01), bias_init=nnx.initializers.zeros,
                conv_general_dilated=conv_general_dilated, rngs=rngs)
    # nnx.List([conv]) mirrors torchvision's Conv2dNormActivation (norm_layer=None), keys `conv.{i}.0.weight`.
    self.conv = nnx.List(
        [nnx.List([nnx.Conv(in_channels, in_channels, (3, 3), padding=((1, 1), (1, 1)), **init)])
         for _ in range(conv_depth)]
    )
    self.cls_logits = nnx.Conv(in_channels, num_anchors, (1, 1), **init)
    self.bbox_pred = nnx.Conv(in_channels, num_anchors * 4, (1, 1), **init)

  def __call__(self, features: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
    """Per level [B, h, w, C] -> objectness logits [B, h, w, A] and box deltas [B, h, w, A * 4]."""
    logits, deltas = [], []
    for x in features:
      for block in self.conv:
        x = jax.nn.relu(block[0](x))
      logits.append(precision.to_float32(self.cls_logits(x)))  # sigmoid, decoding and losses in float32
      deltas.append(precision.to_float32(self.bbox_pred(x)))
    return logits, deltas


def flatten_levels(logits: Sequence[jax.Array], deltas: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Head outputs of all levels -> objectness [B, N] and deltas [B, N, 4], in the anchors' order."""
  batch = logits[0].shape[0]
  objectness = jnp.concatenate([x.reshape(batch, -1) for x in logits], axis=1)  # [B, N]
  # Channel a * 4 + k of bbox_pred is coordinate k of anchor a (torchvision's view(N, A, 4, H, W)).
  box_deltas = jnp.concatenate([x.reshape(batch, -1, 4) for x in deltas], axis=1)  # [B, N, 4]
  return objectness, box_deltas


def select_proposals(
    proposals: jax.Array,
    objectness: jax.Array,
    image_hw: jax.Array,
    level_counts: Sequence[int],
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float,
    score_thresh: float,
    min_size: float,
) -> Proposals:
  """torchvision's RegionProposalNetwork.filter_proposals with padded outputs (no gradient flows through it).

  Args:
    proposals: [B, N, 4] decoded boxes of every anchor.
    objectness: [B, N] logits.
    image_hw: [B, 2] size of each image before padding (boxes are clipped to it).
    level_counts: anchors per pyramid level (static), summing to N.
  Returns:
    Proposals with P = min(post_nms_top_n, number of boxes kept before NMS), best first.
  """
  if sum(level_counts) != objectness.shape[1]:
    raise ValueError(f"level_counts {tuple(level_counts)} do not add up to {objectness.shape[1]} anchors")
  proposals = jax.lax.stop_gradient(proposals)
  objectness = jax.lax.stop_gradient(objectness)

  top_idx, levels, start = [], [], 0
  for level, count in enumerate(level_counts):
    k = min(pre_nms_top_n, count)
    _, idx = jax.lax.top_k(objectness[:, start:start + count], k)  # [B, k]
    top_idx.append(idx + start)
    levels.append(np.full((k,), level, np.int32))
    start += count
  top_idx = jnp.concatenate(top_idx, axis=1)  # [B, K]
  levels = jnp.asarray(np.concatenate(levels))  # [K]
  logits = jnp.take_along_axis(objectness, top_idx, axis=1)  # [B, K]
  boxes = jnp.take_along_axis(proposals, top_idx[..., None], axis=1)  # [B, K, 4]
  max_output = min(post_nms_top_n, top_idx.shape[1])

  def per_image(boxes, logits, hw):
    scores = jax.nn.sigmoid(logits)
    boxes = box_ops.clip_boxes(boxes, hw)
    candidate = box_ops.large_enough(boxes, min_size) & (scores >= score_thresh)
    keep, keep_valid = nms.batched_nms(boxes, scores, levels, candidate, nms_thresh, max_output)
    return Proposals(
        boxes=jnp.where(keep_valid[:, None], boxes[keep], 0.0),
        scores=jnp.where(keep_valid, scores[keep], 0.0),
        logits=jnp.where(keep_valid, logits[keep], 0.0),
        valid=keep_valid,
    )

  return jax.vmap(per_image)(boxes, logits, image_hw)


def assign_targets(
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
) -> tuple[jax.Array, jax.Array]:
  """Anchor labels (1 object, 0 background, -1 ignored) [B, N] and regression targets [B, N, 4].

  Matching as torchvision's RPN (low-quality matches allowed); an image without valid gt is all background.
  Targets are zero where the label is not 1.
  """

  def per_image(gt, valid):
    matched = matcher.match(box_ops.box_iou(gt, anchors), valid, fg_iou_thresh, bg_iou_thresh, True)  # [N]
    labels = jnp.where(matched >= 0, 1.0, jnp.where(matched == matcher.BETWEEN_THRESHOLDS, -1.0, 0.0))
    # Encode non-positives against themselves so that padded gt never puts inf/NaN in the targets.
    matched_gt = jnp.where((matched >= 0)[:, None], gt[jnp.maximum(matched, 0)], anchors)  # [N, 4]
    return labels, box_coder.encode(matched_gt, anchors, box_coder.RPN_WEIGHTS)

  return jax.vmap(per_image)(gt_boxes, gt_valid)


def rpn_losses(
    objectness: jax.Array,
    deltas: jax.Array,
    labels: jax.Array,
    regression_targets: jax.Array,
    pos_mask: jax.Array,
    neg_mask: jax.Array,
) -> dict[str, jax.Array]:
  """torchvision's RPN compute_loss over the sampled anchors of the whole batch.

  Objectness: mean binary cross-entropy over sampled anchors. Box: smooth-L1 (beta 1/9) summed over sampled
  positives, divided by the number of sampled anchors. All arrays [B, N] (deltas, targets [B, N, 4]).
  """
  sampled = pos_mask | neg_mask
  num_sampled = jnp.maximum(jnp.sum(sampled), 1).astype(objectness.dtype)
  diff = jnp.abs(deltas - regression_targets)
  smooth_l1 = jnp.where(diff < SMOOTH_L1_BETA, 0.5 * diff**2 / SMOOTH_L1_BETA, diff - 0.5 * SMOOTH_L1_BETA)
  box_loss = jnp.sum(jnp.where(pos_mask[..., None], smooth_l1, 0.0)) / num_sampled
  targets = (labels > 0).astype(objectness.dtype)
  bce = jnp.maximum(objectness, 0) - objectness * targets + jnp.log1p(jnp.exp(-jnp.abs(objectness)))
  objectness_loss = jnp.sum(jnp.where(sampled, bce, 0.0)) / num_sampled
  return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}


class AnchorSample(NamedTuple):
  """Sampled anchors to use instead of a random draw (e.g. torchvision's, in parity tests)."""

  pos_mask: jax.Array  # [B, N] bool
  neg_mask: jax.Array  # [B, N] bool


class RegionProposalNetwork(nnx.Module):
  """`rpn` of torchvision's Mask R-CNN; keyword arguments are named like the `rpn` section of the model config."""

  def __init__(
      self,
      in_channels: int,
      anchor_generator: AnchorGenerator = AnchorGenerator(FPN_ANCHOR_SIZES, FPN_ASPECT_RATIOS),
      *,
      conv_depth: int = 1,
      pre_nms_top_n_train: int = 2000,
      pre_nms_top_n_test: int = 1000,
      post_nms_top_n_train: int = 2000,
      post_nms_top_n_test: int = 1000,
      nms_thresh: float = 0.7,
      fg_iou_thresh: float = 0.7,
      bg_iou_thresh: float = 0.3,
      batch_size_per_image: int = 256,
      positive_fraction: float = 0.5,
      score_thresh: float = 0.0,
      min_size: float = 1e-3,
      rngs: nnx.Rngs,
  ):
    num_anchors = set(anchor_generator.num_anchors_per_location())
    if len(num_anchors) != 1:
      raise ValueError(f"the shared RPN head needs the same number of anchors on every level, got {num_anchors}")
    self.anchor_generator = anchor_generator
    self.head = RPNHead(in_channels, num_anchors.pop(), conv_depth, rngs=rngs)
    self.pre_nms_top_n_train = pre_nms_top_n_train
    self.pre_nms_top_n_test = pre_nms_top_n_test
    self.post_nms_top_n_train = post_nms_top_n_train
    self.post_nms_top_n_test = post_nms_top_n_test
    self.nms_thresh = nms_thresh
    self.fg_iou_thresh = fg_iou_thresh
    self.bg_iou_thresh = bg_iou_thresh
    self.batch_size_per_image = batch_size_per_image
    self.positive_fraction = positive_fraction
    self.score_thresh = score_thresh
    self.min_size = min_size

  def anchors(self, image_size: tuple[int, int], features: Sequence[jax.Array]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Anchors [N, 4] for a padded image size (H, W) and the feature maps [B, h, w, C] of each level."""
    return self.anchor_generator(image_size, [f.shape[1:3] for f in features])

  def __call__(
      self,
      features: Sequence[jax.Array],
      image_hw: jax.Array,
      image_size: tuple[int, int],
      *,
      training: bool = False,
      gt_boxes: jax.Array | None = None,
      gt_valid: jax.Array | None = None,
      key: jax.Array | None = None,
      sample: AnchorSample | None = None,
  ) -> tuple[Proposals, dict[str, jax.Array]]:
    """Proposals for a batch, and the RPN losses when training.

    Args:
      features: pyramid levels [B, h, w, C], finest first.
      image_hw: [B, 2] image sizes before padding.
      image_size: static (H, W) of the padded batch.
      training: use the training top-n values and compute losses (needs gt_boxes [B, M, 4], gt_valid [B, M]
        and a PRNG `key` for anchor sampling, or a given `sample`).
    """
    anchors, level_counts = self.anchors(image_size, features)
    objectness, deltas = flatten_levels(*self.head(features))  # [B, N], [B, N, 4]
    decoded = box_coder.decode(jax.lax.stop_gradient(deltas), jnp.asarray(anchors), box_coder.RPN_WEIGHTS)
    proposals = select_proposals(
        decoded, objectness, image_hw, level_counts,
        pre_nms_top_n=self.pre_nms_top_n_train if training else self.pre_nms_top_n_test,
        post_nms_top_n=self.post_nms_top_n_train if training else self.post_nms_top_n_test,
        nms_thresh=self.nms_thresh, score_thresh=self.score_thresh, min_size=self.min_size,
    )
    if not training:
      return proposals, {}
    if gt_boxes is None or gt_valid is None:
      raise ValueError("RPN training needs gt_boxes and gt_valid")
    labels, targets = assign_targets(jnp.asarray(anchors), gt_boxes, gt_valid, self.fg_iou_thresh, self.bg_iou_thresh)
    if sample is None:
      if key is None:
        raise ValueError("RPN training needs a PRNG key to sample anchors (or an explicit sample)")
      keys = jax.random.split(key, labels.shape[0])
      pos_mask, neg_mask = jax.vmap(sampler.sample, in_axes=(0, None, None, 0))(
          labels, self.batch_size_per_image, self.positive_fraction, keys
      )
      sample = AnchorSample(pos_mask, neg_mask)
    return proposals, rpn_losses(objectness, deltas, labels, targets, sample.pos_mask, sample.neg_mask)
