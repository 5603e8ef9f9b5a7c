"""The motion prior: its window, the displacement it finds, and that it lets propagation follow a far move."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskprop_jax.model import maskprop, motion, propagation
from tiny_maskprop import clip_batch, tiny_config, tiny_model

C, H, W = 8, 24, 32


def _textured(seed=0, shape=(1, H, W, C)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _sharp_prior(radius, stride=2, width=C):
  prior = motion.MotionPrior(C, radius=radius, width=width, stride=stride, rngs=nnx.Rngs(0))
  prior.log_temperature.set_value(jnp.log(200.0))  # a near-argmax: the test reads the displacement itself
  return prior


def test_window_mask_by_hand():
  mask = motion.window_mask(3, 4, 1)  # locations (y, x) = divmod(i, 4)
  assert mask.shape == (12, 12) and np.array_equal(mask, mask.T) and mask.diagonal().all()
  assert sorted(np.flatnonzero(mask[0])) == [0, 1, 4, 5]  # (0, 0): itself, right, below, diagonal
  assert mask[5].sum() == 9 and not mask[0, 2] and not mask[0, 8]


@pytest.mark.parametrize("stride", [1, 2])
def test_displacement_points_back_to_where_the_content_was(stride):
  center = _textured()
  reference = np.roll(center, (4, -6), axis=(1, 2))  # what is at (y, x) in the center is at (y + 4, x - 6)
  prior = _sharp_prior(radius=8 // stride, stride=stride)
  shift = np.asarray(prior.displacements(prior.embed(jnp.asarray(center)), prior.embed(jnp.asarray(reference))))
  assert shift.shape == (1, H, W, 2)
  np.testing.assert_allclose(np.median(shift[0, 8:16, 10:22], axis=(0, 1)), [-4.0, 6.0], atol=0.1)


def test_a_move_beyond_the_radius_is_not_found():
  center = _textured()
  reference = np.roll(center, (0, 10), axis=(1, 2))  # 5 coarse cells, the window reaches 2
  prior = _sharp_prior(radius=2)
  shift = np.asarray(prior.displacements(prior.embed(jnp.asarray(center)), prior.embed(jnp.asarray(reference))))
  assert np.all(np.abs(shift) <= 2 * 2 + 1e-4)


def test_embed_needs_a_grid_divisible_by_the_stride():
  with pytest.raises(ValueError, match="multiple of the motion stride"):
    _sharp_prior(radius=2, stride=3).embed(jnp.zeros((1, H, W + 2, C)))
  with pytest.raises(ValueError, match="positive"):
    motion.MotionPrior(C, radius=0, rngs=nnx.Rngs(0))


def _identity_head(motion_radius):
  head = propagation.PropagationHead(C, offset_width=8, head_width=C, head_depth=0, use_foreground=False,
                                     impl="xla", motion_radius=motion_radius, motion_width=C, rngs=nnx.Rngs(0))
  kernel = np.zeros((3, 3, C, C), np.float32)
  kernel[1, 1] = np.eye(C)
  head.deform_weights[0].set_value(jnp.asarray(kernel))
  head.mask_logits.kernel.set_value(jnp.asarray(np.eye(C, 1)[None, None], jnp.float32))
  if motion_radius:
    head.motion[0].log_temperature.set_value(jnp.log(200.0))
  return head


def test_propagation_follows_a_move_the_offset_block_cannot_see():
  """An object 6 cells away in the reference frame (the offset block's three 3x3 convs see 3): with the prior the
  identity head carries the center mask to it; without, it stays where it was."""
  texture = _textured(1)
  center_mask = np.zeros((H, W), np.float32)
  center_mask[8:14, 8:14] = 1.0
  moved = np.roll(center_mask, (0, 6), axis=(0, 1))
  center = texture
  reference = np.roll(texture, (0, 6), axis=(1, 2))  # the whole frame moves with the object
  # Channel 0, which the identity head reads out, is 1 everywhere in both frames: the logits are the warped mask
  # (channel 0 of M_t f_t) plus 1 (f_{t+d}'s).
  center[..., 0] = 1.0
  reference[..., 0] = 1.0
  masks = jnp.asarray(center_mask[None, None])
  for radius, want in ((4, moved), (0, center_mask)):
    logits, _ = _identity_head(radius)(jnp.asarray(center), masks, jnp.asarray(reference))
    inner = (slice(2, -2), slice(8, -2))  # away from the border, where the roll brought in the far side
    np.testing.assert_allclose(np.asarray(logits)[0, 0][inner] - 1.0, want[inner], atol=0.15)


def test_warp_by_reads_each_location_at_its_shift():
  x = _textured(4)
  shift = np.zeros((1, H, W, 2), np.float32)
  shift[..., 0], shift[..., 1] = 2.0, -3.0  # read 2 rows down and 3 columns left
  got = np.asarray(propagation.warp_by(jnp.asarray(x), jnp.asarray(shift)))
  np.testing.assert_allclose(got[:, :-2, 3:], x[:, 2:, :-3], atol=1e-6)
  np.testing.assert_array_equal(got[:, -2:], 0.0)  # read outside the frame: zero, as the deformable sampling
  shift[..., 0], shift[..., 1] = 0.5, 0.0
  got = np.asarray(propagation.warp_by(jnp.asarray(x), jnp.asarray(shift)))
  np.testing.assert_allclose(got[:, :-1], (x[:, :-1] + x[:, 1:]) / 2, atol=1e-6)


def test_aligned_offset_input_compares_the_frames_where_the_prior_says_they_match():
  """motion_align: the center frame's offset term read at the prior's displacement is the reference frame's own
  term away from the border (a frame translated 5 cells), so the offset block sees no difference to correct;
  unaligned, it sees the whole move."""
  head = propagation.PropagationHead(C, offset_width=8, head_width=C, head_depth=0, use_foreground=False,
                                     impl="xla", motion_radius=4, motion_width=C, motion_align=True,
                                     rngs=nnx.Rngs(0))
  head.motion[0].log_temperature.set_value(jnp.log(200.0))
  center = jnp.asarray(_textured(5))
  reference = jnp.roll(center, (0, 4), axis=(1, 2))  # even: the prior's 2x-coarser grid holds it exactly
  c_terms, r_terms = head.frame_terms(center), head.frame_terms(reference)
  shift = head._motion_shift(c_terms.motion, r_terms.motion)
  aligned = propagation.warp_by(c_terms.offset_term, shift) - r_terms.offset_term
  inner = (slice(None), slice(4, -4), slice(10, -4))
  unaligned = c_terms.offset_term - r_terms.offset_term
  # A few locations match a look-alike of the random texture: compare means, not the worst location.
  assert float(jnp.mean(jnp.abs(aligned[inner]))) < 0.02 * float(jnp.mean(jnp.abs(unaligned[inner])))
  with pytest.raises(ValueError, match="needs motion_radius"):
    propagation.PropagationHead(C, motion_align=True, rngs=nnx.Rngs(0))


def test_the_temperature_and_projection_get_gradients():
  head = _identity_head(3)
  center, reference = jnp.asarray(_textured(2)), jnp.asarray(np.roll(_textured(2), (2, 2), axis=(1, 2)))
  masks = jnp.asarray(np.pad(np.ones((1, 1, 6, 6), np.float32), ((0, 0), (0, 0), (6, H - 12), (6, W - 12))))

  def loss(head):
    logits, _ = head(center, masks, reference)
    return jnp.sum(jax.nn.sigmoid(logits) * jnp.roll(masks, (2, 2), axis=(2, 3)))

  grads = nnx.grad(loss)(head)
  prior = grads.motion[0]
  assert np.isfinite(float(prior.log_temperature[...])) and float(jnp.abs(prior.log_temperature[...])) > 0
  assert float(jnp.max(jnp.abs(prior.project.kernel[...]))) > 0


def test_maskprop_builds_the_prior_from_its_config_and_its_loss_trains_it():
  config = tiny_config()
  assert not len(tiny_model(config).propagation.motion)  # the default: the paper's offset block alone
  config.model.propagation.motion_radius = 1  # level 1 of a 32x64 canvas: 4x8 cells, 2x4 pooled
  model = tiny_model(config)
  model.train()
  assert model.propagation.motion[0].radius == 1
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def value_and_grad(params, batch, key):
    def loss(params):
      return maskprop.compute_losses(nnx.merge(graphdef, params, rest), batch, key)
    return jax.value_and_grad(loss, has_aux=True)(params)

  (total, losses), grads = value_and_grad(params, clip_batch(), jax.random.key(0))
  assert np.isfinite(float(total)) and float(losses["loss_propagation"]) > 0
  prior = grads["propagation"]["motion"][0]
  assert float(jnp.abs(prior["log_temperature"][...])) > 0
  assert float(jnp.max(jnp.abs(prior["project"]["kernel"][...]))) > 0
