"""Mask propagation branch: identity propagation, the soft-IoU loss, and that training moves it."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from maskprop_jax.model import propagation

C, H, W = 4, 12, 16


def disc_masks(centers, radius=3.0):
  yy, xx = np.mgrid[:H, :W]
  return np.stack([((yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2) for cy, cx in centers]).astype(np.float32)


def identity_kernel(kh, kw, channels_in, channels_out):
  kernel = np.zeros((kh, kw, channels_in, channels_out), np.float32)
  kernel[kh // 2, kw // 2, :, :] = np.eye(channels_in, channels_out)
  return jnp.asarray(kernel)


def test_zero_offsets_and_identity_head_reproduce_the_center_mask():
  head = propagation.PropagationHead(C, offset_width=8, head_width=C, head_depth=2, use_foreground=False,
                                     impl="xla", rngs=nnx.Rngs(0))
  head.deform_weights[0].set_value(identity_kernel(3, 3, C, C))
  for conv in head.mask_convs:
    conv.kernel.set_value(identity_kernel(3, 3, C, C))
    conv.bias.set_value(jnp.zeros((C,)))
  head.mask_logits.kernel.set_value(identity_kernel(1, 1, C, 1))
  head.mask_logits.bias.set_value(jnp.zeros((1,)))
  masks = disc_masks([(4, 5), (7, 10), (6, 8)])[None]  # [1, 3, H, W]
  center = jnp.ones((1, H, W, C))
  reference = jnp.zeros((1, H, W, C))  # offsets convs start at zero, so any reference gives zero offsets
  logits, fg = head(center, jnp.asarray(masks), reference)
  assert fg is None
  np.testing.assert_allclose(logits, masks, atol=1e-6)


def test_soft_iou_loss_values():
  a = jnp.asarray(disc_masks([(5, 5)]))
  b = jnp.asarray(disc_masks([(5, 7)]))
  inter, union = float(jnp.sum(a * b)), float(jnp.sum(a + b - a * b))
  valid = jnp.ones((1,), bool)
  assert float(propagation.soft_iou_loss(a, a, valid)) == pytest.approx(0.0)
  assert float(propagation.soft_iou_loss(a, b, valid)) == pytest.approx(1 - (inter + 1) / (union + 1))
  # An absent instance (empty target) predicted empty is perfect; invalid slots do not count.
  zeros = jnp.zeros_like(a)
  assert float(propagation.soft_iou_loss(zeros, zeros, valid)) == pytest.approx(0.0)
  both = propagation.soft_iou_loss(jnp.concatenate([a, a]), jnp.concatenate([a, b]), jnp.array([True, False]))
  assert float(both) == pytest.approx(0.0)


def test_downsample_masks_is_area_average():
  masks = jnp.zeros((1, 8, 8)).at[0, :2, :4].set(1.0)
  pooled = propagation.downsample_masks(masks, 4)
  np.testing.assert_allclose(pooled[0], [[0.5, 0.0], [0.0, 0.0]])
  with pytest.raises(ValueError, match="multiple of the feature stride"):
    propagation.downsample_masks(jnp.zeros((1, 6, 8)), 4)


def test_training_steps_reduce_the_propagation_loss():
  rng = np.random.default_rng(0)
  head = propagation.PropagationHead(C, offset_width=8, num_deform_layers=2, head_width=8, head_depth=1,
                                     impl="xla", rngs=nnx.Rngs(1))
  center_masks = disc_masks([(5, 5), (6, 11)])[None]
  target = jnp.asarray(disc_masks([(6, 6), (6, 10)])[None])  # each object moved by about a pixel
  texture = rng.normal(size=(1, H, W, C)).astype(np.float32)
  center = jnp.asarray(texture + 2 * center_masks.sum(1)[..., None])
  reference = jnp.asarray(texture + 2 * np.asarray(target).sum(1)[..., None])
  valid = jnp.ones((1, 2), bool)
  optimizer = nnx.Optimizer(head, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(head, optimizer):
    def loss_fn(head):
      logits, fg = head(center, jnp.asarray(center_masks), reference)
      return propagation.soft_iou_loss(propagation.mask_probabilities(logits, fg), target, valid)
    loss, grads = nnx.value_and_grad(loss_fn)(head)
    optimizer.update(head, grads)
    return loss

  losses = [float(step(head, optimizer)) for _ in range(15)]
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.7 * losses[0], losses


def test_depth_to_space_places_each_channel_on_its_sub_pixel():
  cells = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)  # [H=2, W=3, u*u=4]
  fine = propagation.depth_to_space(cells, 2)  # [4, 6]
  assert fine.shape == (4, 6)
  for y in range(2):
    for x in range(3):
      np.testing.assert_array_equal(fine[2 * y:2 * y + 2, 2 * x:2 * x + 2], cells[y, x].reshape(2, 2))
  with pytest.raises(ValueError, match="needs 9 channels"):
    propagation.depth_to_space(cells, 3)


def test_upsampled_head_predicts_a_finer_grid():
  """With upsample u, the identity head repeats each cell's logit over its u x u sub-pixels."""
  u = 2
  head = propagation.PropagationHead(C, offset_width=8, head_width=C, head_depth=1, use_foreground=True,
                                     upsample=u, impl="xla", rngs=nnx.Rngs(0))
  head.deform_weights[0].set_value(identity_kernel(3, 3, C, C))
  head.mask_convs[0].kernel.set_value(identity_kernel(3, 3, C, C))
  head.mask_convs[0].bias.set_value(jnp.zeros((C,)))
  head.mask_logits.kernel.set_value(jnp.ones((1, 1, C, u * u)) / C)
  head.mask_logits.bias.set_value(jnp.zeros((u * u,)))
  masks = disc_masks([(4, 5), (7, 10)])[None]  # [1, 2, H, W]
  logits, fg = head(jnp.ones((1, H, W, C)), jnp.asarray(masks), jnp.zeros((1, H, W, C)))
  assert logits.shape == (1, 2, u * H, u * W) and fg.shape == (1, u * H, u * W)
  np.testing.assert_allclose(logits, np.repeat(np.repeat(masks, u, axis=-2), u, axis=-1), atol=1e-6)
  with pytest.raises(ValueError, match="positive integer"):
    propagation.PropagationHead(C, upsample=0, rngs=nnx.Rngs(0))


