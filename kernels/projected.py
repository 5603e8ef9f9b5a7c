"""masked_deform_conv2d with the projection first: z = x W once per frame, then a gather of z per instance.

DCN(M_i * x) at output p is sum_k W_k^T sum_corners w_c(p, k) m(p, k) M_i(c) x(c) (w_c bilinear weights, m the
modulation mask). The convolution is linear in x, so W_k can move inside the sum:

  out_i(p) = sum_{k, g, c} w_c(p, k, g) m(p, k, g) M_i(c) z[g, c, k]
  z[g, pixel, k] = x[pixel, channels of group g] @ W_k[rows of group g]   ([O], the projection)

z is one GEMM per frame ([pixels, Cg] x [Cg, K * O] per offset group g), paid once whatever the number of
instances; per instance and output what is left is a gather of O channels at 4 * K * G corners and a
[I, 4KG] x [4KG, O] contraction. The sample-then-GEMM form (kernels.xla_impl) costs a K*C x O GEMM per
instance and output, C / (4 G) times more multiply-adds per instance at C = O.

Exact, not an approximation: same corners, same weights, same out-of-image rule as xla_impl (whose corner
helpers this module calls, so the two cannot drift apart); only the order of the sums changes.

Layout: x [N, H, W, C], weight [kh, kw, C, O], offsets [N*R, Ho, Wo, G, K, 2] in (dy, dx), mask
[N*R, Ho, Wo, G, K] or None, instance_masks [N, I, H, W]; K = kh * kw taps, G offset groups of Cg = C / G
channels, P = N * Hp * Wp pixels of x zero-padded by one pixel (xla_impl's border, which turns the corner rule
into a plain gather). R warps per frame (kernels.geometry): output image b reads frame b // R, so MaskProp
projects a clip's center frame once for all its reference frames.

Memory: z is [G, P, K, O] (K * O / Cg times x), kept in x's dtype; the backward accumulates its gradient dz in
float32 (same size) because corners of different output chunks overlap. The output rows are processed in chunks
(a lax.scan, xla_impl's budget) so that one chunk's gathered z and its gradient stay bounded; at the test sizes
there is a single chunk unless a test asks for small ones. The corner weights and the corners' rows of all output
rows (three [rows, 4KG] 32-bit arrays, a small fraction of z) are computed once before the loop
(_sample_terms), and the offsets' gradient after it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from maskprop_jax.kernels.geometry import ConvGeometry, IntOrPair, warps_of
from maskprop_jax.kernels.xla_impl import (_chunk_rows, _corner_weights, _corner_weights_vjp, _pad_flat_masks,
                                           _padded_hw, _scan_chunks, _take, _tap_bases, _unchunk,
                                           default_chunk_elements)

_CORNERS = 4


def _dot(a, b, contract, batch):
  """dot_general with float32 accumulation; full fp32 precision for fp32 operands (no TF32 / bf16 passes)."""
  precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return jax.lax.dot_general(a, b, (contract, batch), precision=precision, preferred_element_type=jnp.float32)


def _grouped_weight(weight, geometry: ConvGeometry):
  """weight [kh, kw, C, O] -> [G, Cg, K * O]: group g's rows of every W_k, side by side."""
  groups, cg = geometry.offset_groups, geometry.group_channels
  w = weight.reshape(geometry.taps, groups, cg, geometry.out_channels)
  return jnp.transpose(w, (1, 2, 0, 3)).reshape(groups, cg, -1)


def _padded_x(x, geometry: ConvGeometry):
  """x [N, H, W, C] -> zero-padded [P, G, Cg]; the border projects to zero rows of z (there is no bias in z)."""
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return xp.reshape(-1, geometry.offset_groups, geometry.group_channels)


def _project(x, weight, geometry: ConvGeometry):
  """z [G * P * K, O] in x's dtype, row (g * P + pixel) * K + k: the per-frame GEMM, one per offset group."""
  xp = _padded_x(x, geometry)  # [P, G, Cg]
  z = _dot(xp, _grouped_weight(weight, geometry).astype(x.dtype), ((2,), (1,)), ((1,), (0,)))  # [G, P, K*O]
  return z.astype(x.dtype).reshape(-1, geometry.out_channels)


