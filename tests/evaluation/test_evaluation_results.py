"""Results files: writing (JSON and zip), reading back, and clear errors for bad files."""

import json
import logging
import math
import os
import stat
import zipfile

import numpy as np
import pytest
from pycocotools import mask as mask_api
from ytvis_random_cases import random_case

from maskprop_jax.errors import InputError
from maskprop_jax.evaluation import PredictedTrack, evaluate, load_ground_truth, load_results, write_results


@pytest.fixture(scope="module")
def case():
  gt_json, results_json = random_case(11, num_videos=4)
  return gt_json, results_json, load_ground_truth(gt_json)


def _masks_for(video, rng):
  masks = []
  for f in range(video.length):
    if f == 0:
      masks.append(None)  # no mask
    elif f == 1:
      masks.append(np.zeros([video.height, video.width], bool))  # empty mask
    else:
      masks.append(rng.random([video.height, video.width]) < 0.3)
  return masks


def test_write_then_read_back(case, tmp_path):
  _, _, ground_truth = case
  rng = np.random.default_rng(0)
  video = next(v for v in ground_truth.videos.values() if v.length >= 3)
  category = next(iter(ground_truth.categories))
  masks = _masks_for(video, rng)
  path = tmp_path / "results.json"
  write_results([PredictedTrack(video.id, category, 0.5, masks),
                 {"video_id": video.id, "category_id": category, "score": 0.25, "masks": masks}],
                path, ground_truth.videos)
  entries = json.loads(path.read_text())
  assert [e["score"] for e in entries] == [0.5, 0.25]
  segmentations = entries[0]["segmentations"]
  assert len(segmentations) == video.length and segmentations[:2] == [None, None]
  assert all(isinstance(s["counts"], str) for s in segmentations[2:])
  tracks = load_results(path, ground_truth)
  for f in range(2, video.length):
    np.testing.assert_array_equal(mask_api.decode(tracks[0].rles[f]), masks[f].astype(np.uint8))


def test_zip_holds_results_json_at_its_root(case, tmp_path):
  gt_json, results_json, ground_truth = case
  path = tmp_path / "submission.zip"
  write_results(results_json, path, ground_truth.videos)
  with zipfile.ZipFile(path) as archive:
    assert archive.namelist() == ["results.json"]
    entries = json.loads(archive.read("results.json"))
  assert evaluate(gt_json, entries) == evaluate(gt_json, results_json)
  assert [p.name for p in tmp_path.iterdir()] == ["submission.zip"]  # no temporary file left behind


def test_writer_rejects_soft_and_misshapen_masks(case, tmp_path):
  _, _, ground_truth = case
  video = next(iter(ground_truth.videos.values()))
  soft = [np.full([video.height, video.width], 0.7)] * video.length
  with pytest.raises(InputError, match="threshold soft masks"):
    write_results([PredictedTrack(video.id, 1, 0.5, soft)], tmp_path / "r.json", ground_truth.videos)
  small = [np.ones([video.height + 1, video.width], bool)] * video.length
  with pytest.raises(InputError, match="does not match"):
    write_results([PredictedTrack(video.id, 1, 0.5, small)], tmp_path / "r.json", ground_truth.videos)
  with pytest.raises(InputError, match="frames"):
    write_results([PredictedTrack(video.id, 1, 0.5, [None] * (video.length + 1))], tmp_path / "r.json",
                  ground_truth.videos)
  assert not list(tmp_path.iterdir())


def _first(results_json):
  return json.loads(json.dumps(results_json[0]))


def test_unknown_video_ids_are_all_named(case):
  _, results_json, ground_truth = case
  bad = [dict(_first(results_json), video_id=v) for v in (123456, 654321, 123456)]
  with pytest.raises(InputError, match=r"123456, 654321 \(is the results file for another split"):
    load_results(results_json + bad, ground_truth)


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update(segmentations=e["segmentations"] + [None]), "'segmentations' must list one entry per frame"),
    (lambda e: e.update(segmentations="abc"), "'segmentations' must list one entry per frame"),
    (lambda e: e.update(score=math.nan), "finite"),
    (lambda e: e.update(score="0.5"), "finite"),
    (lambda e: e.update(category_id=10_000), "category 10000"),
    (lambda e: e["segmentations"].__setitem__(0, {"size": [1, 2], "counts": "0"}), r"RLE size \[1, 2\]"),
    (lambda e: e["segmentations"].__setitem__(0, {"size": e["_size"], "counts": "0a"}), "cut off"),
    (lambda e: e["segmentations"].__setitem__(0, {"size": e["_size"], "counts": "0~0"}), "outside"),
    (lambda e: e["segmentations"].__setitem__(0, {"size": e["_size"]}), "'size' and 'counts'"),
])
def test_bad_predictions_are_named(case, change, message):
  gt_json, results_json, ground_truth = case
  entry = _first(results_json)
  video = ground_truth.videos[entry["video_id"]]
  entry["_size"] = [video.height, video.width]
  change(entry)
  del entry["_size"]
  with pytest.raises(InputError, match=message) as error:
    load_results(results_json[:1] + [entry], ground_truth)
  assert f"prediction 1 (video {video.id}" in str(error.value)


def test_malformed_json_and_wrong_top_level(tmp_path, case):
  _, _, ground_truth = case
  path = tmp_path / "results.json"
  path.write_text('[{"video_id": 1,')
  with pytest.raises(InputError, match="results.json: malformed JSON"):
    load_results(path, ground_truth)
  path.write_text('{"video_id": 1}')
  with pytest.raises(InputError, match="JSON list"):
    load_results(path, ground_truth)
  with pytest.raises(InputError, match="not found"):
    load_results(tmp_path / "missing.json", ground_truth)


def test_empty_results_are_valid(case):
  _, _, ground_truth = case
  assert load_results([], ground_truth) == []


def test_duplicate_predictions_are_one_warning_and_scored_as_given(case, caplog):
  gt_json, results_json, ground_truth = case
  assert not caplog.records and load_results(results_json, ground_truth)  # no duplicates in the random case
  first, second = _first(results_json), json.loads(json.dumps(results_json[1]))
  # A copy with another score still repeats the first (same video, category and masks); a copy in another
  # category does not.
  other_category = next(c for c in ground_truth.categories if c != second["category_id"])
  duplicated = results_json + [dict(first, score=0.01), second, dict(second, category_id=other_category)]
  with caplog.at_level(logging.WARNING, logger="maskprop_jax.evaluation.results"):
    tracks = load_results(duplicated, ground_truth)
  assert len(tracks) == len(duplicated)  # kept: scored as the official evaluator scores them
  assert len(caplog.records) == 1
  video = ground_truth.videos[first["video_id"]]
  assert (f"2 prediction(s) repeat an earlier one (same video, category and masks), e.g. prediction "
          f"{len(results_json)} repeats prediction 0 of {video.label}") in caplog.records[0].getMessage()


@pytest.mark.parametrize("name", ["results.json", "submission.zip"])
def test_results_files_get_the_umask_permissions(case, tmp_path, name):
  _, results_json, ground_truth = case
  previous = os.umask(0o022)
  try:
    write_results(results_json, tmp_path / name, ground_truth.videos)
  finally:
    os.umask(previous)
  assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
