"""The projected Pallas kernels (kernels/pallas_gpu_projected.py, pallas_tpu_projected.py), interpret mode on CPU.

Each case runs both kernels and holds them to two references: pallas_contract.reference_masked_forward on x
and the instance masks repeated R times (output image b reads frame b // R), and the XLA projected form
(kernels/projected.py) — natively with `warps` if it takes that argument, on the repeated inputs otherwise.
Interpret mode compiles every kernel afresh and is slow, hence tiny shapes and one test per case for both
kernels.
"""

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax.kernels import pallas_contract, pallas_gpu_projected, pallas_tpu_projected, projected
from pallas_problems import Problem, make_inputs, relative_error

FP32_TOLERANCE = 1e-5
# bf16: z (and, on the TPU, the interpolation matrix) is rounded to bf16 before fp32 accumulation, and so is
# the output; the fp32 references see the same bf16 inputs (measured: 2.2e-3 GPU, 3.5e-3 TPU).
BF16_TOLERANCE = 1e-2

# Blocks that split the test shapes: several position blocks (the last ragged), instance blocks of 2 (3
# instances: the second block half empty), output-channel blocks of 4 (O = 5: the second ragged).
GPU_TILES = pallas_gpu_projected.Tiling(block_p=16, block_o=4, block_i=2)
TPU_TILES = pallas_tpu_projected.Tiling(block_r=2, block_w=8)


@dataclasses.dataclass(frozen=True)
class Case:
  problem: Problem  # problem.shape[0] is the number of frames N of x
  instances: int
  warps: int
  dtype: type = jnp.float32


# Together: stride 1/2, padding 0/1, dilation 2, offset groups 2, with and without modulation mask, offsets that
# leave the image, warps 1 and 3, one and three instances, fp32 and bf16.
CASES = {
    "s1_p1_mask_i3_r1": Case(Problem("", (1, 6, 7, 4, 5), with_mask=True, offset_scale=1.5), 3, 1),
    "s2_p0_i1_r3": Case(Problem("", (2, 6, 7, 4, 5), stride=2, padding=0, offset_scale=1.5), 1, 3),
    "d2_g2_mask_i3_r3": Case(Problem("", (2, 6, 7, 8, 4), dilation=2, offset_groups=2, with_mask=True,
                                     offset_scale=2.0), 3, 3),
    "offsets_leave_image_g2_i3_r1": Case(Problem("", (2, 6, 7, 4, 4), offset_groups=2, offset_scale=5.0), 3, 1),
    "bf16_g2_mask_i3_r3": Case(Problem("", (1, 6, 7, 8, 5), offset_groups=2, with_mask=True, offset_scale=1.5),
                               3, 3, jnp.bfloat16),
}


def make_case_inputs(case: Case, seed: int = 0) -> dict:
  """x and instance_masks of N frames, offsets and mask of N*R images, weight; instance 1 is all zero."""
  frames, *rest = case.problem.shape
  problem = dataclasses.replace(case.problem, shape=(frames * case.warps, *rest))
  inputs = make_inputs(problem, seed=seed, dtype=case.dtype, num_instances=case.instances)
  instance_masks = inputs["instance_masks"][:frames]
  if case.instances > 1:
    instance_masks = instance_masks.at[:, 1].set(0)
  return dict(inputs, x=inputs["x"][:frames], instance_masks=instance_masks)


def as_fp32(inputs: dict) -> dict:
  return {name: None if a is None else a.astype(jnp.float32) for name, a in inputs.items()}


def repeated_frames(inputs: dict, warps: int) -> dict:
  """x and instance masks with every frame repeated R times: image b is frame b // R, as the warps read it."""
  return dict(inputs, x=jnp.repeat(inputs["x"], warps, axis=0),
              instance_masks=jnp.repeat(inputs["instance_masks"], warps, axis=0))


def reference(inputs: dict, conv: dict, warps: int):
  return pallas_contract.reference_masked_forward(**repeated_frames(inputs, warps), **conv)


def xla_projected(inputs: dict, conv: dict, warps: int):
  if "warps" in inspect.signature(projected.masked_deform_conv2d_fwd).parameters:
    return projected.masked_deform_conv2d_fwd(**inputs, **conv, warps=warps)
  return projected.masked_deform_conv2d_fwd(**repeated_frames(inputs, warps), **conv)