def _split_rows(a, num_rows: int, rows_per_chunk: int, num_chunks: int, swap_group_tap: bool):
  """[N, Ho, Wo, ...] -> [c, m, ...], the last chunk zero-padded; offsets / mask go (G, K) -> (K, G) order."""
  a = a.reshape((num_rows,) + a.shape[3:])
  if swap_group_tap:
    a = jnp.swapaxes(a, 1, 2)
  a = jnp.pad(a, ((0, num_chunks * rows_per_chunk - num_rows),) + ((0, 0),) * (a.ndim - 1))
  return a.reshape((num_chunks, rows_per_chunk) + a.shape[1:])


def _plan(geometry: ConvGeometry, chunk_elements: int | None):
  """(rows per chunk, number of chunks, number of output rows)."""
  num_rows = geometry.out_batch * geometry.out_h * geometry.out_w
  # Per output row a chunk holds the gathered z [4KG, O] (and its float32 gradient) and the scales [4KG, I].
  corners = _CORNERS * geometry.taps * geometry.offset_groups
  row_elements = corners * (geometry.out_channels + geometry.num_instances)
  budget = default_chunk_elements() if chunk_elements is None else chunk_elements
  rows_per_chunk = _chunk_rows(num_rows, row_elements, budget)
  return rows_per_chunk, math.ceil(num_rows / rows_per_chunk), num_rows


def _corner_rows(corner, image, geometry: ConvGeometry):
  """Rows of the 4 corners of every sample in z [G*P*K, O] and in the padded masks [P, I].

  corner [m, K, G, 2] (top-left, padded coordinates), image [m]. Returns z_rows, mask_rows, both
  [m, K * G * 4] int32 in (tap, group, corner) order, the order of the corner weights [m, K, G, 4].
  """
  hp, wp = _padded_hw(geometry)
  taps, groups = geometry.taps, geometry.offset_groups
  num_pixels = geometry.batch * hp * wp
  pixel = (image[:, None, None] * hp + corner[..., 0]) * wp + corner[..., 1]  # [m, K, G]
  step = jnp.array((0, 1, wp, wp + 1), jnp.int32)  # (0,0), (0,1), (1,0), (1,1) in (dy, dx)
  mask_rows = pixel[..., None] + step  # [m, K, G, 4]
  g = jnp.arange(groups, dtype=jnp.int32)[None, None, :, None]
  k = jnp.arange(taps, dtype=jnp.int32)[None, :, None, None]
  z_rows = (g * num_pixels + mask_rows) * taps + k
  m = corner.shape[0]
  return z_rows.reshape(m, -1), mask_rows.reshape(m, -1)


