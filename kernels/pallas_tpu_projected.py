"""Masked deformable convolution forward, projected first, as a Pallas TPU (Mosaic) kernel.

DCN(M_i * x) is linear in x, so each tap's weight can be applied before sampling (kernels/projected.py derives
it): z_k = x W_k ([H, W, O] per frame, tap and offset group) is one plain XLA GEMM per frame in the wrapper
(fp32 accumulation, stored in x's dtype, projected.py's helpers), and
  out_i(p) = sum_{g, k} S_{g,k,i} z_{g,k}     S_{g,k,i}[p, pixel] = bilinear weight x modulation x M_i(pixel)
TPUs have no fast per-lane gather, so, as in pallas_tpu.py, sampling is a one-hot interpolation matrix
S [BLOCK_P, HALO_PIXELS] over the halo (the window of padded z that a tile of BLOCK_P outputs can reach),
with its columns scaled by the instance mask at each halo pixel. Per tap and instance the MXU computes
S_i @ z_k_halo [HALO_PIXELS, O]: one matmul, no matmul by W inside the kernel (pallas_tpu.py computes
(S_i @ x_halo) @ W_k, two).

Taps are the last grid axis (a reduction, "arbitrary"): the z halo of one tap is [HALO_R, HALO_W, O], the
size of one x halo at C = O, so VMEM does not grow K-fold next to pallas_tpu.py, and the pipeline fetches the
next tap's halo while the MXU works on this one. The fp32 accumulator [I, BLOCK_P, O] lives in scratch across
the taps of a tile; the output block, whose index does not change along the tap axis, is written at the last.

Offset bound: as pallas_tpu.py (same `max_offset` semantics, same helpers): offsets are clamped to
[-max_offset, max_offset], exact within the bound; concrete offsets with max_offset=None measure it.

Warps (R offset fields per frame of x, geometry.warps): output image b reads frame b // R of z and of the
instance-mask halos (the block index maps divide), so z is projected once per frame, not once per warp.

Layout the wrapper prepares (NHWC; z zero-padded by `padding + max_offset` and to whole tiles, so a corner
outside the image reads a zero of z, whose projection of a zero pixel is zero):
  z              [N, G*K, Hp, Wp, O]        halo windows [HALO_R, HALO_W, O] via pl.Element block dims
  instance_masks [N, T, U, I, HALO_PIXELS]  per-tile halos (T x U tiles), pallas_tpu._instance_halos
  fields         [N*R, G*K, T*BLOCK_R, U*BLOCK_W, F] fp32: (dy, dx) or (dy, dx, modulation), F = 2 or 3
  out            [N*R, I, T*BLOCK_R, U*BLOCK_W, O]
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from maskprop_jax.kernels.geometry import ConvGeometry, IntOrPair
from maskprop_jax.kernels.pallas_tpu import (DEFAULT_MAX_OFFSET, VMEM_LIMIT_BYTES, Tiling, _halo_geometry,
                                             _HaloGeometry, _instance_halos, _pad_to_tiles, _resolve_max_offset,
                                             _zero_pad_image, bilinear_one_hot)
from maskprop_jax.kernels.projected import _dot, _grouped_weight

__all__ = ["DEFAULT_MAX_OFFSET", "Tiling", "masked_deform_conv2d_fwd"]


def _interpolation_matrix(fields, tap_row, tap_col, geometry: ConvGeometry, halo: _HaloGeometry, has_mask: bool):
  """S [block_p, halo_pixels] fp32 of one tap: row p holds sample p's 4 bilinear corner weights (x modulation).

  fields [block_p, F] (dy, dx[, modulation]); tap_row / tap_col: int32 scalars (the tap is a grid index).
  """
  block_p = halo.block_p
  (stride_h, stride_w), (dilation_h, dilation_w) = geometry.stride, geometry.dilation
  offsets = jnp.clip(fields[:, 0:2], -halo.max_offset, halo.max_offset)
  position = jax.lax.broadcasted_iota(jnp.int32, (block_p, 1), 0)
  tile_row = jax.lax.shift_right_logical(position, int(math.log2(halo.block_w)))
  tile_col = jax.lax.bitwise_and(position, halo.block_w - 1)
  # Halo-relative sample position without the offset, in int32 (the tap is a scalar of the grid), then one
  # vector conversion: y = r * stride + a * dilation + max_offset + dy (see pallas_tpu._halo_geometry).
  base_y = (tile_row * stride_h + (tap_row * dilation_h + halo.max_offset)).astype(jnp.float32)
  base_x = (tile_col * stride_w + (tap_col * dilation_w + halo.max_offset)).astype(jnp.float32)
  y = base_y + offsets[:, 0:1]  # [block_p, 1]
  x = base_x + offsets[:, 1:2]
  y0, x0 = jnp.floor(y), jnp.floor(x)
  ly, lx = y - y0, x - x0
  corner = y0.astype(jnp.int32) * halo.halo_w + x0.astype(jnp.int32)  # [block_p, 1]
  scale = fields[:, 2:3] if has_mask else 1.0
  halo_pixel = jax.lax.broadcasted_iota(jnp.int32, (block_p, halo.halo_pixels), 1)
  return bilinear_one_hot(halo_pixel, corner, ly, lx, scale, halo.halo_w)


def _projected_kernel(z_ref, instance_ref, fields_ref, out_ref, acc_ref, *, geometry: ConvGeometry,
                      halo: _HaloGeometry, has_mask: bool, dot_precision):
  """One program: tap program_id(3) of output tile [I, block_r, block_w, O] of output image program_id(0).

  z_ref [halo_r, halo_w, O] (this tap's z), instance_ref [I, halo_pixels], fields_ref [block_r, block_w, F],
  out_ref [I, block_r, block_w, O], acc_ref [I, block_p, O] fp32 scratch.
  """
  step = pl.program_id(3)  # group * K + tap

  @pl.when(step == 0)
  def _():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  tap = jax.lax.rem(step, geometry.taps)
  tap_row, tap_col = jax.lax.div(tap, geometry.kernel_w), jax.lax.rem(tap, geometry.kernel_w)
  fields = fields_ref[...].reshape(halo.block_p, fields_ref.shape[-1])
  interpolation = _interpolation_matrix(fields, tap_row, tap_col, geometry, halo, has_mask)
  z_halo = z_ref[...].reshape(halo.halo_pixels, geometry.out_channels)  # [halo_pixels, O]

  def accumulate_instance(instance, carry):
    sampler = interpolation * instance_ref[pl.ds(instance, 1), :].astype(jnp.float32)  # columns x M_i
    acc_ref[instance] += jnp.dot(sampler.astype(z_halo.dtype), z_halo, precision=dot_precision,
                                 preferred_element_type=jnp.float32)  # [block_p, O]
    return carry

  jax.lax.fori_loop(0, acc_ref.shape[0], accumulate_instance, 0)

  @pl.when(step == pl.num_programs(3) - 1)
  def _():
    out_ref[...] = acc_ref[...].reshape(out_ref.shape).astype(out_ref.dtype)


def _projected_halo_source(x, weight, geometry: ConvGeometry, halo: _HaloGeometry, padded_hw):
  """z [N, G*K, Hp, Wp, O] in x's dtype: the per-frame GEMM (projected.py's helpers), then zero-padded.

  Projecting before padding keeps the GEMM to the image's pixels; XLA fuses the pad with the transpose that
  puts each tap's z in its own [Hp, Wp, O] plane.
  """
  n, h, w = geometry.batch, geometry.height, geometry.width
  groups, taps, out_channels = geometry.offset_groups, geometry.taps, geometry.out_channels
  x_grouped = x.reshape(-1, groups, geometry.group_channels)  # [N*H*W, G, Cg]
  z = _dot(x_grouped, _grouped_weight(weight, geometry).astype(x.dtype), ((2,), (1,)), ((1,), (0,)))
  z = z.astype(x.dtype).reshape(groups, n, h, w, taps * out_channels)  # [G, N, H, W, K*O]
  z = jnp.moveaxis(z, 0, 3).reshape(n, h, w, groups * taps * out_channels)  # [N, H, W, G*K*O]
  z = _zero_pad_image(z, halo, padded_hw)  # [N, Hp, Wp, G*K*O]
  z = z.reshape(n, *padded_hw, groups * taps, out_channels)
  return jnp.transpose(z, (0, 3, 1, 2, 4))


def _sample_fields(offsets, mask, geometry: ConvGeometry, halo: _HaloGeometry):
  """offsets [N*R, Ho, Wo, G, K, 2] (and mask) -> [N*R, G*K, T*block_r, U*block_w, 2 or 3] fp32."""
  images, steps = geometry.out_batch, geometry.offset_groups * geometry.taps
  fields = offsets.astype(jnp.float32).reshape(images, geometry.out_h, geometry.out_w, steps, 2)
  if mask is not None:
    modulation = mask.astype(jnp.float32).reshape(images, geometry.out_h, geometry.out_w, steps, 1)
    fields = jnp.concatenate([fields, modulation], axis=-1)
  fields = _pad_to_tiles(fields, halo.row_tiles * halo.block_r, halo.col_tiles * halo.block_w)
  return jnp.transpose(fields, (0, 3, 1, 2, 4))


@functools.partial(jax.jit, static_argnames=("geometry", "max_offset", "interpret", "tiling"))
def _projected_forward(x, instance_masks, offsets, mask, weight, *, geometry: ConvGeometry, max_offset,
                       interpret, tiling):
  """Returns [N*R, I, Ho, Wo, O] in x's dtype."""
  halo = _halo_geometry(geometry, max_offset=max_offset, tiling=tiling)
  images, warps, instances = geometry.out_batch, geometry.warps, geometry.num_instances
  steps, out_channels = geometry.offset_groups * geometry.taps, geometry.out_channels
  stride_h, stride_w = geometry.stride
  out_rows, out_cols = halo.row_tiles * halo.block_r, halo.col_tiles * halo.block_w
  # The last tile's halo ends at (tiles - 1) * block * stride + halo size; the image may already reach further.
  padded_h = max((halo.row_tiles - 1) * halo.block_r * stride_h + halo.halo_r, halo.margin_h + geometry.height)
  padded_w = max((halo.col_tiles - 1) * halo.block_w * stride_w + halo.halo_w, halo.margin_w + geometry.width)

  z = _projected_halo_source(x, weight, geometry, halo, (padded_h, padded_w))
  instance_halos = _instance_halos(instance_masks, halo, (padded_h, padded_w), geometry.stride)
  fields = _sample_fields(offsets, mask, geometry, halo)
  # Image b of the output (and of the fields) reads frame b // R of z and of the instance masks.
  frame = lambda b: jax.lax.div(b, warps)
  in_specs = [
      # As in pallas_tpu.py: every non-squeezed dim of an element-indexed block is an Element.
      pl.BlockSpec((None, None, pl.Element(halo.halo_r), pl.Element(halo.halo_w), pl.Element(out_channels)),
                   lambda b, t, u, s: (frame(b), s, t * halo.block_r * stride_h, u * halo.block_w * stride_w, 0)),
      pl.BlockSpec((None, None, None, instances, halo.halo_pixels), lambda b, t, u, s: (frame(b), t, u, 0, 0)),
      pl.BlockSpec((None, None, halo.block_r, halo.block_w, fields.shape[-1]),
                   lambda b, t, u, s: (b, s, t, u, 0)),
  ]
  kernel = functools.partial(
      _projected_kernel, geometry=geometry, halo=halo, has_mask=mask is not None,
      dot_precision=jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None)
  out = pl.pallas_call(
      kernel,
      grid=(images, halo.row_tiles, halo.col_tiles, steps),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((None, instances, halo.block_r, halo.block_w, out_channels),
                             lambda b, t, u, s: (b, 0, t, u, 0)),
      out_shape=jax.ShapeDtypeStruct((images, instances, out_rows, out_cols, out_channels), x.dtype),
      scratch_shapes=[pltpu.VMEM((instances, halo.block_p, out_channels), jnp.float32)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"),
                                           vmem_limit_bytes=VMEM_LIMIT_BYTES),
      interpret=interpret,
      name="masked_deform_conv2d_projected_fwd_tpu",
  )(z, instance_halos, fields)
  return out[:, :, :geometry.out_h, :geometry.out_w]


