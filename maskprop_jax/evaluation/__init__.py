"""YouTube-VIS video AP evaluation and results files, with the numbers of the official evaluator.

This package imports numpy, pycocotools and the package's top-level helpers only (nothing of data/), so scoring a
file never loads jax or TensorFlow. data/ reads annotation files with this package's parser (ytvis_json.py).

  stats = evaluate("valid.json", "results.json")  # {"AP": ..., "AP50": ..., ..., "ARl": ...}
  write_results(tracks, "submission.zip")          # results.json inside, for the YouTube-VIS servers
"""

from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np

from maskprop_jax.evaluation.ground_truth import GroundTruth, load_ground_truth
from maskprop_jax.evaluation.results import PredictedTrack, load_results, results_entries, write_results
from maskprop_jax.evaluation.tracks import Track
from maskprop_jax.evaluation.video_iou import video_iou
from maskprop_jax.evaluation.ytvis_eval import (STAT_NAMES, VideoCategoryMatches, accumulate,
                                                match_video_category, per_category_ap, summarize)

__all__ = ["evaluate", "evaluate_tracks", "load_ground_truth", "load_results", "write_results",
           "results_entries", "PredictedTrack", "GroundTruth", "Track", "STAT_NAMES"]


def evaluate(annotations: str | os.PathLike | dict[str, Any], results: str | os.PathLike | list[Any],
             per_category: bool = False) -> dict[str, Any]:
  """Scores a results file (path or parsed list) against YouTube-VIS ground truth (path or parsed dict).

  Returns the 12 stats AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl as floats in [0, 1]
  (-1 where undefined); with `per_category`, also "per_category_AP": {category name: AP}.
  Raises maskprop_jax.errors.InputError for malformed files.
  """
  ground_truth = load_ground_truth(annotations)
  return evaluate_tracks(ground_truth, load_results(results, ground_truth), per_category)


def evaluate_tracks(ground_truth: GroundTruth, predictions: list[Track],
                    per_category: bool = False) -> dict[str, Any]:
  """`evaluate` on already loaded ground truth and predictions."""
  category_ids = list(ground_truth.categories)
  category_index = {c: k for k, c in enumerate(category_ids)}
  gt_by_video = _group_by_video(ground_truth.tracks)
  pred_by_video = _group_by_video(predictions)
  matches: list[list[VideoCategoryMatches]] = [[] for _ in category_ids]
  for video_id in sorted(ground_truth.videos):
    gts, preds = gt_by_video.get(video_id, []), pred_by_video.get(video_id, [])
    if not gts and not preds:
      continue
    # [D, G]; only same-category blocks are used, so predictions of categories without ground truth here skip it.
    ious = np.zeros([len(preds), len(gts)])
    gt_categories = {t.category_id for t in gts}
    with_gt = [i for i, t in enumerate(preds) if t.category_id in gt_categories]
    ious[with_gt] = video_iou([preds[i] for i in with_gt], gts)
    for category_id in sorted({t.category_id for t in gts} | {t.category_id for t in preds}):
      g = [i for i, t in enumerate(gts) if t.category_id == category_id]
      p = [i for i, t in enumerate(preds) if t.category_id == category_id]
      matches[category_index[category_id]].append(match_video_category(
          ious[np.ix_(p, g)],
          scores=np.array([preds[i].score for i in p], np.float64),
          pred_avg_area=np.array([preds[i].avg_area for i in p], np.float64),
          gt_avg_area=np.array([gts[i].avg_area for i in g], np.float64),
          gt_crowd=np.array([gts[i].crowd for i in g], bool)))
  precision, recall = accumulate(matches)
  stats: dict[str, Any] = summarize(precision, recall)
  if per_category:
    keys = category_keys(ground_truth.categories).values()
    stats["per_category_AP"] = dict(zip(keys, per_category_ap(precision).tolist()))
  return stats


def category_keys(categories: dict[int, str]) -> dict[int, str]:
  """{category id: the name it is reported under}: its name, with its id appended where several categories share
  the name."""
  names = list(categories.values())
  return {c: n if names.count(n) == 1 else f"{n} (id {c})" for c, n in categories.items()}


def _group_by_video(tracks: list[Track]) -> dict[int, list[Track]]:
  """Tracks of each video, in their original (file) order, which decides ties in score."""
  grouped: dict[int, list[Track]] = collections.defaultdict(list)
  for track in tracks:
    grouped[track.video_id].append(track)
  return grouped
