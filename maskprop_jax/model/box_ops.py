"""Elementwise and pairwise box arithmetic, following torchvision.ops.boxes.

Boxes are (x0, y0, x1, y1) in pixels, float32. Every function is pure, works on any leading batch shape and keeps
shapes static: instead of returning the indices of boxes to keep (as torchvision does), filters return a boolean
mask of the same leading shape.
"""

from __future__ import annotations

import jax.numpy as jnp


def box_area(boxes: jnp.ndarray) -> jnp.ndarray:
  """Area of each box: [..., 4] -> [...]."""
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_intersection(boxes1: jnp.ndarray, boxes2: jnp.ndarray) -> jnp.ndarray:
  """Intersection area of every pair: [..., N, 4] x [..., M, 4] -> [..., N, M]."""
  top_left = jnp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])  # [..., N, M, 2]
  bottom_right = jnp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])  # [..., N, M, 2]
  wh = jnp.maximum(bottom_right - top_left, 0.0)  # [..., N, M, 2]
  return wh[..., 0] * wh[..., 1]


def box_iou(boxes1: jnp.ndarray, boxes2: jnp.ndarray) -> jnp.ndarray:
  """Intersection over union of every pair: [..., N, 4] x [..., M, 4] -> [..., N, M].

  Same arithmetic as torchvision.ops.box_iou (bit for bit when run eagerly; under jit XLA may fuse a multiply-add);
  two empty boxes give NaN (0 / 0) there and here.
  """
  area1 = box_area(boxes1)  # [..., N]
  area2 = box_area(boxes2)  # [..., M]
  inter = pairwise_intersection(boxes1, boxes2)  # [..., N, M]
  union = area1[..., :, None] + area2[..., None, :] - inter
  return inter / union


def clip_boxes(boxes: jnp.ndarray, image_hw) -> jnp.ndarray:
  """Clamps x to [0, width] and y to [0, height] like torchvision's clip_boxes_to_image.

  Args:
    boxes: [*lead, ..., 4].
    image_hw: (height, width) as a static pair or an array [2], or one size per image [*lead, 2] where `lead` is a
      prefix of the leading dims of `boxes` (e.g. [B, 2] for boxes [B, N, 4] or [B, N, C, 4]).
  """
  image_hw = jnp.asarray(image_hw, boxes.dtype)  # [*lead, 2]
  lead_ndim = image_hw.ndim - 1
  trailing = (1,) * (boxes.ndim - 1 - lead_ndim)
  height = image_hw[..., 0].reshape(image_hw.shape[:-1] + trailing)  # [*lead, 1, ...]
  width = image_hw[..., 1].reshape(image_hw.shape[:-1] + trailing)  # [*lead, 1, ...]
  x0 = jnp.clip(boxes[..., 0], 0.0, width)
  y0 = jnp.clip(boxes[..., 1], 0.0, height)
  x1 = jnp.clip(boxes[..., 2], 0.0, width)
  y1 = jnp.clip(boxes[..., 3], 0.0, height)
  return jnp.stack([x0, y0, x1, y1], axis=-1)


def large_enough(boxes: jnp.ndarray, min_size: float) -> jnp.ndarray:
  """Mask of boxes whose both sides are >= min_size (torchvision's remove_small_boxes as a mask): [..., 4] -> [...]."""
  widths = boxes[..., 2] - boxes[..., 0]
  heights = boxes[..., 3] - boxes[..., 1]
  return (widths >= min_size) & (heights >= min_size)


def xyxy_to_cxcywh(boxes: jnp.ndarray) -> jnp.ndarray:
  """(x0, y0, x1, y1) -> (center x, center y, width, height): [..., 4] -> [..., 4]."""
  x0, y0, x1, y1 = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def cxcywh_to_xyxy(boxes: jnp.ndarray) -> jnp.ndarray:
  """(center x, center y, width, height) -> (x0, y0, x1, y1): [..., 4] -> [..., 4]."""
  cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)
