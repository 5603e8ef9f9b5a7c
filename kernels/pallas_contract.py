"""What the Pallas deformable-convolution kernels promise: argument checks and the forward they must match.

Both kernels (pallas_gpu.py for Triton, pallas_tpu.py for Mosaic) take the same NHWC arguments as
`maskprop_jax.kernels.deform_conv2d` and compute the same forward. `check_arguments` turns a wrong shape
into a ValueError that names the argument, and `reference_forward` is a deliberately plain jnp version of
the sampling rule, small enough to read against torchvision's C++ and used by the kernels' tests.

Sampling rule (torchvision.ops.deform_conv2d): tap (a, b) of output (i, j) samples
  y = i * stride - padding + a * dilation + dy,   x = j * stride - padding + b * dilation + dx
bilinearly, where each of the four corners outside the image contributes zero. torchvision also returns
zero for the whole sample when y <= -1, y >= H, x <= -1 or x >= W; that case is already covered by the
corner rule (every corner is then outside the image or carries a zero weight), so no kernel tests it apart.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp


Pair = tuple[int, int]
IntOrPair = int | Sequence[int]


def as_pair(name: str, value: IntOrPair) -> Pair:
  """An int or an (h, w) pair of ints, as a pair; ValueError naming the argument otherwise."""
  pair = (value, value) if isinstance(value, int) else tuple(value)
  if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
    raise ValueError(f"deform_conv2d: `{name}` must be an int or a pair of ints, got {value!r}")
  return pair  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
  """Static sizes of one deformable convolution, checked against each other."""
  batch: int
  height: int
  width: int
  channels: int
  out_channels: int
  kernel_h: int
  kernel_w: int
  out_h: int
  out_w: int
  offset_groups: int
  num_instances: int  # 0 for the plain (unmasked) form
  stride: Pair
  padding: Pair
  dilation: Pair

  @property
  def taps(self) -> int:
    return self.kernel_h * self.kernel_w

  @property
  def group_channels(self) -> int:
    return self.channels // self.offset_groups


def _shape_error(name: str, array: jax.Array, expected: str) -> ValueError:
  return ValueError(f"deform_conv2d: `{name}` has shape {tuple(array.shape)} and dtype {array.dtype}, "
                    f"expected {expected}")


def check_arguments(x: jax.Array, instance_masks: jax.Array | None, offsets: jax.Array,
                    mask: jax.Array | None, weight: jax.Array, *, stride: IntOrPair, padding: IntOrPair,
                    dilation: IntOrPair, offset_groups: int) -> ConvGeometry:
  """Validates shapes and dtypes; returns the geometry. Raises ValueError naming the bad argument."""
  if x.ndim != 4:
    raise _shape_error("x", x, "(N, H, W, C)")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise _shape_error("x", x, "a floating dtype")
  n, h, w, c = x.shape
  if weight.ndim != 4 or weight.shape[2] != c:
    raise _shape_error("weight", weight, f"(kh, kw, C={c}, O)")
  if weight.dtype != x.dtype:
    raise _shape_error("weight", weight, f"the dtype of x ({x.dtype})")
  kh, kw, _, o = weight.shape
  stride, padding, dilation = as_pair("stride", stride), as_pair("padding", padding), as_pair(
      "dilation", dilation)
  if min(*stride, *dilation) < 1 or min(padding) < 0:
    raise ValueError(f"deform_conv2d: need stride >= 1, dilation >= 1, padding >= 0; got stride={stride}, "
                     f"dilation={dilation}, padding={padding}")
  if offset_groups < 1 or c % offset_groups:
    raise ValueError(f"deform_conv2d: offset_groups={offset_groups} must divide the {c} channels of x")
  ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
  wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
  if ho < 1 or wo < 1:
    raise ValueError(f"deform_conv2d: a {kh}x{kw} kernel with dilation {dilation} and padding {padding} "
                     f"leaves no output position on a {h}x{w} input `x`")
  expected = (n, ho, wo, offset_groups, kh * kw, 2)
  if tuple(offsets.shape) != expected:
    raise _shape_error("offsets", offsets, f"{expected} = (N, Ho, Wo, offset_groups, kh*kw, 2)")
  if mask is not None and tuple(mask.shape) != expected[:-1]:
    raise _shape_error("mask", mask, f"{expected[:-1]} = (N, Ho, Wo, offset_groups, kh*kw)")
  num_instances = 0
  if instance_masks is not None:
    if instance_masks.ndim != 4 or (instance_masks.shape[0], *instance_masks.shape[2:]) != (n, h, w):
      raise _shape_error("instance_masks", instance_masks, f"(N={n}, I, H={h}, W={w})")
    num_instances = instance_masks.shape[1]
    if num_instances < 1:
      raise _shape_error("instance_masks", instance_masks, "at least one instance")
  return ConvGeometry(n, h, w, c, o, kh, kw, ho, wo, offset_groups, num_instances, stride, padding, dilation)


def _bilinear_columns(x: jax.Array, offsets: jax.Array, geometry: ConvGeometry) -> jax.Array:
  """Samples every tap of every output position: returns [N, Ho, Wo, G, K, C/G] in fp32."""
  n, h, w, c = x.shape
  _, ho, wo, g, k, _ = offsets.shape
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
  geometry = check_arguments(x, None, offsets, mask, weight, stride=stride, padding=padding,
                             dilation=dilation, offset_groups=offset_groups)
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
  check_arguments(x, instance_masks, offsets, mask, weight, stride=stride, padding=padding,
                  dilation=dilation, offset_groups=offset_groups)
  outputs = [
      reference_forward(x * instance_masks[:, i, :, :, None].astype(x.dtype), offsets, mask, weight,
                        stride=stride, padding=padding, dilation=dilation, offset_groups=offset_groups)
      for i in range(instance_masks.shape[1])
  ]
  return jnp.stack(outputs, axis=1)


def static_conv_args(stride: IntOrPair, padding: IntOrPair, dilation: IntOrPair) -> dict[str, Pair]:
  """stride, padding and dilation as hashable pairs, ready to be static arguments of a jitted wrapper."""
  return dict(stride=as_pair("stride", stride), padding=as_pair("padding", padding),
              dilation=as_pair("dilation", dilation))
