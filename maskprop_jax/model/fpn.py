"""Feature Pyramid Network (P2-P5 plus the max-pool P6 level) on top of the ResNet body, as torchvision builds it.

Names follow torchvision: `backbone.body` is the ResNet, `backbone.fpn.inner_blocks[i][0]` the 1x1 lateral conv,
`backbone.fpn.layer_blocks[i][0]` the 3x3 output conv, and `[i][1]` their batch norm in the v2 model (where the
convs have no bias). Activations are NHWC.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from maskprop_jax.model.conv_lowering import conv_general_dilated
from maskprop_jax.model.resnet import FrozenBatchNorm, ResNet, ResNetSpec

# Strides of P2..P6 in pixels of the padded input (its size is a multiple of size_divisible, 32: P2..P5 tile it).
FPN_STRIDES = (4, 8, 16, 32, 64)


def input_hw(levels: Sequence[jax.Array]) -> tuple[int, int]:
  """Static (H, W) of the padded input that FPN levels P2..P6 [B, h, w, C] were computed from."""
  return levels[0].shape[1] * FPN_STRIDES[0], levels[0].shape[2] * FPN_STRIDES[0]


def resize_nearest(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:  # [B, h, w, C] -> [B, H, W, C]
  """torch's F.interpolate(mode="nearest", size=...): source index floor(dst * in / out), clamped."""
  out = x
  for axis, out_size in ((1, out_hw[0]), (2, out_hw[1])):
    in_size = x.shape[axis]
    if in_size == out_size:
      continue
    scale = jnp.float32(in_size / out_size)
    src = jnp.floor(jnp.arange(out_size, dtype=jnp.float32) * scale).astype(jnp.int32)
    out = jnp.take(out, jnp.minimum(src, in_size - 1), axis=axis)
  return out


def _conv_norm(in_channels: int, out_channels: int, kernel_size: int, with_norm: bool, *, rngs: nnx.Rngs) -> nnx.List:
  """torchvision's Conv2dNormActivation without activation: conv (+bias only without norm) [+ BN]."""
  # torchvision initialises the FPN convs with kaiming_uniform_(a=1), i.e. uniform with variance 1 / fan_in.
  conv = nnx.Conv(
    in_channels,
    out_channels,
    (kernel_size, kernel_size),
    padding=((kernel_size // 2,) * 2,) * 2,
    use_bias=not with_norm,
    kernel_init=nnx.initializers.variance_scaling(1.0, "fan_in", "uniform"),
    conv_general_dilated=conv_general_dilated,
    rngs=rngs,
  )
  if with_norm:
    return nnx.List([conv, FrozenBatchNorm(out_channels, trainable_affine=True)])
  return nnx.List([conv])


def _apply(block: nnx.List, x: jax.Array) -> jax.Array:
  for layer in block:
    x = layer(x)
  return x


class FeaturePyramidNetwork(nnx.Module):
  """Top-down pathway with lateral connections; returns [P2, P3, P4, P5, P6] with P6 = P5[::2, ::2]."""

  def __init__(self, in_channels: Sequence[int], out_channels: int = 256, *, with_norm: bool = False,
               rngs: nnx.Rngs):
    self.inner_blocks = nnx.List([_conv_norm(c, out_channels, 1, with_norm, rngs=rngs) for c in in_channels])
    self.layer_blocks = nnx.List(
      [_conv_norm(out_channels, out_channels, 3, with_norm, rngs=rngs) for _ in in_channels]
    )

  def __call__(self, features: Sequence[jax.Array]) -> list[jax.Array]:  # C2..C5 -> P2..P6, each [B, h, w, 256]
    last_inner = _apply(self.inner_blocks[-1], features[-1])
    results = [_apply(self.layer_blocks[-1], last_inner)]
    for idx in range(len(features) - 2, -1, -1):
      lateral = _apply(self.inner_blocks[idx], features[idx])
      last_inner = lateral + resize_nearest(last_inner, lateral.shape[1:3])
      results.insert(0, _apply(self.layer_blocks[idx], last_inner))
    # LastLevelMaxPool: a 1x1 max pool with stride 2 is plain subsampling.
    results.append(results[-1][:, ::2, ::2, :])
    return results


class BackboneWithFPN(nnx.Module):
  """`backbone` of torchvision's Mask R-CNN: `body` (ResNet) + `fpn`; images [B, H, W, 3] -> P2..P6."""

  def __init__(self, spec: ResNetSpec, *, fpn_channels: int = 256, fpn_norm: bool = False, rngs: nnx.Rngs):
    self.body = ResNet(spec, rngs=rngs)
    self.fpn = FeaturePyramidNetwork(spec.out_channels, fpn_channels, with_norm=fpn_norm, rngs=rngs)
    self.out_channels = fpn_channels

  def __call__(self, images: jax.Array) -> list[jax.Array]:
    return self.fpn(self.body(images))
