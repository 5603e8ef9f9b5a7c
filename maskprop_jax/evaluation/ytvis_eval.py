"""Matching, accumulation and the 12 summary stats of YouTube-VIS video AP.

The rules are those of the official evaluator (youtubevos/cocoapi `ytvoseval.py`, itself COCO's `cocoeval.py`
over video tracks), reproduced to the last bit: ties in score keep file order (stable sorts), among equally good
ground truths the later one wins, crowd ground truth is ignored but may absorb any number of predictions, and
predictions matched to nothing are ignored when their own size falls outside the area range. Arrays are laid out
as there ([T, R, K, A, M] precision) so that the summary means add the same numbers in the same order.

One deliberate difference: the official evaluator records a match as the ground truth's annotation id, so a
ground-truth annotation with id 0 counts as unmatched there; here a match is a boolean and 0 is an id like any
other.
"""

from __future__ import annotations

import dataclasses

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # [T]
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # [R]
MAX_DETECTIONS = (1, 10, 100)  # [M]
AREA_RANGES = np.array([[0.0, 1e10], [0.0, 128.0**2], [128.0**2, 256.0**2], [256.0**2, 1e10]])  # [A, 2]
AREA_NAMES = ("all", "small", "medium", "large")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclasses.dataclass(frozen=True)
class VideoCategoryMatches:
  """Outcome of matching one video's predictions of one category to its ground truth, for every area range."""

  scores: np.ndarray  # [D] float64, descending, at most MAX_DETECTIONS[-1]
  matched: np.ndarray  # [A, T, D] bool, the prediction matched a ground-truth track
  ignored: np.ndarray  # [A, T, D] bool, neither a true nor a false positive
  num_gt: np.ndarray  # [A] int64, ground-truth tracks that count (not crowd, inside the area range)


def match_video_category(ious: np.ndarray, scores: np.ndarray, pred_avg_area: np.ndarray,
                         gt_avg_area: np.ndarray, gt_crowd: np.ndarray) -> VideoCategoryMatches:
  """Greedy matching, highest score first, at every IoU threshold and area range at once.

  Args: ious [D, G] video IoU, predictions in file order; scores [D]; pred_avg_area [D]; gt_avg_area [G];
  gt_crowd [G] bool.
  """
  order = np.argsort(-scores, kind="mergesort")[:MAX_DETECTIONS[-1]]  # stable: ties keep file order
  ious, scores, pred_avg_area = ious[order], scores[order], pred_avg_area[order]
  num_pred, num_gt = ious.shape
  lo, hi = AREA_RANGES[:, :1], AREA_RANGES[:, 1:]  # [A, 1]
  gt_ignored = gt_crowd[None, :] | (gt_avg_area[None, :] < lo) | (gt_avg_area[None, :] > hi)  # [A, G]
  pred_outside = (pred_avg_area[None, :] < lo) | (pred_avg_area[None, :] > hi)  # [A, D]
  num_areas, num_thresholds = len(AREA_RANGES), len(IOU_THRESHOLDS)
  thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, :, None]  # [1, T, 1]

  gt_taken = np.zeros([num_areas, num_thresholds, num_gt], bool)
  matched = np.zeros([num_areas, num_thresholds, num_pred], bool)
  matched_ignored_gt = np.zeros([num_areas, num_thresholds, num_pred], bool)
  if num_gt and num_pred:
    area_index, threshold_index = np.indices([num_areas, num_thresholds])
    for d in range(num_pred):
      # Candidates clear the threshold and are free (a crowd track stays free). Regular ground truth is tried
      # before ignored ground truth, and a prediction falls back to ignored tracks only when no regular one fits.
      candidate = (~gt_taken | gt_crowd) & (ious[d] >= thresholds)  # [A, T, G]
      regular = candidate & ~gt_ignored[:, None, :]
      candidate = np.where(regular.any(-1, keepdims=True), regular, candidate)
      found = candidate.any(-1)  # [A, T]
      best_iou = np.where(candidate, ious[d], -1.0)
      is_best = candidate & (best_iou == best_iou.max(-1, keepdims=True))
      best = num_gt - 1 - np.argmax(is_best[..., ::-1], axis=-1)  # [A, T] the last of equals wins
      a, t, g = area_index[found], threshold_index[found], best[found]
      gt_taken[a, t, g] = True
      matched[a, t, d] = True
      matched_ignored_gt[a, t, d] = gt_ignored[a, g]
  ignored = matched_ignored_gt | (~matched & pred_outside[:, None, :])
  return VideoCategoryMatches(scores=scores, matched=matched, ignored=ignored,
                              num_gt=(~gt_ignored).sum(-1).astype(np.int64))


