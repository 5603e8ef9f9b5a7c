"""Deformable convolution forward as a Pallas TPU (Mosaic) kernel: bilinear sampling as one-hot MXU matmuls.

TPUs have no fast per-lane gather, so sampling is phrased as matrix products. A program owns a tile of
BLOCK_R x BLOCK_W output positions (BLOCK_P = BLOCK_R * BLOCK_W of them) and loads the window of x that
those positions' samples can reach (the halo) into VMEM. For every tap it builds the interpolation matrix
S [BLOCK_P, HALO_PIXELS], whose row p holds the four bilinear corner weights of sample p at the halo
pixels they fall on, and computes (S @ halo) @ weight[tap] on the MXU.

Reach of a sample, and why offsets are clamped: a halo is finite, so the kernel takes a static bound
`max_offset` on |dy| and |dx| and clamps every offset to [-max_offset, max_offset] before sampling. Inputs
within the bound give exactly the torchvision result; inputs beyond it are sampled at the clamped position.
`deform_conv2d_fwd` called on concrete arrays with `max_offset=None` measures the bound from the offsets
(exact); under a trace it cannot, and uses DEFAULT_MAX_OFFSET. A caller that needs exactness for larger
offsets passes a larger bound (a bigger halo) or uses the XLA implementation.

The masked form DCN(M_i * x) loads the halo once and, per instance, scales S's columns by the instance
mask at each halo pixel: each corner weight times the mask value at that corner, exact. The instance-mask
halos are cut by the wrapper (I x HALO_PIXELS values per tile, small next to the C-channel x halo) so that
the kernel reads them as lane-major rows.

Padding makes the corner rule free: x is zero-padded by `padding + max_offset` (and to whole tiles), so a
corner outside the image reads a zero. Layout (NHWC, as everywhere in the project):
  x              [N, Hp, Wp, C]           halo windows [HALO_R, HALO_W, C] via pl.Element block dims
  instance_masks [N, T, U, I, HALO_PIXELS] per-tile halos (T x U tiles)
  offsets        [N, T*BLOCK_R, U*BLOCK_W, G*K*2] fp32, mask [.., G*K] fp32
  weight         [K, C, O]
  out            [N, I, T*BLOCK_R, U*BLOCK_W, O]
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from maskprop_jax.kernels.geometry import ConvGeometry, IntOrPair

# Offsets the kernel samples exactly when the bound cannot be read from the data (inside jit).
DEFAULT_MAX_OFFSET = 8

# MaskProp's fp32 shape (C = O = 256, I = 10, default tiles) needs about 12 MiB of VMEM (halo and output
# double-buffered, weight, accumulators, the interpolation matrix), close to the 16 MiB default scoped
# limit of v4/v5 chips; 48 MiB leaves room and fits the physical VMEM of every generation (64 MiB on v7x).
VMEM_LIMIT_BYTES = 48 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Tiling:
  """Output tile of one program. block_w is a power of two >= 8 so tiles collapse into (sublane) rows."""
  block_r: int = 8
  block_w: int = 16


@dataclasses.dataclass(frozen=True)
class _HaloGeometry:
  """Static sizes of the halo: the padded-x window that one output tile's samples can reach."""
  block_r: int
  block_w: int
  halo_r: int
  halo_w: int
  row_tiles: int
  col_tiles: int
  margin_h: int  # zeros added above row 0 of x
  margin_w: int  # zeros added left of column 0 of x
  max_offset: int

  @property
  def block_p(self) -> int:
    return self.block_r * self.block_w

  @property
  def halo_pixels(self) -> int:
    return self.halo_r * self.halo_w


