"""ResNet / ResNeXt bottleneck backbones with frozen batch norm, laid out like torchvision's.

Attribute names follow torchvision's state-dict keys (`conv1`, `bn1`, `layer1[0].conv2`, `layer1[0].downsample[0]`)
so that a checkpoint converts one to one. Activations are NHWC; conv kernels are flax's (kh, kw, in, out).

The forward pass returns the outputs of layer1..layer4 (C2..C5, strides 4, 8, 16, 32), which is what
torchvision's `IntermediateLayerGetter` hands to the FPN in Mask R-CNN.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from maskprop_jax.model.conv_lowering import conv_general_dilated

# Blocks per stage for the depths that Mask R-CNN checkpoints use.
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BOTTLENECK_EXPANSION = 4


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
  """Static description of a bottleneck ResNet.

  groups / width_per_group: ResNeXt cardinality and width (1/64 is plain ResNet; 32/8 is X101-32x8d).
  stride_in_1x1: put the stage's stride on the first 1x1 conv (MSRA / detectron2 R50, R101) instead of the 3x3
    conv (torchvision, and detectron2's ResNeXt).
  bn_eps: epsilon of the frozen batch norms (torchvision's COCO v1 weights were trained with 0.0).
  stage_blocks: blocks per stage, overriding the depth's (torchvision's ResNet(Bottleneck, layers) takes any;
    tiny test models use (1, 1, 1, 1)).
  base_width: channels of the stem and planes of the first stage, doubling per stage (torchvision fixes it at 64).
    Smaller values make a lean model for training from scratch: the stages' outputs are 4 * base_width * 2**i,
    so with base_width 64 a narrow width_per_group still carries 256..2048 channels between blocks (the synthetic
    main job's backbone took 80% of a training step's FLOPs that way, 2.7x the step of base_width 16).
  """

  depth: int = 50
  groups: int = 1
  width_per_group: int = 64
  stride_in_1x1: bool = False
  bn_eps: float = 1e-5
  stage_blocks: tuple[int, int, int, int] | None = None
  base_width: int = 64

  def __post_init__(self):
    if self.stage_blocks is None and self.depth not in STAGE_BLOCKS:
      raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {self.depth}")
    if self.stage_blocks is not None and (len(self.stage_blocks) != 4 or min(self.stage_blocks) < 1):
      raise ValueError(f"stage_blocks must be 4 positive block counts, got {self.stage_blocks}")
    if self.base_width < 1:
      raise ValueError(f"base_width must be positive, got {self.base_width}")

  @property
  def blocks(self) -> tuple[int, int, int, int]:
    return tuple(self.stage_blocks) if self.stage_blocks is not None else STAGE_BLOCKS[self.depth]

  @property
  def out_channels(self) -> tuple[int, int, int, int]:
    """Channels of C2..C5."""
    return tuple(self.base_width * 2**i * BOTTLENECK_EXPANSION for i in range(4))


class FrozenBatchNorm(nnx.Module):
  """Batch norm with fixed statistics, computed as torchvision's FrozenBatchNorm2d does.

  torchvision folds the statistics into one scale and bias before applying them; doing the same keeps results
  bit-close to it. The affine weight/bias are `nnx.Param` only when `trainable_affine` (torchvision's v2 FPN and
  heads use a plain BatchNorm2d whose affine part trains); statistics are always `nnx.BatchStat` and never
  updated, because detection batches (1-2 images per device) are too small for batch statistics.
  """

  def __init__(self, num_features: int, *, eps: float = 1e-5, trainable_affine: bool = False):
    affine_type = nnx.Param if trainable_affine else nnx.BatchStat
    self.weight = affine_type(jnp.ones((num_features,), jnp.float32))
    self.bias = affine_type(jnp.zeros((num_features,), jnp.float32))
    self.running_mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.running_var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., C] -> [..., C]
    scale = self.weight[...] * jax.lax.rsqrt(self.running_var[...] + self.eps)
    shift = self.bias[...] - self.running_mean[...] * scale
    return x * scale.astype(x.dtype) + shift.astype(x.dtype)


def conv2d(
  in_channels: int,
  out_channels: int,
  kernel_size: int,
  *,
  stride: int = 1,
  padding: int | None = None,
  groups: int = 1,
  dilation: int = 1,
  use_bias: bool = False,
  rngs: nnx.Rngs,
) -> nnx.Conv:
  """A torch-style Conv2d: symmetric explicit padding (default k // 2 * dilation), He-normal fan-out init."""
  if padding is None:
    padding = kernel_size // 2 * dilation
  return nnx.Conv(
    in_channels,
    out_channels,
    (kernel_size, kernel_size),
    strides=stride,
    padding=((padding, padding), (padding, padding)),
    kernel_dilation=dilation,
    feature_group_count=groups,
    use_bias=use_bias,
    kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
    conv_general_dilated=conv_general_dilated,
    rngs=rngs,
  )


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (grouped) -> 1x1 residual block with a projection shortcut where the shape changes."""

  def __init__(self, in_channels: int, planes: int, stride: int, spec: ResNetSpec, *, rngs: nnx.Rngs):
    width = int(planes * (spec.width_per_group / 64.0)) * spec.groups  # torchvision's rule
    out_channels = planes * BOTTLENECK_EXPANSION
    stride_1x1, stride_3x3 = (stride, 1) if spec.stride_in_1x1 else (1, stride)
    self.conv1 = conv2d(in_channels, width, 1, stride=stride_1x1, rngs=rngs)
    self.bn1 = FrozenBatchNorm(width, eps=spec.bn_eps)
    self.conv2 = conv2d(width, width, 3, stride=stride_3x3, groups=spec.groups, rngs=rngs)
    self.bn2 = FrozenBatchNorm(width, eps=spec.bn_eps)
    self.conv3 = conv2d(width, out_channels, 1, rngs=rngs)
    self.bn3 = FrozenBatchNorm(out_channels, eps=spec.bn_eps)
    if stride != 1 or in_channels != out_channels:
      self.downsample = nnx.List([
        conv2d(in_channels, out_channels, 1, stride=stride, rngs=rngs),
        FrozenBatchNorm(out_channels, eps=spec.bn_eps),
      ])
    else:
      self.downsample = None

  def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, Cin] -> [B, H/s, W/s, 4*planes]
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = jax.nn.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x
    if self.downsample is not None:
      conv, bn = self.downsample
      identity = bn(conv(x))
    return jax.nn.relu(out + identity)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C]
  """torch's MaxPool2d(3, stride 2, padding 1): the padding never wins the max."""
  return jax.lax.reduce_window(
    x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  )


class ResNet(nnx.Module):
  """The ResNet body up to layer4 (no pooling / fc head): returns [C2, C3, C4, C5]."""

  def __init__(self, spec: ResNetSpec, *, rngs: nnx.Rngs):
    self.spec = spec
    self.conv1 = conv2d(3, spec.base_width, 7, stride=2, padding=3, rngs=rngs)
    self.bn1 = FrozenBatchNorm(spec.base_width, eps=spec.bn_eps)
    in_channels = spec.base_width
    for stage, num_blocks in enumerate(spec.blocks):
      planes = spec.base_width * 2**stage
      first_stride = 1 if stage == 0 else 2
      blocks = []
      for i in range(num_blocks):
        blocks.append(Bottleneck(in_channels, planes, first_stride if i == 0 else 1, spec, rngs=rngs))
        in_channels = planes * BOTTLENECK_EXPANSION
      setattr(self, f"layer{stage + 1}", nnx.List(blocks))

  def stages(self) -> Sequence[nnx.List]:
    return (self.layer1, self.layer2, self.layer3, self.layer4)

  def __call__(self, images: jax.Array) -> list[jax.Array]:  # [B, H, W, 3] -> C2..C5, strides 4..32
    x = jax.nn.relu(self.bn1(self.conv1(images)))
    x = max_pool_3x3_s2(x)
    features = []
    for stage in self.stages():
      for block in stage:
        x = block(x)
      features.append(x)
    return features
