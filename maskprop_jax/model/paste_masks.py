"""Pasting fixed-size RoI masks into full images: torchvision's paste_masks_in_image with static shapes.

torchvision pads each M x M mask by `padding` pixels, scales its box by (M + 2 padding) / M about the center,
truncates the box to integers, resizes the padded mask to the box size (w = x1 - x0 + 1, h = y1 - y0 + 1) with
bilinear interpolation (align_corners=False) and copies it into the image where box and image overlap.
Here the resize and the placement are one separable linear map per mask: out = Ry @ mask @ Rx^T, where
Ry [H, M + 2 padding] holds, for each image row inside the box, the two bilinear weights of its source rows
(and zeros outside the box), so shapes never depend on the boxes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def expand_boxes(boxes: jax.Array, scale: float) -> jax.Array:
  """Scales boxes [..., 4] about their centers, in torchvision's float32 operation order."""
  half_w = (boxes[..., 2] - boxes[..., 0]) * 0.5 * jnp.float32(scale)
  half_h = (boxes[..., 3] - boxes[..., 1]) * 0.5 * jnp.float32(scale)
  center_x = (boxes[..., 2] + boxes[..., 0]) * 0.5
  center_y = (boxes[..., 3] + boxes[..., 1]) * 0.5
  return jnp.stack([center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h], axis=-1)


def placement_weights(start: jax.Array, end: jax.Array, source_size: int, out_size: int,
                      limit: jax.Array) -> jax.Array:
  """Bilinear resize of `source_size` samples onto image pixels start..end (inclusive), along one axis.

  Args:
    start, end: [...] int32 first and last pixel of the (integer) box.
    source_size: padded mask size along this axis.
    out_size: static image size along this axis.
    limit: [...] or scalar int32 image size; pixels at or beyond it stay empty.

  Returns:
    [..., out_size, source_size] float32.
  """
  length = jnp.maximum(end - start + 1, 1)[..., None]  # [..., 1]
  pixel = jnp.arange(out_size, dtype=jnp.int32)  # [out]
  offset = pixel - start[..., None]  # [..., out] position inside the resized mask
  inside = (offset >= 0) & (offset < length) & (pixel < jnp.asarray(limit)[..., None])
  # torch's upsample_bilinear2d (align_corners=False, CPU): float32 scale in / out, source clamped at 0.
  scale = jnp.float32(source_size) / length.astype(jnp.float32)
  source = jnp.maximum(scale * (offset.astype(jnp.float32) + 0.5) - 0.5, 0.0)
  low = jnp.minimum(jnp.floor(source).astype(jnp.int32), source_size - 1)
  high = jnp.where(low < source_size - 1, low + 1, low)
  frac = source - low.astype(jnp.float32)
  taps = jnp.arange(source_size, dtype=jnp.int32)
  weight = (jnp.where(taps == low[..., None], 1.0 - frac[..., None], 0.0)
            + jnp.where(taps == high[..., None], frac[..., None], 0.0))  # [..., out, source]
  return jnp.where(inside[..., None], weight, 0.0)


def paste_masks_in_image(
    masks: jax.Array,
    boxes: jax.Array,
    canvas_hw: tuple[int, int],
    image_hw: jax.Array | None = None,
    padding: int = 1,
) -> jax.Array:
  """Pastes masks [..., M, M] at boxes [..., 4] into images of static size canvas_hw = (H, W).

  Args:
    masks: [..., M, M] mask probabilities (or logits; any float values are resized as they are).
    boxes: [..., 4] x0, y0, x1, y1 in pixels of the target image.
    canvas_hw: static output size.
    image_hw: optional [..., 2] (or [2]) true image size when it is smaller than the canvas; torchvision
      clips the paste to the image, and pixels beyond it stay zero.
    padding: torchvision's padding (1) of the mask before resizing.

  Returns:
    [..., H, W] float32.
  """
  size = masks.shape[-1]
  padded = jnp.pad(masks.astype(jnp.float32), [(0, 0)] * (masks.ndim - 2) + [(padding, padding)] * 2)
  boxes = expand_boxes(boxes.astype(jnp.float32), (size + 2 * padding) / size).astype(jnp.int32)  # truncates
  height, width = canvas_hw
  if image_hw is None:
    image_hw = jnp.asarray(canvas_hw, jnp.int32)
  image_hw = jnp.asarray(image_hw, jnp.int32)
  rows = placement_weights(boxes[..., 1], boxes[..., 3], size + 2 * padding, height, image_hw[..., 0])
  cols = placement_weights(boxes[..., 0], boxes[..., 2], size + 2 * padding, width, image_hw[..., 1])
  return jnp.einsum("...yi,...ij,...xj->...yx", rows, padded, cols, precision=jax.lax.Precision.HIGHEST)
