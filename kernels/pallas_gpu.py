"""Deformable convolution forward as one Pallas Triton kernel: bilinear sampling fused into the weight GEMM.

A program owns BLOCK_P output positions x BLOCK_O output channels (x BLOCK_I instances for the masked
form). For every tap and every block of BLOCK_C input channels it gathers the four bilinear corners of
its positions with per-lane loads, blends them in registers into a (BLOCK_P, BLOCK_C) tile of sampled
columns and multiplies that tile with the (BLOCK_C, BLOCK_O) weight block, accumulating in fp32. The
(N*Ho*Wo, K*C) column matrix of the im2col formulation never exists in HBM.

The masked form DCN(M_i * x) gathers each corner of x once and scales it by the I instance-mask values at
that corner, stacking the BLOCK_I instances along the GEMM's row axis: x is read once per BLOCK_I
instances instead of once per instance, and the GEMM gets BLOCK_I times taller.

Layout the wrapper prepares (all cheap relative to the GEMM):
  x              [N, H*W, G*Cg_pad]      channels of each offset group padded to a multiple of BLOCK_C
  instance_masks [N, I_pad, H*W] fp32    instances padded with all-zero masks
  offsets        [N, G, K, 2, P_pad]     fp32, positions last so each tap's dy/dx load is contiguous
  mask           [N, G, K, P_pad]        fp32 (omitted when there is no modulation mask)
  weight         [K, G*Cg_pad, O_pad]
  out            [N, I_pad, P_pad, O_pad]
Block shapes are powers of two and at least 16 (Triton's dot minimum); ragged edges are handled by
padding in the wrapper and by masked gathers in the kernel, so shapes inside the kernel are static.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from maskprop_jax.kernels.geometry import ConvGeometry, IntOrPair


@dataclasses.dataclass(frozen=True)
class Tiling:
  """Program tile sizes; all powers of two and >= 16 so that `plgpu.dot` lowers to tensor-core MMA."""
  block_p: int = 64
  block_o: int = 128
  block_c: int = 32
  block_i: int = 1  # instances per program in the masked form
  num_warps: int = 4
  num_stages: int = 2


# Untuned starting points (no GPU was available to tune them). Every output-channel block redoes the
# gathers, hence a wide block_o; the masked form trades positions for instances so that each gather is
# shared by more instances at the same accumulator size.
PLAIN_TILING = Tiling()
MASKED_TILING = Tiling(block_p=32, block_i=4)


def _next_power_of_2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _fit_block(preferred: int, extent: int) -> int:
  """The preferred block, shrunk for small extents but kept a power of two >= 16."""
  return max(16, min(preferred, _next_power_of_2(extent)))


def _dot_precision(dtype, interpret: bool):
  """fp32 inputs keep fp32 accuracy (1e-5 against the XLA impl); bf16 goes straight to tensor cores."""
  if dtype != jnp.float32:
    return None
  # Three TF32 passes reach fp32 accuracy on tensor cores; CPUs (interpret mode) have no TF32 algorithms.
  return jax.lax.Precision.HIGHEST if interpret else jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3


def tap_corners(geometry: ConvGeometry, offsets_ref, mask_ref, instance_ref, group, tap, out_row, out_col,
                position_valid, instance_rows):
  """The four corners of one tap for a block of output positions: (pixel, inside, blend) each, pixel [block_p]
  the flat index into the frame (0 where clamped), inside [block_p], blend [block_i, block_p] the bilinear weight
  x modulation x instance mask at the corner (zero outside the frame and at padding positions). Shared by this
  kernel and pallas_gpu_projected's. mask_ref / instance_ref: None when absent."""
  height, width = geometry.height, geometry.width
  (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w) = (
      geometry.stride, geometry.padding, geometry.dilation)
  tap_row = jax.lax.div(tap, geometry.kernel_w).astype(jnp.float32)
  tap_col = jax.lax.rem(tap, geometry.kernel_w).astype(jnp.float32)
  y = out_row * stride_h - pad_h + tap_row * dilation_h + offsets_ref[group, tap, 0, :]
  x = out_col * stride_w - pad_w + tap_col * dilation_w + offsets_ref[group, tap, 1, :]
  sample_scale = jnp.where(position_valid, 1.0, 0.0)
  if mask_ref is not None:
    sample_scale = sample_scale * mask_ref[group, tap, :]
  y0, x0 = jnp.floor(y), jnp.floor(x)
  ly, lx = y - y0, x - x0
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  corners = []
  for dy, weight_y in ((0, 1.0 - ly), (1, ly)):
    for dx, weight_x in ((0, 1.0 - lx), (1, lx)):
      row, col = y0 + dy, x0 + dx
      inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
      # Clamped indices keep every lane's address in bounds; `inside` zeroes the lanes that were clamped.
      pixel = jnp.where(inside, row * width + col, 0)
      blend = jnp.where(inside, weight_y * weight_x * sample_scale, 0.0)[None, :]  # [1, block_p]
      if instance_ref is not None:
        blend = blend * instance_ref[instance_rows[:, None], pixel[None, :]].astype(jnp.float32)
      corners.append((pixel, inside, blend))
  return corners