def run_kernels(inputs: dict, conv: dict, warps: int) -> dict:
  return {
      "gpu": pallas_gpu_projected.masked_deform_conv2d_fwd(**inputs, **conv, warps=warps, interpret=True,
                                                           tiling=GPU_TILES),
      # Concrete offsets: the halo is sized from their largest magnitude, so nothing is clamped.
      "tpu": pallas_tpu_projected.masked_deform_conv2d_fwd(**inputs, **conv, warps=warps, interpret=True,
                                                           tiling=TPU_TILES),
  }


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_both_kernels_match_the_reference_and_the_xla_projected_form(case):
  inputs = make_case_inputs(case)
  conv = case.problem.conv_kwargs
  frames, _, _, _, out_channels = case.problem.shape
  outputs = run_kernels(inputs, conv, case.warps)
  expected = reference(as_fp32(inputs), conv, case.warps)  # [N*R, I, Ho, Wo, O]
  xla = xla_projected(as_fp32(inputs), conv, case.warps)
  assert expected.shape[:2] == (frames * case.warps, case.instances) and expected.shape[-1] == out_channels
  assert relative_error(xla, expected) < FP32_TOLERANCE  # the two references agree with each other
  for name, out in outputs.items():
    assert out.shape == expected.shape and out.dtype == case.dtype, name
    tolerance = FP32_TOLERANCE if case.dtype == jnp.float32 else BF16_TOLERANCE
    assert relative_error(out, expected) < tolerance, name
    assert relative_error(out, xla) < tolerance, name
    if case.instances > 1:
      assert not np.any(np.asarray(out[:, 1])), name  # the empty instance mask gives an exact zero


def test_tpu_offsets_beyond_max_offset_are_clamped():
  case = CASES["d2_g2_mask_i3_r3"]
  inputs = make_case_inputs(case)
  conv = case.problem.conv_kwargs
  out = pallas_tpu_projected.masked_deform_conv2d_fwd(**inputs, **conv, warps=case.warps, interpret=True,
                                                      max_offset=1)
  clamped = dict(inputs, offsets=jnp.clip(inputs["offsets"], -1, 1))
  assert relative_error(out, reference(clamped, conv, case.warps)) < FP32_TOLERANCE
  assert relative_error(out, reference(inputs, conv, case.warps)) > 1e-2


def test_bad_arguments_raise_value_error():
  case = CASES["s2_p0_i1_r3"]
  inputs = make_case_inputs(case)
  conv = case.problem.conv_kwargs
  for module in (pallas_gpu_projected, pallas_tpu_projected):
    # Offsets of N*R images with warps=1: the one argument check names offsets and spells out N*R.
    with pytest.raises(ValueError, match="`offsets` has shape"):
      module.masked_deform_conv2d_fwd(**inputs, **conv, interpret=True)
    with pytest.raises(ValueError, match="`weight` has dtype"):
      module.masked_deform_conv2d_fwd(**dict(inputs, weight=inputs["weight"].astype(jnp.bfloat16)), **conv,
                                      warps=case.warps, interpret=True)
  with pytest.raises(ValueError, match="powers of two"):
    pallas_gpu_projected.masked_deform_conv2d_fwd(**inputs, **conv, warps=case.warps, interpret=True,
                                                  tiling=pallas_gpu_projected.Tiling(block_p=12))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask"])
def test_lowers_for_cuda_and_tpu(dtype, with_mask):
  # Cross-platform lowering runs the Pallas -> Triton and Pallas -> Mosaic lowerings without a GPU or TPU:
  # it catches primitives, block specs and index maps that interpret mode accepts and the compilers do not
  # (Mosaic's layout passes and Triton's compilation still only run on the hardware).
  frames, h, w, c, o, groups, instances, warps = 2, 12, 20, 64, 64, 2, 5, 3
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  conv = dict(stride=1, padding=1, dilation=1, offset_groups=groups, warps=warps)
  args = (spec(frames, h, w, c), spec(frames, instances, h, w), spec(frames * warps, h, w, groups, 9, 2),
          spec(frames * warps, h, w, groups, 9) if with_mask else None, spec(3, 3, c, o))
  targets = (
      (pallas_gpu_projected.masked_deform_conv2d_fwd, {}, "cuda", "xla.gpu.triton"),
      (pallas_tpu_projected.masked_deform_conv2d_fwd, dict(max_offset=4), "tpu", "tpu_custom_call"),
  )
  for forward, extra, platform, marker in targets:
    traced = jax.jit(lambda *a, forward=forward, extra=extra: forward(*a, **conv, **extra)).trace(*args)
    assert marker in traced.lower(lowering_platforms=(platform,)).as_text(), platform
