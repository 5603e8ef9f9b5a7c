"""The assembled Mask R-CNN (torchvision's MaskRCNN): backbone + FPN, RPN and RoI heads, for padded batches.

    model = build_mask_rcnn(mask_rcnn_config("maskrcnn_resnet50_fpn"), nnx.Rngs(0))
    images, image_hw = preprocess_batch(model.cfg, [rgb_uint8, ...])      # torchvision's transform
    detections = model(images, image_hw)                                  # boxes in resized-image pixels
    results = postprocess(detections, image_hw, original_hw, canvas_hw)    # boxes and pasted masks, original size

Training: `model.train()` then `model.losses(images, image_hw, gt, key)` returns torchvision's five losses. The
frozen batch norms of the backbone never update; the v2 heads' batch norms use batch statistics in train mode.
Parity tests inject torchvision's random choices (proposals, sampled anchors, sampled RoIs) through `losses`.

Features-level API, for models that run the backbone themselves (MaskProp runs it once on every frame of a clip
and the heads on the center frames only): `features(canvases, image_hw)` (uint8 canvases, normalised here),
`detect_from_features`, `losses_from_features` and `box_mask_probs`. `__call__` and `losses` are the backbone
on preprocessed (normalised, padded) images followed by `detect_from_features` and `losses_from_features`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from maskprop_jax.model.anchors import AnchorGenerator
from maskprop_jax.model.config import input_format, resnet_spec
from maskprop_jax.model.fpn import BackboneWithFPN
from maskprop_jax.model.paste_masks import paste_masks_in_image
from maskprop_jax.model.roi_heads import Detections, RoIHeads, select_class_masks
from maskprop_jax.model.rpn import AnchorSample, Proposals, RegionProposalNetwork
from maskprop_jax.model.transform import normalize, padded_hw, preprocess_image, resize_boxes, resized_hw

# Levels of the pyramid that RoIAlign pools from (P2..P5); P6 only feeds the RPN, as in torchvision.
NUM_POOLED_LEVELS = 4


class GroundTruth(NamedTuple):
  """Padded training targets of a batch (one frame per example)."""

  boxes: jax.Array  # [B, G, 4] x0, y0, x1, y1 in pixels of the padded input
  labels: jax.Array  # [B, G] int32 class 1..num_classes-1
  masks: jax.Array  # [B, G, H, W] 0/1 in the padded input frame
  valid: jax.Array  # [B, G] bool: a real, non-crowd instance


class ImageResults(NamedTuple):
  """Detections mapped back to original image sizes (fixed size D per image, `valid` marks real ones)."""

  boxes: jax.Array  # [B, D, 4] in original-image pixels
  scores: jax.Array  # [B, D]
  labels: jax.Array  # [B, D] int32
  masks: jax.Array  # [B, D, H, W] probabilities pasted into the (canvas of the) original image
  valid: jax.Array  # [B, D] bool


class MaskRCNN(nnx.Module):
  """`backbone` (body + fpn), `rpn`, `roi_heads`: the attribute paths of torchvision's state dict."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    # Frozen (hashable): non-array attributes are part of the static graph that jit caches on.
    self.cfg = ml_collections.FrozenConfigDict(cfg)
    channels = cfg.backbone.fpn_channels
    self.backbone = BackboneWithFPN(resnet_spec(cfg), fpn_channels=channels, fpn_norm=cfg.backbone.fpn_norm,
                                    rngs=rngs)
    anchors = AnchorGenerator(
      sizes=tuple(tuple(s) for s in cfg.anchors.sizes),
      aspect_ratios=tuple(tuple(a) for a in cfg.anchors.aspect_ratios),
      round_base_anchors=cfg.anchors.round_base_anchors,
    )
    self.rpn = RegionProposalNetwork(channels, anchors, **cfg.rpn.to_dict(), rngs=rngs)
    self.roi_heads = RoIHeads(cfg.roi_heads, cfg.num_classes, channels, rngs=rngs)

  def normalize(self, images: jax.Array) -> jax.Array:
    """RGB uint8 (or [0, 1] float) images [..., H, W, 3] -> the network's normalised input."""
    if images.dtype == jnp.uint8:
      images = images.astype(jnp.float32) / jnp.float32(255.0)
    return normalize(images, input_format(self.cfg))

  def features(self, images: jax.Array, image_hw: jax.Array) -> list[jax.Array]:
    """FPN levels P2..P6 [N, h, w, C] of RGB canvases [N, H, W, 3] (uint8 or [0, 1] float, not normalised) whose
    content is image_hw [N, 2].

    As torchvision's transform pads after normalising, the canvas beyond each image is zero after normalisation.
    """
    return self.backbone(self.network_input(images, image_hw))

  def network_input(self, images: jax.Array, image_hw: jax.Array) -> jax.Array:
    """RGB canvases [N, H, W, 3] (uint8 or [0, 1] float) whose content is image_hw [N, 2] -> the normalised
    input [N, H, W, 3], zero beyond each image (what the backbone and the mask refiner read)."""
    x = self.normalize(images)
    height, width = images.shape[1:3]
    inside = ((jnp.arange(height)[None, :, None] < image_hw[:, 0, None, None])
              & (jnp.arange(width)[None, None, :] < image_hw[:, 1, None, None]))  # [N, H, W]
    return jnp.where(inside[..., None], x, 0.0)

  def proposals(self, images: jax.Array, image_hw: jax.Array) -> tuple[list[jax.Array], Proposals]:
    """Inference up to the RPN: FPN levels P2..P6 and the proposals [B, post_nms_top_n_test]."""
    features = self.backbone(images)
    proposals, _ = self.rpn(features, image_hw, images.shape[1:3])
    return features, proposals

  def detect_from_features(self, features: Sequence[jax.Array], image_hw: jax.Array,
                           canvas_hw: tuple[int, int], inputs: jax.Array | None = None) -> Detections:
    """Inference from FPN levels P2..P6 [B, h, w, C] of padded inputs of static size canvas_hw (H, W) whose content
    is image_hw [B, 2]: the RPN's proposals, then the RoI heads' detections (see __call__). inputs: the
    normalised input [B, H, W, 3] (network_input), which the mask refiner reads (None without one)."""
    proposals, _ = self.rpn(features, image_hw, canvas_hw)
    return self.roi_heads.detect(features[:NUM_POOLED_LEVELS], proposals.boxes, proposals.valid, image_hw, canvas_hw,
                                 inputs)

  def __call__(self, images: jax.Array, image_hw: jax.Array) -> Detections:
    """Detections of normalised, padded images [B, H, W, 3] whose content is image_hw [B, 2].

    Boxes are in pixels of the resized input; masks are 28x28 probabilities in box coordinates (see postprocess).
    """
    return self.detect_from_features(self.backbone(images), image_hw, images.shape[1:3], images)

  def losses(
    self,
    images: jax.Array,
    image_hw: jax.Array,
    gt: GroundTruth,
    key: jax.Array | None,
    *,
    proposals: Proposals | None = None,
    anchor_sample: AnchorSample | None = None,
    roi_sample: tuple[jax.Array, jax.Array] | None = None,
  ) -> dict[str, jax.Array]:
    """torchvision's training losses of normalised, padded images [B, H, W, 3] with content size image_hw
    [B, 2]: the backbone, then `losses_from_features` (see there for the other arguments)."""
    return self.losses_from_features(self.backbone(images), image_hw, images.shape[1:3], gt, key,
                                     proposals=proposals, anchor_sample=anchor_sample, roi_sample=roi_sample,
                                     inputs=images)

  def losses_from_features(
    self,
    features: Sequence[jax.Array],
    image_hw: jax.Array,
    input_hw: tuple[int, int],
    gt: GroundTruth,
    key: jax.Array | None,
    *,
    proposals: Proposals | None = None,
    anchor_sample: AnchorSample | None = None,
    roi_sample: tuple[jax.Array, jax.Array] | None = None,
    inputs: jax.Array | None = None,
  ) -> dict[str, jax.Array]:
    """torchvision's training losses: loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg, loss_mask.

    Args:
      features: FPN levels P2..P6 [B, h, w, C] of padded inputs of static size input_hw (H, W);
        image_hw: [B, 2] content size.
      gt: padded targets in the padded input frame.
      key: PRNG key for the anchor and RoI samples (may be None when both are injected).
      proposals: use these instead of the RPN's (parity tests inject torchvision's).
      anchor_sample: injected RPN anchor sample; roi_sample: injected (index [B, S], valid [B, S]) RoI sample
        into each image's [proposals; gt] list.
      inputs: the normalised input [B, H, W, 3] (network_input), which the mask refiner reads (None without one).
    """
    rpn_key, roi_key = jax.random.split(key) if key is not None else (None, None)
    own_proposals, rpn_losses = self.rpn(
      features, image_hw, input_hw, training=True, gt_boxes=gt.boxes, gt_valid=gt.valid, key=rpn_key,
      sample=anchor_sample)
    proposals = own_proposals if proposals is None else proposals
    sampled_index, sampled_valid = roi_sample if roi_sample is not None else (None, None)
    roi_losses, _ = self.roi_heads.losses(
      features[:NUM_POOLED_LEVELS], proposals.boxes, proposals.valid, gt_boxes=gt.boxes, gt_labels=gt.labels,
      gt_masks=gt.masks, gt_valid=gt.valid, image_hw=image_hw, input_hw=input_hw, key=roi_key,
      sampled_index=sampled_index, sampled_valid=sampled_valid, images=inputs)
    return {**rpn_losses, **roi_losses}

  def box_mask_probs(self, features: Sequence[jax.Array], boxes: jax.Array, labels: jax.Array, valid: jax.Array,
                     input_hw: tuple[int, int], inputs: jax.Array | None = None) -> jax.Array:
    """The mask head on given boxes [B, R, 4] (valid [B, R]) of FPN levels P2..P6 of padded inputs of static size
    input_hw: probabilities [B, R, M, M] in box coordinates of each box's class labels [B, R] (1..K-1). inputs:
    as in detect_from_features."""
    mask_logits = self.roi_heads.mask_logits(features[:NUM_POOLED_LEVELS], boxes, valid, input_hw, inputs)
    return select_class_masks(mask_logits, labels)


