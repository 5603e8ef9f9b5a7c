"""Where video AP is lost: oracle APs that each fix one kind of error, and per-track, per-frame and ranking numbers.

  python -m maskprop_jax.evaluation.diagnose --annotations valid.json --results results.json [--json out.json]

A prediction is matched to the ground truth of its video by video IoU, and the "best GT" is the one with the
highest IoU. Each oracle fixes one kind of error and re-runs the evaluator, so its gain over "as is" is the AP that
this kind of error costs. Crowd ground truth is left out of the matching: it is neither found nor missed.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_api

from maskprop_jax import files
from maskprop_jax.errors import InputError, report_errors
from maskprop_jax.evaluation import (GroundTruth, Track, category_keys, evaluate_tracks, load_ground_truth,
                                     load_results, video_iou)
from maskprop_jax.evaluation.tracks import average_area

ON_GT_IOU = 0.1  # a prediction this close to a ground-truth track is "on" it: the oracles fix only these
FOUND_IOU = 0.5  # a match as AP50 counts it
SIZE_EDGES = (100, 400, 1600)  # ground-truth mask area per frame, in pixels
SIZE_NAMES = ("<100", "100-400", "400-1600", ">=1600")
ORACLES = {
    "class": "predictions on a GT take its class",
    "ranking": "score = video IoU with the best same-class GT",
    "duplicates": "only the best-scored prediction per GT is kept",
    "masks": "predictions on a GT take its masks",
    "frame masks": "predictions take their GT's mask on the frames where they overlap it",
    "linking": "the predictions on a GT are merged into one track",
    "missed": "GT tracks no prediction is on are added, score 0",
}


@dataclasses.dataclass
class Matches:
  """Best partners by video IoU (-1 / 0.0 where there is none), and per-frame IoU, of every non-crowd GT track."""
  gts: list[Track]  # non-crowd ground truth, file order
  any_gt: np.ndarray  # [D] best GT of any class, index into gts
  any_iou: np.ndarray  # [D]
  same_gt: np.ndarray  # [D] best GT of the prediction's class
  same_iou: np.ndarray  # [D]
  gt_any_pred: np.ndarray  # [G] best prediction of any class, index into the predictions
  gt_any_iou: np.ndarray  # [G]
  gt_same_pred: np.ndarray  # [G] best prediction of the GT's class
  gt_same_iou: np.ndarray  # [G]
  gt_frame_iou: list[np.ndarray]  # G x [L, D_v] per-frame IoU with each prediction of the GT's video
  gt_video_preds: list[np.ndarray]  # G x [D_v] those predictions' indices


def frame_ious(preds: list[Track], gts: list[Track]) -> np.ndarray:
  """Per-frame mask IoU of every (prediction, GT) pair of one video, 0 where either mask is absent or empty.
  [L, D, G]; one pycocotools call per frame."""
  length = len(gts[0].rles) if gts else len(preds[0].rles) if preds else 0
  out = np.zeros([length, len(preds), len(gts)])
  for f in range(length):
    p = [i for i, t in enumerate(preds) if t.areas[f] > 0]
    g = [j for j, t in enumerate(gts) if t.areas[f] > 0]
    if p and g:
      out[f][np.ix_(p, g)] = mask_api.iou([preds[i].rles[f] for i in p], [gts[j].rles[f] for j in g],
                                          [0] * len(g))  # [P, G]
  return out


def _best(ious: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
  """Argmax and max of `ious` along `axis`, where -1 marks a pair that may not match: -1 / 0.0 if none may."""
  if ious.shape[axis] == 0:
    shape = ious.shape[1 - axis]
    return -np.ones([shape], np.int64), np.zeros([shape])
  index, value = ious.argmax(axis), ious.max(axis)
  return np.where(value >= 0, index, -1), np.maximum(value, 0.0)


def best_matches(ground_truth: GroundTruth, predictions: list[Track]) -> Matches:
  """Video IoU of every prediction with every non-crowd GT track of its video, reduced to best partners."""
  gts = [t for t in ground_truth.tracks if not t.crowd]
  num_pred, num_gt = len(predictions), len(gts)
  m = Matches(gts, -np.ones([num_pred], np.int64), np.zeros([num_pred]), -np.ones([num_pred], np.int64),
              np.zeros([num_pred]), -np.ones([num_gt], np.int64), np.zeros([num_gt]),
              -np.ones([num_gt], np.int64), np.zeros([num_gt]), [np.zeros([0, 0])] * num_gt, [np.zeros([0])] * num_gt)
  pred_by_video, gt_by_video = collections.defaultdict(list), collections.defaultdict(list)
  for i, t in enumerate(predictions):
    pred_by_video[t.video_id].append(i)
  for j, t in enumerate(gts):
    gt_by_video[t.video_id].append(j)
  for video_id, g in gt_by_video.items():
    p = np.array(pred_by_video.get(video_id, []), np.int64)
    g = np.array(g, np.int64)
    preds, video_gts = [predictions[i] for i in p], [gts[j] for j in g]
    ious = video_iou(preds, video_gts)  # [d, g]
    same = (np.array([t.category_id for t in preds])[:, None] ==
            np.array([t.category_id for t in video_gts])[None, :]).reshape(ious.shape)  # [d, g]
    same_ious = np.where(same, ious, -1.0)
    for (index, iou), source, target in (
        (_best(ious, 1), m.any_gt, m.any_iou), (_best(same_ious, 1), m.same_gt, m.same_iou)):
      source[p], target[p] = np.where(index >= 0, g[index], -1), iou
    for (index, iou), source, target in (
        (_best(ious, 0), m.gt_any_pred, m.gt_any_iou), (_best(same_ious, 0), m.gt_same_pred, m.gt_same_iou)):
      source[g], target[g] = np.where(index >= 0, p[index] if p.size else -1, -1), iou
    per_frame = frame_ious(preds, video_gts)  # [L, d, g]
    for k, j in enumerate(g):
      m.gt_frame_iou[j], m.gt_video_preds[j] = per_frame[:, :, k], p
  return m


def oracle_predictions(kind: str, predictions: list[Track], m: Matches) -> list[Track]:
  """The predictions with one kind of error fixed (see ORACLES)."""
  if kind == "class":
    return [dataclasses.replace(t, category_id=m.gts[m.any_gt[i]].category_id) if m.any_iou[i] >= ON_GT_IOU
            else t for i, t in enumerate(predictions)]
  if kind == "ranking":
    return [dataclasses.replace(t, score=float(m.same_iou[i])) for i, t in enumerate(predictions)]
  if kind == "duplicates":
    best: dict[int, int] = {}  # GT -> its highest-scored prediction (the first of equals, as the evaluator ranks)
    for i, t in enumerate(predictions):
      if m.same_iou[i] >= ON_GT_IOU and (m.same_gt[i] not in best or t.score > predictions[best[m.same_gt[i]]].score):
        best[m.same_gt[i]] = i
    return [t for i, t in enumerate(predictions) if m.same_iou[i] < ON_GT_IOU or best[m.same_gt[i]] == i]
  if kind == "masks":
    return [dataclasses.replace(t, rles=m.gts[m.same_gt[i]].rles, areas=m.gts[m.same_gt[i]].areas,
                                avg_area=m.gts[m.same_gt[i]].avg_area) if m.same_iou[i] >= ON_GT_IOU else t
            for i, t in enumerate(predictions)]
  if kind == "frame masks":
    return [_with_frame_masks(t, m, i) if m.same_iou[i] >= ON_GT_IOU else t for i, t in enumerate(predictions)]
  if kind == "linking":
    return _merged_fragments(predictions, m)
  if kind == "missed":
    # 0, or just below the lowest real score where scores go that low: the added tracks never displace a real one.
    # A GT track without a non-empty mask is left out: no prediction can match it, so its copy would be a false
    # positive.
    score = min(0.0, float(np.nextafter(min((t.score for t in predictions), default=0.0), -np.inf)))
    missed = [g for j, g in enumerate(m.gts) if m.gt_any_iou[j] < ON_GT_IOU and g.areas.any()]
    added = [dataclasses.replace(gt, id=len(predictions) + k + 1, score=score) for k, gt in enumerate(missed)]
    return predictions + added
  raise ValueError(f"unknown oracle {kind!r}; one of {', '.join(ORACLES)}")


def _with_frame_masks(track: Track, m: Matches, i: int) -> Track:
  """`track` with its best GT's mask on every frame where the two overlap; its other frames as they are. What
  perfect masks would give without changing which frames the track covers (so fragments stay fragments)."""
  j = m.same_gt[i]
  gt = m.gts[j]
  overlap = m.gt_frame_iou[j][:, np.flatnonzero(m.gt_video_preds[j] == i)[0]] > 0  # [L]
  rles = [gt.rles[f] if overlap[f] else r for f, r in enumerate(track.rles)]
  areas = np.where(overlap, gt.areas, track.areas)
  return dataclasses.replace(track, rles=rles, areas=areas, avg_area=average_area(areas))


def _merged_fragments(predictions: list[Track], m: Matches) -> list[Track]:
  """Every GT's same-class predictions (those on it) merged into one track: on each frame the mask of the one
  that overlaps the GT best (none where none overlaps it), the best score. What linking without fragmentation
  would give, the masks as they are."""
  groups: dict[int, list[int]] = collections.defaultdict(list)
  for i in range(len(predictions)):
    if m.same_iou[i] >= ON_GT_IOU:
      groups[int(m.same_gt[i])].append(i)
  merged = {}
  for j, members in groups.items():
    columns = [int(np.flatnonzero(m.gt_video_preds[j] == i)[0]) for i in members]
    per_frame = m.gt_frame_iou[j][:, columns]  # [L, n]
    pick = per_frame.argmax(1)  # [L]
    first = max(members, key=lambda i: predictions[i].score)
    rles = [predictions[members[k]].rles[f] if per_frame[f, k] > 0 else None for f, k in enumerate(pick)]
    areas = np.array([predictions[members[k]].areas[f] if per_frame[f, k] > 0 else 0 for f, k in enumerate(pick)],
                     np.int64)
    merged[first] = dataclasses.replace(predictions[first], rles=rles, areas=areas, avg_area=average_area(areas))
  dropped = {i for members in groups.values() for i in members} - set(merged)
  return [merged.get(i, t) for i, t in enumerate(predictions) if i not in dropped]


def fragmentation(frame_iou: np.ndarray, gt_areas: np.ndarray) -> int:
  """Distinct predictions that are the best one (IoU >= 0.5) for the GT on some frame where it has a mask:
  1 = one track follows it, more = it is fragmented. frame_iou [L, D]; gt_areas [L]."""
  rows = frame_iou[gt_areas > 0]
  if rows.size == 0:
    return 0
  return len(set(rows.argmax(1)[rows.max(1) >= FOUND_IOU].tolist()))


def _mean(values: Any) -> float | None:
  values = np.asarray(values, np.float64)
  return float(values.mean()) if values.size else None


def size_groups(areas: Any) -> np.ndarray:
  """Index into SIZE_NAMES of each area in pixels [N]."""
  return np.searchsorted(SIZE_EDGES, np.asarray(areas, np.float64), side="right")


def diagnose(ground_truth: GroundTruth, predictions: list[Track]) -> dict[str, Any]:
  """All numbers of the report, as plain Python values (JSON-ready)."""
  m = best_matches(ground_truth, predictions)
  keys = ("AP", "AP50", "AP75")
  base = evaluate_tracks(ground_truth, predictions)
  ap = {"as is": {k: base[k] for k in keys}}
  for kind in ORACLES:
    stats = evaluate_tracks(ground_truth, oracle_predictions(kind, predictions, m))
    ap[kind] = {**{k: stats[k] for k in keys}, "gain": stats["AP"] - base["AP"]}

  names, confusion = category_keys(ground_truth.categories), collections.Counter()
  followed = m.gt_any_iou >= FOUND_IOU  # [G]
  for j in np.flatnonzero(followed):
    confusion[(names[m.gts[j].category_id], names[predictions[m.gt_any_pred[j]].category_id])] += 1
  wrong = sum(n for (gt, pred), n in confusion.items() if gt != pred)
  fragments = np.array([fragmentation(m.gt_frame_iou[j], gt.areas) for j, gt in enumerate(m.gts)], np.int64)
  tracks = {
      "count": len(m.gts), "mean_best_iou_any_class": _mean(m.gt_any_iou),
      "mean_best_iou_same_class": _mean(m.gt_same_iou),
      "found_iou50": _mean(m.gt_same_iou >= 0.5), "found_iou75": _mean(m.gt_same_iou >= 0.75),
      "found_any_class_iou50": _mean(followed),
      "wrong_class_share": float(wrong / followed.sum()) if followed.any() else None,
      "confusion": [{"gt": gt, "predicted": pred, "count": n} for (gt, pred), n in confusion.most_common()],
      "fragments_mean": _mean(fragments[fragments > 0]),
      "fragments_histogram": {"0": int((fragments == 0).sum()), "1": int((fragments == 1).sum()),
                              "2": int((fragments == 2).sum()), "3+": int((fragments >= 3).sum())}}

  areas, ious, covered = [], [], []  # one entry per (GT, frame) with a non-empty GT mask
  for j, gt in enumerate(m.gts):
    present = gt.areas > 0  # [L]
    per_frame = m.gt_frame_iou[j][present]  # [F, D_v]
    areas.append(gt.areas[present])
    column = np.flatnonzero(m.gt_video_preds[j] == m.gt_same_pred[j])
    ious.append(per_frame[:, column[0]] if m.gt_same_pred[j] >= 0 else np.zeros([present.sum()]))
    covered.append(per_frame.max(1) >= FOUND_IOU if per_frame.shape[1] else np.zeros([present.sum()], bool))
  areas, ious = np.concatenate(areas or [np.zeros([0])]), np.concatenate(ious or [np.zeros([0])])
  group = size_groups(areas)  # [N] 0..3
  frames = {"by_size": [{"size": name, "count": int((group == k).sum()), "mean_iou": _mean(ious[group == k]),
                         "iou50": _mean(ious[group == k] >= 0.5), "iou75": _mean(ious[group == k] >= 0.75)}
                        for k, name in enumerate(SIZE_NAMES)],
            "frame_recall": _mean(np.concatenate(covered or [np.zeros([0])]))}

  scores = np.array([t.score for t in predictions], np.float64)
  matched = m.same_iou >= FOUND_IOU  # [D]
  ranking = {"count": len(predictions), "per_video": len(predictions) / max(len(ground_truth.videos), 1),
             "unmatched_share": _mean(~matched), "mean_score_matched": _mean(scores[matched]),
             "mean_score_unmatched": _mean(scores[~matched])}
  return {"ap": ap, "tracks": tracks, "frames": frames, "predictions": ranking}


def _format(value: Any) -> str:
  return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
  cells = [header] + [[_format(v) for v in r] for r in rows]
  widths = [max(len(r[c]) for r in cells) for c in range(len(header))]
  lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells]
  return "\n".join(lines[:1] + ["|" + "|".join("-" * (w + 2) for w in widths) + "|"] + lines[1:])


def format_report(report: dict[str, Any], max_confusions: int = 10) -> str:
  """The numbers of `diagnose` as a few plain-text tables."""
  ap, t, fr, pr = report["ap"], report["tracks"], report["frames"], report["predictions"]
  oracle_rows = [[kind, stats["AP"], stats["AP50"], stats["AP75"], stats.get("gain"), ORACLES.get(kind, "")]
                 for kind, stats in ap.items()]
  hist = t["fragments_histogram"]
  track_rows = [["mean best video IoU, any class", t["mean_best_iou_any_class"]],
                ["mean best video IoU, same class", t["mean_best_iou_same_class"]],
                ["found, same class, IoU >= 0.5", t["found_iou50"]],
                ["found, same class, IoU >= 0.75", t["found_iou75"]],
                ["found, any class, IoU >= 0.5", t["found_any_class_iou50"]],
                ["best match of those has the wrong class", t["wrong_class_share"]],
                ["fragments per followed track (mean)", t["fragments_mean"]],
                ["tracks with 0 / 1 / 2 / 3+ fragments", f"{hist['0']} / {hist['1']} / {hist['2']} / {hist['3+']}"]]
  confusions = [[c["gt"], c["predicted"], c["count"]] for c in t["confusion"] if c["gt"] != c["predicted"]]
  size_rows = [[g["size"], g["count"], g["mean_iou"], g["iou50"], g["iou75"]] for g in fr["by_size"]]
  pred_rows = [["predictions", pr["count"]], ["per video (mean)", pr["per_video"]],
               ["matching no GT (same-class video IoU < 0.5)", pr["unmatched_share"]],
               ["mean score, matched", pr["mean_score_matched"]], ["mean score, unmatched", pr["mean_score_unmatched"]]]
  return "\n\n".join([
      "Video AP as is and with one kind of error fixed\n" +
      _table(["oracle", "AP", "AP50", "AP75", "AP gain", "fixes"], oracle_rows),
      f"Ground-truth tracks ({t['count']}, not crowd)\n" + _table(["measure", "value"], track_rows),
      "Class confusions (GT tracks whose best any-class match, IoU >= 0.5, has another class)\n" +
      _table(["GT class", "predicted class", "tracks"], confusions[:max_confusions] or [["-", "-", 0]]),
      "Per frame: IoU of each GT's best same-class prediction, by GT mask area (pixels)\n" +
      _table(["area", "frames", "mean IoU", "IoU >= 0.5", "IoU >= 0.75"], size_rows) +
      f"\nframe recall (GT frames where any prediction has IoU >= 0.5): {_format(fr['frame_recall'])}",
      "Predictions\n" + _table(["measure", "value"], pred_rows)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.evaluation.diagnose",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--annotations", required=True, help="YouTube-VIS ground-truth JSON")
  parser.add_argument("--results", required=True, help="results JSON: a list of video-level predictions")
  parser.add_argument("--json", help="also write every number to this JSON file (default: only print tables)")
  return parser.parse_args(argv)


@report_errors
def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  if args.json is not None and (Path(args.json).is_dir() or not Path(args.json).parent.is_dir()):
    # Checked before the minutes of scoring, so that a mistyped path costs nothing.
    raise InputError(f"--json {args.json}: cannot write a file there; give a file name in an existing folder")
  ground_truth = load_ground_truth(args.annotations)
  report = diagnose(ground_truth, load_results(args.results, ground_truth))
  if args.json:
    files.write_json(args.json, report, indent=2)
  print(format_report(report))


if __name__ == "__main__":
  main(sys.argv[1:])
