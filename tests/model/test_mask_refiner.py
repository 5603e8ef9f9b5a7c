"""The image-guided mask refiner: where it reads the image, what it adds to the mask head, and that the RoI heads
and MaskProp use it in training and inference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskprop_jax.model import mask_refiner, roi_heads, roi_targets
from maskprop_jax.model.config import mask_rcnn_config
from test_roi_heads import CHANNELS, IMAGE_HW, INPUT_HW, NUM_CLASSES, _scene


def _heads(refine_layers, seed=0):
  cfg = mask_rcnn_config("maskrcnn_resnet50_fpn").roi_heads
  cfg.update(dict(box_fc_dim=32, mask_layers=(CHANNELS, CHANNELS), mask_refine_layers=refine_layers))
  return roi_heads.RoIHeads(cfg, NUM_CLASSES, CHANNELS, rngs=nnx.Rngs(seed))


def _images(seed=0):
  return np.random.default_rng(seed).normal(size=(2, *INPUT_HW, 3)).astype(np.float32)


def test_image_pixels_sit_on_the_mask_targets_grid():
  """A linear ramp's bin means are its values at the bin centres whatever the samples, so the image pooled for the
  refiner and the mask targets pooled from the same ramp agree where both grids are the same."""
  yy, xx = np.mgrid[:INPUT_HW[0], :INPUT_HW[1]].astype(np.float32)
  ramp = 0.01 * xx + 0.003 * yy  # in [0, 1]: a valid soft "mask"
  boxes = np.array([[[10.0, 12.0, 30.5, 27.0], [40.0, 33.0, 97.0, 101.0]]], np.float32)  # [1, 2, 4]
  pixels = mask_refiner.pool_on_boxes(jnp.asarray(np.repeat(ramp[None, ..., None], 3, -1)), jnp.asarray(boxes), 28)
  targets = roi_targets.project_masks_on_boxes(
      jnp.asarray(ramp[None, None]), jnp.asarray(boxes), jnp.zeros((1, 2), jnp.int32),
      jnp.asarray([INPUT_HW], jnp.int32), 28)
  np.testing.assert_allclose(np.asarray(pixels[..., 0]), np.asarray(targets[0]), atol=2e-6)


def test_a_new_refiner_leaves_the_mask_head_as_it_was():
  features, proposals, valid = _scene()[:3]
  images = _images()
  plain, refined = _heads(()), _heads((8, 8))
  # The same mask head and predictor weights (the refiner's own are drawn after them).
  nnx.update(refined, nnx.state(plain))
  want = plain.mask_logits(features, proposals, valid, INPUT_HW)
  got = refined.mask_logits(features, proposals, valid, INPUT_HW, images)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  with pytest.raises(ValueError, match="mask_refine_layers"):
    refined.mask_logits(features, proposals, valid, INPUT_HW)


def test_the_refiner_reads_the_pixels_of_each_box():
  features, proposals, valid = _scene()[:3]
  heads = _heads((8,))
  kernel = heads.mask_refiner[0].logits.kernel
  kernel[...] = jax.random.normal(jax.random.key(1), kernel[...].shape)
  images = _images()
  base = np.asarray(heads.mask_logits(features, proposals, valid, INPUT_HW, images))
  # Change the pixels inside the first proposal of image 0 only.
  x0, y0, x1, y1 = np.floor(proposals[0, 0]).astype(int)
  changed = images.copy()
  changed[0, y0:y1 + 1, x0:x1 + 1] += 1.0
  after = np.asarray(heads.mask_logits(features, proposals, valid, INPUT_HW, changed))
  assert np.abs(after[0, 0] - base[0, 0]).max() > 1e-3
  np.testing.assert_array_equal(after[1], base[1])  # the other image's boxes read their own pixels
  far = [r for r in range(proposals.shape[1]) if valid[0, r] and (
      proposals[0, r, 0] > x1 + 2 or proposals[0, r, 2] < x0 - 2 or proposals[0, r, 1] > y1 + 2
      or proposals[0, r, 3] < y0 - 2)]
  assert far
  np.testing.assert_array_equal(after[0, far], base[0, far])


def test_the_mask_loss_trains_the_refiner():
  features, proposals, proposal_valid, gt_boxes, gt_labels, gt_masks, gt_valid = _scene()
  heads = _heads((8,))
  images = jnp.asarray(_images())
  graphdef, params, rest = nnx.split(heads, nnx.Param, ...)

  def loss(params):
    model = nnx.merge(graphdef, params, rest)
    losses, _ = model.losses(features, proposals, proposal_valid, gt_boxes, gt_labels, gt_masks, gt_valid,
                             IMAGE_HW, INPUT_HW, jax.random.key(0), images=images)
    return losses["loss_mask"]

  grads = jax.jit(jax.grad(loss))(params)
  refiner_grads = grads["mask_refiner"][0]
  # The zero-initialised last conv has a gradient (so it learns); the convs before it have none yet.
  assert float(jnp.abs(refiner_grads["logits"]["kernel"][...]).max()) > 0
  assert float(jnp.abs(refiner_grads["convs"][0]["kernel"][...]).max()) == 0


def test_maskprop_trains_and_infers_with_the_refiner():
  """compute_losses trains the refiner (on the center masks that drive propagation too), and the predictor's
  center-frame masks are the refined ones."""
  from maskprop_jax.inference import predictor as inference
  from maskprop_jax.model import maskprop
  from tiny_maskprop import clip_batch, tiny_config, tiny_model

  config = tiny_config()
  config.model.detector.roi_heads.mask_refine_layers = (8,)
  model = tiny_model(config)
  kernel = model.detector.roi_heads.mask_refiner[0].logits.kernel
  kernel[...] = jax.random.normal(jax.random.key(2), kernel[...].shape)  # tiny_model draws a last conv of zeros
  train_model = nnx.clone(model)
  train_model.train()
  graphdef, params, rest = nnx.split(train_model, nnx.Param, ...)
  loss = jax.jit(jax.grad(lambda p: maskprop.compute_losses(nnx.merge(graphdef, p, rest), clip_batch(),
                                                            jax.random.key(0))[0]))
  grads = loss(params)
  assert float(jnp.abs(grads["detector"]["roi_heads"]["mask_refiner"][0]["convs"][0]["kernel"][...]).max()) > 0

  video_hw = (30, 45)
  geometry = maskprop.InputGeometry.for_video(config.model, video_hw)
  frame = np.random.default_rng(3).integers(0, 256, (*video_hw, 3), np.uint8)
  graphdef, state = nnx.split(model)
  inputs, levels = inference.frame_features(graphdef, state, frame, geometry)
  hw = jnp.asarray([geometry.resized_hw], jnp.int32)
  refined = inference.detect(graphdef, state, levels, hw, inputs)
  assert bool(refined.valid.any())
  with pytest.raises(ValueError, match="mask_refine_layers"):
    inference.detect(graphdef, state, levels, hw)
  kernel[...] = jnp.zeros_like(kernel[...])
  graphdef, state = nnx.split(model)
  unrefined = inference.detect(graphdef, state, levels, hw, inputs)
  np.testing.assert_array_equal(np.asarray(refined.boxes), np.asarray(unrefined.boxes))
  assert not np.array_equal(np.asarray(refined.masks), np.asarray(unrefined.masks))
