"""What the Pallas deformable-convolution kernels promise: the forward they must match.

Both kernels (pallas_gpu.py for Triton, pallas_tpu.py for Mosaic) take the same NHWC arguments as
`maskprop_jax.kernels.deform_conv2d`, checked by the same kernels.geometry.ConvGeometry.from_arguments (with
weight in x's dtype), and compute the same forward. `reference_forward` is a deliberately plain jnp version
of the sampling rule, small enough to read against torchvision's C++ and used by the kernels' tests.

Sampling rule (torchvision.ops.deform_conv2d): tap (a, b) of output (i, j) samples
  y = i * stride - padding + a * dilation + dy,   x = j * stride - padding + b * dilation + dx
bilinearly, where each of the four corners outside the image contributes zero. torchvision also returns
zero for the whole sample when y <= -1, y >= H, x <= -1 or x >= W; that case is already covered by the
corner rule (every corner is then outside the image or carries a zero weight), so no kernel tests it apart.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskprop_jax.kernels.geometry import ConvGeometry, IntOrPair


def _bilinear_columns(x: jax.Array, offsets: jax.Array, geometry: ConvGeometry) -> jax.Array:
  """Samples every tap of every output position: returns [N, Ho, Wo, G, K, C/G] in fp32."""
  n, h, w, c = x.shape
  ho, wo, g = geometry.out_h, geometry.out_w, geometry.offset_groups
  kh, kw = geometry.kernel_h, geometry.kernel_w
  (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w) = (
      geometry.stride, geometry.padding, geometry.dilation)
  tap_row = jnp.repeat(jnp.arange(kh), kw) * dilation_h  # [K]
  tap_col = jnp.tile(jnp.arange(kw), kh) * dilation_w  # [K]
  out_row = jnp.arange(ho) * stride_h - pad_h  # [Ho]
  out_col = jnp.arange(wo) * stride_w - pad_w  # [Wo]
  y = out_row[None, :, None, None, None] + tap_row + offsets[..., 0].astype(jnp.float32)  # [N,Ho,Wo,G,K]
  xs = out_col[None, None, :, None, None] + tap_col + offsets[..., 1].astype(jnp.float32)  # [N,Ho,Wo,G,K]
  y0, x0 = jnp.floor(y), jnp.floor(xs)
  ly, lx = y - y0, xs - x0
  grouped = x.astype(jnp.float32).reshape(n, h, w, g, c // g)
  batch_index = jnp.arange(n)[:, None, None, None, None]
  group_index = jnp.arange(g)[None, None, None, :, None]
  columns = 0.0
  for corner_y, weight_y in ((y0, 1.0 - ly), (y0 + 1.0, ly)):
    for corner_x, weight_x in ((x0, 1.0 - lx), (x0 + 1.0, lx)):
      inside = (corner_y >= 0) & (corner_y <= h - 1) & (corner_x >= 0) & (corner_x <= w - 1)
      row = jnp.clip(corner_y, 0, h - 1).astype(jnp.int32)
      col = jnp.clip(corner_x, 0, w - 1).astype(jnp.int32)
      values = grouped[batch_index, row, col, group_index]  # [N,Ho,Wo,G,K,C/G]
      columns = columns + jnp.where(inside, weight_y * weight_x, 0.0)[..., None] * values
  return columns


def reference_forward(x: jax.Array, offsets: jax.Array, mask: jax.Array | None, weight: jax.Array, *,
                      stride: IntOrPair, padding: IntOrPair, dilation: IntOrPair,
                      offset_groups: int) -> jax.Array:
  """Plain-jnp deformable convolution (materializes every column); returns [N, Ho, Wo, O] in x.dtype."""
  geometry = ConvGeometry.from_arguments(
      "pallas_contract.reference_forward", x=x, offsets=offsets, weight=weight, mask=mask, stride=stride,
      padding=padding, dilation=dilation, offset_groups=offset_groups, weight_dtype_of_x=True)
  columns = _bilinear_columns(x, offsets, geometry)  # [N,Ho,Wo,G,K,C/G]
  if mask is not None:
    columns = columns * mask.astype(jnp.float32)[..., None]
  # weight rows are ordered (tap, channel) with channel = group * C/G + c, so put taps before groups.
  columns = jnp.swapaxes(columns, 3, 4).reshape(*columns.shape[:3], -1)  # [N,Ho,Wo,K*C]
  flat_weight = weight.astype(jnp.float32).reshape(-1, geometry.out_channels)  # [K*C, O]
  out = jnp.dot(columns, flat_weight, precision=jax.lax.Precision.HIGHEST)
  return out.astype(x.dtype)


def reference_masked_forward(x: jax.Array, instance_masks: jax.Array, offsets: jax.Array,
                             mask: jax.Array | None, weight: jax.Array, *, stride: IntOrPair,
                             padding: IntOrPair, dilation: IntOrPair, offset_groups: int) -> jax.Array:
  """DCN(M_i * x) for every instance i, one plain call each; returns [N, I, Ho, Wo, O]."""
  ConvGeometry.from_arguments(
      "pallas_contract.reference_masked_forward", x=x, offsets=offsets, weight=weight, mask=mask,
      instance_masks=instance_masks, stride=stride, padding=padding, dilation=dilation,
      offset_groups=offset_groups, weight_dtype_of_x=True)
  outputs = [
      reference_forward(x * instance_masks[:, i, :, :, None].astype(x.dtype), offsets, mask, weight,
                        stride=stride, padding=padding, dilation=dilation, offset_groups=offset_groups)
      for i in range(instance_masks.shape[1])
  ]
  return jnp.stack(outputs, axis=1)
