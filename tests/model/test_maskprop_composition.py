"""MaskProp composes the detector's features-level API (MaskRCNN.features, detect_from_features,
losses_from_features, box_mask_probs) with bitwise the numbers of the wiring it replaced (MaskRCNN's own
__call__ and losses, which use the same API, are held to torchvision's numbers by test_mask_rcnn.py and
test_rpn.py): the `_old_*` functions below are maskprop.py's code from before, calling the RPN and the RoI heads
directly. Training must reproduce earlier runs bit for bit, so losses and gradients are compared with
assert_array_equal, not a tolerance. One line of the reference is today's: the propagation head now takes each
clip's center frame once for its K reference frames (it used to be given K copies); the two calls agree within
rounding, which test_propagation.py checks."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from maskprop_jax.model import mask_rcnn, maskprop, propagation, transform
from maskprop_jax.model.roi_heads import select_class_masks
from tiny_config import fast_compilation  # noqa: F401 (a fixture)
from tiny_maskprop import CANVAS_HW, clip_batch, tiny_config, tiny_model

# Both sides compile with the same (fewer) XLA passes: the same graph gives the same bits, in half the time.
pytestmark = pytest.mark.usefixtures("fast_compilation")


# --- The reference: the wiring before the features-level API, verbatim but for the names. --------------------------

def _old_features(model, images, image_hw):
  x = model.detector.normalize(images)
  height, width = images.shape[1:3]
  inside = ((jnp.arange(height)[None, :, None] < image_hw[:, 0, None, None])
            & (jnp.arange(width)[None, None, :] < image_hw[:, 1, None, None]))  # [N, H, W]
  return model.detector.backbone(jnp.where(inside[..., None], x, 0.0))


def _old_frame_features(model, frame, geometry):
  resized = transform.resize_bilinear(frame.astype(jnp.float32), geometry.resized_hw)
  canvas = transform.pad_to(jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8), geometry.canvas_hw)
  return _old_features(model, canvas[None], jnp.asarray([geometry.resized_hw], jnp.int32))


def _old_detect(model, features, image_hw):
  canvas_hw = (features[0].shape[1] * maskprop.FPN_STRIDES[0], features[0].shape[2] * maskprop.FPN_STRIDES[0])
  proposals, _ = model.detector.rpn(features, image_hw, canvas_hw)
  det = model.detector.roi_heads.detect(features[:mask_rcnn.NUM_POOLED_LEVELS], proposals.boxes, proposals.valid,
                                        image_hw, canvas_hw)
  class_probs = jax.nn.one_hot(det.labels - 1, model.num_classes) * det.scores[..., None]
  masks = model.instance_masks(det.masks, det.boxes, image_hw, canvas_hw)
  return maskprop.ClipDetections(det.boxes, det.scores, det.labels,
                                 jnp.where(det.valid[..., None], class_probs, 0.0),
                                 jnp.where(det.valid[..., None, None], masks, 0.0), det.valid,
                                 jnp.where(det.valid[..., None, None], det.masks, 0.0))


def _old_compute_losses(model, batch, key):
  frames = batch["frames"]  # [B, F, H, W, 3] uint8, frame 0 is the center
  batch_size, num_frames, height, width = frames.shape[:4]
  image_hw = batch["image_hw"]  # [B, 2]
  flat_hw = jnp.repeat(image_hw, num_frames, axis=0)
  features = _old_features(model, frames.reshape(batch_size * num_frames, height, width, 3), flat_hw)
  per_clip = [f.reshape(batch_size, num_frames, *f.shape[1:]) for f in features]  # [B, F, h, w, C] per level
  center_features = [f[:, 0] for f in per_clip]

  present = batch["present"]  # [B, F, M]
  gt_valid = present[:, 0] & ~batch["crowd"] & (batch["classes"] > 0)  # [B, M]
  gt = mask_rcnn.GroundTruth(boxes=batch["boxes"][:, 0], labels=batch["classes"], masks=batch["masks"][:, 0],
                             valid=gt_valid)
  rpn_key, roi_key = jax.random.split(key)
  detector = model.detector
  proposals, rpn_losses = detector.rpn(center_features, image_hw, (height, width), training=True,
                                       gt_boxes=gt.boxes, gt_valid=gt.valid, key=rpn_key)
  roi_losses, _ = detector.roi_heads.losses(
      center_features[:mask_rcnn.NUM_POOLED_LEVELS], proposals.boxes, proposals.valid, gt_boxes=gt.boxes,
      gt_labels=gt.labels, gt_masks=gt.masks, gt_valid=gt.valid, image_hw=image_hw, input_hw=(height, width),
      key=roi_key)
  losses = {**rpn_losses, **roi_losses}

  mask_logits = detector.roi_heads.mask_logits(center_features[:mask_rcnn.NUM_POOLED_LEVELS], gt.boxes, gt.valid,
                                               (height, width))
  center_probs = jax.lax.stop_gradient(select_class_masks(mask_logits, jnp.maximum(gt.labels, 1)))
  center_masks = model.instance_masks(center_probs, gt.boxes, image_hw, (height, width))  # [B, M, h, w]
  center_masks = jnp.where(gt_valid[..., None, None], center_masks, 0.0)
  center_masks = propagation.downsample_masks(center_masks, model.config.propagation.upsample)  # feature grid

  level = model.propagation_level
  num_refs = num_frames - 1
  refs = per_clip[level][:, 1:].reshape(batch_size * num_refs, *per_clip[level].shape[2:])  # [B*K, h, w, C]
  logits, fg_logits = model.propagation(per_clip[level][:, 0], center_masks, refs)  # today's call (docstring)
  probs = propagation.mask_probabilities(logits, fg_logits)  # [B*K, M, h, w]
  old_mask_stride = maskprop.FPN_STRIDES[level] // model.config.propagation.upsample
  targets = propagation.downsample_masks(batch["masks"][:, 1:], old_mask_stride)  # [B, K, M, h, w]
  targets = targets.reshape(batch_size * num_refs, *targets.shape[2:])
  track_valid = jnp.repeat(gt_valid, num_refs, axis=0)  # the instance is on the center frame
  losses["loss_propagation"] = propagation.soft_iou_loss(probs, targets, track_valid)
  if fg_logits is not None:
    foreground = jnp.max(targets, axis=1)  # [B*K, h, w]: every track of the clip, instance-agnostic
    losses["loss_foreground"] = jnp.mean(optax.sigmoid_binary_cross_entropy(fg_logits, foreground))
  weights = {"loss_propagation": model.config.propagation.loss_weight}
  total = sum(weights.get(name, 1.0) * value for name, value in losses.items())
  return total, losses


# --- Fixtures -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def config():
  config = tiny_config()
  assert config.model.propagation.upsample == 2  # both grids differ: features at stride 8, masks at stride 4
  # Fewer RoIs than candidates, so that the RoI sample depends on its key as the anchor sample does on its own:
  # the comparison then also checks which key each sample draws from.
  config.model.detector.roi_heads.batch_size_per_image = 8
  return config


@pytest.fixture(scope="module")
def model(config):
  return tiny_model(config)


def _assert_trees_equal(got, want):
  got_leaves, got_def = jax.tree.flatten(got)
  want_leaves, want_def = jax.tree.flatten(want)
  assert got_def == want_def
  for a, b in zip(got_leaves, want_leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- Tests --------------------------------------------------------------------------------------------------------

def test_mask_grid_stride_has_one_source(config, model):
  assert maskprop.feature_stride(config.model) == model.stride == 8
  assert maskprop.mask_stride(config.model) == model.mask_stride == 4
  geometry = maskprop.InputGeometry.for_video(config.model, (30, 45))
  assert geometry.canvas_hw == CANVAS_HW
  assert geometry.mask_hw == (math.ceil(geometry.resized_hw[0] / 4), math.ceil(geometry.resized_hw[1] / 4))


def test_compute_losses_and_gradients_are_bitwise_the_old_wiring(model):
  model = nnx.clone(model)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  batch, key = clip_batch(), jax.random.key(3)

  @functools.partial(jax.jit, static_argnums=0)
  def value_and_grad(compute_losses, params, batch, key):
    def loss(params):
      return compute_losses(nnx.merge(graphdef, params, rest), batch, key)
    return jax.value_and_grad(loss, has_aux=True)(params)

  (total, losses), grads = value_and_grad(maskprop.compute_losses, params, batch, key)
  (old_total, old_losses), old_grads = value_and_grad(_old_compute_losses, params, batch, key)
  assert set(losses) == set(old_losses) and "loss_foreground" in losses
  assert np.isfinite(float(total)) and float(total) > 0
  _assert_trees_equal((total, losses), (old_total, old_losses))
  _assert_trees_equal(grads, old_grads)


def test_detect_is_bitwise_the_old_wiring(config, model):
  geometry = maskprop.InputGeometry.for_video(config.model, (30, 45))
  frame = jnp.asarray(np.random.default_rng(1).integers(0, 256, (30, 45, 3)), jnp.uint8)
  image_hw = jnp.asarray([geometry.resized_hw], jnp.int32)

  @jax.jit
  def new(model, frame):
    features = model.frame_features(frame, geometry)
    return features, model.detect(features, image_hw)

  @jax.jit
  def old(model, frame):
    features = _old_frame_features(model, frame, geometry)
    return features, _old_detect(model, features, image_hw)

  got, want = new(model, frame), old(model, frame)
  assert bool(got[1].valid.any())  # a zero score threshold: the random detector detects
  _assert_trees_equal(got, want)

