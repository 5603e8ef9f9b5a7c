"""Convolutions written the way XLA:CPU computes them fast; the same sums as `jax.lax.conv_general_dilated`.

Two lowerings, both for CPU only:

- `conv_general_dilated`, a drop-in for `jax.lax.conv_general_dilated` that every `nnx.Conv` of the models is
  given. Its forward pass and its input gradient are lax's own, bit for bit. What it changes is the **weight
  gradient** of a 1x1 convolution, or of a strided one with 8 or more input channels: XLA:CPU (jax 0.10, YNNPACK)
  computes it by copying the activations and the output gradient into channel-major layouts first, which costs
  more than the sums themselves (a 1x1 conv of 16 -> 64 channels on 8 images of 48x72: 16.1 ms for lax's weight
  gradient, 1.8 ms as one matmul). Here it is one dot per kernel tap, contracting (batch, height, width): the
  same products, summed in another order, so equal to lax's up to float rounding. A stride-1 kxk convolution
  keeps lax's weight gradient (the taps' strided copies cost it what they save; im2col cost more still), and so
  does a 3-channel stem, whose taps are too thin for a matmul. On the main job's training step this is a 0.89-0.92x
  step (three A/B runs of 12-16 alternated steps in one process, a 2-core AMD EPYC with AVX2, 2026-12-07).
  GPUs and TPUs keep lax's everywhere: their libraries' weight gradients are the fast path there.
- `conv_as_matmul`, a stride-1 "same" convolution as im2col + one matmul, for convolutions inside a `lax.switch`
  branch (see its docstring).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

# Input channels from which a strided convolution's weight gradient is cheaper as per-tap dots than lax's.
MIN_TAP_CHANNELS = 8
_NHWC = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
              padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:  # [N, H, W, C] -> [N, Ho, Wo, O]
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC)


def taps_weight_gradient(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int],
                         padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """d(loss)/d(kernel) of an NHWC / HWIO convolution as one dot per tap: x [N, H, W, C], dy [N, Ho, Wo, O] ->
  [kh, kw, C, O]. Tap (i, j) of the kernel saw the input at padded rows i + s*y and columns j + s*x."""
  kh, kw = kernel_hw
  (sh, sw), (_, ho, wo, _) = strides, dy.shape
  padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  taps = [jnp.einsum("nhwc,nhwo->co", padded[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw], dy)
          for i in range(kh) for j in range(kw)]  # each [C, O]
  return jnp.stack(taps).reshape(kh, kw, x.shape[-1], dy.shape[-1])


def uses_taps(kernel_shape: tuple[int, ...], strides: tuple[int, int]) -> bool:
  """Whether this convolution's weight gradient is computed by `taps_weight_gradient` (on CPU)."""
  kh, kw, channels, _ = kernel_shape
  return kh * kw == 1 or (max(strides) > 1 and channels >= MIN_TAP_CHANNELS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_with_tap_gradient(x, kernel, strides, padding):
  return _lax_conv(x, kernel, strides, padding)


def _forward(x, kernel, strides, padding):
  return _lax_conv(x, kernel, strides, padding), (x, kernel)


def _backward(strides, padding, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x: _lax_conv(x, kernel, strides, padding), x)
  (dx,) = input_vjp(dy)  # lax's own input gradient (dead code, removed by XLA, where x needs none)
  return dx, taps_weight_gradient(x, dy, kernel.shape[:2], strides, padding)


_conv_with_tap_gradient.defvjp(_forward, _backward)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None, **kwargs):
  """`jax.lax.conv_general_dilated`, with per-tap weight gradients on CPU where they are faster (module doc).

  Only plain float32 NHWC / HWIO convolutions without dilation, groups or a precision setting take the tap
  gradient; every other call, and every call off CPU, is lax's unchanged.
  """
  lax_call = functools.partial(lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation,
                               rhs_dilation, dimension_numbers, feature_group_count, batch_group_count, precision,
                               preferred_element_type, **kwargs)
  if lhs.ndim != 4 or rhs.ndim != 4 or jax.default_backend() != "cpu":
    return lax_call()
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  given = (dimension_numbers if isinstance(dimension_numbers, lax.ConvDimensionNumbers)
           else lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers))
  strides = tuple(int(s) for s in window_strides)
  plain = (given == nhwc and feature_group_count == 1 and batch_group_count == 1 and precision is None
           and preferred_element_type is None and not kwargs.get("out_sharding")
           and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
           and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1))))
  if not plain or not uses_taps(rhs.shape, strides):
    return lax_call()
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv_with_tap_gradient(lhs, rhs, strides, padding)


def conv_as_matmul(x: jax.Array, kernel: jax.Array, dilation: int = 1) -> jax.Array:
  """A stride-1 "same" convolution as one matmul over im2col patches: [N, H, W, C] x [kh, kw, C, O] -> [N, H, W, O].

  The same sums as the convolution, in another order. It exists because XLA:CPU compiles a convolution inside
  a `lax.switch` branch into a slow layout (0.4-1.2 s for a 14x14 mask head on 8 RoIs), while a dot keeps its
  fast kernel there.
  """
  kh, kw, channels, out_channels = kernel.shape
  height, width = x.shape[1:3]
  pad_h, pad_w = (kh - 1) // 2 * dilation, (kw - 1) // 2 * dilation
  padded = jnp.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)))
  patches = jnp.concatenate([
      padded[:, i * dilation:i * dilation + height, j * dilation:j * dilation + width]
      for i in range(kh) for j in range(kw)], axis=-1)  # [N, H, W, kh * kw * C], taps in the kernel's order
  return patches @ kernel.reshape(kh * kw * channels, out_channels)
