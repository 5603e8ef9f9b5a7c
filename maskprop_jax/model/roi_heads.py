"""Mask R-CNN's RoI heads (torchvision's RoIHeads with a mask branch) for padded batches.

Parameter paths follow torchvision: `box_head` (fc6/fc7, or the v2 conv-fc Sequential), `box_predictor.cls_score`,
`box_predictor.bbox_pred`, `mask_head.{i}.0`, `mask_predictor.conv5_mask`, `mask_predictor.mask_fcn_logits`.

Inference (`detect`): pool the proposals, classify and regress them per class, keep scores > score_thresh and
boxes of both sides >= 1e-2, per-class NMS, the best `detections_per_img`, then the mask of the predicted class.
Training (`losses`): sample RoIs (see roi_targets), Fast R-CNN losses on all of them, the mask loss on the
positive ones. Features are the FPN levels used for pooling (P2..P5), NHWC, finest first.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskprop_jax.model import box_coder, box_ops, nms, roi_targets, slot_buckets
from maskprop_jax.model.box_head import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from maskprop_jax.model.mask_head import MaskRCNNHeads, MaskRCNNPredictor
from maskprop_jax.model.mask_refiner import ImageMaskRefiner, pool_on_boxes
from maskprop_jax.model.roi_align import multi_scale_roi_align

REMOVE_SMALL_MIN_SIZE = 1e-2


class Detections(NamedTuple):
  """Fixed-size detections per image, best first; rows with valid False are padding."""
  boxes: jax.Array  # [B, D, 4] in pixels of the (resized) input image
  scores: jax.Array  # [B, D]
  labels: jax.Array  # [B, D] int32 class (1..K-1)
  masks: jax.Array  # [B, D, M, M] mask probabilities of the predicted class, in box coordinates
  valid: jax.Array  # [B, D] bool


def postprocess_detections(
    class_logits: jax.Array,
    box_regression: jax.Array,
    proposals: jax.Array,
    proposal_valid: jax.Array,
    image_hw: jax.Array,
    *,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    bbox_reg_weights: Sequence[float] = box_coder.ROI_HEAD_WEIGHTS,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """torchvision's RoIHeads.postprocess_detections with static shapes.

  Args:
    class_logits: [B, P, K]; box_regression: [B, P, K * 4]; proposals: [B, P, 4]; proposal_valid: [B, P].
    image_hw: [B, 2] size of each image before padding (boxes are clipped to it).

  Returns:
    boxes [B, D, 4], scores [B, D], labels [B, D] int32, valid [B, D] with D = detections_per_img, in
    descending score order as torchvision returns them.
  """
  batch, num_proposals, num_classes = class_logits.shape

  def per_image(logits, regression, boxes, valid, hw):
    deltas = regression.reshape(num_proposals, num_classes, 4)
    pred_boxes = box_coder.decode(deltas, boxes[:, None, :], bbox_reg_weights)  # [P, K, 4]
    pred_boxes = box_ops.clip_boxes(pred_boxes, hw)
    scores = jax.nn.softmax(logits, axis=-1)  # [P, K]
    labels = jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32), scores.shape)
    # Every (proposal, foreground class) pair is a candidate, in torchvision's row-major order.
    pred_boxes = pred_boxes[:, 1:].reshape(-1, 4)
    scores = scores[:, 1:].reshape(-1)
    labels = labels[:, 1:].reshape(-1)
    keep = (jnp.repeat(valid, num_classes - 1) & (scores > score_thresh)
            & box_ops.large_enough(pred_boxes, REMOVE_SMALL_MIN_SIZE))
    index, kept = nms.batched_nms(pred_boxes, scores, labels, keep, nms_thresh, detections_per_img)
    return (jnp.where(kept[:, None], pred_boxes[index], 0.0), jnp.where(kept, scores[index], 0.0),
            jnp.where(kept, labels[index], 0), kept)

  return jax.vmap(per_image)(class_logits, box_regression, proposals, proposal_valid, image_hw)


def select_class_masks(mask_logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Sigmoid probabilities of each RoI's class: [B, D, M, M, K] x [B, D] -> [B, D, M, M]."""
  chosen = jnp.take_along_axis(mask_logits, labels[:, :, None, None, None], axis=-1)[..., 0]
  return jax.nn.sigmoid(chosen.astype(jnp.float32))


