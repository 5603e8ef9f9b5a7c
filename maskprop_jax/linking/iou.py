"""Soft IoU of masks, in NumPy: what linking matches clip tracks on, and every other mask overlap of the package
(duplicate detections at inference, propagation_eval's scores) with it."""

from __future__ import annotations

import numpy as np

# A union below this is "both masks empty": no overlap to speak of either way.
EMPTY_UNION = 1e-6


def intersection_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Soft intersections and unions of every pair: a [..., K, P], b [..., V, P] (flattened masks, probabilities or
  0/1) -> ([..., K, V], [..., K, V]); sum(ab) and sum(a + b - ab). Leading dimensions are batched (e.g. frames)."""
  inter = np.matmul(a, np.swapaxes(b, -1, -2))
  union = a.sum(-1)[..., :, None] + b.sum(-1)[..., None, :] - inter
  return inter, union


def soft_iou(a: np.ndarray, b: np.ndarray, *, both_empty: float = 0.0) -> np.ndarray:
  """sum(ab) / sum(a + b - ab) of every pair (see intersection_union); `both_empty` where the union is empty."""
  inter, union = intersection_union(a, b)
  return np.where(union > EMPTY_UNION, inter / np.maximum(union, EMPTY_UNION), both_empty)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
  """IoU of two binary masks of one shape; 1 when both are empty (they agree that the object is absent)."""
  flat_a = a.reshape(1, -1).astype(np.float32)
  flat_b = b.reshape(1, -1).astype(np.float32)
  return float(soft_iou(flat_a, flat_b, both_empty=1.0)[0, 0])
