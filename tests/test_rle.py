"""maskprop_jax/rle.py: every segmentation form normalizes to the same compressed RLE; a patch encodes as the
whole mask does."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskprop_jax import rle
from maskprop_jax.errors import InputError

H, W = 12, 16


def _frame_where(index: int) -> str:
  return f"frame {index}"


def _normalize(segmentation):
  """One frame through the data reader's checks (form, size and every run)."""
  return rle.normalize_frames([segmentation], H, W, _frame_where)[0][0]


def _rectangle_mask() -> np.ndarray:
  mask = np.zeros((H, W), np.uint8)
  mask[3:9, 4:12] = 1  # rows 3..8, columns 4..11
  return mask


def _uncompressed_rle(mask: np.ndarray) -> dict:
  flat = mask.flatten(order="F")  # COCO runs go down columns
  changes = np.flatnonzero(np.diff(flat)) + 1
  bounds = np.concatenate([[0], changes, [flat.size]])
  runs = np.diff(bounds).tolist()
  if flat[0] == 1:
    runs = [0] + runs
  return {"size": [H, W], "counts": runs}


def test_all_forms_decode_to_the_same_mask():
  mask = _rectangle_mask()
  compressed = rle.encode(mask)
  assert isinstance(compressed["counts"], str) and compressed["size"] == [H, W]
  # A polygon traced around the pixel edges of the rectangle rasterizes to exactly the rectangle.
  polygon = [[4.0, 3.0, 12.0, 3.0, 12.0, 9.0, 4.0, 9.0]]
  forms = {
      "compressed str": compressed,
      "compressed bytes": {"size": [H, W], "counts": compressed["counts"].encode()},
      "uncompressed": _uncompressed_rle(mask),
      "polygon": polygon,
  }
  for name, segmentation in forms.items():
    compressed = rle.to_compressed(segmentation, H, W, name)
    assert isinstance(compressed["counts"], str), name
    np.testing.assert_array_equal(rle.decode(compressed), mask, err_msg=name)
    assert _normalize(segmentation) == compressed, name


def test_uncompressed_rle_starting_inside_the_mask():
  mask = np.zeros((H, W), np.uint8)
  mask[:2, 0] = 1  # the first pixel is foreground, so the runs start with a zero-length background run
  compressed = _normalize(_uncompressed_rle(mask))
  np.testing.assert_array_equal(rle.decode(compressed), mask)


def test_several_polygons_merge_into_one_mask():
  polygons = [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0], [8.0, 8.0, 12.0, 8.0, 12.0, 12.0, 8.0, 12.0]]
  decoded = rle.decode(_normalize(polygons))
  assert decoded[:4, :4].all() and decoded[8:12, 8:12].all()
  assert decoded.sum() == 32


def test_null_and_empty_polygon_list_mean_absent():
  assert rle.to_compressed(None, H, W, "here") is None and _normalize(None) is None
  assert rle.to_compressed([], H, W, "here") is None and _normalize([]) is None


def test_bbox_and_area_of_a_mask():
  compressed = rle.encode(_rectangle_mask())
  assert rle.bbox(compressed) == [4.0, 3.0, 8.0, 6.0]
  assert rle.area(compressed) == 48
  assert rle.areas([compressed, rle.encode(np.zeros((H, W)))]).tolist() == [48, 0]


def test_run_lengths_match_the_mask():
  rng = np.random.default_rng(0)
  for density in (0.0, 0.1, 0.5, 0.95, 1.0):
    mask = (rng.random((H, W)) < density).astype(np.uint8)
    runs = rle.run_lengths(rle.encode(mask)["counts"])
    rebuilt = np.repeat(np.arange(runs.size) % 2, runs).reshape(W, H).T
    np.testing.assert_array_equal(rebuilt, mask)


@pytest.mark.parametrize("segmentation, message", [
    ({"size": [H, W + 1], "counts": "PP1"}, "differs from the video's"),
    ({"size": [H], "counts": "0"}, "must be [height, width]"),
    ({"size": [H, W], "counts": "0"}, "do not cover"),
    ({"size": [H, W], "counts": "\x01\x02"}, "not a valid RLE"),
    ({"size": [H, W], "counts": [5, 7]}, "summing to"),
    ({"size": [H, W], "counts": 3}, "must be a str"),
    ({"counts": "0"}, "must be an RLE dict"),
    ([[1.0, 2.0, 3.0, 4.0]], "at least 3"),
    ([[1.0, 2.0, 3.0, 4.0, 5.0]], "at least 3"),
    ("abc", "must be an RLE dict"),
])
def test_malformed_segmentations_raise(segmentation, message):
  with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
    _normalize(segmentation)


