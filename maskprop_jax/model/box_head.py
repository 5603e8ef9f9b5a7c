"""Fast R-CNN box heads and predictor (torchvision's TwoMLPHead, FastRCNNConvFCHead, FastRCNNPredictor).

Inputs are pooled RoI features [N, 7, 7, C] (NHWC). Flattening is in NHWC order (7, 7, C): a torchvision fc6
weight, whose columns are in (C, 7, 7) order, must have its columns permuted by the converter.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from maskprop_jax.model import precision
from maskprop_jax.model.conv_norm_activation import Conv2dNormActivation

# nn.Linear's default init (kaiming_uniform with a=sqrt(5)): uniform in +-1/sqrt(fan_in).
linear_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def linear(in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(in_features, out_features, kernel_init=linear_kernel_init, rngs=rngs)


def flatten_rois(x: jax.Array) -> jax.Array:
  """[N, H, W, C] -> [N, H * W * C]."""
  return x.reshape(x.shape[0], -1)


class TwoMLPHead(nnx.Module):
  """Mask R-CNN v1 box head: flatten, fc6 + ReLU, fc7 + ReLU."""

  def __init__(self, in_features: int, representation_size: int, *, rngs: nnx.Rngs):
    self.fc6 = linear(in_features, representation_size, rngs)
    self.fc7 = linear(representation_size, representation_size, rngs)

  def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """x: [N, 7, 7, C] -> [N, representation_size]; valid is unused (no batch statistics here)."""
    del valid
    x = jax.nn.relu(self.fc6(flatten_rois(x)))
    return jax.nn.relu(self.fc7(x))


class FastRCNNConvFCHead(nnx.List):
  """Mask R-CNN v2 box head: conv+BN+ReLU blocks, flatten, then Linear+ReLU pairs.

  The layout of the list is torchvision's Sequential (blocks, Flatten, Linear, ReLU, ...), so the indices of
  the Linear layers (e.g. 5 for four conv blocks) match its state-dict keys.
  """

  def __init__(
      self,
      input_size: tuple[int, int, int],
      conv_layers: Sequence[int],
      fc_layers: Sequence[int],
      use_norm: bool = True,
      *,
      rngs: nnx.Rngs,
  ):
    """input_size: (C, H, W) of the pooled features, as torchvision states it."""
    channels, height, width = input_size
    layers = []
    for out_channels in conv_layers:
      layers.append(Conv2dNormActivation(channels, out_channels, use_norm=use_norm, rngs=rngs))
      channels = out_channels
    layers.append(flatten_rois)
    features = channels * height * width
    for out_features in fc_layers:
      layers.extend([linear(features, out_features, rngs), jax.nn.relu])
      features = out_features
    super().__init__(layers)

  def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """x: [N, H, W, C] -> [N, fc_layers[-1]]; valid [N] restricts batch-norm statistics in training."""
    for layer in self:
      x = layer(x, valid) if isinstance(layer, Conv2dNormActivation) else layer(x)
    return x


class FastRCNNPredictor(nnx.Module):
  """Class logits and per-class box deltas from the box-head representation."""

  def __init__(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs):
    self.cls_score = linear(in_features, num_classes, rngs)
    self.bbox_pred = linear(in_features, num_classes * 4, rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: [N, D] -> class_logits [N, K], box_deltas [N, K * 4] (dx, dy, dw, dh per class)."""
    x = x.reshape(x.shape[0], -1)
    return precision.to_float32(self.cls_score(x), self.bbox_pred(x))  # softmax, decoding, losses in float32
