"""The Pallas Triton deformable-convolution kernel (kernels/pallas_gpu.py), run in interpret mode on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax.kernels import pallas_contract, pallas_gpu
from pallas_problems import PROBLEMS, Problem, make_inputs, output_hw, relative_error

# Blocks of 16 make the small test shapes span several position, channel and output-channel blocks.
SMALL_TILES = pallas_gpu.Tiling(block_p=16, block_o=16, block_c=16, block_i=2)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_forward_matches_reference_fp32(problem):
  inputs = make_inputs(problem)
  out = pallas_gpu.deform_conv2d_fwd(**inputs, **problem.conv_kwargs, interpret=True, tiling=SMALL_TILES)
  expected = pallas_contract.reference_forward(**inputs, **problem.conv_kwargs)
  assert out.shape == expected.shape and out.dtype == jnp.float32
  assert relative_error(out, expected) < 1e-5


def test_ragged_blocks_of_positions_channels_and_outputs():
  # 5x5 = 25 positions (two blocks of 16), 20 channels per group (two blocks of 16), 20 outputs (two blocks).
  problem = Problem("ragged", (1, 5, 5, 40, 20), offset_groups=2, with_mask=True)
  inputs = make_inputs(problem)
  out = pallas_gpu.deform_conv2d_fwd(**inputs, **problem.conv_kwargs, interpret=True, tiling=SMALL_TILES)
  assert relative_error(out, pallas_contract.reference_forward(**inputs, **problem.conv_kwargs)) < 1e-5


def test_forward_bf16_within_bf16_rounding():
  problem = PROBLEMS[2]
  inputs = make_inputs(problem, dtype=jnp.bfloat16)
  out = pallas_gpu.deform_conv2d_fwd(**inputs, **problem.conv_kwargs, interpret=True)
  assert out.dtype == jnp.bfloat16
  as_fp32 = {name: None if a is None else a.astype(jnp.float32) for name, a in inputs.items()}
  # The sampled tile is rounded to bf16 before the GEMM, as on the GPU's tensor cores.
  assert relative_error(out, pallas_contract.reference_forward(**as_fp32, **problem.conv_kwargs)) < 2e-2


@pytest.mark.parametrize("problem", [PROBLEMS[1], PROBLEMS[3]], ids=lambda p: p.name)
def test_masked_form_equals_one_call_per_instance(problem):
  inputs = make_inputs(problem, num_instances=3)  # 3 instances: two blocks of 2, the second half empty
  instance_masks = inputs.pop("instance_masks")
  out = pallas_gpu.masked_deform_conv2d_fwd(inputs["x"], instance_masks, inputs["offsets"], inputs["mask"],
                                            inputs["weight"], **problem.conv_kwargs, interpret=True,
                                            tiling=SMALL_TILES)
  assert out.shape[:2] == (problem.shape[0], 3)
  for i in range(3):
    separate = pallas_gpu.deform_conv2d_fwd(**dict(inputs, x=inputs["x"] * instance_masks[:, i, :, :, None]),
                                            **problem.conv_kwargs, interpret=True, tiling=SMALL_TILES)
    assert relative_error(out[:, i], separate) < 1e-5


def test_bad_shapes_raise_value_error_naming_the_argument():
  inputs = make_inputs(PROBLEMS[0])
  with pytest.raises(ValueError, match="`offsets` has shape"):
    pallas_gpu.deform_conv2d_fwd(**dict(inputs, offsets=inputs["offsets"][:, :2]), **PROBLEMS[0].conv_kwargs,
                                 interpret=True)


def test_public_api_runs_this_kernel_and_gradients_flow():
  kernels = pytest.importorskip("maskprop_jax.kernels")
  problem = PROBLEMS[2]
  inputs = make_inputs(problem)
  out_shape = (problem.shape[0], *output_hw(problem), problem.shape[-1])
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=out_shape), jnp.float32)

  def loss(x, offsets, weight, mask, impl):
    out = kernels.deform_conv2d(x, offsets, weight, mask, **problem.conv_kwargs, impl=impl, interpret=True)
    return jnp.sum(out * cotangent), out

  argnums = (0, 1, 2, 3)
  args = (inputs["x"], inputs["offsets"], inputs["weight"], inputs["mask"])
  (_, out), grads = jax.value_and_grad(loss, argnums, has_aux=True)(*args, "pallas_gpu")
  (_, xla_out), xla_grads = jax.value_and_grad(loss, argnums, has_aux=True)(*args, "xla")
  assert relative_error(out, xla_out) < 1e-5
  for grad, xla_grad in zip(grads, xla_grads):
    assert float(jnp.max(jnp.abs(grad))) > 0
    assert relative_error(grad, xla_grad) < 1e-5


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_lowers_to_a_triton_kernel_for_cuda(dtype):
  # Cross-platform lowering runs the Pallas -> Triton IR lowering without a GPU: this is what catches
  # primitives or shapes that interpret mode accepts but Triton does not.
  n, h, w, c, o, groups, instances = 2, 12, 20, 64, 64, 2, 5
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  conv = dict(stride=1, padding=1, dilation=1, offset_groups=groups)
  plain = jax.jit(lambda x, offsets, mask, weight: pallas_gpu.deform_conv2d_fwd(x, offsets, mask, weight, **conv))
  masked = jax.jit(lambda x, instance_masks, offsets, weight: pallas_gpu.masked_deform_conv2d_fwd(
      x, instance_masks, offsets, None, weight, **conv))
  lowered = [
      plain.trace(spec(n, h, w, c), spec(n, h, w, groups, 9, 2), spec(n, h, w, groups, 9), spec(3, 3, c, o)),
      masked.trace(spec(n, h, w, c), spec(n, instances, h, w), spec(n, h, w, groups, 9, 2), spec(3, 3, c, o)),
  ]
  for traced in lowered:
    assert "xla.gpu.triton" in traced.lower(lowering_platforms=("cuda",)).as_text()