def build_mask_rcnn(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs | None = None) -> MaskRCNN:
  """A randomly initialised model in inference mode (call `.train()` before computing losses)."""
  rngs = rngs if rngs is not None else nnx.Rngs(0)
  model = nnx.jit(lambda r: MaskRCNN(cfg, rngs=r))(rngs)  # jit: eager init of ResNet-50 is slow on CPU
  model.eval()
  return model


def abstract_mask_rcnn(cfg: ml_collections.ConfigDict) -> MaskRCNN:
  """The model's structure and shapes without allocating or initialising parameters (for loading weights)."""
  model = nnx.eval_shape(lambda: MaskRCNN(cfg, rngs=nnx.Rngs(0)))
  model.eval()
  return model


def trainable_filter(cfg: ml_collections.ConfigDict):
  """nnx filter of the parameters that train: torchvision's trainable_backbone_layers freezes the backbone's
  first stages (3: conv1 and layer1 frozen; 5: none). Batch-norm statistics are never parameters."""
  stages = ["layer4", "layer3", "layer2", "layer1", "conv1"][: cfg.trainable_backbone_layers]
  frozen = {"conv1", "layer1", "layer2", "layer3", "layer4"} - set(stages)

  def is_trainable(path, value) -> bool:
    in_frozen_stage = tuple(path[:2]) == ("backbone", "body") and len(path) > 2 and path[2] in frozen
    return isinstance(value, nnx.Param) and not in_frozen_stage

  return is_trainable


