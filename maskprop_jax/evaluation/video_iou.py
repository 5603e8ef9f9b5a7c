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


def video_iou(predictions: Sequence[Track], ground_truth: Sequence[Track]) -> np.ndarray:
  """Video IoU of every (prediction, ground truth) pair of tracks of the same video. [D, G] float64.

  Intersections come from pycocotools with "crowd" ground truth, which gives |P & G| / |P| as a double; times
  |P| that is the integer count up to a rounding error far below 0.5 (counts are < 2**31), so rounding
  recovers it exactly. The per-frame results are gathered and added up in one scatter at the end.
  """
  num_pred, num_gt = len(predictions), len(ground_truth)
  if num_pred == 0 or num_gt == 0:
    return np.zeros([num_pred, num_gt])
  pred_areas = np.stack([t.areas for t in predictions])  # [D, L]
  gt_areas = np.stack([t.areas for t in ground_truth])  # [G, L]
  # Frames where a mask is empty add nothing to any intersection, so only non-empty masks are looked at.
  pred_by_frame, gt_by_frame = _tracks_by_frame(pred_areas), _tracks_by_frame(gt_areas)
  rows, cols, fractions = [], [], []
  for f, (p, g) in enumerate(zip(pred_by_frame, gt_by_frame)):
    if p and g:
      fraction = mask_api.iou([predictions[i].rles[f] for i in p], [ground_truth[j].rles[f] for j in g],
                              [1] * len(g))  # [P, G]
      fractions.append(np.ravel(fraction))
      rows += [(i, f) for i in p for _ in g]
      cols += [j for _ in p for j in g]
  intersection = np.zeros([num_pred, num_gt], np.int64)
  if fractions:
    pred_index, frame_index = np.array(rows).T  # [N] each
    counts = np.rint(np.concatenate(fractions) * pred_areas[pred_index, frame_index]).astype(np.int64)
    np.add.at(intersection, (pred_index, np.array(cols)), counts)
  union = pred_areas.sum(1)[:, None] + gt_areas.sum(1)[None, :] - intersection  # [D, G]
  return np.where(union > 0, intersection / np.maximum(union, 1), 0.0)


def _tracks_by_frame(areas: np.ndarray) -> list[list[int]]:
  """[N, L] areas -> for each frame, the tracks with a non-empty mask in it."""
  by_frame: list[list[int]] = [[] for _ in range(areas.shape[1])]
  for track, frame in zip(*np.nonzero(areas)):
    by_frame[frame].append(int(track))
  return by_frame