def _halo_geometry(geometry: ConvGeometry, *, max_offset: int, tiling: Tiling) -> _HaloGeometry:
  if tiling.block_w < 8 or tiling.block_w & (tiling.block_w - 1) or tiling.block_r < 1:
    raise ValueError(f"pallas_tpu.Tiling: block_w must be a power of two >= 8 and block_r >= 1, got {tiling}")
  block_r = min(tiling.block_r, geometry.out_h)
  block_w = max(8, min(tiling.block_w, 1 << (geometry.out_w - 1).bit_length()))
  (stride_h, stride_w), (dilation_h, dilation_w) = geometry.stride, geometry.dilation
  # Halo-relative sample row of output row r, tap row a: r*s + a*d + dy + max_offset (margin - padding),
  # so with |dy| <= max_offset its floor corner is >= 0 and its ceil corner < halo_r below.
  halo_r = (block_r - 1) * stride_h + (geometry.kernel_h - 1) * dilation_h + 2 * max_offset + 2
  halo_w = (block_w - 1) * stride_w + (geometry.kernel_w - 1) * dilation_w + 2 * max_offset + 2
  halo_w = -(-halo_w // 16) * 16  # whole bf16 sublane tiles, so [halo_r, halo_w, C] collapses for free
  return _HaloGeometry(block_r, block_w, halo_r, halo_w, row_tiles=-(-geometry.out_h // block_r),
                       col_tiles=-(-geometry.out_w // block_w), margin_h=geometry.padding[0] + max_offset,
                       margin_w=geometry.padding[1] + max_offset, max_offset=max_offset)


def bilinear_one_hot(halo_pixel, corner, ly, lx, scale, halo_w: int):
  """S [block_p, halo_pixels]: row p holds sample p's four bilinear corner weights (times `scale`) at the halo
  pixels they fall on. halo_pixel: iota over the halo's pixels; corner [block_p, 1] the top-left corner's halo
  pixel; ly, lx [block_p, 1] the fractional parts; scale a modulation column or 1.0."""
  return (jnp.where(halo_pixel == corner, (1 - ly) * (1 - lx) * scale, 0.0)
          + jnp.where(halo_pixel == corner + 1, (1 - ly) * lx * scale, 0.0)
          + jnp.where(halo_pixel == corner + halo_w, ly * (1 - lx) * scale, 0.0)
          + jnp.where(halo_pixel == corner + halo_w + 1, ly * lx * scale, 0.0))


def _deform_conv_kernel(*refs, geometry: ConvGeometry, halo: _HaloGeometry, has_mask: bool,
                        has_instances: bool, dot_precision):
  """One program: output tile [I, block_r, block_w, O] of batch element program_id(0)."""
  refs = list(refs)
  x_ref = refs.pop(0)  # [halo_r, halo_w, C]
  instance_ref = refs.pop(0) if has_instances else None  # [I, halo_pixels]
  offsets_ref = refs.pop(0)  # [block_r, block_w, G*K*2]
  mask_ref = refs.pop(0) if has_mask else None  # [block_r, block_w, G*K]
  weight_ref, out_ref, acc_ref = refs  # [K, C, O], [I, block_r, block_w, O], [I, block_p, O] fp32
  block_p, taps, num_groups = halo.block_p, geometry.taps, geometry.offset_groups
  group_channels = geometry.group_channels
  compute_dtype = x_ref.dtype
  (stride_h, stride_w), (dilation_h, dilation_w) = geometry.stride, geometry.dilation

  halo_values = x_ref[...].reshape(halo.halo_pixels, geometry.channels)  # [halo_pixels, C]
  offsets = offsets_ref[...].reshape(block_p, num_groups * taps * 2)
  offsets = jnp.clip(offsets, -halo.max_offset, halo.max_offset)
  modulation = mask_ref[...].reshape(block_p, num_groups * taps) if has_mask else None
  position = jax.lax.broadcasted_iota(jnp.int32, (block_p, 1), 0)
  tile_row = jax.lax.shift_right_logical(position, int(math.log2(halo.block_w))).astype(jnp.float32)
  tile_col = jax.lax.bitwise_and(position, halo.block_w - 1).astype(jnp.float32)
  halo_pixel = jax.lax.broadcasted_iota(jnp.int32, (block_p, halo.halo_pixels), 1)
  acc_ref[...] = jnp.zeros_like(acc_ref)

  for group in range(num_groups):
    group_halo = halo_values[:, group * group_channels:(group + 1) * group_channels]  # [halo_pixels, Cg]
    for tap in range(taps):
      column = (group * taps + tap) * 2
      tap_row, tap_col = divmod(tap, geometry.kernel_w)
      y = tile_row * stride_h + (tap_row * dilation_h + halo.max_offset) + offsets[:, column:column + 1]
      x = tile_col * stride_w + (tap_col * dilation_w + halo.max_offset) + offsets[:, column + 1:column + 2]
      y0, x0 = jnp.floor(y), jnp.floor(x)
      ly, lx = y - y0, x - x0
      corner = y0.astype(jnp.int32) * halo.halo_w + x0.astype(jnp.int32)  # [block_p, 1]
      scale = modulation[:, group * taps + tap:group * taps + tap + 1] if has_mask else 1.0
      interpolation = bilinear_one_hot(halo_pixel, corner, ly, lx, scale, halo.halo_w)
      tap_weight = weight_ref[tap, group * group_channels:(group + 1) * group_channels, :]  # [Cg, O]

      def accumulate_instance(instance, carry, interpolation=interpolation, tap_weight=tap_weight,
                              group_halo=group_halo):
        sampler = interpolation  # [block_p, halo_pixels]
        if has_instances:
          sampler = sampler * instance_ref[pl.ds(instance, 1), :].astype(jnp.float32)
        sampled = jnp.dot(sampler.astype(compute_dtype), group_halo, precision=dot_precision,
                          preferred_element_type=jnp.float32)  # [block_p, Cg]
        acc_ref[instance] += jnp.dot(sampled.astype(compute_dtype), tap_weight, precision=dot_precision,
                                     preferred_element_type=jnp.float32)
        return carry

      jax.lax.fori_loop(0, acc_ref.shape[0], accumulate_instance, 0)

  out_ref[...] = acc_ref[...].reshape(out_ref.shape).astype(out_ref.dtype)


def _pad_to_tiles(array: jax.Array, rows: int, cols: int) -> jax.Array:
  """Zero-pads dims 1 and 2 of [N, Ho, Wo, ...] up to [N, rows, cols, ...]."""
  pads = [(0, 0), (0, rows - array.shape[1]), (0, cols - array.shape[2])] + [(0, 0)] * (array.ndim - 3)
  return jnp.pad(array, pads)


def _zero_pad_image(image: jax.Array, halo: _HaloGeometry, padded_hw: tuple[int, int]) -> jax.Array:
  """Zero-pads dims 1 and 2 of [N, H, W, ...] to padded_hw, with the halo margins before row/column 0."""
  rows = (halo.margin_h, padded_hw[0] - halo.margin_h - image.shape[1])
  cols = (halo.margin_w, padded_hw[1] - halo.margin_w - image.shape[2])
  return jnp.pad(image, ((0, 0), rows, cols) + ((0, 0),) * (image.ndim - 3))


def _instance_halos(instance_masks: jax.Array, halo: _HaloGeometry, padded_hw: tuple[int, int],
                    stride: tuple[int, int]) -> jax.Array:
  """Cuts every tile's halo out of the padded instance masks: [N, I, H, W] -> [N, T, U, I, halo_pixels]."""
  padded = _zero_pad_image(jnp.moveaxis(instance_masks.astype(jnp.float32), 1, 3), halo, padded_hw)
  padded = jnp.moveaxis(padded, 3, 1)  # [N, I, Hp, Wp]
  rows = (np.arange(halo.row_tiles) * halo.block_r * stride[0])[:, None] + np.arange(halo.halo_r)  # [T, halo_r]
  cols = (np.arange(halo.col_tiles) * halo.block_w * stride[1])[:, None] + np.arange(halo.halo_w)  # [U, halo_w]
  windows = padded[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # [N, I, T, U, halo_r, halo_w]
  windows = windows.reshape(*windows.shape[:4], halo.halo_pixels)
  return jnp.transpose(windows, (0, 2, 3, 1, 4))


@functools.partial(jax.jit, static_argnames=("geometry", "max_offset", "interpret", "tiling"))
def _fused_forward(x, instance_masks, offsets, mask, weight, *, geometry: ConvGeometry, max_offset, interpret,
                   tiling):
  """Shared wrapper of both public forms; returns [N, max(I, 1), Ho, Wo, O]."""
  halo = _halo_geometry(geometry, max_offset=max_offset, tiling=tiling)
  n, k, g = geometry.batch, geometry.taps, geometry.offset_groups
  stride_h, stride_w = geometry.stride
  num_outputs = max(geometry.num_instances, 1)
  out_rows, out_cols = halo.row_tiles * halo.block_r, halo.col_tiles * halo.block_w
  # The last tile's halo ends at (tiles - 1) * block * stride + halo size; x may already reach further.
  padded_h = max((halo.row_tiles - 1) * halo.block_r * stride_h + halo.halo_r, halo.margin_h + geometry.height)
  padded_w = max((halo.col_tiles - 1) * halo.block_w * stride_w + halo.halo_w, halo.margin_w + geometry.width)
  x_padded = _zero_pad_image(x, halo, (padded_h, padded_w))

  operands = [x_padded]
  # Mosaic wants every non-squeezed dim of an element-indexed block to be an Element, channels included.
  in_specs = [pl.BlockSpec((None, pl.Element(halo.halo_r), pl.Element(halo.halo_w), pl.Element(geometry.channels)),
                           lambda b, t, u: (b, t * halo.block_r * stride_h, u * halo.block_w * stride_w, 0))]
  if instance_masks is not None:
    operands.append(_instance_halos(instance_masks, halo, (padded_h, padded_w), geometry.stride))
    in_specs.append(pl.BlockSpec((None, None, None, num_outputs, halo.halo_pixels),
                                 lambda b, t, u: (b, t, u, 0, 0)))
  operands.append(_pad_to_tiles(offsets.astype(jnp.float32).reshape(n, geometry.out_h, geometry.out_w, -1),
                                out_rows, out_cols))
  in_specs.append(pl.BlockSpec((None, halo.block_r, halo.block_w, g * k * 2), lambda b, t, u: (b, t, u, 0)))
  if mask is not None:
    operands.append(_pad_to_tiles(mask.astype(jnp.float32).reshape(n, geometry.out_h, geometry.out_w, -1),
                                  out_rows, out_cols))
    in_specs.append(pl.BlockSpec((None, halo.block_r, halo.block_w, g * k), lambda b, t, u: (b, t, u, 0)))
  operands.append(weight.reshape(k, geometry.channels, geometry.out_channels))
  # The weight block never changes between programs: one buffer, fetched once.
  in_specs.append(pl.BlockSpec((k, geometry.channels, geometry.out_channels), lambda b, t, u: (0, 0, 0),
                               pipeline_mode=pl.Buffered(1)))

  kernel = functools.partial(
      _deform_conv_kernel, geometry=geometry, halo=halo, has_mask=mask is not None,
      has_instances=instance_masks is not None,
      dot_precision=jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None)
  out = pl.pallas_call(
      kernel,
      grid=(n, halo.row_tiles, halo.col_tiles),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((None, num_outputs, halo.block_r, halo.block_w, geometry.out_channels),
                             lambda b, t, u: (b, 0, t, u, 0)),
      out_shape=jax.ShapeDtypeStruct((n, num_outputs, out_rows, out_cols, geometry.out_channels), x.dtype),
      scratch_shapes=[pltpu.VMEM((num_outputs, halo.block_p, geometry.out_channels), jnp.float32)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"),
                                           vmem_limit_bytes=VMEM_LIMIT_BYTES),
      interpret=interpret,
      name="deform_conv2d_fwd_tpu",
  )(*operands)
  return out[:, :, :geometry.out_h, :geometry.out_w]


def _resolve_max_offset(offsets: jax.Array, max_offset: int | None) -> int:
  """The static offset bound: given, read from concrete offsets (exact), or DEFAULT_MAX_OFFSET under a trace."""
  if max_offset is not None:
    if max_offset < 0:
      raise ValueError(f"pallas_tpu: max_offset must be >= 0, got {max_offset}")
    return int(max_offset)
  if isinstance(offsets, jax.core.Tracer):
    return DEFAULT_MAX_OFFSET
  return int(np.ceil(float(jnp.max(jnp.abs(offsets))))) if offsets.size else 0


def deform_conv2d_fwd(x: jax.Array, offsets: jax.Array, mask: jax.Array | None, weight: jax.Array, *,
                      stride: IntOrPair, padding: IntOrPair, dilation: IntOrPair, offset_groups: int,
                      interpret: bool = False, max_offset: int | None = None,
                      tiling: Tiling = Tiling()) -> jax.Array:
  """Deformable convolution forward on a TPU (or Pallas interpret mode): returns [N, Ho, Wo, O].

  Layouts as `maskprop_jax.kernels.deform_conv2d`. Offsets are clamped to [-max_offset, max_offset]
  (see the module docstring for how the bound is chosen).
  """
  geometry = ConvGeometry.from_arguments(
      "pallas_tpu.deform_conv2d_fwd", x=x, offsets=offsets, weight=weight, mask=mask, stride=stride,
      padding=padding, dilation=dilation, offset_groups=offset_groups, weight_dtype_of_x=True)
  out = _fused_forward(x, None, offsets, mask, weight, geometry=geometry,
                       max_offset=_resolve_max_offset(offsets, max_offset), interpret=interpret, tiling=tiling)
  return out[:, 0]


def masked_deform_conv2d_fwd(x: jax.Array, instance_masks: jax.Array, offsets: jax.Array,
                             mask: jax.Array | None, weight: jax.Array, *, stride: IntOrPair,
                             padding: IntOrPair, dilation: IntOrPair, offset_groups: int,
                             interpret: bool = False, max_offset: int | None = None,
                             tiling: Tiling = Tiling()) -> jax.Array:
  """DCN(M_i * x) for the I instance masks [N, I, H, W] of a frame, shared offsets: returns [N, I, Ho, Wo, O].

  Exact within the offset bound: each bilinear corner's weight is scaled by the instance mask at that corner.
  """
  geometry = ConvGeometry.from_arguments(
      "pallas_tpu.masked_deform_conv2d_fwd", x=x, offsets=offsets, weight=weight, mask=mask,
      instance_masks=instance_masks, stride=stride, padding=padding, dilation=dilation,
      offset_groups=offset_groups, weight_dtype_of_x=True)
  return _fused_forward(x, instance_masks, offsets, mask, weight, geometry=geometry,
                        max_offset=_resolve_max_offset(offsets, max_offset), interpret=interpret,
                        tiling=tiling)
