"""Video IoU between predicted and ground-truth tracks of one video, on compressed RLE.

video IoU = sum over frames of |P_f & G_f| / sum over frames of |P_f | G_f|, where a frame with a mask on one side
only adds that mask's area to the union, and 0 when the union is empty. Because |P | G| = |P| + |G| - |P & G|,
the union needs only the tracks' total areas and the intersections; those come from one pycocotools call per
frame over every pair of tracks present in it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocotools import mask as mask_api

from maskprop_jax.evaluation.tracks import Track


def frame_intersections(pred_rles: list[dict], gt_rles: list[dict], pred_areas: np.ndarray) -> np.ndarray:
  """Exact pixel counts |P & G| of every pair of masks of one frame. [P, G] int64.

  pycocotools gives, for a "crowd" ground truth, |P & G| / |P| as a double; times |P| it is the integer count up
  to a rounding error far below 0.5 (counts are < 2**31), so rounding recovers it exactly.
  """
  fraction = np.asarray(mask_api.iou(pred_rles, gt_rles, [1] * len(gt_rles)), np.float64)  # [P, G]
  return np.rint(fraction * pred_areas[:, None]).astype(np.int64)


def video_iou(predictions: Sequence[Track], ground_truth: Sequence[Track]) -> np.ndarray:
  """Video IoU of every (prediction, ground truth) pair of tracks of the same video. [D, G] float64."""
  num_pred, num_gt = len(predictions), len(ground_truth)
  if num_pred == 0 or num_gt == 0:
    return np.zeros([num_pred, num_gt])
  pred_areas = np.stack([t.areas for t in predictions])  # [D, L]
  gt_areas = np.stack([t.areas for t in ground_truth])  # [G, L]
  intersection = np.zeros([num_pred, num_gt], np.int64)
  # A frame where either side's mask is empty adds nothing to any intersection.
  shared_frames = np.flatnonzero((pred_areas > 0).any(0) & (gt_areas > 0).any(0))
  for f in shared_frames:
    p = np.flatnonzero(pred_areas[:, f])
    g = np.flatnonzero(gt_areas[:, f])
    if p.size and g.size:
      intersection[np.ix_(p, g)] += frame_intersections(
          [predictions[i].rles[f] for i in p], [ground_truth[j].rles[f] for j in g], pred_areas[p, f])
  union = pred_areas.sum(1)[:, None] + gt_areas.sum(1)[None, :] - intersection  # [D, G]
  return np.where(union > 0, intersection / np.maximum(union, 1), 0.0)
