"""`python -m maskprop_jax.evaluation.diagnose`: oracle APs, per-track, per-frame and ranking numbers on tiny
hand-built cases whose answers are known."""

import json
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_api

from maskprop_jax.evaluation import diagnose as diag
from maskprop_jax.evaluation import evaluate, load_ground_truth, load_results

HEIGHT, WIDTH = 64, 64
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def square(top, left, size, width=None):
  """An RLE of a `size` x `width` (default square) box, or None for `size` None (no mask on the frame)."""
  if size is None:
    return None
  mask = np.zeros([HEIGHT, WIDTH], np.uint8)
  mask[top:top + size, left:left + (width or size)] = 1
  rle = mask_api.encode(np.asfortranarray(mask))
  return {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode("ascii")}


def moving(length, size=8, width=None, frames=None):
  """A box that moves 4 pixels right per frame; present only on `frames` (default: all)."""
  return [square(10, 4 * f, size, width) if frames is None or f in frames else None for f in range(length)]


def ground_truth(tracks, length=4, num_videos=1):
  """tracks: (video_id, category_id, segmentations) per ground-truth track."""
  videos = [{"id": v, "height": HEIGHT, "width": WIDTH, "length": length} for v in range(1, num_videos + 1)]
  annotations = [{"id": k + 1, "video_id": v, "category_id": c, "segmentations": s, "iscrowd": 0}
                 for k, (v, c, s) in enumerate(tracks)]
  return {"videos": videos, "categories": CATEGORIES, "annotations": annotations}


def prediction(video_id, category_id, score, segmentations):
  return {"video_id": video_id, "category_id": category_id, "score": score, "segmentations": segmentations}


def run(gt_json, results):
  gt = load_ground_truth(gt_json)
  return diag.diagnose(gt, load_results(results, gt))


def test_a_perfect_prediction_scores_1_under_every_oracle():
  report = run(ground_truth([(1, 1, moving(4))]), [prediction(1, 1, 0.9, moving(4))])
  assert set(report["ap"]) == {"as is", *diag.ORACLES}
  for stats in report["ap"].values():
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    assert stats.get("gain", 0.0) == pytest.approx(0.0)
  tracks = report["tracks"]
  assert tracks["found_iou75"] == 1.0 and tracks["wrong_class_share"] == 0.0
  assert tracks["fragments_histogram"] == {"0": 0, "1": 1, "2": 0, "3+": 0}
  assert report["frames"]["frame_recall"] == 1.0
  assert report["predictions"]["per_video"] == 1.0 and report["predictions"]["unmatched_share"] == 0.0


def test_the_wrong_class_scores_0_and_1_under_the_class_oracle():
  report = run(ground_truth([(1, 1, moving(4))]), [prediction(1, 2, 0.9, moving(4))])
  assert report["ap"]["as is"]["AP"] == 0.0
  assert report["ap"]["class"]["AP"] == pytest.approx(1.0) and report["ap"]["class"]["gain"] == pytest.approx(1.0)
  assert report["ap"]["masks"]["AP"] == 0.0  # no same-class prediction to fix
  tracks = report["tracks"]
  assert tracks["mean_best_iou_any_class"] == 1.0 and tracks["mean_best_iou_same_class"] == 0.0
  assert tracks["found_iou50"] == 0.0 and tracks["found_any_class_iou50"] == 1.0
  assert tracks["wrong_class_share"] == 1.0
  assert tracks["confusion"] == [{"gt": "cat", "predicted": "dog", "count": 1}]
  assert report["predictions"]["unmatched_share"] == 1.0
  assert report["predictions"]["mean_score_unmatched"] == 0.9 and report["predictions"]["mean_score_matched"] is None
  # Per frame, only a same-class prediction counts; frame recall takes any.
  assert [g["count"] for g in report["frames"]["by_size"]] == [4, 0, 0, 0]
  assert report["frames"]["by_size"][0]["mean_iou"] == 0.0 and report["frames"]["frame_recall"] == 1.0


