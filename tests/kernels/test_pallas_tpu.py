"""The Pallas TPU (Mosaic) deformable-convolution kernel (kernels/pallas_tpu.py), run in interpret mode on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax.kernels import pallas_contract, pallas_tpu
from pallas_problems import PROBLEMS, make_inputs, output_hw, relative_error

# Tiles of 2 x 8 outputs split every test shape into several row and column tiles, the last ones ragged.
SMALL_TILES = pallas_tpu.Tiling(block_r=2, block_w=8)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_forward_matches_reference_fp32(problem):
  inputs = make_inputs(problem)
  # Concrete offsets: the halo is sized from their largest magnitude, so nothing is clamped.
  out = pallas_tpu.deform_conv2d_fwd(**inputs, **problem.conv_kwargs, interpret=True, tiling=SMALL_TILES)
  expected = pallas_contract.reference_forward(**inputs, **problem.conv_kwargs)
  assert out.shape == expected.shape and out.dtype == jnp.float32
  assert relative_error(out, expected) < 1e-5


def test_offsets_beyond_max_offset_are_clamped():
  problem = PROBLEMS[3]  # offsets of several pixels
  inputs = make_inputs(problem)
  out = pallas_tpu.deform_conv2d_fwd(**inputs, **problem.conv_kwargs, interpret=True, max_offset=1)
  clamped = dict(inputs, offsets=jnp.clip(inputs["offsets"], -1, 1))
  assert relative_error(out, pallas_contract.reference_forward(**clamped, **problem.conv_kwargs)) < 1e-5
  assert relative_error(out, pallas_contract.reference_forward(**inputs, **problem.conv_kwargs)) > 1e-2


def test_forward_bf16_within_bf16_rounding():
  problem = PROBLEMS[2]
  inputs = make_inputs(problem, dtype=jnp.bfloat16)
  out = pallas_tpu.deform_conv2d_fwd(**inputs, **problem.conv_kwargs, interpret=True)
  assert out.dtype == jnp.bfloat16
  as_fp32 = {name: None if a is None else a.astype(jnp.float32) for name, a in inputs.items()}
  # Interpolation weights and sampled values are rounded to bf16 for the MXU, as on a TPU.
  assert relative_error(out, pallas_contract.reference_forward(**as_fp32, **problem.conv_kwargs)) < 3e-2


@pytest.mark.parametrize("problem", [PROBLEMS[1], PROBLEMS[3]], ids=lambda p: p.name)
def test_masked_form_equals_one_call_per_instance(problem):
  inputs = make_inputs(problem, num_instances=3)
  instance_masks = inputs.pop("instance_masks")
  out = pallas_tpu.masked_deform_conv2d_fwd(inputs["x"], instance_masks, inputs["offsets"], inputs["mask"],
                                            inputs["weight"], **problem.conv_kwargs, interpret=True,
                                            tiling=SMALL_TILES)
  assert out.shape[:2] == (problem.shape[0], 3)
  for i in range(3):
    separate = pallas_contract.reference_forward(
        **dict(inputs, x=inputs["x"] * instance_masks[:, i, :, :, None]), **problem.conv_kwargs)
    assert relative_error(out[:, i], separate) < 1e-5


def test_bad_arguments_raise_value_error():
  inputs = make_inputs(PROBLEMS[0])
  with pytest.raises(ValueError, match="`weight` has shape"):
    pallas_tpu.deform_conv2d_fwd(**dict(inputs, weight=inputs["weight"][:, :, :3]), **PROBLEMS[0].conv_kwargs,
                                 interpret=True)
  with pytest.raises(ValueError, match="block_w must be a power of two"):
    pallas_tpu.deform_conv2d_fwd(**inputs, **PROBLEMS[0].conv_kwargs, interpret=True,
                                 tiling=pallas_tpu.Tiling(block_r=2, block_w=12))
  with pytest.raises(ValueError, match="max_offset must be >= 0"):
    pallas_tpu.deform_conv2d_fwd(**inputs, **PROBLEMS[0].conv_kwargs, interpret=True, max_offset=-1)


def test_public_api_runs_this_kernel_and_gradients_flow():
  kernels = pytest.importorskip("maskprop_jax.kernels")
  problem = PROBLEMS[1]
  inputs = make_inputs(problem)
  assert float(jnp.max(jnp.abs(inputs["offsets"]))) < pallas_tpu.DEFAULT_MAX_OFFSET  # traced: default bound
  out_shape = (problem.shape[0], *output_hw(problem), problem.shape[-1])
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=out_shape), jnp.float32)

  def loss(x, offsets, weight, mask, impl):
    out = kernels.deform_conv2d(x, offsets, weight, mask, **problem.conv_kwargs, impl=impl, interpret=True)
    return jnp.sum(out * cotangent), out

  argnums = (0, 1, 2, 3)
  args = (inputs["x"], inputs["offsets"], inputs["weight"], inputs["mask"])
  (_, out), grads = jax.value_and_grad(loss, argnums, has_aux=True)(*args, "pallas_tpu")
  (_, xla_out), xla_grads = jax.value_and_grad(loss, argnums, has_aux=True)(*args, "xla")
  assert relative_error(out, xla_out) < 1e-5
  for grad, xla_grad in zip(grads, xla_grads):
    assert float(jnp.max(jnp.abs(grad))) > 0
    assert relative_error(grad, xla_grad) < 1e-5


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_lowers_to_a_mosaic_kernel_for_tpu(dtype):
  # Cross-platform lowering runs the Pallas -> Mosaic lowering without a TPU (block specs, element
  # windows, primitives); Mosaic's layout passes only run when a TPU compiles the kernel.
  n, h, w, c, o, groups, instances = 2, 12, 20, 64, 64, 2, 5
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  conv = dict(stride=1, padding=1, dilation=1, offset_groups=groups, max_offset=4)
  plain = jax.jit(lambda x, offsets, mask, weight: pallas_tpu.deform_conv2d_fwd(x, offsets, mask, weight, **conv))
  masked = jax.jit(lambda x, instance_masks, offsets, weight: pallas_tpu.masked_deform_conv2d_fwd(
      x, instance_masks, offsets, None, weight, **conv))
  lowered = [
      plain.trace(spec(n, h, w, c), spec(n, h, w, groups, 9, 2), spec(n, h, w, groups, 9), spec(3, 3, c, o)),
      masked.trace(spec(n, h, w, c), spec(n, instances, h, w), spec(n, h, w, groups, 9, 2), spec(3, 3, c, o)),
  ]
  for traced in lowered:
    assert "tpu_custom_call" in traced.lower(lowering_platforms=("tpu",)).as_text()
