"""kernels/projected.py's hand-written VJP against plain JAX autodiff of the sample-then-GEMM forward (xla_impl,
no custom VJP): at a MaskProp-like geometry with several chunks, R warps per frame, soft and empty instance masks
and samples outside the image. The forward within float32 reordering (1e-5 relative), every gradient within 1e-4;
and the gradients of a call that does not ask for the instance masks' (MaskProp stops it, so XLA drops that part
of the backward) equal the full call's."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax.kernels import projected, xla_impl

FRAMES, WARPS, HEIGHT, WIDTH, CHANNELS, INSTANCES = 2, 2, 9, 11, 8, 4
CONV = dict(stride=1, padding=1, dilation=1, offset_groups=1)
# 4 corners x 9 taps x (8 channels + 4 instances) = 432 elements a row: 7 rows a chunk, 29 chunks, the last padded.
CHUNK_ELEMENTS = 7 * 432


def _inputs(modulated: bool, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = FRAMES * WARPS
  offsets = rng.normal(0.0, 1.5, (images, HEIGHT, WIDTH, 1, 9, 2))
  far = rng.random(offsets.shape) < 0.1  # about one sample in ten leaves the image
  offsets = np.where(far, rng.choice([-1, 1], offsets.shape) * rng.uniform(4, 12, offsets.shape), offsets)
  instance_masks = rng.uniform(0.0, 1.0, (FRAMES, INSTANCES, HEIGHT, WIDTH))
  instance_masks[:, 2] = 0.0  # an empty slot
  arrays = dict(x=rng.normal(size=(FRAMES, HEIGHT, WIDTH, CHANNELS)), instance_masks=instance_masks,
                offsets=offsets, weight=rng.normal(0.0, 0.2, (3, 3, CHANNELS, CHANNELS)),
                mask=rng.uniform(0.0, 1.0, offsets.shape[:-1]) if modulated else None,
                out_grad=rng.normal(size=(images, INSTANCES, HEIGHT, WIDTH, CHANNELS)))
  return {k: None if v is None else jnp.asarray(v, jnp.float32) for k, v in arrays.items()}


def _projected(x, instance_masks, offsets, weight, mask):
  return projected.masked_deform_conv2d(x, instance_masks, offsets, weight, mask, chunk_elements=CHUNK_ELEMENTS,
                                        **CONV)


def _autodiff_reference(x, instance_masks, offsets, weight, mask):
  """Sample-then-GEMM on the frames repeated per warp, differentiated by JAX itself (no custom VJP)."""
  x, instance_masks = jnp.repeat(x, WARPS, axis=0), jnp.repeat(instance_masks, WARPS, axis=0)
  return xla_impl.deform_conv2d_fwd(x, offsets, mask, weight, instance_masks=instance_masks, chunk_elements=1 << 30,
                                    **CONV)


@functools.partial(jax.jit, static_argnames=("fn",))
def _value_and_grads(inputs, fn):
  names = [n for n in ("x", "instance_masks", "offsets", "weight", "mask") if inputs[n] is not None]

  def call(*arrays):
    kwargs = dict(inputs, **dict(zip(names, arrays)))
    return fn(kwargs["x"], kwargs["instance_masks"], kwargs["offsets"], kwargs["weight"], kwargs["mask"])

  out, vjp = jax.vjp(call, *(inputs[n] for n in names))
  return out, dict(zip(names, vjp(inputs["out_grad"])))


def _relative_error(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12))


@pytest.mark.parametrize("modulated", [False, True], ids=["dcn_v1", "modulated"])
def test_vjp_matches_autodiff_of_the_sample_then_gemm_forward(modulated):
  inputs = _inputs(modulated)
  out, grads = _value_and_grads(inputs, _projected)
  expected_out, expected_grads = _value_and_grads(inputs, _autodiff_reference)
  assert _relative_error(out, expected_out) <= 1e-5
  assert set(grads) == set(expected_grads)
  for name, grad in grads.items():
    assert grad.shape == inputs[name].shape, name
    assert _relative_error(grad, expected_grads[name]) <= 1e-4, name


def test_gradients_without_the_instance_masks_equal_the_full_ones():
  inputs = _inputs(modulated=True, seed=1)
  _, full = _value_and_grads(inputs, _projected)

  @jax.jit
  def without_masks(x, offsets, weight, mask):
    out, vjp = jax.vjp(lambda *a: _projected(a[0], inputs["instance_masks"], *a[1:]), x, offsets, weight, mask)
    return vjp(inputs["out_grad"])

  partial = without_masks(inputs["x"], inputs["offsets"], inputs["weight"], inputs["mask"])
  for name, grad in zip(("x", "offsets", "weight", "mask"), partial):
    np.testing.assert_allclose(np.asarray(grad), np.asarray(full[name]), rtol=1e-6, atol=1e-6, err_msg=name)