def _sample_terms(offsets_c, mask_c, geometry: ConvGeometry, with_vjp: bool):
  """Corner weights and corner rows of every sample of every chunk, computed once before the chunk loop.

  offsets_c [c, m, K, G, 2], mask_c [c, m, K, G] or None. Returns corner weights [c, m, 4KG] float32 (modulation
  included), z_rows and mask_rows [c, m, 4KG] int32 (_corner_rows), and the weights' VJP (d weights
  [c*m, K, G, 4] -> d offsets, d mask) or None. Out of the loop on purpose: inside it XLA:CPU fuses this
  elementwise index and weight arithmetic into every consumer and redoes it for each gathered channel.
  """
  num_chunks, rows_per_chunk = offsets_c.shape[:2]
  base, image = _tap_bases(jnp.arange(num_chunks * rows_per_chunk), geometry, geometry.out_batch)
  flat_offsets = offsets_c.reshape((-1,) + offsets_c.shape[2:])
  flat_mask = None if mask_c is None else mask_c.reshape((-1,) + mask_c.shape[2:])
  weights_vjp = None
  if with_vjp:
    weights, corner, weights_vjp = _corner_weights_vjp(flat_offsets, flat_mask, base, geometry.in_hw)
  else:
    weights, corner = _corner_weights(flat_offsets, flat_mask, base, geometry.in_hw)
  z_rows, mask_rows = _corner_rows(corner, image // geometry.warps, geometry)  # frame b // R of output image b
  chunked = (num_chunks, rows_per_chunk, -1)
  return weights.reshape(chunked), z_rows.reshape(chunked), mask_rows.reshape(chunked), weights_vjp


def _gathered(z_flat, masks_flat, z_rows, mask_rows, geometry: ConvGeometry):
  """One chunk's z at the corners [m, 4KG, O] (z's dtype) and instance masks there [m, 4KG, I] float32."""
  m = z_rows.shape[0]
  values = _take(z_flat, z_rows.reshape(-1)).reshape(m, -1, geometry.out_channels)
  at_corner = _take(masks_flat, mask_rows.reshape(-1)).astype(jnp.float32).reshape(m, -1, geometry.num_instances)
  return values, at_corner


def _contract_corners(scale, values):
  """out[m, i, o] = sum_j scale[m, j, i] values[m, j, o], float32 accumulation: [m, I, O] float32.

  On a CPU as a broadcast product summed over j: XLA:CPU runs this batched dot (its contracted axis is not the
  minor one of scale) as a naive loop, about 1.6x slower than the fused multiply-reduce, and folds away any
  transpose that would make the axis minor. The products are exact in float32 either way (bfloat16 widened).
  """
  if jax.default_backend() != "cpu":
    return _dot(scale, values, ((1,), (1,)), ((0,), (0,)))
  return jnp.sum(scale.astype(jnp.float32)[:, :, :, None] * values.astype(jnp.float32)[:, :, None, :], axis=1)


def masked_deform_conv2d_fwd(x, instance_masks, offsets, mask, weight, *, stride: IntOrPair, padding: IntOrPair,
                             dilation: IntOrPair, offset_groups: int, chunk_elements: int | None = None):
  """Forward only: [N, I, Ho, Wo, O] = DCN(M_i * x) in x's dtype (float32 accumulation)."""
  geometry = ConvGeometry.from_arguments(
      "projected.masked_deform_conv2d_fwd", x=x, offsets=offsets, weight=weight, mask=mask,
      instance_masks=instance_masks, stride=stride, padding=padding, dilation=dilation,
      offset_groups=offset_groups, warps=warps_of(x, offsets, instance_masks))
  rows_per_chunk, num_chunks, num_rows = _plan(geometry, chunk_elements)
  z_flat = _project(x, weight, geometry)  # [G*P*K, O]
  masks_flat = _pad_flat_masks(instance_masks)  # [P, I]
  offsets_c = _split_rows(offsets, num_rows, rows_per_chunk, num_chunks, swap_group_tap=True)  # [c, m, K, G, 2]
  mask_c = None if mask is None else _split_rows(mask, num_rows, rows_per_chunk, num_chunks, True)
  weights_c, z_rows_c, mask_rows_c, _ = _sample_terms(offsets_c, mask_c, geometry, with_vjp=False)

  def body(carry, chunk):
    _, weights, z_rows, mask_rows = chunk
    values, at_corner = _gathered(z_flat, masks_flat, z_rows, mask_rows, geometry)
    scale = (weights[..., None] * at_corner).astype(x.dtype)  # [m, 4KG, I]: corner weight * M_i(corner)
    return carry, _contract_corners(scale, values).astype(x.dtype)  # [m, I, O]

  _, out = _scan_chunks(body, (), (weights_c, z_rows_c, mask_rows_c), num_chunks)  # [c, m, I, O]
  out = _unchunk(out, num_rows, (geometry.out_batch,) + geometry.out_hw)  # [N*R, Ho, Wo, I, O]
  return jnp.transpose(out, (0, 3, 1, 2, 4))


def masked_deform_conv2d_bwd(x, instance_masks, offsets, mask, weight, out_grad, *, stride: IntOrPair,
                             padding: IntOrPair, dilation: IntOrPair, offset_groups: int,
                             chunk_elements: int | None = None):
  """Gradients (x, instance_masks, offsets, mask, weight) of sum(forward * out_grad); mask's is None when it is.

  Per chunk, with g the chunk's out_grad and h = sum_i M_i(corner) g_i [m, 4KG, O]: dz_corners = w h (w the
  corner weights), scatter-added into dz; the corner-weight gradient z_corners . h, taken to offsets and mask by
  xla_impl's corner-weight VJP once after the loop; the instance-mask gradient from d scale = z_corners . g_i,
  whose batched dot XLA drops when that gradient is unused (MaskProp stops it). Then the two per-frame GEMMs:
  dx = dz W^T and dW_k = x^T dz_k. z is recomputed (one GEMM) rather than kept from the forward: it is
  K * O / Cg times the size of x.
  """
  geometry = ConvGeometry.from_arguments(
      "projected.masked_deform_conv2d_bwd", x=x, offsets=offsets, weight=weight, mask=mask,
      instance_masks=instance_masks, stride=stride, padding=padding, dilation=dilation,
      offset_groups=offset_groups, warps=warps_of(x, offsets, instance_masks))
  batch, instances, out_channels = geometry.batch, geometry.num_instances, geometry.out_channels
  rows_per_chunk, num_chunks, num_rows = _plan(geometry, chunk_elements)
  z_flat = _project(x, weight, geometry)  # [G*P*K, O]
  masks_flat = _pad_flat_masks(instance_masks)  # [P, I]
  offsets_c = _split_rows(offsets, num_rows, rows_per_chunk, num_chunks, swap_group_tap=True)
  mask_c = None if mask is None else _split_rows(mask, num_rows, rows_per_chunk, num_chunks, True)
  grads_c = _split_rows(jnp.transpose(out_grad, (0, 2, 3, 1, 4)).astype(x.dtype), num_rows, rows_per_chunk,
                        num_chunks, swap_group_tap=False)  # [c, m, I, O]
  weights_c, z_rows_c, mask_rows_c, weights_vjp = _sample_terms(offsets_c, mask_c, geometry, with_vjp=True)

  def body(carry, chunk):
    d_z_flat, d_masks_flat = carry
    _, weights, z_rows, mask_rows, chunk_grads = chunk
    values, at_corner = _gathered(z_flat, masks_flat, z_rows, mask_rows, geometry)
    h = _dot(at_corner.astype(x.dtype), chunk_grads, ((2,), (1,)), ((0,), (0,)))  # [m, 4KG, O] float32
    d_z_flat = d_z_flat.at[z_rows.reshape(-1)].add((weights[..., None] * h).reshape(-1, out_channels),
                                                   mode="promise_in_bounds")
    d_scale = _dot(values, chunk_grads, ((2,), (2,)), ((0,), (0,)))  # [m, 4KG, I]
    d_masks_flat = d_masks_flat.at[mask_rows.reshape(-1)].add(
        (weights[..., None] * d_scale).reshape(-1, instances), mode="promise_in_bounds")
    return (d_z_flat, d_masks_flat), jnp.sum(values.astype(jnp.float32) * h, axis=-1)  # d weights [m, 4KG]

  carry = (jnp.zeros(z_flat.shape, jnp.float32), jnp.zeros(masks_flat.shape, jnp.float32))
  (d_z_flat, d_masks_flat), d_weights = _scan_chunks(body, carry, (weights_c, z_rows_c, mask_rows_c, grads_c),
                                                     num_chunks)  # d_weights [c, m, 4KG]
  d_offsets, d_mask = weights_vjp(d_weights.reshape((-1,) + offsets_c.shape[2:4] + (_CORNERS,)))
  d_offsets = d_offsets.reshape(offsets_c.shape)  # [c, m, K, G, 2]
  d_mask = None if d_mask is None else d_mask.reshape(mask_c.shape)

  groups, hp, wp = geometry.offset_groups, *_padded_hw(geometry)
  h, w = geometry.in_hw
  d_z = d_z_flat.reshape(groups, batch * hp * wp, -1).astype(x.dtype)  # [G, P, K*O]
  w_grouped = _grouped_weight(weight, geometry).astype(x.dtype)  # [G, Cg, K*O]
  d_x = _dot(d_z, w_grouped, ((2,), (2,)), ((0,), (0,)))  # [G, P, Cg]
  d_x = jnp.transpose(d_x, (1, 0, 2)).reshape(batch, hp, wp, -1)[:, 1:h + 1, 1:w + 1]
  # The zero border of the padded x adds nothing to dW, so the padded pixels need no cropping here.
  d_weight = _dot(_padded_x(x, geometry), d_z, ((0,), (1,)), ((1,), (0,)))  # [G, Cg, K*O]
  d_weight = jnp.transpose(d_weight.reshape(groups, geometry.group_channels, geometry.taps, out_channels),
                           (2, 0, 1, 3)).reshape(weight.shape)
  d_masks = d_masks_flat.reshape(batch, hp, wp, instances)[:, 1:h + 1, 1:w + 1]
  out_lead = (geometry.out_batch,) + geometry.out_hw
  d_offsets = jnp.swapaxes(_unchunk(d_offsets, num_rows, out_lead), 3, 4)
  d_mask = None if mask is None else jnp.swapaxes(_unchunk(d_mask, num_rows, out_lead), 3, 4)
  return (d_x.astype(x.dtype), jnp.transpose(d_masks, (0, 3, 1, 2)).astype(instance_masks.dtype),
          d_offsets.astype(offsets.dtype), None if d_mask is None else d_mask.astype(mask.dtype),
          d_weight.astype(weight.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _projected(conv: tuple, chunk_elements, forward, x, instance_masks, offsets, mask, weight):
  if forward is not None:  # a Pallas kernel of the same form (kernels.pallas_*_projected)
    return forward(x, instance_masks, offsets, mask, weight, **dict(conv))
  return masked_deform_conv2d_fwd(x, instance_masks, offsets, mask, weight, **dict(conv),
                                  chunk_elements=chunk_elements)


def _projected_fwd(conv, chunk_elements, forward, x, instance_masks, offsets, mask, weight):
  out = _projected(conv, chunk_elements, forward, x, instance_masks, offsets, mask, weight)
  return out, (x, instance_masks, offsets, mask, weight)


def _projected_bwd(conv, chunk_elements, forward, residuals, out_grad):
  return masked_deform_conv2d_bwd(*residuals, out_grad, **dict(conv), chunk_elements=chunk_elements)


_projected.defvjp(_projected_fwd, _projected_bwd)


def masked_deform_conv2d(x, instance_masks, offsets, weight, mask=None, *, stride: IntOrPair = 1,
                         padding: IntOrPair = 1, dilation: IntOrPair = 1, offset_groups: int = 1,
                         chunk_elements: int | None = None, forward=None):
  """deform_conv2d(instance_masks[:, i, :, :, None] * x, ...) for every i, projected first; differentiable.

  Arguments as kernels.masked_deform_conv2d (no bias: the public function adds it), plus chunk_elements, the
  per-chunk element budget (None: the backend's default, as xla_impl), and forward: None for this module's
  forward, or a Pallas kernel's (called as forward(x, instance_masks, offsets, mask, weight, stride=,
  padding=, dilation=, offset_groups=)); the backward is this module's either way. offsets (and mask) may hold R offset
  fields per frame of x, [N*R, ...]: output image b warps frame b // R. Returns [N*R, I, Ho, Wo, O] in x's dtype.
  """
  geometry = ConvGeometry.from_arguments(
      "projected.masked_deform_conv2d", x=x, offsets=offsets, weight=weight, mask=mask,
      instance_masks=instance_masks, stride=stride, padding=padding, dilation=dilation,
      offset_groups=offset_groups, warps=warps_of(x, offsets, instance_masks))
  conv = tuple(sorted(geometry.conv_kwargs().items()))  # hashable: a custom_vjp non-differentiable argument
  return _projected(conv, chunk_elements, forward, x, instance_masks, offsets, mask, weight)
