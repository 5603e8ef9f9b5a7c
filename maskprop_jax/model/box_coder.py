"""Box regression targets in torchvision's BoxCoder parameterisation.

A box is encoded relative to a reference box as (dx, dy, dw, dh) = (wx * (cx - cx_ref) / w_ref,
wy * (cy - cy_ref) / h_ref, ww * log(w / w_ref), wh * log(h / h_ref)). The arithmetic follows torchvision's
operation order; float32 results agree with torchvision's to a few ulps (XLA's exp/log and fused multiply-adds
round differently from torch's CPU kernels in the last bit).
RPN uses weights (1, 1, 1, 1); the Fast R-CNN box head uses (10, 10, 5, 5).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

# torchvision's bbox_xform_clip: keeps exp(dw) below 1000 / 16, i.e. no box grows more than 62.5 times in one step.
DEFAULT_SCALE_CLIP = math.log(1000.0 / 16)

RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _widths_and_centers(boxes: jnp.ndarray):
  widths = boxes[..., 2] - boxes[..., 0]
  heights = boxes[..., 3] - boxes[..., 1]
  ctr_x = boxes[..., 0] + 0.5 * widths
  ctr_y = boxes[..., 1] + 0.5 * heights
  return widths, heights, ctr_x, ctr_y


def encode(reference_boxes: jnp.ndarray, proposals: jnp.ndarray, weights: Sequence[float]) -> jnp.ndarray:
  """Regression targets that move `proposals` onto `reference_boxes` (e.g. gt boxes): [..., 4] x [..., 4] -> [..., 4].

  Shapes broadcast. A proposal or reference box of zero width or height gives inf/NaN, as in torchvision; callers
  select the targets of positive (matched) entries only.
  """
  wx, wy, ww, wh = (jnp.asarray(w, reference_boxes.dtype) for w in weights)
  ex_widths, ex_heights, ex_ctr_x, ex_ctr_y = _widths_and_centers(proposals)
  gt_widths, gt_heights, gt_ctr_x, gt_ctr_y = _widths_and_centers(reference_boxes)
  dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
  dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
  dw = ww * jnp.log(gt_widths / ex_widths)
  dh = wh * jnp.log(gt_heights / ex_heights)
  return jnp.stack([dx, dy, dw, dh], axis=-1)


def decode(
    deltas: jnp.ndarray,
    boxes: jnp.ndarray,
    weights: Sequence[float],
    clip: float = DEFAULT_SCALE_CLIP,
) -> jnp.ndarray:
  """Applies regression `deltas` to reference `boxes`: [..., 4] x [..., 4] -> [..., 4] (shapes broadcast).

  For per-class deltas pass deltas [N, C, 4] and boxes [N, 1, 4]. dw and dh are clamped from above at `clip`
  before the exponential, as torchvision does.
  """
  boxes = boxes.astype(deltas.dtype)
  widths, heights, ctr_x, ctr_y = _widths_and_centers(boxes)
  wx, wy, ww, wh = weights
  dx = deltas[..., 0] / wx
  dy = deltas[..., 1] / wy
  dw = jnp.minimum(deltas[..., 2] / ww, clip)
  dh = jnp.minimum(deltas[..., 3] / wh, clip)
  pred_ctr_x = dx * widths + ctr_x
  pred_ctr_y = dy * heights + ctr_y
  half_w = 0.5 * (jnp.exp(dw) * widths)
  half_h = 0.5 * (jnp.exp(dh) * heights)
  return jnp.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], axis=-1)
