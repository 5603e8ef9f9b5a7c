"""Refining propagated masks on their frame's pixels: the windows, the round trip through them, the loss, and
MaskProp's use of it in training and inference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskprop_jax.bilinear import bilinear_matrix
from maskprop_jax.model import maskprop, paste_masks, propagation_refiner


def _masks():
  """[1, 3, 16, 24] on a stride-2 grid: a rectangle, a blurry disc, and an empty mask."""
  probs = np.zeros((1, 3, 16, 24), np.float32)
  probs[0, 0, 4:8, 6:16] = 0.9  # rows 4..7, columns 6..15
  yy, xx = np.mgrid[:16, :24]
  probs[0, 1] = np.clip(1.2 - np.hypot(yy - 9, xx - 8) / 5, 0, 1)
  return probs


def test_windows_cover_each_support_with_a_margin():
  boxes, valid = propagation_refiner.support_windows(jnp.asarray(_masks()), stride=2)
  assert valid.tolist() == [[True, True, False]]
  # The rectangle spans input pixels x 12..32, y 8..16 (cells times the stride), widened by a quarter of its size
  # and one cell (2 pixels) on each side.
  x0, y0, x1, y1 = 12.0, 8.0, 32.0, 16.0
  pad_x, pad_y = 0.25 * (x1 - x0) + 2, 0.25 * (y1 - y0) + 2
  np.testing.assert_allclose(np.asarray(boxes[0, 0]), [x0 - pad_x, y0 - pad_y, x1 + pad_x, y1 + pad_y])


def _refiner(channels, seed=0):
  return propagation_refiner.PropagationRefiner(channels, (4,), rngs=nnx.Rngs(seed))


def test_a_new_refiner_gives_back_the_masks_up_to_the_window_round_trip():
  probs = _masks()
  inputs = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 48, 3)), jnp.float32)
  features = jnp.asarray(np.random.default_rng(1).normal(size=(1, 8, 12, 5)), jnp.float32)
  refined, windows = propagation_refiner.refine(_refiner(5), jnp.asarray(probs), inputs, features, 2, 4)
  refined = np.asarray(refined)
  np.testing.assert_array_equal(refined[0, 2], probs[0, 2])  # no window: as it was
  # Pooling onto the window and sampling back blur a sharp edge (by up to 0.27 here) but move no outline.
  np.testing.assert_array_equal(refined[0, :2] >= 0.5, probs[0, :2] >= 0.5)
  # The windows themselves, pasted at the input's resolution as linking pastes them (detectron2's rule), draw
  # the rectangle's outline pixel for pixel (each grid cell is 2 x 2 input pixels), but for its four corner
  # pixels (0.9 x 0.5 x 0.5 + ... < 0.5: a soft rectangle's corners are rounded); the disc as the grid's bilinear
  # upsampling does.
  assert np.asarray(windows.valid).tolist() == [[True, True, False]]
  pasted = np.asarray(paste_masks.paste_masks_in_image(windows.probs[0, :2], windows.boxes[0, :2], (32, 48),
                                                       aligned=True)) >= 0.5
  rectangle = np.zeros((32, 48), bool)
  rectangle[8:16, 12:32] = True
  rectangle[[8, 8, 15, 15], [12, 31, 12, 31]] = False
  np.testing.assert_array_equal(pasted[0], rectangle)
  disc = bilinear_matrix(16, 32) @ probs[0, 1] @ bilinear_matrix(24, 48).T >= 0.5
  assert (pasted[1] & disc).sum() / (pasted[1] | disc).sum() > 0.95


def test_the_loss_trains_the_refiner_towards_the_truth():
  probs = jnp.asarray(_masks())
  inputs = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 48, 3)), jnp.float32)
  features = jnp.asarray(np.random.default_rng(1).normal(size=(1, 8, 12, 5)), jnp.float32)
  targets = np.zeros((1, 3, 32, 48), np.uint8)
  targets[0, 0, 8:16, 14:34] = 1  # the rectangle, moved by one mask cell
  targets[0, 1, 10:26, 6:26] = 1
  valid = jnp.asarray([[True, True, True]])
  refiner = _refiner(5)
  graphdef, params = nnx.split(refiner)

  def loss(params, valid=valid):
    return propagation_refiner.refine_loss(nnx.merge(graphdef, params), probs, inputs, features,
                                           jnp.asarray(targets), valid, 2, 4)

  before, grads = jax.value_and_grad(loss)(params)
  assert np.isfinite(float(before)) and float(before) > 0
  stepped = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
  assert float(loss(stepped)) < float(before)
  # Instances that are not tracks of the clip, and masks without a window, add nothing.
  assert float(loss(params, jnp.asarray([[False, False, True]]))) == 0.0


def test_maskprop_trains_and_propagates_with_the_refiner():
  from maskprop_jax.inference import predictor as inference
  from tiny_maskprop import clip_batch, tiny_config, tiny_model

  config = tiny_config()
  config.model.propagation.refine_layers = (4,)
  model = tiny_model(config)
  train_model = nnx.clone(model)
  train_model.train()
  graphdef, params, rest = nnx.split(train_model, nnx.Param, ...)

  def total(params):
    return maskprop.compute_losses(nnx.merge(graphdef, params, rest), clip_batch(), jax.random.key(0))

  (_, losses), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
  assert "loss_refine" in losses and np.isfinite(float(losses["loss_refine"]))
  assert float(jnp.abs(grads["propagation_refiner"][0]["head"]["logits"]["kernel"][...]).max()) > 0

  video_hw = (30, 45)
  geometry = maskprop.InputGeometry.for_video(config.model, video_hw)
  rng = np.random.default_rng(3)
  graphdef, state = nnx.split(model)
  frames = [inference.frame_features_and_terms(graphdef, state, rng.integers(0, 256, (*video_hw, 3), np.uint8),
                                               geometry, inference.Timer(sync=False)) for _ in range(3)]
  masks = np.zeros((1, 2, *frames[0].terms.foreground.shape[1:]), np.float32)
  masks[0, 0, 2:6, 3:9] = 1.0
  probs, windows = inference.propagate(graphdef, state, frames[0].terms, masks, (frames[1].terms, frames[2].terms),
                                       (frames[1].inputs, frames[2].inputs))
  assert probs.shape == (2, 2, *masks.shape[2:])
  assert windows.probs.shape == (2, 2, propagation_refiner.SIZE, propagation_refiner.SIZE)
  assert windows.boxes.shape == (2, 2, 4) and windows.valid.shape == (2, 2)
  with pytest.raises(ValueError, match="refine_layers"):
    inference.propagate(graphdef, state, frames[0].terms, masks, (frames[1].terms, frames[2].terms))