def _random_head(head_depth: int, impl: str, num_deform_layers: int = 1, motion_radius: int = 0,
                 motion_align: bool = False) -> propagation.PropagationHead:
  """A head whose offset convs are not zero (real, fractional offsets, some leaving the frame)."""
  head = propagation.PropagationHead(C, offset_width=8, num_deform_layers=num_deform_layers, head_width=8,
                                     head_depth=head_depth, use_foreground=True, upsample=2, impl=impl,
                                     motion_radius=motion_radius, motion_align=motion_align, rngs=nnx.Rngs(3))
  rng = np.random.default_rng(3)
  for conv in head.offsets.offset_convs:
    conv.kernel.set_value(jnp.asarray(rng.normal(0.0, 0.3, conv.kernel.shape), jnp.float32))
  return head


@pytest.mark.parametrize("head_depth, num_deform_layers, motion_radius, motion_align",
                         [(0, 1, 0, False), (1, 2, 0, False), (0, 1, 2, False), (1, 1, 2, True)])
def test_frame_terms_and_one_center_for_all_references_equal_the_pair_form(head_depth, num_deform_layers,
                                                                           motion_radius, motion_align):
  """Inference's form (the offset block's first conv and the foreground logits once per frame, the center frame
  warped toward its R references in one projected call) equals training's pair form on R copies of the center
  with the sample-then-GEMM kernel, up to float32 rounding."""
  rng = np.random.default_rng(0)
  references = 5
  center = jnp.asarray(rng.normal(size=(1, H, W, C)), jnp.float32)
  refs = center + jnp.asarray(rng.normal(0.0, 0.5, (references, H, W, C)), jnp.float32)
  masks = jnp.asarray(disc_masks([(4, 5), (7, 10), (6, 8)])[None])
  head = _random_head(head_depth, "auto", num_deform_layers, motion_radius, motion_align)  # xla_projected on a CPU
  pair_form = _random_head(head_depth, "xla", num_deform_layers, motion_radius, motion_align)
  want_logits, want_fg = pair_form(jnp.repeat(center, references, axis=0), jnp.repeat(masks, references, axis=0),
                                   refs)
  shared_logits, shared_fg = head(center, masks, refs)  # training's call: one center for R references
  logits, fg = head.from_frame_terms(head.frame_terms(center), masks, head.frame_terms(refs))
  assert logits.shape == (references, 3, 2 * H, 2 * W) and fg.shape == (references, 2 * H, 2 * W)
  scale = float(jnp.max(jnp.abs(want_logits)))
  assert float(jnp.max(jnp.abs(offsets := head.offsets(center - refs[:1])[0]))) > 1.0, offsets  # real warps
  for got in (logits, shared_logits):
    assert float(jnp.max(jnp.abs(got - want_logits))) <= 1e-5 * scale
  np.testing.assert_allclose(fg, want_fg, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(shared_fg, want_fg)


def test_head_depth_zero_is_the_papers_1x1_head():
  """head_depth 0: the logits are one 1x1 convolution of g + f_{t+d} (no 3x3 layers)."""
  head = _random_head(0, "xla")
  assert len(head.mask_convs) == 0 and head.mask_logits.kernel.shape == (1, 1, C, 4)
  rng = np.random.default_rng(1)
  center, reference = (jnp.asarray(rng.normal(size=(1, H, W, C)), jnp.float32) for _ in range(2))
  masks = jnp.asarray(disc_masks([(4, 5)])[None])
  offsets = head.offsets(center - reference)
  warped = head.warp(center, masks, offsets)  # [1, 1, H, W, C]
  cells = jnp.einsum("nihwc,co->nihwo", warped + reference[:, None], head.mask_logits.kernel[0, 0])
  want = propagation.depth_to_space(cells + head.mask_logits.bias[...], 2)
  logits, _ = head(center, masks, reference)
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