def test_a_fragmented_track_and_the_duplicates_oracle():
  gt = ground_truth([(1, 1, moving(4)), (2, 1, moving(4))], num_videos=2)
  results = [prediction(1, 1, 0.9, moving(4, frames={0, 1, 2})),  # video IoU 0.75
             prediction(1, 1, 0.5, moving(4, frames={3})),  # the same track's last frame: a fragment, IoU 0.25
             prediction(2, 1, 0.3, moving(4))]  # ranked below the fragment
  report = run(gt, results)
  assert report["tracks"]["fragments_histogram"] == {"0": 0, "1": 1, "2": 1, "3+": 0}
  assert report["tracks"]["fragments_mean"] == 1.5
  ap = report["ap"]
  assert ap["as is"]["AP50"] < 1.0 and ap["duplicates"]["AP50"] == pytest.approx(1.0)
  assert ap["duplicates"]["gain"] > 0.0
  loaded = load_ground_truth(gt)
  predictions = load_results(results, loaded)
  kept = diag.oracle_predictions("duplicates", predictions, diag.best_matches(loaded, predictions))
  assert [t.score for t in kept] == [0.9, 0.3]
  assert report["frames"]["frame_recall"] == 1.0  # every frame is covered, by one or the other
  assert report["predictions"]["unmatched_share"] == pytest.approx(1 / 3)


def test_fragmentation_counts_distinct_best_predictions():
  ious = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.55], [0.0, 0.0], [0.4, 0.3]])  # [L, D]
  assert diag.fragmentation(ious, np.array([5, 5, 5, 5, 5])) == 2
  assert diag.fragmentation(ious, np.array([5, 0, 5, 5, 5])) == 1  # frame 1 has no GT mask
  assert diag.fragmentation(ious[3:], np.array([5, 5])) == 0


def test_half_eroded_masks_gain_under_the_masks_oracle():
  report = run(ground_truth([(1, 1, moving(4))]), [prediction(1, 1, 0.9, moving(4, width=4))])
  ap = report["ap"]
  assert ap["as is"]["AP"] == pytest.approx(0.1) and ap["as is"]["AP75"] == 0.0  # IoU 0.5: only AP50
  assert ap["masks"]["AP"] == pytest.approx(1.0) and ap["masks"]["gain"] == pytest.approx(0.9)
  assert report["frames"]["by_size"][0]["mean_iou"] == pytest.approx(0.5)


def test_the_frame_masks_oracle_fixes_masks_but_keeps_the_frames_a_track_covers():
  # Half-eroded masks on frames 0-2 only: perfect frame masks give video IoU 3/4 (frame 3 is missing), not 1.
  report = run(ground_truth([(1, 1, moving(4))]), [prediction(1, 1, 0.9, moving(4, width=4, frames={0, 1, 2}))])
  ap = report["ap"]
  assert ap["as is"]["AP"] == 0.0  # video IoU 3 * 32 / (4 * 64) = 0.375
  assert ap["frame masks"]["AP50"] == pytest.approx(1.0) and ap["frame masks"]["AP75"] == pytest.approx(1.0)
  assert ap["frame masks"]["AP"] == pytest.approx(0.6)  # IoU 0.75 clears 0.5 .. 0.75: 6 of 10 thresholds
  assert ap["masks"]["AP"] == pytest.approx(1.0)


def test_the_linking_oracle_merges_the_fragments_of_a_track():
  gt = ground_truth([(1, 1, moving(4)), (1, 2, [square(40, 40, 12)] * 4)])
  results = [prediction(1, 1, 0.9, moving(4, frames={0, 1})), prediction(1, 1, 0.6, moving(4, frames={2, 3})),
             prediction(1, 2, 0.8, [square(40, 40, 12)] * 4)]
  report = run(gt, results)
  ap = report["ap"]
  assert ap["as is"]["AP"] == pytest.approx(0.55)  # cat: each fragment has video IoU 0.5; dog: 1
  assert ap["linking"]["AP"] == pytest.approx(1.0)
  loaded = load_ground_truth(gt)
  predictions = load_results(results, loaded)
  merged = diag.oracle_predictions("linking", predictions, diag.best_matches(loaded, predictions))
  assert [t.score for t in merged] == [0.9, 0.8]  # the fragments' best score; the other track untouched
  assert [r is not None for r in merged[0].rles] == [True] * 4 and merged[0].areas.tolist() == [64] * 4


