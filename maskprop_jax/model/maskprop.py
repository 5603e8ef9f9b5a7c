"""The MaskProp model: Mask R-CNN on the center frame of a clip, mask propagation to its other frames.

Training (`compute_losses`) takes a batch of the clip pipeline (data/pipeline.py): every frame of every clip goes
through the shared backbone; Mask R-CNN's five losses are computed on the center frames; the center-frame masks
that drive propagation are the mask head's predictions for the ground-truth boxes (the positive detections
torchvision's RoI heads always include, matched to their ground truth with IoU 1), and the propagated masks are
scored with the soft-IoU loss against the same track's mask in each reference frame (empty where it is absent).

Inference (`features`, `frame_terms`, `detect`, `propagate`) is split so that inference/predictor.py can compute
each frame's features and propagation terms once and reuse them across the clips that share the frame. Both
compose the detector's features-level API (mask_rcnn.MaskRCNN.features, detect_from_features,
losses_from_features, box_mask_probs).

Refiners (off unless configured): `detector.roi_heads.mask_refine_layers` refines Mask R-CNN's box-relative masks on
the frame's pixels (mask_refiner.py), the center masks that drive propagation included; `propagation.refine_layers`
refines each propagated mask on its reference frame's pixels (propagation_refiner.py). Both read the normalised
network input (`frame_input`), which inference caches with each frame's features.

Grids: propagation reads the FPN level `propagation.level` (stride `feature_stride(config)`) and writes masks
`propagation.upsample` times finer, on the mask grid of stride `mask_stride(config)`, the only place it is derived.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from maskprop_jax.model import fpn, mask_rcnn, precision, propagation, propagation_refiner, transform
from maskprop_jax.model.fpn import FPN_STRIDES  # noqa: F401  (maskprop.FPN_STRIDES: part of this module's API)
from maskprop_jax.model.paste_masks import paste_masks_in_image


def feature_stride(config: ml_collections.ConfigDict) -> int:
  """Stride of the FPN level that propagation reads (config: the model config, with `propagation`)."""
  return FPN_STRIDES[config.propagation.level]


def mask_stride(config: ml_collections.ConfigDict) -> int:
  """Stride of the mask grid that propagation writes (and linking reads): `upsample` cells per feature cell."""
  return feature_stride(config) // config.propagation.upsample


class ClipDetections(NamedTuple):
  """Center-frame detections of one frame, padded to D = detections_per_img."""

  boxes: jax.Array  # [1, D, 4] in pixels of the resized frame
  scores: jax.Array  # [1, D]
  labels: jax.Array  # [1, D] contiguous class 1..C
  class_probs: jax.Array  # [1, D, C] score on the label's entry (what linking averages over clips)
  masks: jax.Array  # [1, D, h, w] mask probabilities on the mask grid (the propagation output's stride)
  valid: jax.Array  # [1, D]
  box_masks: jax.Array  # [1, D, M, M] the label's box-relative mask probabilities on `boxes`, `masks` pasted from


@dataclasses.dataclass(frozen=True)
class InputGeometry:
  """How frames of one video size enter the network: resized size, padded canvas, mask grid."""

  video_hw: tuple[int, int]
  resized_hw: tuple[int, int]
  canvas_hw: tuple[int, int]
  mask_hw: tuple[int, int]  # cells of the mask grid (the propagation output) that the resized frame covers

  @classmethod
  def for_video(cls, config: ml_collections.ConfigDict, video_hw: tuple[int, int]) -> "InputGeometry":
    detector = config.detector.input
    resized = transform.resized_hw(tuple(video_hw), detector.min_size, detector.max_size)
    canvas = transform.padded_hw(resized, detector.size_divisible)
    stride = mask_stride(config)
    return cls(tuple(video_hw), resized, canvas, (math.ceil(resized[0] / stride), math.ceil(resized[1] / stride)))


class MaskProp(nnx.Module):
  """`detector` (a torchvision-compatible Mask R-CNN) and `propagation` (the mask propagation branch)."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    upsample = config.propagation.upsample
    if upsample < 1 or feature_stride(config) % upsample:
      raise ValueError(f"propagation.upsample={upsample} must be a positive divisor of the stride "
                       f"{feature_stride(config)} of FPN level {config.propagation.level}")
    self.config = ml_collections.FrozenConfigDict(config)
    self.detector = mask_rcnn.MaskRCNN(config.detector, rngs=rngs)
    p = config.propagation
    self.propagation = propagation.PropagationHead(
        config.detector.backbone.fpn_channels, offset_width=p.offset_width, num_deform_layers=p.num_deform_layers,
        kernel_size=p.kernel_size, head_width=p.head_width, head_depth=p.head_depth,
        use_foreground=p.use_foreground, upsample=p.upsample, impl=p.impl, motion_radius=p.get("motion_radius", 0),
        motion_width=p.get("motion_width", 16), motion_stride=p.get("motion_stride", 2),
        motion_align=p.get("motion_align", False), rngs=rngs)
    refine_layers = tuple(p.get("refine_layers", ()))
    # Empty without a refiner (an attribute's kind, data or static, is fixed at construction).
    self.propagation_refiner = nnx.List(
        [propagation_refiner.PropagationRefiner(config.detector.backbone.fpn_channels, refine_layers, rngs=rngs)]
        if refine_layers else [])
    # Convolutions and matmuls in the compute dtype, parameters float32 (model/precision.py). In float32 the layers
    # keep flax's default (no dtype: computed in their inputs' and parameters' float32).
    dtype = precision.compute_dtype(config.get("compute_dtype", "float32"))
    if dtype != jnp.float32:
      precision.set_compute_dtype(self, dtype)

  @property
  def refines_propagation(self) -> bool:
    """Whether propagated masks are refined on their frame's pixels (propagation_refiner.py)."""
    return bool(len(self.propagation_refiner))

  @property
  def num_classes(self) -> int:
    """Foreground classes C (the detector's classes less the background)."""
    return self.config.detector.num_classes - 1

  @property
  def propagation_level(self) -> int:
    return self.config.propagation.level

  @property
  def stride(self) -> int:
    """Stride of the features that propagation reads."""
    return feature_stride(self.config)

  @property
  def mask_stride(self) -> int:
    """Stride of the mask grid that propagation writes (and linking reads)."""
    return mask_stride(self.config)  # the module-level function: class attributes are not in a method's scope

  def features(self, images: jax.Array, image_hw: jax.Array) -> list[jax.Array]:
    """FPN levels P2..P6 of uint8 RGB canvases [N, H, W, 3] whose content is image_hw [N, 2] (the detector's)."""
    return self.detector.features(images, image_hw)

  def frame_features(self, frame: jax.Array, geometry: InputGeometry) -> list[jax.Array]:
    """Features of one original-size frame uint8 [H, W, 3] (resized and padded as the detector expects)."""
    return self.detector.backbone(self.frame_input(frame, geometry))

  def frame_input(self, frame: jax.Array, geometry: InputGeometry) -> jax.Array:
    """The normalised network input [1, H, W, 3] of one original-size frame uint8 [H, W, 3]: what the backbone
    and the mask refiner read."""
    resized = transform.resize_bilinear(frame.astype(jnp.float32), geometry.resized_hw)
    canvas = transform.pad_to(jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8), geometry.canvas_hw)
    return self.detector.network_input(canvas[None], jnp.asarray([geometry.resized_hw], jnp.int32))

  def instance_masks(self, mask_probs: jax.Array, boxes: jax.Array, image_hw: jax.Array,
                     canvas_hw: tuple[int, int]) -> jax.Array:
    """28x28 box-relative masks [N, D, M, M] -> masks on the mask grid [N, D, h, w]."""
    pasted = paste_masks_in_image(mask_probs, boxes, canvas_hw, image_hw[:, None, :],
                                  aligned=self.config.detector.roi_heads.aligned)  # [N, D, H, W]
    return propagation.downsample_masks(pasted, self.mask_stride)

  def feature_grid_masks(self, masks: jax.Array) -> jax.Array:
    """Masks on the mask grid [..., h, w] -> on the grid of the features propagation reads [..., h/u, w/u]."""
    return propagation.downsample_masks(masks, self.config.propagation.upsample)

  def detect(self, features: list[jax.Array], image_hw: jax.Array, inputs: jax.Array | None = None) -> ClipDetections:
    """Mask R-CNN detections of one frame's features (batch of 1), with masks on the mask grid. inputs: the
    frame's normalised input (frame_input), which a mask refiner reads (None without one)."""
    canvas_hw = fpn.input_hw(features)
    det = self.detector.detect_from_features(features, image_hw, canvas_hw, inputs)
    class_probs = jax.nn.one_hot(det.labels - 1, self.num_classes) * det.scores[..., None]
    masks = self.instance_masks(det.masks, det.boxes, image_hw, canvas_hw)
    return ClipDetections(det.boxes, det.scores, det.labels, jnp.where(det.valid[..., None], class_probs, 0.0),
                          jnp.where(det.valid[..., None, None], masks, 0.0), det.valid,
                          jnp.where(det.valid[..., None, None], det.masks, 0.0))

  def frame_terms(self, features: list[jax.Array]) -> propagation.FrameTerms:
    """What propagation needs of these frames alone (FPN levels [N, h, w, C]); computed once per frame."""
    return self.propagation.frame_terms(features[self.propagation_level])

  def propagate(self, center: propagation.FrameTerms, masks: jax.Array, references: propagation.FrameTerms,
                reference_inputs: jax.Array | None = None
                ) -> tuple[jax.Array, propagation_refiner.Windows | None]:
    """Mask probabilities [L, D, h, w] of the center frame's instances in each of L reference frames, and, with a
    propagation refiner, the refined windows they were sampled from (None without one).

    center: the center frame's terms (batch 1); masks: [1, D, h, w] on the mask grid; references: the terms of
    L frames (batch L). (h, w) = upsample * the features' (h', w'). reference_inputs: the L frames' normalised
    inputs [L, H, W, 3] (frame_input), which the propagation refiner reads (None without one).
    """
    logits, fg_logits = self.propagation.from_frame_terms(center, self.feature_grid_masks(masks), references)
    probs = propagation.mask_probabilities(logits, fg_logits)
    windows = None
    for refiner in self.propagation_refiner:
      if reference_inputs is None:
        raise ValueError("propagation.refine_layers is set: propagation needs the reference frames' inputs")
      probs, windows = propagation_refiner.refine(refiner, probs, reference_inputs, references.features,
                                                  self.mask_stride, self.stride)
    return probs, windows


