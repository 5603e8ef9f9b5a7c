"""Mask R-CNN mask head and predictor (torchvision's MaskRCNNHeads v1/v2 and MaskRCNNPredictor).

Pooled RoI features [N, 14, 14, C] go through 3x3 conv blocks (with BatchNorm in v2), a stride-2 transposed
conv to 28x28 and a 1x1 conv to one logit map per class: [N, 28, 28, K].

conv5_mask uses `transpose_kernel=True`, whose kernel layout (kh, kw, out, in) holds torchvision's
ConvTranspose2d weight (in, out, kh, kw) permuted by (2, 3, 1, 0), without a spatial flip. Its stride equals its
kernel, so it is computed as one einsum (`BlockConvTranspose`): XLA:CPU lowers the gradient of such a transposed
conv's kernel to a 14x14-window convolution with rhs dilation 2 that has no fast kernel (17.1 s against 0.76 s
for the einsum, 128 RoIs of 256 channels, fwd+bwd on 2 CPU cores; the forward is bit for bit the same).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from maskprop_jax.model import precision
from maskprop_jax.model.conv_lowering import conv_general_dilated
from maskprop_jax.model.conv_norm_activation import Conv2dNormActivation, apply_conv, conv_kernel_init


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

  def __call__(self, x: jax.Array, valid: jax.Array | None = None, *, as_matmul: bool = False) -> jax.Array:
    """x: [N, H, W, C] -> [N, H, W, layers[-1]]; valid [N] restricts batch-norm statistics in training;
    as_matmul computes each conv as im2col + matmul (see conv_lowering.conv_as_matmul)."""
    for block in self:
      x = block(x, valid, as_matmul=as_matmul)
    return x


class BlockConvTranspose(nnx.ConvTranspose):
  """A transposed conv whose strides equal its kernel size, with `transpose_kernel=True` and VALID padding: every
  input pixel paints its own kh x kw block of the output, so the whole layer is one einsum. Parameters, their
  layout and initialisation are nnx.ConvTranspose's (checkpoint converters treat it as one)."""

  def __init__(self, in_features: int, out_features: int, kernel_size: tuple[int, int], **kwargs):
    super().__init__(in_features, out_features, kernel_size, strides=kernel_size, padding="VALID",
                     transpose_kernel=True, **kwargs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [N, H, W, C_in] -> [N, H * kh, W * kw, C_out]."""
    bias = None if self.bias is None else self.bias[...]
    x, kernel, bias = self.promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
    batch, height, width, _ = x.shape
    kh, kw, out_features, _ = kernel.shape  # (kh, kw, out, in)
    y = jnp.einsum("nijc,aboc->niajbo", x, kernel, precision=self.precision,
                   preferred_element_type=self.preferred_element_type)  # [N, H, kh, W, kw, out]
    y = y.reshape(batch, height * kh, width * kw, out_features)
    return y if bias is None else y + bias


class MaskRCNNPredictor(nnx.Module):
  """Upsample x2 with a transposed conv, ReLU, then per-class mask logits."""

  def __init__(self, in_channels: int, dim_reduced: int, num_classes: int, *, rngs: nnx.Rngs):
    self.conv5_mask = BlockConvTranspose(
        in_channels, dim_reduced, (2, 2),
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal", in_axis=-1, out_axis=-2),
        bias_init=nnx.initializers.zeros, rngs=rngs)
    self.mask_fcn_logits = nnx.Conv(
        dim_reduced, num_classes, (1, 1), kernel_init=conv_kernel_init, bias_init=nnx.initializers.zeros,
        conv_general_dilated=conv_general_dilated, rngs=rngs)

  def __call__(self, x: jax.Array, *, as_matmul: bool = False) -> jax.Array:
    """x: [N, H, W, C] -> [N, 2H, 2W, num_classes] logits; as_matmul computes the 1x1 conv as a matmul."""
    return self.logits(self.upsample(x), as_matmul=as_matmul)

  def upsample(self, x: jax.Array) -> jax.Array:
    """x: [N, H, W, C] -> the upsampled features [N, 2H, 2W, dim_reduced] the logits are read from."""
    return jax.nn.relu(self.conv5_mask(x))

  def logits(self, upsampled: jax.Array, *, as_matmul: bool = False) -> jax.Array:
    """[N, 2H, 2W, dim_reduced] -> [N, 2H, 2W, num_classes], float32 (sigmoid and the loss read them)."""
    return precision.to_float32(apply_conv(self.mask_fcn_logits, upsampled, as_matmul))