def test_measuring_many_strings_matches_one_at_a_time():
  rng = np.random.default_rng(1)
  strings, expected = [], []
  for _ in range(40):
    height, width = rng.integers(1, 30, 2)
    mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
    strings.append(rle.encode(mask)["counts"])
    expected.append((height * width, int(mask.sum())))
  # Malformed strings in between must not disturb their neighbours.
  bad = ["", "\x01", "zz", "7" + "\x7f"]
  covered, foreground = rle.measure_counts(strings[:20] + bad + strings[20:] + ["7"])
  assert covered[20:24].tolist() == [-1, -1, -1, -1]
  good = np.concatenate([np.arange(20), np.arange(24, 44)])
  assert list(zip(covered[good].tolist(), foreground[good].tolist())) == expected
  assert (covered[-1], foreground[-1]) == (7, 0)  # "7": one background run of 7 pixels
  assert rle.measure_counts([])[0].shape == (0,)


def test_normalize_frames_names_the_bad_frame_and_drops_empty_masks():
  full, empty = rle.encode(_rectangle_mask()), rle.encode(np.zeros((H, W)))
  rles, areas = rle.normalize_frames([None, full, empty, _uncompressed_rle(_rectangle_mask())], H, W, _frame_where)
  assert rles[0] is None and rles[2] is None and areas == [None, 48, None, 48]
  assert rles[1] == full and rles[3] == full
  for frame, bad in ((2, {"size": [H, W], "counts": "0"}), (1, {"size": [H, W], "counts": "é"}),
                     (3, {"size": [H, 3], "counts": full["counts"]})):
    segmentations = [full, full, full, full]
    segmentations[frame] = bad
    with pytest.raises(InputError, match=f"^frame {frame}: "):
      rle.normalize_frames(segmentations, H, W, _frame_where)


@pytest.mark.parametrize("seed", range(6))
def test_encode_patch_equals_pycocotools(seed):
  rng = np.random.default_rng(seed)
  height, width = 9, 7
  patch = rng.random([rng.integers(1, 10), rng.integers(1, 8)]) > 0.4
  top, left = rng.integers(0, height - patch.shape[0] + 1), rng.integers(0, width - patch.shape[1] + 1)
  full = np.zeros([height, width], np.uint8)
  full[top:top + patch.shape[0], left:left + patch.shape[1]] = patch
  expected = mask_utils.encode(np.asfortranarray(full))
  got = rle.encode_patch(patch, top, left, (height, width))
  if not full.any():
    assert got is None
  else:
    assert got["counts"] == expected["counts"].decode("ascii") and got["size"] == [height, width]


def test_decoding_many_strings_matches_one_at_a_time():
  rng = np.random.default_rng(2)
  masks = (rng.random((25, H, W)) < rng.random((25, 1, 1))).astype(np.uint8)
  masks[0], masks[1] = 0, 1  # an empty and a full mask: one run, two runs starting with an empty one
  strings = [rle.encode(m)["counts"] for m in masks]
  strings[3] = strings[3].encode()  # bytes, as pycocotools and the records give them
  decoded = rle.decode_many(strings, H, W)
  assert decoded.shape == (25, H, W) and decoded.dtype == np.uint8
  np.testing.assert_array_equal(decoded, masks)
  for string, mask in zip(strings, decoded):
    np.testing.assert_array_equal(rle.decode({"size": [H, W], "counts": string}), mask)


@pytest.mark.parametrize("bad", ["", "zz", rle.encode(np.ones((H, W + 1), np.uint8))["counts"]])
def test_decoding_many_strings_raises_as_decoding_the_bad_one_does(bad):
  good = rle.encode(_rectangle_mask())["counts"]
  with pytest.raises(InputError) as one:
    rle.decode({"size": [H, W], "counts": bad})
  with pytest.raises(InputError) as many:
    rle.decode_many([good, bad, good], H, W)
  assert str(many.value) == str(one.value)