def accumulate(matches: list[list[VideoCategoryMatches]]) -> tuple[np.ndarray, np.ndarray]:
  """Per category, the videos' matches (ascending video id, only videos with ground truth or predictions of it)
  -> precision [T, R, K, A, M] and recall [T, K, A, M], -1 where the category has no ground truth that counts."""
  num_t, num_r, num_k = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(matches)
  num_a, num_m = len(AREA_RANGES), len(MAX_DETECTIONS)
  precision = -np.ones([num_t, num_r, num_k, num_a, num_m])
  recall = -np.ones([num_t, num_k, num_a, num_m])
  for k, videos in enumerate(matches):
    if not videos:
      continue
    scores = np.concatenate([v.scores for v in videos])  # [N]
    rank_in_video = np.concatenate([np.arange(len(v.scores)) for v in videos])  # [N]
    matched = np.concatenate([v.matched for v in videos], axis=-1)  # [A, T, N]
    ignored = np.concatenate([v.ignored for v in videos], axis=-1)  # [A, T, N]
    num_gt = np.sum([v.num_gt for v in videos], axis=0)  # [A]
    for m, max_det in enumerate(MAX_DETECTIONS):
      kept = np.flatnonzero(rank_in_video < max_det)
      order = kept[np.argsort(-scores[kept], kind="mergesort")]  # stable: ties keep video order
      for a in range(num_a):
        if num_gt[a] == 0:
          continue
        precision[:, :, k, a, m], recall[:, k, a, m] = _precision_recall(
            matched[a][:, order], ignored[a][:, order], num_gt[a])
  return precision, recall


def _precision_recall(matched: np.ndarray, ignored: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
  """Predictions of one category over all videos, by descending score: matched, ignored [T, N] ->
  interpolated precision at the recall thresholds [T, R] and final recall [T]."""
  true_pos = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)  # [T, N]
  false_pos = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
  num_t, num_pred = true_pos.shape
  precision_at = np.zeros([num_t, len(RECALL_THRESHOLDS)])
  if num_pred == 0:
    return precision_at, np.zeros([num_t])
  rec = true_pos / num_gt
  prec = true_pos / (false_pos + true_pos + np.spacing(1))
  prec = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]  # precision envelope, non-increasing
  for t in range(num_t):
    idx = np.searchsorted(rec[t], RECALL_THRESHOLDS, side="left")
    reached = idx < num_pred
    precision_at[t, reached] = prec[t, idx[reached]]
  return precision_at, rec[:, -1]


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
  """The 12 YouTube-VIS stats; -1 where nothing is defined (no ground truth in that area range)."""

  def mean_defined(values: np.ndarray) -> float:
    values = values[values > -1]
    return float(np.mean(values)) if values.size else -1.0

  def ap(iou=None, area="all"):
    s = precision if iou is None else precision[np.where(IOU_THRESHOLDS == iou)[0]]
    return mean_defined(s[:, :, :, AREA_NAMES.index(area), MAX_DETECTIONS.index(100)])

  def ar(max_det=100, area="all"):
    return mean_defined(recall[:, :, AREA_NAMES.index(area), MAX_DETECTIONS.index(max_det)])

  values = (ap(), ap(iou=0.5), ap(iou=0.75), ap(area="small"), ap(area="medium"), ap(area="large"),
            ar(1), ar(10), ar(100), ar(area="small"), ar(area="medium"), ar(area="large"))
  return dict(zip(STAT_NAMES, values))


def per_category_ap(precision: np.ndarray) -> np.ndarray:
  """AP over the IoU thresholds for each category, all areas, 100 predictions. [K], -1 without ground truth."""
  s = precision[:, :, :, AREA_NAMES.index("all"), MAX_DETECTIONS.index(100)]  # [T, R, K]
  out = np.full([s.shape[2]], -1.0)
  for k in range(s.shape[2]):
    values = s[:, :, k][s[:, :, k] > -1]
    if values.size:
      out[k] = np.mean(values)
  return out
