"""Deformable convolution in pure JAX: bilinear corner gathers, one GEMM, and an explicit backward.

Layout (NHWC): x [N, H, W, C], weight [kh, kw, C, O], offsets [N, Ho, Wo, G, K, 2] in (dy, dx), mask
[N, Ho, Wo, G, K] or None, with K = kh * kw taps and G offset groups of Cg = C / G channels each.

Sampling follows torchvision.ops.deform_conv2d: the sample for output (i, j), tap (a, b) sits at
y = i * stride - padding + a * dilation + dy (x likewise) and is the bilinear blend of its four integer
corners, a corner outside the image contributing zero. Zero-padding x by one pixel on every side makes that
rule a plain gather: every corner of a sample with -1 <= y < H and -1 <= x < W lands inside the padded image,
and a sample outside that range has no corner in the image at all, so its weights are zeroed.

The column matrix [N * Ho * Wo, K * C] never exists whole for big inputs: the output rows are processed in
chunks (a `lax.scan`) so that one chunk's columns stay under an element budget. The backward recomputes
the columns chunk by chunk instead of keeping them (they are K times larger than x). On CPU the budget is
small on purpose: XLA:CPU maps every large temporary afresh on each call and pays a page fault per 4 KiB,
while a scan reuses one small set of buffers that stays in cache (3x faster backward at the sizes we bench).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from maskprop_jax.kernels.geometry import ConvGeometry, IntOrPair, Pair

# Elements of one chunk's column matrix; the backward keeps a few arrays of this size alive.
CPU_CHUNK_ELEMENTS = 1 << 20  # 4 MiB in fp32
ACCELERATOR_CHUNK_ELEMENTS = 1 << 26  # 256 MiB in fp32: big GEMMs, few scan steps


def default_chunk_elements() -> int:
  return CPU_CHUNK_ELEMENTS if jax.default_backend() == "cpu" else ACCELERATOR_CHUNK_ELEMENTS


def _padded_hw(geometry: ConvGeometry) -> Pair:
  """Size of x after the one-pixel zero border that turns the corner rule into a plain gather."""
  return geometry.height + 2, geometry.width + 2


def _chunk_rows(num_rows: int, row_elements: int, chunk_elements: int) -> int:
  """Output rows per chunk: as many as fit the element budget, and all of them when they fit."""
  rows = max(1, chunk_elements // max(row_elements, 1))
  return min(rows, num_rows)


def _tap_bases(rows, geometry: ConvGeometry, batch: int):
  """Integer sample position of every tap before the offset is added, and the image of each output row.

  rows: [m] global output-row ids (n * Ho * Wo + i * Wo + j); ids past the end belong to padding rows.
  Returns base [m, K, 1, 2] float32 (y, x) and image [m] int32.
  """
  ho, wo = geometry.out_hw
  kh, kw = geometry.kernel_hw
  image = jnp.minimum(rows // (ho * wo), batch - 1)  # padding rows reuse the last image
  i = (rows // wo) % ho
  j = rows % wo
  tap = jnp.arange(kh * kw)
  base_y = i[:, None] * geometry.stride[0] - geometry.padding[0] + (tap // kw)[None, :] * geometry.dilation[0]
  base_x = j[:, None] * geometry.stride[1] - geometry.padding[1] + (tap % kw)[None, :] * geometry.dilation[1]
  base = jnp.stack([base_y, base_x], axis=-1).astype(jnp.float32)  # [m, K, 2]
  return base[:, :, None, :], image


def _corner_weights(offsets, mask, base, in_hw: Pair):
  """Bilinear weights of the four corners of every sample, and the padded position of the top-left corner.

  Differentiable in offsets and mask: floor() has a zero derivative, so the derivative of a weight at an
  integer position is the one from the right, as torchvision's offset gradient.
  offsets [m, K, G, 2], mask [m, K, G] or None, base [m, K, 1, 2].
  Returns weights [m, K, G, 4] float32 (corners (0,0), (0,1), (1,0), (1,1) in (dy, dx)) and aux
  corner [m, K, G, 2] int32 (top-left corner in padded coordinates).
  """
  pos = base + offsets.astype(jnp.float32)  # [m, K, G, 2]
  low = jnp.floor(pos)
  frac = pos - low
  limit = jnp.array(in_hw, jnp.float32) - 1.0
  inside = jnp.all((low >= -1.0) & (low <= limit), axis=-1)  # [m, K, G]
  fy, fx = frac[..., 0], frac[..., 1]
  weights = jnp.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], axis=-1)
  weights = weights * inside[..., None]
  if mask is not None:
    weights = weights * mask.astype(jnp.float32)[..., None]
  corner = (jnp.clip(low, -1.0, limit) + 1.0).astype(jnp.int32)
  return weights, corner


def _corner_weights_vjp(offsets, mask, base, in_hw: Pair):
  """`_corner_weights` plus a function mapping d(weights) to (d offsets, d mask)."""
  if mask is None:
    weights, vjp, corner = jax.vjp(lambda o: _corner_weights(o, None, base, in_hw), offsets, has_aux=True)
    return weights, corner, lambda d_weights: (vjp(d_weights)[0], None)
  weights, vjp, corner = jax.vjp(lambda o, m: _corner_weights(o, m, base, in_hw), offsets, mask,
                                 has_aux=True)
  return weights, corner, vjp


@dataclasses.dataclass(frozen=True)
class _Gathers:
  """Row indices of the four corners of every sample in the flattened padded x and instance masks."""

  x_rows: jax.Array  # [m * K * G] row of the top-left corner in x_flat [N * Hp * Wp * G, Cg]
  x_steps: tuple[int, int, int, int]  # row distance from the top-left corner to each corner
  mask_rows: jax.Array  # [m * K * G] row of the top-left corner in masks_flat [N * Hp * Wp, I]
  mask_steps: tuple[int, int, int, int]


def _gather_rows(corner, image, geometry: ConvGeometry) -> _Gathers:
  hp, wp = _padded_hw(geometry)
  groups = geometry.offset_groups
  pixel = (image[:, None, None] * hp + corner[..., 0]) * wp + corner[..., 1]  # [m, K, G]
  x_rows = pixel * groups + jnp.arange(groups)[None, None, :]
  return _Gathers(x_rows.reshape(-1), (0, groups, wp * groups, (wp + 1) * groups), pixel.reshape(-1),
                  (0, 1, wp, wp + 1))


def _take(table, rows):
  return table.at[rows].get(mode="promise_in_bounds")


def _pad_flat_x(x, groups: int):
  """x [N, H, W, C] -> zero-padded rows [N * (H+2) * (W+2) * G, Cg]."""
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return xp.reshape(-1, x.shape[-1] // groups)


def _pad_flat_masks(instance_masks):
  """instance_masks [N, I, H, W] -> zero-padded rows [N * (H+2) * (W+2), I]."""
  masks = jnp.pad(jnp.transpose(instance_masks, (0, 2, 3, 1)), ((0, 0), (1, 1), (1, 1), (0, 0)))
  return masks.reshape(-1, instance_masks.shape[1])


def _columns(x_flat, masks_flat, weights, gathers: _Gathers):
  """Sampled columns of one chunk in float32: [m * K * G, Cg] without instance masks, else [m, I, K * G, Cg].

  Everything stays 2-D / row-major with channels minor: XLA:CPU vectorises those loops, not ones with
  size-1 middle axes.
  """
  m = weights.shape[0]
  columns = 0.0
  for q in range(4):
    values = _take(x_flat, gathers.x_rows + gathers.x_steps[q]).astype(jnp.float32)  # [mKG, Cg]
    weight_q = weights[..., q].reshape(-1)  # [mKG]
    if masks_flat is None:
      columns = columns + weight_q[:, None] * values
    else:
      at_corner = _take(masks_flat, gathers.mask_rows + gathers.mask_steps[q]).astype(jnp.float32)  # [mKG, I]
      scale = jnp.swapaxes((weight_q[:, None] * at_corner).reshape(m, -1, at_corner.shape[-1]), 1, 2)
      columns = columns + scale[..., None] * values.reshape(m, 1, -1, values.shape[-1])  # [m, I, KG, Cg]
  return columns


def _matmul(a, b, dims):
  """a . b with float32 accumulation; full fp32 precision for fp32 operands (no TF32 / bf16 passes)."""
  precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return jax.lax.dot_general(a, b, (dims, ((), ())), precision=precision,
                             preferred_element_type=jnp.float32)


def _chunked(x, offsets, mask, instance_masks, geometry: ConvGeometry, chunk_elements: int | None):
  """Flattens the per-row inputs and splits them into equal chunks (the last one padded).

  chunk_elements: column-matrix elements per chunk; None picks the backend's default.

  Returns (rows_per_chunk, num_chunks, offsets [c, m, K, G, 2], mask [c, m, K, G] or None).
  """
  batch = x.shape[0]
  num_rows = batch * geometry.out_hw[0] * geometry.out_hw[1]
  instances = 1 if instance_masks is None else instance_masks.shape[1]
  budget = default_chunk_elements() if chunk_elements is None else chunk_elements
  rows_per_chunk = _chunk_rows(num_rows, geometry.taps * x.shape[-1] * instances, budget)
  num_chunks = math.ceil(num_rows / rows_per_chunk)
  extra = num_chunks * rows_per_chunk - num_rows

  def split(a):  # [N, Ho, Wo, G, K, ...] -> [c, m, K, G, ...]
    a = jnp.swapaxes(a.reshape((num_rows,) + a.shape[3:]), 1, 2)
    a = jnp.pad(a, ((0, extra),) + ((0, 0),) * (a.ndim - 1))
    return a.reshape((num_chunks, rows_per_chunk) + a.shape[1:])

  return rows_per_chunk, num_chunks, split(offsets), None if mask is None else split(mask)


def _unchunk(a, num_rows: int, lead_shape: tuple[int, ...]):
  """[c, m, ...] -> lead_shape + [...] after dropping the padding rows."""
  a = a.reshape((-1,) + a.shape[2:])[:num_rows]
  return a.reshape(lead_shape + a.shape[1:])


def _scan_chunks(body: Callable, carry, xs, num_chunks: int):
  """lax.scan over chunks, or one direct call when there is a single chunk (no loop overhead)."""
  if num_chunks == 1:
    carry, out = body(carry, (jnp.zeros((), jnp.int32),) + jax.tree.map(lambda a: a[0], xs))
    return carry, jax.tree.map(lambda a: a[None], out)
  return jax.lax.scan(body, carry, (jnp.arange(num_chunks, dtype=jnp.int32),) + xs)


def deform_conv2d_fwd(x, offsets, mask, weight, *, stride: IntOrPair, padding: IntOrPair, dilation: IntOrPair,
                      offset_groups: int, instance_masks=None, chunk_elements: int | None = None):
  """Forward pass. Returns [N, Ho, Wo, O], or [N, I, Ho, Wo, O] = DCN(M_i * x) given instance_masks [N, I, H, W].

  stride, padding and dilation are ints or (h, w) pairs; every argument is checked by kernels.geometry.
  """
  geometry = ConvGeometry.from_arguments(
      "xla_impl.deform_conv2d_fwd", x=x, offsets=offsets, weight=weight, mask=mask,
      instance_masks=instance_masks, stride=stride, padding=padding, dilation=dilation,
      offset_groups=offset_groups)
  batch, channels, out_channels = geometry.batch, geometry.channels, geometry.out_channels
  groups = geometry.offset_groups
  rows_per_chunk, num_chunks, offsets_c, mask_c = _chunked(x, offsets, mask, instance_masks, geometry,
                                                           chunk_elements)
  x_flat = _pad_flat_x(x, groups)
  masks_flat = None if instance_masks is None else _pad_flat_masks(instance_masks)
  weight_mat = weight.reshape(geometry.taps * channels, out_channels)  # rows ordered (tap, group, channel)

  def body(carry, chunk):
    index, chunk_offsets, chunk_mask = chunk
    rows = index * rows_per_chunk + jnp.arange(rows_per_chunk)
    base, image = _tap_bases(rows, geometry, batch)
    weights, corner = _corner_weights(chunk_offsets, chunk_mask, base, geometry.in_hw)
    columns = _columns(x_flat, masks_flat, weights, _gather_rows(corner, image, geometry))
    columns = columns.reshape(-1, geometry.taps * channels).astype(x.dtype)  # [m (* I), K * C]
    out = _matmul(columns, weight_mat.astype(x.dtype), ((1,), (0,)))  # [m (* I), O]
    return carry, out.astype(x.dtype).reshape(rows_per_chunk, -1, out_channels)

  _, out = _scan_chunks(body, (), (offsets_c, mask_c), num_chunks)  # [c, m, I, O]
  num_rows = batch * geometry.out_hw[0] * geometry.out_hw[1]
  out = _unchunk(out, num_rows, (batch,) + geometry.out_hw)  # [N, Ho, Wo, I, O]
  if instance_masks is None:
    return out[:, :, :, 0]
  return jnp.transpose(out, (0, 3, 1, 2, 4))


def deform_conv2d_bwd(x, offsets, mask, weight, out_grad, *, stride: IntOrPair, padding: IntOrPair,
                      dilation: IntOrPair, offset_groups: int, instance_masks=None,
                      chunk_elements: int | None = None):
  """Gradients of `deform_conv2d_fwd` with respect to (x, offsets, mask, weight, instance_masks).

  out_grad has the forward output's shape. The gradient of mask / instance_masks is None when that input is.
  x's gradient is a scatter-add of each corner's share of the column gradient; the offset and mask gradients
  come from the column gradient dotted with the gathered corner values, pushed through the corner weights.
  Explicit rather than jax.vjp of the forward: the two take the same time on CPU (measured at
  2x48x80x256), but autodiff through the scan keeps every chunk's gathered corners as residuals, K times the
  memory of x, where this recomputes them.
  """
  geometry = ConvGeometry.from_arguments(
      "xla_impl.deform_conv2d_bwd", x=x, offsets=offsets, weight=weight, mask=mask,
      instance_masks=instance_masks, stride=stride, padding=padding, dilation=dilation,
      offset_groups=offset_groups)
  batch, channels, out_channels = geometry.batch, geometry.channels, geometry.out_channels
  groups = geometry.offset_groups
  taps = geometry.taps
  rows_per_chunk, num_chunks, offsets_c, mask_c = _chunked(x, offsets, mask, instance_masks, geometry,
                                                           chunk_elements)
  num_rows = batch * geometry.out_hw[0] * geometry.out_hw[1]
  x_flat = _pad_flat_x(x, groups)
  masks_flat = None if instance_masks is None else _pad_flat_masks(instance_masks)
  weight_mat = weight.reshape(taps * channels, out_channels).astype(x.dtype)

  if instance_masks is None:
    grads = out_grad[:, :, :, None]  # [N, Ho, Wo, 1, O]
  else:
    grads = jnp.transpose(out_grad, (0, 2, 3, 1, 4))  # [N, Ho, Wo, I, O]
  instances = grads.shape[3]
  grads = jnp.pad(grads.reshape(num_rows, instances, out_channels),
                  ((0, num_chunks * rows_per_chunk - num_rows), (0, 0), (0, 0)))
  grads_c = grads.reshape(num_chunks, rows_per_chunk, instances, out_channels)

  def body(carry, chunk):
    d_x_flat, d_masks_flat, d_weight = carry
    index, chunk_offsets, chunk_mask, chunk_grads = chunk
    rows = index * rows_per_chunk + jnp.arange(rows_per_chunk)
    base, image = _tap_bases(rows, geometry, batch)
    weights, corner, weights_vjp = _corner_weights_vjp(chunk_offsets, chunk_mask, base, geometry.in_hw)
    gathers = _gather_rows(corner, image, geometry)
    flat_grads = chunk_grads.reshape(-1, out_channels).astype(x.dtype)  # [m * I, O]
    columns = _columns(x_flat, masks_flat, weights, gathers).reshape(-1, taps * channels)
    d_weight = d_weight + _matmul(columns.astype(x.dtype), flat_grads, ((0,), (0,)))  # [K * C, O]
    d_columns = _matmul(flat_grads, weight_mat, ((1,), (1,)))  # [m * I, K * C]
    d_columns = d_columns.reshape(rows_per_chunk, instances, taps * groups, -1)  # [m, I, KG, Cg]
    d_weights = []
    for q in range(4):
      weight_q = weights[..., q].reshape(rows_per_chunk, -1)  # [m, KG]
      x_rows = gathers.x_rows + gathers.x_steps[q]  # [mKG]
      values = _take(x_flat, x_rows).astype(jnp.float32)  # [mKG, Cg]
      if masks_flat is None:
        # Stay 2-D: XLA:CPU reduces [rows, Cg] fast but [m, 1, KG, Cg] an order of magnitude slower.
        d_columns_2d = d_columns.reshape(values.shape)
        d_values = weight_q.reshape(-1, 1) * d_columns_2d  # [mKG, Cg]
        d_weights.append(jnp.sum(values * d_columns_2d, axis=-1))
      else:
        values = values.reshape(rows_per_chunk, 1, taps * groups, -1)
        d_scale = jnp.sum(values * d_columns, axis=-1)  # [m, I, KG]
        mask_rows = gathers.mask_rows + gathers.mask_steps[q]
        at_corner = jnp.swapaxes(_take(masks_flat, mask_rows).astype(jnp.float32).reshape(
            rows_per_chunk, taps * groups, instances), 1, 2)  # [m, I, KG]
        scale = weight_q[:, None] * at_corner
        d_values = sum(scale[:, i, :, None] * d_columns[:, i] for i in range(instances))  # [m, KG, Cg]
        d_masks_flat = d_masks_flat.at[mask_rows].add(
            jnp.swapaxes(weight_q[:, None] * d_scale, 1, 2).reshape(-1, instances), mode="promise_in_bounds")
        d_weights.append(jnp.sum(at_corner * d_scale, axis=1).reshape(-1))
      d_x_flat = d_x_flat.at[x_rows].add(d_values.reshape(x_rows.shape[0], -1), mode="promise_in_bounds")
    d_offsets, d_mask = weights_vjp(jnp.stack(d_weights, axis=-1).reshape(weights.shape))
    return (d_x_flat, d_masks_flat, d_weight), (d_offsets, d_mask)

  carry = (jnp.zeros(x_flat.shape, jnp.float32),
           None if masks_flat is None else jnp.zeros(masks_flat.shape, jnp.float32),
           jnp.zeros(weight_mat.shape, jnp.float32))
  (d_x_flat, d_masks_flat, d_weight), (d_offsets, d_mask) = _scan_chunks(
      body, carry, (offsets_c, mask_c, grads_c), num_chunks)

  hp, wp = _padded_hw(geometry)
  h, w = geometry.in_hw
  d_x = d_x_flat.reshape(batch, hp, wp, channels)[:, 1:h + 1, 1:w + 1].astype(x.dtype)
  d_offsets = jnp.swapaxes(_unchunk(d_offsets, num_rows, (batch,) + geometry.out_hw), 3, 4)
  d_mask = None if mask is None else jnp.swapaxes(_unchunk(d_mask, num_rows, (batch,) + geometry.out_hw), 3, 4)
  d_instance_masks = None
  if instance_masks is not None:
    d_masks = d_masks_flat.reshape(batch, hp, wp, instances)[:, 1:h + 1, 1:w + 1]
    d_instance_masks = jnp.transpose(d_masks, (0, 3, 1, 2)).astype(instance_masks.dtype)
  return (d_x, d_offsets.astype(offsets.dtype), None if d_mask is None else d_mask.astype(mask.dtype),
          d_weight.reshape(weight.shape).astype(weight.dtype), d_instance_masks)