def test_missed_objects_gain_under_the_missed_oracle():
  gt = ground_truth([(1, 1, moving(4)), (1, 2, [square(40, 40, 12)] * 4)])
  report = run(gt, [prediction(1, 1, 0.9, moving(4))])
  ap = report["ap"]
  assert ap["as is"]["AP"] == pytest.approx(0.5)  # dog: nothing found; cat: perfect
  assert ap["missed"]["AP"] == pytest.approx(1.0) and ap["missed"]["gain"] == pytest.approx(0.5)
  assert report["tracks"]["found_iou50"] == 0.5


def test_frame_ious_are_grouped_by_gt_mask_area():
  # GT areas 25, 100, 900, 1600 and one frame with no mask; the prediction is perfect on 25 and 900, absent on 100,
  # and covers half of the 1600 one.
  gt_masks = [square(0, 0, 5), square(0, 0, 10), square(0, 0, 30), square(0, 0, 40), None]
  pred_masks = [square(0, 0, 5), None, square(0, 0, 30), square(0, 0, 40, width=20), square(0, 0, 8)]
  report = run(ground_truth([(1, 1, gt_masks)], length=5), [prediction(1, 1, 0.9, pred_masks)])
  groups = {g["size"]: g for g in report["frames"]["by_size"]}
  assert [groups[n]["count"] for n in diag.SIZE_NAMES] == [1, 1, 1, 1]
  assert [groups[n]["mean_iou"] for n in diag.SIZE_NAMES] == pytest.approx([1.0, 0.0, 1.0, 0.5])
  assert [groups[n]["iou50"] for n in diag.SIZE_NAMES] == [1.0, 0.0, 1.0, 1.0]
  assert [groups[n]["iou75"] for n in diag.SIZE_NAMES] == [1.0, 0.0, 1.0, 0.0]
  assert report["frames"]["frame_recall"] == 0.75


def test_unknown_oracle_is_refused():
  with pytest.raises(ValueError, match="unknown oracle"):
    diag.oracle_predictions("nope", [], None)


def test_cli_prints_tables_and_writes_json(tmp_path, capsys):
  gt = ground_truth([(1, 1, moving(4)), (1, 2, [square(40, 40, 12)] * 4)])
  results = [prediction(1, 2, 0.9, moving(4)), prediction(1, 2, 0.4, [square(40, 40, 12)] * 4)]
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  (tmp_path / "results.json").write_text(json.dumps(results))
  diag.main(["--annotations", str(tmp_path / "gt.json"), "--results", str(tmp_path / "results.json"),
             "--json", str(tmp_path / "out.json")])
  out = capsys.readouterr().out
  for text in ("| oracle", "| class", "| missed", "| cat      | dog", "frame recall", "| >=1600"):
    assert text in out, out
  written = json.loads((tmp_path / "out.json").read_text())
  assert written["ap"]["as is"]["AP"] == pytest.approx(evaluate(gt, results)["AP"])
  assert written["ap"]["class"]["AP"] == pytest.approx(1.0)
  assert written["tracks"]["count"] == 2 and written["predictions"]["count"] == 2


def test_cli_refuses_a_folder_for_json_and_imports_no_jax(tmp_path):
  (tmp_path / "gt.json").write_text(json.dumps(ground_truth([(1, 1, moving(4))])))
  (tmp_path / "results.json").write_text("[]")
  run = subprocess.run([sys.executable, "-m", "maskprop_jax.evaluation.diagnose", "--annotations",
                        str(tmp_path / "gt.json"), "--results", str(tmp_path / "results.json"), "--json",
                        str(tmp_path)], capture_output=True, text=True, timeout=60)
  assert run.returncode == 2 and "--json" in run.stderr and "Traceback" not in run.stderr
  code = ("import sys, maskprop_jax.evaluation.diagnose; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'tensorflow', 'flax', 'torch')))")
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr
