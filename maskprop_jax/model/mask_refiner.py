"""Image-guided refinement of Mask R-CNN's box-relative mask logits (not in torchvision; off unless configured).

The mask head reads RoIAligned FPN features of stride 4 or more, so its 28x28 logits know an outline only to
within a feature cell, several pixels of a small object. The frame itself knows it to the pixel. The refiner pools
the normalised image on the same 28x28 grid of each box (RoIAlign at stride 1, the mask head's alignment), and a few
3x3 convolutions on [the predictor's upsampled features, those pixels] predict a residual to every class's
logits. Its last convolution starts at zero, so at initialisation the masks are the mask head's.

On the synthetic main job it lowered the mask loss by a tenth but moved video AP only within what a training seed
moves, for a 1.2x training step; configs/synthetic.py's docstring has the figures.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from maskprop_jax.model.conv_lowering import conv_general_dilated
from maskprop_jax.model.conv_norm_activation import apply_conv, conv_kernel_init
from maskprop_jax.model.roi_align import roi_align

IMAGE_CHANNELS = 3
# Bilinear samples per output bin and axis: 2 as torchvision's mask pooling. Fixed, not adaptive: the adaptive grid
# of a big box on the full-resolution image would be hundreds of samples per bin for a detail it cannot keep.
IMAGE_SAMPLING_RATIO = 2


def pool_on_boxes(maps: jax.Array, boxes: jax.Array, output_size: int, *, scale: float = 1.0,
                  sampling_ratio: int = IMAGE_SAMPLING_RATIO, aligned: bool = False) -> jax.Array:
  """Maps [B, H, W, C] on a grid of 1/scale input pixels (the normalised images: scale 1) and boxes [B, R, 4] in
  input pixels -> [B * R, s, s, C] box-relative values. With roi_heads.aligned passed as `aligned`, this is the
  grid of Mask R-CNN's mask targets (roi_targets.project_masks_on_boxes)."""
  batch, num_boxes = boxes.shape[:2]
  batch_index = jnp.repeat(jnp.arange(batch, dtype=jnp.int32), num_boxes)
  return roi_align(jnp.asarray(maps), boxes.reshape(-1, 4), batch_index, output_size, scale, sampling_ratio, aligned)


class ImageMaskRefiner(nnx.Module):
  """3x3 conv + ReLU blocks of `layers` widths on [features, pixels], then a zero-initialised 1x1 conv to one
  residual logit per class."""

  def __init__(self, feature_channels: int, layers: Sequence[int], num_classes: int, *, rngs: nnx.Rngs):
    widths = [feature_channels + IMAGE_CHANNELS, *layers]
    self.convs = nnx.List([
        nnx.Conv(a, b, (3, 3), padding=((1, 1), (1, 1)), kernel_init=conv_kernel_init,
                 bias_init=nnx.initializers.zeros, conv_general_dilated=conv_general_dilated, rngs=rngs)
        for a, b in zip(widths[:-1], widths[1:])])
    self.logits = nnx.Conv(widths[-1], num_classes, (1, 1), kernel_init=nnx.initializers.zeros,
                           bias_init=nnx.initializers.zeros, conv_general_dilated=conv_general_dilated, rngs=rngs)

  def __call__(self, features: jax.Array, pixels: jax.Array, *, as_matmul: bool = False) -> jax.Array:
    """features [N, s, s, C] (the mask predictor's upsampled features), pixels [N, s, s, 3] -> residual logits
    [N, s, s, K]; as_matmul computes each conv as im2col + matmul (conv_lowering.conv_as_matmul)."""
    h = jnp.concatenate([features, pixels.astype(features.dtype)], axis=-1)
    for conv in self.convs:
      h = jax.nn.relu(apply_conv(conv, h, as_matmul))
    return apply_conv(self.logits, h, as_matmul)