def _deform_conv_kernel(*refs, geometry: ConvGeometry, block_p: int, block_c: int,
                        block_i: int, group_channels_pad: int, has_mask: bool, has_instances: bool,
                        dot_precision):
  """One program: output tile [block_i, block_p, block_o] of batch element program_id(0)."""
  refs = list(refs)
  x_ref = refs.pop(0)  # [H*W, G*Cg_pad]
  instance_ref = refs.pop(0) if has_instances else None  # [block_i, H*W]
  offsets_ref = refs.pop(0)  # [G, K, 2, block_p]
  mask_ref = refs.pop(0) if has_mask else None  # [G, K, block_p]
  weight_ref, out_ref = refs  # [K, G*Cg_pad, block_o], [block_i, block_p, block_o]
  block_o = out_ref.shape[-1]

  positions = pl.program_id(2) * block_p + jnp.arange(block_p, dtype=jnp.int32)  # [block_p]
  position_valid = positions < geometry.out_h * geometry.out_w
  # lax.div / lax.rem: the operands are non-negative, so C division is floor division without jnp's fix-ups.
  out_row = jax.lax.div(positions, geometry.out_w).astype(jnp.float32)
  out_col = jax.lax.rem(positions, geometry.out_w).astype(jnp.float32)
  channel_lanes = jnp.arange(block_c, dtype=jnp.int32)
  instance_rows = jnp.arange(block_i, dtype=jnp.int32)

  def accumulate_tap(group, tap, acc):
    corners = tap_corners(geometry, offsets_ref, mask_ref, instance_ref, group, tap, out_row, out_col,
                          position_valid, instance_rows)

    def accumulate_channel_block(channel_block, acc):
      first_channel = group * group_channels_pad + channel_block * block_c
      channels = first_channel + channel_lanes  # [block_c]
      tile = jnp.zeros((block_i, block_p, block_c), jnp.float32)
      for pixel, inside, blend in corners:
        lane_inside = jnp.broadcast_to(inside[:, None], (block_p, block_c))
        values = plgpu.load(x_ref.at[pixel[:, None], channels[None, :]], mask=lane_inside, other=0)
        tile += blend[:, :, None] * values.astype(jnp.float32)[None, :, :]
      weights = weight_ref[tap, pl.ds(first_channel, block_c), :]  # [block_c, block_o]
      tile = tile.reshape(block_i * block_p, block_c).astype(weights.dtype)
      return acc + plgpu.dot(tile, weights, precision=dot_precision)

    return jax.lax.fori_loop(0, group_channels_pad // block_c, accumulate_channel_block, acc)

  acc = jnp.zeros((block_i * block_p, block_o), jnp.float32)
  for group in range(geometry.offset_groups):
    acc = jax.lax.fori_loop(0, geometry.taps, functools.partial(accumulate_tap, group), acc)
  out_ref[...] = acc.reshape(block_i, block_p, block_o).astype(out_ref.dtype)


@functools.partial(jax.jit, static_argnames=("geometry", "interpret", "tiling"))
def _fused_forward(x, instance_masks, offsets, mask, weight, *, geometry: ConvGeometry, interpret, tiling):
  """Shared wrapper of both public forms; returns [N, max(I, 1), Ho, Wo, O]."""
  n, g, k = geometry.batch, geometry.offset_groups, geometry.taps
  positions = geometry.out_h * geometry.out_w
  block_p = _fit_block(tiling.block_p, positions)
  block_o = _fit_block(tiling.block_o, geometry.out_channels)
  block_c = _fit_block(tiling.block_c, geometry.group_channels)
  has_instances = instance_masks is not None
  block_i = min(tiling.block_i, _next_power_of_2(geometry.num_instances)) if has_instances else 1
  group_channels_pad = _round_up(geometry.group_channels, block_c)
  positions_pad = _round_up(positions, block_p)
  out_channels_pad = _round_up(geometry.out_channels, block_o)
  instances_pad = _round_up(max(geometry.num_instances, 1), block_i)

  channel_pad = group_channels_pad - geometry.group_channels
  x_flat = x.reshape(n, geometry.height * geometry.width, g, geometry.group_channels)
  x_flat = jnp.pad(x_flat, ((0, 0), (0, 0), (0, 0), (0, channel_pad))).reshape(n, -1, g * group_channels_pad)
  weight_flat = weight.reshape(k, g, geometry.group_channels, geometry.out_channels)
  weight_flat = jnp.pad(weight_flat, ((0, 0), (0, 0), (0, channel_pad),
                                      (0, out_channels_pad - geometry.out_channels)))
  weight_flat = weight_flat.reshape(k, g * group_channels_pad, out_channels_pad)
  position_pad = ((0, 0),) * (offsets.ndim - 2) + ((0, positions_pad - positions),)
  offsets_t = jnp.transpose(offsets.astype(jnp.float32).reshape(n, positions, g, k, 2), (0, 2, 3, 4, 1))
  offsets_t = jnp.pad(offsets_t, position_pad)  # [N, G, K, 2, P_pad]

  operands = [x_flat]
  in_specs = [pl.BlockSpec((None, *x_flat.shape[1:]), lambda b, i, p, o: (b, 0, 0))]
  if has_instances:
    flat_masks = instance_masks.astype(jnp.float32).reshape(n, geometry.num_instances, -1)
    flat_masks = jnp.pad(flat_masks, ((0, 0), (0, instances_pad - geometry.num_instances), (0, 0)))
    operands.append(flat_masks)
    in_specs.append(pl.BlockSpec((None, block_i, flat_masks.shape[-1]), lambda b, i, p, o: (b, i, 0)))
  operands.append(offsets_t)
  in_specs.append(pl.BlockSpec((None, g, k, 2, block_p), lambda b, i, p, o: (b, 0, 0, 0, p)))
  if mask is not None:
    mask_t = jnp.transpose(mask.astype(jnp.float32).reshape(n, positions, g, k), (0, 2, 3, 1))
    operands.append(jnp.pad(mask_t, position_pad[1:]))  # [N, G, K, P_pad]
    in_specs.append(pl.BlockSpec((None, g, k, block_p), lambda b, i, p, o: (b, 0, 0, p)))
  operands.append(weight_flat)
  in_specs.append(pl.BlockSpec((k, weight_flat.shape[1], block_o), lambda b, i, p, o: (0, 0, o)))

  kernel = functools.partial(
      _deform_conv_kernel, geometry=geometry, block_p=block_p, block_c=block_c, block_i=block_i,
      group_channels_pad=group_channels_pad, has_mask=mask is not None, has_instances=has_instances,
      dot_precision=_dot_precision(x.dtype, interpret))
  out = pl.pallas_call(
      kernel,
      grid=(n, instances_pad // block_i, positions_pad // block_p, out_channels_pad // block_o),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((None, block_i, block_p, block_o), lambda b, i, p, o: (b, i, p, o)),
      out_shape=jax.ShapeDtypeStruct((n, instances_pad, positions_pad, out_channels_pad), x.dtype),
      compiler_params=plgpu.CompilerParams(num_warps=tiling.num_warps, num_stages=tiling.num_stages),
      interpret=interpret,
      name="deform_conv2d_fwd",
  )(*operands)
  out = out[:, :max(geometry.num_instances, 1), :positions, :geometry.out_channels]
  return out.reshape(n, -1, geometry.out_h, geometry.out_w, geometry.out_channels)


def deform_conv2d_fwd(x: jax.Array, offsets: jax.Array, mask: jax.Array | None, weight: jax.Array, *,
                      stride: IntOrPair, padding: IntOrPair, dilation: IntOrPair, offset_groups: int,
                      interpret: bool = False, tiling: Tiling = PLAIN_TILING) -> jax.Array:
  """Deformable convolution forward on an NVIDIA GPU (or Pallas interpret mode): returns [N, Ho, Wo, O].

  x [N, H, W, C]; offsets [N, Ho, Wo, G, kh*kw, 2] as (dy, dx); mask [N, Ho, Wo, G, kh*kw] or None;
  weight [kh, kw, C, O]. fp32 or bf16 inputs, fp32 accumulation, output in x.dtype.
  """
  geometry = ConvGeometry.from_arguments(
      "pallas_gpu.deform_conv2d_fwd", x=x, offsets=offsets, weight=weight, mask=mask, stride=stride,
      padding=padding, dilation=dilation, offset_groups=offset_groups, weight_dtype_of_x=True)
  out = _fused_forward(x, None, offsets, mask, weight, geometry=geometry, interpret=interpret, tiling=tiling)
  return out[:, 0]


def masked_deform_conv2d_fwd(x: jax.Array, instance_masks: jax.Array, offsets: jax.Array,
                             mask: jax.Array | None, weight: jax.Array, *, stride: IntOrPair,
                             padding: IntOrPair, dilation: IntOrPair, offset_groups: int,
                             interpret: bool = False, tiling: Tiling = MASKED_TILING) -> jax.Array:
  """DCN(M_i * x) for the I instance masks [N, I, H, W] of a frame, shared offsets: returns [N, I, Ho, Wo, O].

  Exact: every bilinear corner of x is scaled by the instance mask's value at that same corner.
  """
  geometry = ConvGeometry.from_arguments(
      "pallas_gpu.masked_deform_conv2d_fwd", x=x, offsets=offsets, weight=weight, mask=mask,
      instance_masks=instance_masks, stride=stride, padding=padding, dilation=dilation,
      offset_groups=offset_groups, weight_dtype_of_x=True)
  return _fused_forward(x, instance_masks, offsets, mask, weight, geometry=geometry, interpret=interpret,
                        tiling=tiling)
