"""Video AP: a hand-computed golden case and invariants on random cases."""

import copy

import numpy as np
import pytest
from ytvis_random_cases import random_case

from maskprop_jax import rle
from maskprop_jax.evaluation import STAT_NAMES, evaluate

H, W = 10, 10


def _rles(*frames):
  """Per-frame row/column boxes (r0, r1, c0, c1), inclusive, or None -> RLE list."""
  out = []
  for box in frames:
    if box is None:
      out.append(None)
      continue
    mask = np.zeros([H, W], np.uint8)
    mask[box[0]:box[1] + 1, box[2]:box[3] + 1] = 1
    out.append(rle.encode(mask))
  return out


def _golden_case():
  """One 2-frame video, one category.

  Ground truth: A (10 px in both frames), B (20 px, frame 0 only), C (crowd).
  P4 (0.95) copies the crowd track C; P1 (0.9) copies A (IoU 1); P2 (0.8) covers B in frame 0 and 20 other
  pixels in frame 1 (IoU 20 / 40 = 0.5); P3 (0.7) hits nothing.
  """
  a, b, c = _rles((0, 1, 0, 4), (0, 1, 0, 4)), _rles((5, 6, 0, 9), None), _rles((8, 9, 0, 9), (8, 9, 0, 9))
  gt = {"videos": [{"id": 7, "height": H, "width": W, "length": 2}],
        "categories": [{"id": 3, "name": "thing"}],
        "annotations": [
            {"id": 1, "video_id": 7, "category_id": 3, "iscrowd": 0, "segmentations": a, "areas": [10, 10]},
            {"id": 2, "video_id": 7, "category_id": 3, "iscrowd": 0, "segmentations": b, "areas": [20, None]},
            {"id": 3, "video_id": 7, "category_id": 3, "iscrowd": 1, "segmentations": c, "areas": [20, 20]}]}
  results = [{"video_id": 7, "category_id": 3, "score": 0.95, "segmentations": c},
             {"video_id": 7, "category_id": 3, "score": 0.9, "segmentations": a},
             {"video_id": 7, "category_id": 3, "score": 0.8, "segmentations": _rles((5, 6, 0, 9), (5, 6, 0, 9))},
             {"video_id": 7, "category_id": 3, "score": 0.7, "segmentations": _rles((3, 3, 0, 9), None)}]
  return gt, results


def test_golden_case_by_hand():
  gt, results = _golden_case()
  # At IoU .50 both regular tracks are found before the false positive: precision 1 at every recall -> AP 1.
  # Above .50 only A is found (recall .5): precision 1 for the 51 recall points 0, .01, ..., .50, then 0.
  # The crowd copy is ignored, except that with one prediction per video it is the one kept: AR1 = 0.
  ap_strict = 51 / 101
  expected = {"AP": (1 + 9 * ap_strict) / 10, "AP50": 1.0, "AP75": ap_strict,
              "APs": (1 + 9 * ap_strict) / 10, "APm": -1.0, "APl": -1.0,
              "AR1": 0.0, "AR10": 0.55, "AR100": 0.55, "ARs": 0.55, "ARm": -1.0, "ARl": -1.0}
  stats = evaluate(gt, results, per_category=True)
  for name in STAT_NAMES:
    assert stats[name] == pytest.approx(expected[name], abs=1e-12), name
  assert stats["per_category_AP"] == {"thing": pytest.approx(expected["AP"], abs=1e-12)}


def test_golden_case_without_the_crowd_prediction_recovers_ar1():
  gt, results = _golden_case()
  stats = evaluate(gt, results[1:])
  assert stats["AR1"] == pytest.approx(0.5, abs=1e-12)
  assert stats["AP"] == pytest.approx((1 + 9 * 51 / 101) / 10, abs=1e-12)


def _perfect_results(gt):
  return [{"video_id": a["video_id"], "category_id": a["category_id"], "score": 1.0,
           "segmentations": copy.deepcopy(a["segmentations"])} for a in gt["annotations"] if not a["iscrowd"]]


@pytest.mark.parametrize("seed", range(6))
def test_copies_of_the_ground_truth_score_one(seed):
  gt, _ = random_case(seed)
  # Tracks without any pixel (absent, or drawn outside the frame) cannot be found: video IoU 0.
  gt["annotations"] = [a for a in gt["annotations"] if any(a["areas"])]
  stats = evaluate(gt, _perfect_results(gt))
  for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl"):
    # precision = tp / (tp + fp + eps) may sit one ulp below 1
    assert stats[name] == -1.0 or stats[name] == pytest.approx(1.0, abs=1e-12), (name, stats[name])


@pytest.mark.parametrize("seed", range(6))
def test_result_order_does_not_matter_with_distinct_scores(seed):
  gt, results = random_case(seed)
  for i, r in enumerate(results):
    r["score"] = 1.0 - i / (len(results) + 1)
  reordered = list(reversed(results))
  assert evaluate(gt, results) == evaluate(gt, reordered)


@pytest.mark.parametrize("seed", range(4))
def test_ap_is_the_mean_of_the_defined_per_category_aps(seed):
  gt, results = random_case(seed, num_videos=5)
  stats = evaluate(gt, results, per_category=True)
  defined = [v for v in stats["per_category_AP"].values() if v > -1]
  assert stats["AP"] == (pytest.approx(np.mean(defined), abs=1e-12) if defined else -1.0)


def test_predictions_of_categories_without_ground_truth_change_nothing():
  gt, results = random_case(3, num_videos=5)
  used = {a["category_id"] for a in gt["annotations"]}
  gt["categories"].append({"id": 999, "name": "never annotated"})
  extra = [dict(r, category_id=999, score=2.0) for r in results]
  assert evaluate(gt, results) == evaluate(gt, results + extra)
  assert 999 not in used


def test_empty_results_score_zero_where_ground_truth_exists():
  gt, _ = random_case(2, num_videos=5)
  stats = evaluate(gt, [])
  assert all(stats[name] in (0.0, -1.0) for name in STAT_NAMES)
  assert stats["AP"] == 0.0 and stats["AR100"] == 0.0


def test_no_ground_truth_at_all_is_undefined_everywhere():
  gt, results = random_case(2, num_videos=3)
  gt["annotations"] = []
  assert all(v == -1.0 for v in evaluate(gt, results).values())