def box_head_flatten_inputs(cfg: ml_collections.ConfigDict) -> dict[tuple, tuple[int, int, int]]:
  """The box-head linear layer that reads flattened RoI features, and its input (C, H, W) in torch's order.

  Our flattening is NHWC, torchvision's is NCHW: converters permute this layer's input columns.
  """
  size = cfg.roi_heads.box_output_size
  if cfg.roi_heads.box_head == "two_mlp":
    return {("roi_heads", "box_head", "fc6"): (cfg.backbone.fpn_channels, size, size)}
  conv_layers = tuple(cfg.roi_heads.box_conv_layers)
  channels = conv_layers[-1] if conv_layers else cfg.backbone.fpn_channels
  # torchvision's FastRCNNConvFCHead: conv blocks, Flatten, then the first Linear.
  return {("roi_heads", "box_head", len(conv_layers) + 1): (channels, size, size)}


def preprocess_batch(
  cfg: ml_collections.ConfigDict, images: Sequence[np.ndarray], pad_hw: tuple[int, int] | None = None
) -> tuple[jax.Array, jax.Array]:
  """torchvision's GeneralizedRCNNTransform on RGB images (uint8 [H, W, 3]) -> ([B, Hp, Wp, 3], image_hw [B, 2]).

  The batch is padded to `pad_hw`, by default the largest resized size rounded up to size_divisible.
  """
  sizes = [resized_hw(np.shape(im)[:2], cfg.input.min_size, cfg.input.max_size) for im in images]
  if pad_hw is None:
    pad_hw = padded_hw(tuple(max(s[i] for s in sizes) for i in range(2)), cfg.input.size_divisible)
  fmt = input_format(cfg)
  batch = [preprocess_image(im, fmt, cfg.input.min_size, cfg.input.max_size, pad_hw)[0] for im in images]
  return jnp.stack(batch), jnp.asarray(sizes, jnp.int32)


def postprocess(
  detections: Detections, image_hw: jax.Array, original_hw: jax.Array, canvas_hw: tuple[int, int], *,
  aligned: bool = False,
) -> ImageResults:
  """torchvision's transform.postprocess: boxes scaled to the original size, masks pasted into it.

  Args:
    image_hw: [B, 2] resized sizes the detections refer to; original_hw: [B, 2] original sizes.
    canvas_hw: static (H, W) of the returned masks, at least every original size (pixels beyond an image's own
      size are zero).
    aligned: detectron2's paste instead of torchvision's (the model's roi_heads.aligned).
  """
  boxes = resize_boxes(detections.boxes, image_hw, original_hw)  # [B, D, 4]
  masks = paste_masks_in_image(detections.masks, boxes, canvas_hw, jnp.asarray(original_hw)[:, None, :],
                               aligned=aligned)
  valid = detections.valid
  return ImageResults(
    boxes=jnp.where(valid[..., None], boxes, 0.0), scores=detections.scores, labels=detections.labels,
    masks=jnp.where(valid[..., None, None], masks, 0.0), valid=valid)