class RoIHeads(nnx.Module):
  """Box and mask branches of Mask R-CNN, configured by `mask_rcnn_config(...).roi_heads`.

  Config fields used: box_head ("two_mlp" or "conv_fc"), box_conv_layers, box_fc_dim, box_norm,
  box_output_size, box_sampling_ratio, mask_output_size, mask_sampling_ratio, mask_layers, mask_norm,
  aligned (detectron2's half-pixel-correct grids: RoI pooling, mask targets and, where masks are pasted, the paste),
  score_thresh, nms_thresh, detections_per_img, fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
  positive_fraction, bbox_reg_weights; optional: level_rule ("torchvision" or "detectron2"),
  max_sampling_grid (cap of adaptive RoIAlign grids), mask_dilation, mask_loss_buckets (the mask loss on the
  smallest power-of-two bucket of positive slots that holds the batch's positives; default True),
  mask_refine_layers (widths of the image-guided refiner's convs, mask_refiner.py; default () = none, and then the
  mask branch is torchvision's).

  With a refiner, every method that computes masks takes `images`: the normalised padded input [B, H, W, 3]
  (MaskRCNN.network_input) whose pixels the refiner reads.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, num_classes: int, in_channels: int = 256, *,
               rngs: nnx.Rngs):
    # Frozen: module attributes that are not arrays become part of the (hashed) static graph under jit.
    self.cfg = ml_collections.FrozenConfigDict(cfg)
    size = cfg.box_output_size
    if cfg.box_head == "two_mlp":
      self.box_head = TwoMLPHead(in_channels * size * size, cfg.box_fc_dim, rngs=rngs)
    elif cfg.box_head == "conv_fc":
      self.box_head = FastRCNNConvFCHead((in_channels, size, size), tuple(cfg.box_conv_layers), (cfg.box_fc_dim,),
                                         use_norm=cfg.box_norm, rngs=rngs)
    else:
      raise ValueError(f"unknown box_head {cfg.box_head!r}; expected 'two_mlp' or 'conv_fc'")
    self.box_predictor = FastRCNNPredictor(cfg.box_fc_dim, num_classes, rngs=rngs)
    mask_layers = tuple(cfg.mask_layers)
    self.mask_head = MaskRCNNHeads(in_channels, mask_layers, cfg.get("mask_dilation", 1), cfg.mask_norm,
                                   rngs=rngs)
    self.mask_predictor = MaskRCNNPredictor(mask_layers[-1], mask_layers[-1], num_classes, rngs=rngs)
    refine_layers = tuple(cfg.get("mask_refine_layers", ()))
    # Empty without a refiner (an attribute's kind, data or static, is fixed at construction).
    self.mask_refiner = nnx.List(
        [ImageMaskRefiner(mask_layers[-1], refine_layers, num_classes, rngs=rngs)] if refine_layers else [])

  @property
  def refines_masks(self) -> bool:
    return bool(len(self.mask_refiner))

  def _check_images(self, images: jax.Array | None) -> None:
    if self.refines_masks and images is None:
      raise ValueError("roi_heads.mask_refine_layers is set: the mask branch needs the normalised input images")

  def _pool(self, features: Sequence[jax.Array], boxes: jax.Array, input_hw: tuple[int, int], output_size: int,
            sampling_ratio: int) -> jax.Array:
    """[B, R, 4] image-pixel boxes -> [B * R, s, s, C] pooled from their FPN levels."""
    batch, num_boxes = boxes.shape[:2]
    batch_index = jnp.repeat(jnp.arange(batch, dtype=jnp.int32), num_boxes)
    return multi_scale_roi_align(
        features, boxes.reshape(-1, 4), batch_index, input_hw, output_size, sampling_ratio,
        aligned=self.cfg.aligned, level_rule=self.cfg.get("level_rule", "torchvision"),
        max_sampling_grid=self.cfg.get("max_sampling_grid", None))

  def box_outputs(self, features, boxes, valid, input_hw) -> tuple[jax.Array, jax.Array]:
    """Class logits [B, R, K] and box deltas [B, R, K * 4] of boxes [B, R, 4] (valid [B, R])."""
    batch, num_boxes = boxes.shape[:2]
    pooled = self._pool(features, boxes, input_hw, self.cfg.box_output_size, self.cfg.box_sampling_ratio)
    logits, deltas = self.box_predictor(self.box_head(pooled, valid.reshape(-1)))
    return logits.reshape(batch, num_boxes, -1), deltas.reshape(batch, num_boxes, -1)

  def mask_logits(self, features, boxes, valid, input_hw, images=None, *, as_matmul: bool = False) -> jax.Array:
    """Per-class mask logits [B, R, M, M, K] of boxes [B, R, 4] (valid [B, R]); as_matmul: the mask head's
    convolutions as im2col + matmul."""
    self._check_images(images)
    return _mask_logits(self.mask_head, self.mask_predictor, self.mask_refiner, self._pool, self.cfg, features,
                        boxes, valid, input_hw, images, as_matmul)

  def mask_loss(self, features, positives: roi_targets.PositiveRoIs, gt_masks, image_hw, input_hw,
                images=None) -> jax.Array:
    """loss_mask of the positive RoIs, on every slot or (mask_loss_buckets) on the smallest bucket of slots that
    holds the batch's positives: the same loss, since padded slots are masked out of it and of the batch norms'
    statistics (see slot_buckets)."""
    num_slots = positives.valid.shape[1]
    sizes = slot_buckets.bucket_sizes(num_slots) if self.cfg.get("mask_loss_buckets", True) else (num_slots,)
    # XLA:CPU compiles convolutions inside switch branches into a slow layout; a matmul keeps its fast kernel.
    as_matmul = len(sizes) > 1 and jax.default_backend() == "cpu"
    self._check_images(images)
    heads = (self.mask_head, self.mask_predictor, self.mask_refiner)
    graphdef, state = nnx.split(heads)

    def loss(positives, state, features, gt_masks, image_hw, images):
      # The heads enter as explicit state: a switch branch may not update variables it closes over (the batch
      # norms' running statistics of the v2 head), so they come back as outputs.
      heads = nnx.merge(graphdef, state)
      logits = _mask_logits(*heads, self._pool, self.cfg, features, positives.boxes, positives.valid, input_hw,
                            images, as_matmul)
      targets = roi_targets.project_masks_on_boxes(
          gt_masks, positives.boxes, positives.matched_gt, image_hw, logits.shape[2], aligned=self.cfg.aligned)
      return roi_targets.maskrcnn_loss(logits, positives, targets), nnx.state(heads, nnx.BatchStat)

    num_valid = jnp.max(jnp.sum(positives.valid, axis=1))
    loss_mask, statistics = slot_buckets.on_smallest_bucket(
        loss, num_valid, positives, state, tuple(features), gt_masks, image_hw, images, sizes=sizes)
    # Only batch norms in training mode change their statistics; writing back unchanged ones would fail where the
    # variables belong to an outer trace (a model merged outside jax.grad, as in a pure train step).
    if any(isinstance(node, nnx.BatchNorm) and not node.use_running_average for _, node in nnx.iter_graph(heads)):
      nnx.update(heads, statistics)
    return loss_mask

  def detect(
      self,
      features: Sequence[jax.Array],
      proposals: jax.Array,
      proposal_valid: jax.Array,
      image_hw: jax.Array,
      input_hw: tuple[int, int],
      images: jax.Array | None = None,
  ) -> Detections:
    """Inference.

    Args:
      features: FPN levels [B, H_l, W_l, C], finest first.
      proposals: [B, P, 4]; proposal_valid: [B, P] bool.
      image_hw: [B, 2] resized image size before padding (detections are clipped to it).
      input_hw: static (H, W) of the padded network input.
      images: the normalised padded input [B, H, W, 3], for the mask refiner (None without one).
    """
    cfg = self.cfg
    logits, deltas = self.box_outputs(features, proposals, proposal_valid, input_hw)
    boxes, scores, labels, valid = postprocess_detections(
        logits, deltas, proposals, proposal_valid, image_hw, score_thresh=cfg.score_thresh,
        nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img,
        bbox_reg_weights=tuple(cfg.bbox_reg_weights))
    masks = select_class_masks(self.mask_logits(features, boxes, valid, input_hw, images), labels)
    return Detections(boxes, scores, labels, jnp.where(valid[:, :, None, None], masks, 0.0), valid)

  def losses(
      self,
      features: Sequence[jax.Array],
      proposals: jax.Array,
      proposal_valid: jax.Array,
      gt_boxes: jax.Array,
      gt_labels: jax.Array,
      gt_masks: jax.Array,
      gt_valid: jax.Array,
      image_hw: jax.Array,
      input_hw: tuple[int, int],
      key: jax.Array | None,
      sampled_index: jax.Array | None = None,
      sampled_valid: jax.Array | None = None,
      images: jax.Array | None = None,
  ) -> tuple[dict[str, jax.Array], roi_targets.RoISample]:
    """Training losses: loss_classifier, loss_box_reg, loss_mask (torchvision's names).

    Args:
      features: FPN levels [B, H_l, W_l, C], finest first.
      proposals: [B, P, 4] (no gradient flows into them); proposal_valid: [B, P].
      gt_boxes: [B, G, 4]; gt_labels: [B, G] int classes >= 1; gt_masks: [B, G, H, W] 0/1 in the padded
        input frame; gt_valid: [B, G] (crowd and padding slots False).
      image_hw: [B, 2] resized image size before padding.
      input_hw: static (H, W) of the padded network input.
      key: PRNG key of the RoI sample; sampled_index/sampled_valid [B, S]: an injected sample instead.
      images: the normalised padded input [B, H, W, 3], for the mask refiner (None without one).

    Returns:
      (losses, the RoI sample used).
    """
    cfg = self.cfg
    if gt_masks.shape[-2:] != tuple(input_hw):
      raise ValueError(f"gt_masks must be in the padded input frame {tuple(input_hw)}, got {gt_masks.shape[-2:]}")
    proposals = jax.lax.stop_gradient(proposals)
    sample = roi_targets.sample_rois(
        proposals, proposal_valid, gt_boxes, gt_labels, gt_valid, key,
        batch_size_per_image=cfg.batch_size_per_image, positive_fraction=cfg.positive_fraction,
        fg_iou_thresh=cfg.fg_iou_thresh, bg_iou_thresh=cfg.bg_iou_thresh,
        bbox_reg_weights=tuple(cfg.bbox_reg_weights), sampled_index=sampled_index, sampled_valid=sampled_valid)
    logits, deltas = self.box_outputs(features, sample.boxes, sample.valid, input_hw)
    loss_classifier, loss_box_reg = roi_targets.fastrcnn_loss(logits, deltas, sample)

    positives = roi_targets.positive_rois(sample, int(cfg.batch_size_per_image * cfg.positive_fraction))
    loss_mask = self.mask_loss(features, positives, gt_masks, image_hw, input_hw, images)
    losses = dict(loss_classifier=loss_classifier, loss_box_reg=loss_box_reg, loss_mask=loss_mask)
    return losses, sample


def _mask_logits(mask_head, mask_predictor, mask_refiner, pool, cfg, features, boxes, valid, input_hw, images,
                 as_matmul) -> jax.Array:
  """The mask branch on boxes [B, R, 4]: per-class logits [B, R, M, M, K], refined where a refiner is given."""
  batch, num_boxes = boxes.shape[:2]
  pooled = pool(features, boxes, input_hw, cfg.mask_output_size, cfg.mask_sampling_ratio)
  upsampled = mask_predictor.upsample(mask_head(pooled, valid.reshape(-1), as_matmul=as_matmul))
  logits = mask_predictor.logits(upsampled, as_matmul=as_matmul)
  for refiner in mask_refiner:
    logits = logits + refiner(upsampled, pool_on_boxes(images, boxes, logits.shape[1], aligned=cfg.aligned),
                              as_matmul=as_matmul)
  return logits.reshape(batch, num_boxes, *logits.shape[1:])
