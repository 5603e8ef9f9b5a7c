"""Where a box-relative M x M mask lands in an image: torchvision's and detectron2's paste rules, in NumPy or jnp.

torchvision pads each M x M mask by `padding` pixels, scales its box by (M + 2 padding) / M about the center,
truncates the box to integers, resizes the padded mask to the box size (w = x1 - x0 + 1, h = y1 - y0 + 1) with
bilinear interpolation (align_corners=False) and copies it into the image where box and image overlap.
Here the resize and the placement are one separable linear map per mask: out = Ry @ mask @ Rx^T, where
Ry [H, M + 2 padding] holds, for each image row inside the box, the two bilinear weights of its source rows
(and zeros outside the box), so shapes never depend on the boxes.

detectron2 (aligned=True) samples the mask at each pixel's centre in the box's own float coordinates: mask cell
(p + 0.5 - x0) / (x1 - x0) * M - 0.5 for pixel p, bilinear with zeros beyond the mask (grid_sample,
align_corners=False). It is the inverse of the aligned RoIAlign that makes its mask targets, so a target pasted
back is the mask it came from, to within the M x M grid. torchvision's truncated, padded and widened box (w + 1
pixels) and its unaligned targets shift and stretch masks by up to a pixel, which small objects cannot afford: the
ground-truth masks of a synthetic split (seed 101, 1,337 masks at the main job's test scale) made into targets and
pasted back have IoU 0.78 with themselves under 100 pixels of area and 0.90 at 100-400 the torchvision way, 0.999
and 0.998 detectron2's (tests/model/test_paste_masks.py checks the same on drawn shapes).

One definition serves the network (model/paste_masks.py, in jnp under jit) and linking, which pastes a track's
box-relative masks at the video's resolution when it finishes a frame (linking/frames.py, in NumPy): every function
takes the array module as `xp` (numpy or jax.numpy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = Any  # a numpy or jax array


def expand_boxes(boxes: Array, scale: float, xp=np) -> Array:
  """Scales boxes [..., 4] about their centers, in torchvision's float32 operation order."""
  half_w = (boxes[..., 2] - boxes[..., 0]) * 0.5 * xp.float32(scale)
  half_h = (boxes[..., 3] - boxes[..., 1]) * 0.5 * xp.float32(scale)
  center_x = (boxes[..., 2] + boxes[..., 0]) * 0.5
  center_y = (boxes[..., 3] + boxes[..., 1]) * 0.5
  return xp.stack([center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h], axis=-1)


def _two_taps(low: Array, high: Array, frac: Array, source_size: int, xp) -> Array:
  """Bilinear weights [..., out, source]: 1 - frac on source cell `low`, frac on `high` ([..., out] each)."""
  taps = xp.arange(source_size, dtype=xp.int32)
  return (xp.where(taps == low[..., None], 1.0 - frac[..., None], 0.0)
          + xp.where(taps == high[..., None], frac[..., None], 0.0))


def placement_weights(start: Array, end: Array, source_size: int, out_size: int,
                      limit: Array, xp=np) -> Array:
  """Bilinear resize of `source_size` samples onto image pixels start..end (inclusive), along one axis.

  Args:
    start, end: [...] int32 first and last pixel of the (integer) box.
    source_size: padded mask size along this axis.
    out_size: static image size along this axis.
    limit: [...] or scalar int32 image size; pixels at or beyond it stay empty.

  Returns:
    [..., out_size, source_size] float32.
  """
  length = xp.maximum(end - start + 1, 1)[..., None]  # [..., 1]
  pixel = xp.arange(out_size, dtype=xp.int32)  # [out]
  offset = pixel - start[..., None]  # [..., out] position inside the resized mask
  inside = (offset >= 0) & (offset < length) & (pixel < xp.asarray(limit)[..., None])
  # torch's upsample_bilinear2d (align_corners=False, CPU): float32 scale in / out, source clamped at 0.
  scale = xp.float32(source_size) / length.astype(xp.float32)
  source = xp.maximum(scale * (offset.astype(xp.float32) + 0.5) - 0.5, 0.0)
  low = xp.minimum(xp.floor(source).astype(xp.int32), source_size - 1)
  high = xp.where(low < source_size - 1, low + 1, low)
  frac = source - low.astype(xp.float32)
  return xp.where(inside[..., None], _two_taps(low, high, frac, source_size, xp), 0.0)


def aligned_placement_weights(start: Array, end: Array, source_size: int, out_size: int,
                              limit: Array, xp=np) -> Array:
  """detectron2's resize of `source_size` mask cells onto the pixels of the float box [start, end], along one axis.

  Args:
    start, end: [...] float32 box edges in pixels.
    source_size: mask size M along this axis.
    out_size: static image size along this axis.
    limit: [...] or scalar int32 image size; pixels at or beyond it stay empty.

  Returns:
    [..., out_size, source_size] float32; a pixel's weights sum to less than 1 within a cell of the box's edge.
  """
  pixel = xp.arange(out_size, dtype=xp.float32)
  length = (end - start)[..., None]  # [..., 1]
  # grid_sample's unnormalisation of the pixel's [-1, 1] coordinate, in detectron2's float32 operation order.
  grid = (pixel + 0.5 - start[..., None]) / length * 2.0 - 1.0  # [..., out]
  source = ((grid + 1.0) * source_size - 1.0) / 2.0
  low = xp.floor(source)
  frac = source - low
  low = low.astype(xp.int32)
  # Taps beyond the mask (low -1, high M) match no source cell: grid_sample's zero padding.
  weight = _two_taps(low, low + 1, frac, source_size, xp)
  inside = (xp.arange(out_size) < xp.asarray(limit)[..., None]) & (length > 0)
  return xp.where(inside[..., None], weight, 0.0)


def paste_weights(masks: Array, boxes: Array, canvas_hw: tuple[int, int], image_hw: Array, padding: int = 1, *,
                  aligned: bool = False, xp=np) -> tuple[Array, Array, Array]:
  """The separable form of pasting masks [..., M, M] at boxes [..., 4] (x0, y0, x1, y1 in pixels of the image)
  into canvases of static size canvas_hw: (masks as resized, rows [..., H, M'], cols [..., W, M']) such that
  pasted = rows @ masks @ cols^T. torchvision's rule pads the masks by `padding` (M' = M + 2 padding) and truncates
  its widened boxes; image_hw ([..., 2] or [2]): pixels at or beyond it stay empty."""
  height, width = canvas_hw
  image_hw = xp.asarray(image_hw, xp.int32)
  masks, boxes = xp.asarray(masks, xp.float32), xp.asarray(boxes, xp.float32)
  if aligned:
    weights = aligned_placement_weights
  else:
    size = masks.shape[-1]
    masks = xp.pad(masks, [(0, 0)] * (masks.ndim - 2) + [(padding, padding)] * 2)
    boxes = expand_boxes(boxes, (size + 2 * padding) / size, xp).astype(xp.int32)  # truncates
    weights = placement_weights
  rows = weights(boxes[..., 1], boxes[..., 3], masks.shape[-2], height, image_hw[..., 0], xp)
  cols = weights(boxes[..., 0], boxes[..., 2], masks.shape[-1], width, image_hw[..., 1], xp)
  return masks, rows, cols