def masked_deform_conv2d_fwd(x: jax.Array, instance_masks: jax.Array, offsets: jax.Array,
                             mask: jax.Array | None, weight: jax.Array, *, stride: IntOrPair,
                             padding: IntOrPair, dilation: IntOrPair, offset_groups: int, warps: int = 1,
                             interpret: bool = False, max_offset: int | None = None,
                             tiling: Tiling = Tiling()) -> jax.Array:
  """DCN(M_i * x) for the I instance masks [N, I, H, W] of each frame: returns [N*R, I, Ho, Wo, O] in x.dtype.

  x [N, H, W, C]; offsets [N*R, Ho, Wo, G, kh*kw, 2] as (dy, dx); mask [N*R, Ho, Wo, G, kh*kw] or None;
  weight [kh, kw, C, O] in x's dtype; R = warps offset fields per frame, output image b reading frame b // R.
  Offsets are clamped to [-max_offset, max_offset] (pallas_tpu.py's bound: exact within it; None reads it
  from concrete offsets, DEFAULT_MAX_OFFSET under a trace). z is rounded to x's dtype, and so is S_i for the
  MXU; accumulation is fp32.
  """
  geometry = ConvGeometry.from_arguments(
      "pallas_tpu_projected.masked_deform_conv2d_fwd", x=x, offsets=offsets, weight=weight, mask=mask,
      instance_masks=instance_masks, stride=stride, padding=padding, dilation=dilation,
      offset_groups=offset_groups, weight_dtype_of_x=True, warps=warps)
  return _projected_forward(x, instance_masks, offsets, mask, weight, geometry=geometry,
                            max_offset=_resolve_max_offset(offsets, max_offset), interpret=interpret,
                            tiling=tiling)
