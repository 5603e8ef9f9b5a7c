"""Masked deformable convolution forward, projected first, as a Pallas Triton kernel: a gather-accumulate of z.

DCN(M_i * x) is linear in x, so each tap's weight can be applied before sampling (kernels/projected.py derives
it): z[g, pixel, k] = x[pixel, channels of group g] @ W_k[rows of group g], O channels per (pixel, group, tap),
and
  out_i(p) = sum_{g, k, corners c} w_c(p, k, g) m(p, k, g) M_i(c) z[g, c, k].
The projection is one plain XLA GEMM per frame in the wrapper (fp32 accumulation, stored in x's dtype, the
helpers of kernels/projected.py so that both forms round z alike). What is left per instance is no GEMM over
C: the kernel gathers z's O channels at the 4 corners of every tap and accumulates them, scaled by bilinear
weight x modulation x instance mask at the corner, in fp32 registers.

A program owns BLOCK_P output positions x BLOCK_O output channels x BLOCK_I instances of one output image. Per
offset group and tap it computes the 4 corners of its positions once, loads each corner's [BLOCK_P, BLOCK_O]
slice of z once, and adds it to all BLOCK_I instances' accumulators with that instance's scale: z is read once
per BLOCK_I instances. The default BLOCK_I covers MaskProp's 10 instances, so z is read once per image.

Corners outside the image: the pixel index is clamped to 0 (every address stays in bounds) and the load is
masked and its scale zeroed, as in pallas_gpu.py; z needs no zero border.

Warps (R offset fields per frame of x, geometry.warps): output image b reads frame b // R of z and of the
instance masks (the block index maps divide), so z is projected once per frame, not once per warp.

Layout the wrapper prepares:
  z              [N, H*W, G*K*O]          x's dtype, column (g * K + k) * O + o
  instance_masks [N, I_pad, H*W] fp32     instances padded with all-zero masks
  offsets        [N*R, G, K, 2, P_pad]    fp32, positions last so each tap's dy / dx load is contiguous
  mask           [N*R, G, K, P_pad]       fp32 (omitted when there is no modulation mask)
  out            [N*R, I_pad, P_pad, O_pad]
Block sizes are powers of two (Triton tensor shapes); ragged output channels are masked lanes of the z loads,
ragged positions read zero offsets and get a zero scale, so every shape inside the kernel is static. There is
no `dot` in the kernel, hence no minimum block size of 16.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from maskprop_jax.kernels.geometry import ConvGeometry, IntOrPair
from maskprop_jax.kernels.pallas_gpu import _next_power_of_2, _round_up, tap_corners
from maskprop_jax.kernels.projected import _dot, _grouped_weight


@dataclasses.dataclass(frozen=True)
class Tiling:
  """Program tile sizes, all powers of two. The fp32 accumulator holds block_i * block_p * block_o values."""
  block_p: int = 16
  block_o: int = 64
  block_i: int = 16  # instances per program: z is gathered once per block of instances
  num_warps: int = 8
  num_stages: int = 2


# Untuned (no GPU was available): 16 x 16 x 64 = 16K fp32 accumulators, 64 registers a thread at 8 warps.
PROJECTED_TILING = Tiling()


def _fit_block(preferred: int, extent: int) -> int:
  """The preferred block, shrunk to the next power of two >= a small extent. No minimum of 16 (pallas_gpu's
  _fit_block has one for tensor-core dots): this kernel has no dot, and I = 1 should not cost 16 instances."""
  if preferred < 1 or preferred & (preferred - 1):
    raise ValueError(f"pallas_gpu_projected.Tiling: block sizes must be powers of two, got {preferred}")
  return min(preferred, _next_power_of_2(extent))


def _projected_kernel(*refs, geometry: ConvGeometry, block_p: int, block_i: int, has_mask: bool):
  """One program: output tile [block_i, block_p, block_o] of output image program_id(0)."""
  refs = list(refs)
  z_ref = refs.pop(0)  # [H*W, G*K*O]
  instance_ref = refs.pop(0)  # [block_i, H*W]
  offsets_ref = refs.pop(0)  # [G, K, 2, block_p]
  mask_ref = refs.pop(0) if has_mask else None  # [G, K, block_p]
  (out_ref,) = refs  # [block_i, block_p, block_o]
  taps, out_channels = geometry.taps, geometry.out_channels
  block_o = out_ref.shape[-1]

  positions = pl.program_id(2) * block_p + jnp.arange(block_p, dtype=jnp.int32)  # [block_p]
  position_valid = positions < geometry.out_h * geometry.out_w
  # lax.div / lax.rem: the operands are non-negative, so C division is floor division without jnp's fix-ups.
  out_row = jax.lax.div(positions, geometry.out_w).astype(jnp.float32)
  out_col = jax.lax.rem(positions, geometry.out_w).astype(jnp.float32)
  out_lanes = pl.program_id(3) * block_o + jnp.arange(block_o, dtype=jnp.int32)  # [block_o]
  lane_valid = out_lanes < out_channels  # the last block of output channels may be ragged
  instance_rows = jnp.arange(block_i, dtype=jnp.int32)

  def accumulate_tap(group, tap, acc):
    columns = (group * taps + tap) * out_channels + out_lanes  # [block_o] of z
    for pixel, inside, blend in tap_corners(geometry, offsets_ref, mask_ref, instance_ref, group, tap, out_row,
                                            out_col, position_valid, instance_rows):
      values = plgpu.load(z_ref.at[pixel[:, None], columns[None, :]],
                          mask=inside[:, None] & lane_valid[None, :], other=0)  # [block_p, block_o]
      acc += blend[:, :, None] * values.astype(jnp.float32)[None, :, :]
    return acc

  acc = jnp.zeros((block_i, block_p, block_o), jnp.float32)
  for group in range(geometry.offset_groups):
    acc = jax.lax.fori_loop(0, taps, functools.partial(accumulate_tap, group), acc)
  out_ref[...] = acc.astype(out_ref.dtype)


def _project(x, weight, geometry: ConvGeometry):
  """z [N, H*W, G*K*O] in x's dtype: one GEMM per offset group, fp32 accumulation (projected.py's helpers)."""
  groups = geometry.offset_groups
  x_grouped = x.reshape(-1, groups, geometry.group_channels)  # [N*H*W, G, Cg]
  z = _dot(x_grouped, _grouped_weight(weight, geometry).astype(x.dtype), ((2,), (1,)), ((1,), (0,)))
  # [G, N*H*W, K*O] -> pixel-major, so that one corner's O channels are contiguous (a no-op for G = 1).
  z = jnp.moveaxis(z.astype(x.dtype), 0, 1)
  return z.reshape(geometry.batch, geometry.height * geometry.width, -1)


@functools.partial(jax.jit, static_argnames=("geometry", "interpret", "tiling"))
def _projected_forward(x, instance_masks, offsets, mask, weight, *, geometry: ConvGeometry, interpret, tiling):
  """Returns [N*R, I, Ho, Wo, O] in x's dtype."""
  images, warps, g, k = geometry.out_batch, geometry.warps, geometry.offset_groups, geometry.taps
  instances, out_channels = geometry.num_instances, geometry.out_channels
  positions = geometry.out_h * geometry.out_w
  block_p = _fit_block(tiling.block_p, positions)
  block_o = _fit_block(tiling.block_o, out_channels)
  block_i = _fit_block(tiling.block_i, instances)
  positions_pad = _round_up(positions, block_p)
  instances_pad = _round_up(instances, block_i)
  out_channels_pad = _round_up(out_channels, block_o)

  z = _project(x, weight, geometry)  # [N, H*W, G*K*O]
  flat_masks = instance_masks.astype(jnp.float32).reshape(geometry.batch, instances, -1)
  flat_masks = jnp.pad(flat_masks, ((0, 0), (0, instances_pad - instances), (0, 0)))  # [N, I_pad, H*W]
  position_pad = ((0, 0),) * (offsets.ndim - 2) + ((0, positions_pad - positions),)
  offsets_t = jnp.transpose(offsets.astype(jnp.float32).reshape(images, positions, g, k, 2), (0, 2, 3, 4, 1))
  offsets_t = jnp.pad(offsets_t, position_pad)  # [N*R, G, K, 2, P_pad]

  # Image b of the output (and of offsets / mask) reads frame b // R of z and of the instance masks.
  frame = lambda b: jax.lax.div(b, warps)
  operands = [z, flat_masks, offsets_t]
  in_specs = [
      pl.BlockSpec((None, *z.shape[1:]), lambda b, i, p, o: (frame(b), 0, 0)),
      pl.BlockSpec((None, block_i, flat_masks.shape[-1]), lambda b, i, p, o: (frame(b), i, 0)),
      pl.BlockSpec((None, g, k, 2, block_p), lambda b, i, p, o: (b, 0, 0, 0, p)),
  ]
  if mask is not None:
    mask_t = jnp.transpose(mask.astype(jnp.float32).reshape(images, positions, g, k), (0, 2, 3, 1))
    operands.append(jnp.pad(mask_t, position_pad[1:]))  # [N*R, G, K, P_pad]
    in_specs.append(pl.BlockSpec((None, g, k, block_p), lambda b, i, p, o: (b, 0, 0, p)))

  kernel = functools.partial(_projected_kernel, geometry=geometry, block_p=block_p, block_i=block_i,
                             has_mask=mask is not None)
  out = pl.pallas_call(
      kernel,
      grid=(images, instances_pad // block_i, positions_pad // block_p, out_channels_pad // block_o),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((None, block_i, block_p, block_o), lambda b, i, p, o: (b, i, p, o)),
      out_shape=jax.ShapeDtypeStruct((images, instances_pad, positions_pad, out_channels_pad), x.dtype),
      compiler_params=plgpu.CompilerParams(num_warps=tiling.num_warps, num_stages=tiling.num_stages),
      interpret=interpret,
      name="masked_deform_conv2d_projected_fwd",
  )(*operands)
  out = out[:, :instances, :positions, :out_channels]
  return out.reshape(images, instances, geometry.out_h, geometry.out_w, out_channels)


def masked_deform_conv2d_fwd(x: jax.Array, instance_masks: jax.Array, offsets: jax.Array,
                             mask: jax.Array | None, weight: jax.Array, *, stride: IntOrPair,
                             padding: IntOrPair, dilation: IntOrPair, offset_groups: int, warps: int = 1,
                             interpret: bool = False, tiling: Tiling = PROJECTED_TILING) -> jax.Array:
  """DCN(M_i * x) for the I instance masks [N, I, H, W] of each frame: returns [N*R, I, Ho, Wo, O] in x.dtype.

  x [N, H, W, C]; offsets [N*R, Ho, Wo, G, kh*kw, 2] as (dy, dx); mask [N*R, Ho, Wo, G, kh*kw] or None;
  weight [kh, kw, C, O] in x's dtype; R = warps offset fields per frame, output image b reading frame b // R.
  Exact (no offset bound): every corner's weight is scaled by the instance mask at that corner. fp32 or bf16
  inputs; z is rounded to x's dtype, everything after it accumulates in fp32.
  """
  geometry = ConvGeometry.from_arguments(
      "pallas_gpu_projected.masked_deform_conv2d_fwd", x=x, offsets=offsets, weight=weight, mask=mask,
      instance_masks=instance_masks, stride=stride, padding=padding, dilation=dilation,
      offset_groups=offset_groups, weight_dtype_of_x=True, warps=warps)
  return _projected_forward(x, instance_masks, offsets, mask, weight, geometry=geometry, interpret=interpret,
                            tiling=tiling)