def compute_losses(model: MaskProp, batch: dict[str, jax.Array],
                   key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mask R-CNN's losses on the center frames plus the weighted propagation loss, and with a propagation refiner
  its loss_refine: (total, every term)."""
  frames = batch["frames"]  # [B, F, H, W, 3] uint8, frame 0 is the center
  batch_size, num_frames, height, width = frames.shape[:4]
  image_hw = batch["image_hw"]  # [B, 2]
  flat_hw = jnp.repeat(image_hw, num_frames, axis=0)
  inputs = model.detector.network_input(frames.reshape(batch_size * num_frames, height, width, 3), flat_hw)
  features = model.detector.backbone(inputs)  # model.features, keeping the inputs the mask refiner reads
  per_clip = [f.reshape(batch_size, num_frames, *f.shape[1:]) for f in features]  # [B, F, h, w, C] per level
  center_features = [f[:, 0] for f in per_clip]
  center_inputs = inputs.reshape(batch_size, num_frames, *inputs.shape[1:])[:, 0]

  present = batch["present"]  # [B, F, M]
  gt_valid = present[:, 0] & ~batch["crowd"] & (batch["classes"] > 0)  # [B, M]
  gt = mask_rcnn.GroundTruth(boxes=batch["boxes"][:, 0], labels=batch["classes"], masks=batch["masks"][:, 0],
                             valid=gt_valid)
  # One key for the RPN's anchor sample and the RoI sample, split inside as rpn_key, roi_key = split(key).
  losses = model.detector.losses_from_features(center_features, image_hw, (height, width), gt, key,
                                               inputs=center_inputs)

  # Center masks: the mask head on the ground-truth boxes, its own loss trains it, so no gradient flows back here.
  # Padding slots (label 0) read class 1's mask; gt_valid zeroes them below.
  center_probs = model.detector.box_mask_probs(center_features, gt.boxes, jnp.maximum(gt.labels, 1), gt.valid,
                                               (height, width), center_inputs)  # [B, M, m, m] in box coordinates
  center_probs = jax.lax.stop_gradient(center_probs)
  center_masks = model.instance_masks(center_probs, gt.boxes, image_hw, (height, width))  # [B, M, h, w]
  center_masks = jnp.where(gt_valid[..., None, None], center_masks, 0.0)
  center_masks = model.feature_grid_masks(center_masks)  # [B, M, h/u, w/u]

  level = model.propagation_level
  num_refs = num_frames - 1
  refs = per_clip[level][:, 1:].reshape(batch_size * num_refs, *per_clip[level].shape[2:])  # [B*K, h, w, C]
  # Each clip's center frame is warped toward its K reference frames by one call (projected once per clip).
  logits, fg_logits = model.propagation(per_clip[level][:, 0], center_masks, refs)
  probs = propagation.mask_probabilities(logits, fg_logits)  # [B*K, M, h, w]
  targets = propagation.downsample_masks(batch["masks"][:, 1:], model.mask_stride)  # [B, K, M, h, w]
  targets = targets.reshape(batch_size * num_refs, *targets.shape[2:])
  track_valid = jnp.repeat(gt_valid, num_refs, axis=0)  # the instance is on the center frame
  losses["loss_propagation"] = propagation.soft_iou_loss(probs, targets, track_valid)
  for refiner in model.propagation_refiner:
    reference_inputs = inputs.reshape(batch_size, num_frames, *inputs.shape[1:])[:, 1:]
    losses["loss_refine"] = propagation_refiner.refine_loss(
        refiner, probs, reference_inputs.reshape(batch_size * num_refs, *inputs.shape[1:]), refs,
        batch["masks"][:, 1:].reshape(batch_size * num_refs, *batch["masks"].shape[2:]), track_valid,
        model.mask_stride, model.stride)
  if fg_logits is not None:
    foreground = jnp.max(targets, axis=1)  # [B*K, h, w]: every track of the clip, instance-agnostic
    losses["loss_foreground"] = jnp.mean(optax.sigmoid_binary_cross_entropy(fg_logits, foreground))
  weights = {"loss_propagation": model.config.propagation.loss_weight}
  total = sum(weights.get(name, 1.0) * value for name, value in losses.items())
  return total, losses
