"""Ground-truth reading: every segmentation format gives the same masks; bad files name what is wrong."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_api
from ytvis_random_cases import polygon_rle, uncompressed_rle

from maskprop_jax.errors import InputError
from maskprop_jax.evaluation import load_ground_truth

H, W = 20, 30
POLY = [2.0, 3.0, 25.0, 4.0, 20.0, 17.0, 5.0, 15.0]


def _gt(segmentations, **annotation):
  return {"videos": [{"id": 5, "height": H, "width": W, "file_names": ["cat/0.jpg", "cat/1.jpg"]}],
          "categories": [{"id": 2, "name": "cat"}],
          "annotations": [dict({"id": 1, "video_id": 5, "category_id": 2, "segmentations": segmentations},
                               **annotation)]}


def test_polygon_uncompressed_and_compressed_rle_agree():
  rle = polygon_rle(POLY, H, W)
  decoded = []
  for segmentation in ([POLY], uncompressed_rle(rle), rle):
    track = load_ground_truth(_gt([segmentation, None])).tracks[0]
    assert track.rles[1] is None and track.areas[1] == 0
    decoded.append(mask_api.decode(track.rles[0]))
  assert decoded[0].sum() > 0
  for d in decoded[1:]:
    np.testing.assert_array_equal(d, decoded[0])


def test_average_area_follows_the_files_areas_like_the_official_evaluator():
  rle = polygon_rle(POLY, H, W)
  # Zero and null areas are skipped; without an 'areas' list, the masks' own areas are used.
  assert load_ground_truth(_gt([rle, rle], areas=[0, 300])).tracks[0].avg_area == 300.0
  track = load_ground_truth(_gt([rle, None])).tracks[0]
  assert track.avg_area == float(track.areas[0])


def test_length_comes_from_file_names_and_names_the_video():
  gt = load_ground_truth(_gt([None, None]))
  assert gt.videos[5].length == 2 and gt.videos[5].name == "cat"


@pytest.mark.parametrize("gt, message", [
    (_gt([None]), r"annotation 1 in video 5 \('cat'\): 'segmentations' must list one entry per frame: it has 1 "
                  r"entries but the video has 2 frames"),
    (_gt([None, None], video_id=8), "unknown video id 8"),
    (_gt([None, None], category_id=9), "unknown category id 9"),
    (_gt([None, {"size": [H, W + 1], "counts": "0"}]), r"frame 1 \('cat/1.jpg'\): RLE size \[20, 31\]"),
    (_gt([None, {"size": [H, W], "counts": [1, 2]}]), "summing to 20 \\* 30"),
    (_gt([[[1.0, 2.0, 1e30, 1.0, 3.0, 3.0]], None]), r"frame 0 \('cat/0.jpg'\): polygon coordinates must be finite"),
    (_gt([None, None], areas=[1]), "'areas' must list one entry per frame"),
    ({"videos": []}, "no 'categories' list"),
])
def test_bad_ground_truth_is_named(gt, message):
  with pytest.raises(InputError, match=message):
    load_ground_truth(gt)


def test_bad_file(tmp_path):
  path = tmp_path / "valid.json"
  path.write_text("{")
  with pytest.raises(InputError, match="valid.json: malformed JSON"):
    load_ground_truth(path)
  path.write_text("[]")
  with pytest.raises(InputError, match="must be a JSON object"):
    load_ground_truth(path)
  gt = _gt([None, None])
  gt["videos"].append(dict(gt["videos"][0]))
  path.write_text(json.dumps(gt))
  with pytest.raises(InputError, match="video id 5 appears more than once"):
    load_ground_truth(path)
