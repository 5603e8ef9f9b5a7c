"""Mask R-CNN mask head and predictor (torchvision's MaskRCNNHeads v1/v2 and MaskRCNNPredictor).

Pooled RoI features [N, 14, 14, C] go through 3x3 conv blocks (with BatchNorm in v2), a stride-2 transposed
conv to 28x28 and a 1x1 conv to one logit map per class: [N, 28, 28, K].

conv5_mask uses `transpose_kernel=True`, whose kernel layout (kh, kw, out, in) holds torchvision's
ConvTranspose2d weight (in, out, kh, kw) permuted by (2, 3, 1, 0), without a spatial flip.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from maskprop_jax.model.conv_norm_activation import Conv2dNormActivation, conv_kernel_init


class MaskRCNNHeads(nnx.List):
  """Conv blocks `0..len(layers)-1`, as torchvision's Sequential of Conv2dNormActivation."""

  def __init__(
      self,
      in_channels: int,
      layers: Sequence[int] = (256, 256, 256, 256),
      dilation: int = 1,
      use_norm: bool = False,
      *,
      rngs: nnx.Rngs,
  ):
    blocks = []
    for out_channels in layers:
      blocks.append(Conv2dNormActivation(in_channels, out_channels, 3, dilation, use_norm, rngs=rngs))
      in_channels = out_channels
    super().__init__(blocks)

  def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """x: [N, H, W, C] -> [N, H, W, layers[-1]]; valid [N] restricts batch-norm statistics in training."""
    for block in self:
      x = block(x, valid)
    return x


class MaskRCNNPredictor(nnx.Module):
  """Upsample x2 with a transposed conv, ReLU, then per-class mask logits."""

  def __init__(self, in_channels: int, dim_reduced: int, num_classes: int, *, rngs: nnx.Rngs):
    self.conv5_mask = nnx.ConvTranspose(
        in_channels, dim_reduced, (2, 2), strides=(2, 2), padding="VALID", transpose_kernel=True,
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal", in_axis=-1, out_axis=-2),
        bias_init=nnx.initializers.zeros, rngs=rngs)
    self.mask_fcn_logits = nnx.Conv(
        dim_reduced, num_classes, (1, 1), kernel_init=conv_kernel_init, bias_init=nnx.initializers.zeros,
        rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [N, H, W, C] -> [N, 2H, 2W, num_classes] logits."""
    return self.mask_fcn_logits(jax.nn.relu(self.conv5_mask(x)))
