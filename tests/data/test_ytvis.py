"""Tests for maskprop_jax/data/ytvis.py: reading, normalization and every validation error."""

import copy
import json
import os

import numpy as np
import pytest
from PIL import Image

from maskprop_jax import rle
from maskprop_jax.data import ytvis
from maskprop_jax.errors import InputError

H, W = 8, 10


def _mask(y0, y1, x0, x1):
  mask = np.zeros((H, W), np.uint8)
  mask[y0:y1, x0:x1] = 1
  return mask


def _annotation_file_content() -> dict:
  """Two videos, two categories (listed out of id order), three tracks using every segmentation form."""
  return {
      "info": {}, "licenses": [],
      "videos": [
          {"id": 7, "width": W, "height": H, "length": 3,
           "file_names": ["vid_a/00000.jpg", "vid_a/00005.jpg", "vid_a/00010.jpg"]},
          {"id": 3, "width": W, "height": H, "length": 2, "file_names": ["vid_b/00000.jpg", "vid_b/00005.jpg"]},
      ],
      "categories": [{"id": 40, "name": "star", "supercategory": "shape"},
                     {"id": 2, "name": "disc", "supercategory": "shape"}],
      "annotations": [
          {"id": 1, "video_id": 7, "category_id": 40, "iscrowd": 0,
           "segmentations": [rle.encode(_mask(1, 4, 2, 6)), None, rle.encode(_mask(0, 2, 0, 2))],
           "bboxes": [[2, 1, 4, 3], None, [0, 0, 2, 2]], "areas": [12, None, 4]},
          {"id": 2, "video_id": 7, "category_id": 2, "iscrowd": 1,  # no bboxes/areas: derived from masks
           "segmentations": [None, [[1.0, 1.0, 5.0, 1.0, 5.0, 3.0, 1.0, 3.0]],
                             {"size": [H, W], "counts": rle.encode(np.zeros((H, W)))["counts"]}]},
          {"id": 5, "video_id": 3, "category_id": 2,
           "segmentations": [{"size": [H, W], "counts": [0, H * W]}, None]},
      ],
  }


def _write_dataset(root, content, frame_size=(H, W)) -> str:
  """Writes `content` as root/train.json and a grey JPEG for every frame under root/train/JPEGImages."""
  for video in content.get("videos", []):
    for name in video.get("file_names", []):
      path = os.path.join(root, "train", "JPEGImages", name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.new("RGB", frame_size[::-1], (120, 130, 140)).save(path, quality=90)
  annotation_file = os.path.join(root, "train.json")
  with open(annotation_file, "w") as f:
    json.dump(content, f)
  return annotation_file


def _load_modified(tmp_path, modify, **kwargs):
  content = copy.deepcopy(_annotation_file_content())
  modify(content)
  return ytvis.load_ytvis(_write_dataset(tmp_path, content), **kwargs)


def test_reads_videos_categories_and_tracks(tmp_path):
  dataset = ytvis.load_ytvis(_write_dataset(tmp_path, _annotation_file_content()), check_images=True)
  assert list(dataset.videos) == [7, 3]  # file order
  video = dataset.videos[7]
  assert (video.length, video.name, video.height, video.width) == (3, "vid_a", H, W)
  assert dataset.category_ids == [2, 40]
  assert dataset.label_of(40) == 2 and dataset.categories[2].name == "disc"
  assert dataset.has_annotations
  assert dataset.image_dir == os.path.join(tmp_path, "train", "JPEGImages")
  assert [t.id for t in dataset.tracks_of(7)] == [1, 2] and [t.id for t in dataset.tracks_of(3)] == [5]

  given, derived, uncompressed = dataset.tracks
  assert given.bboxes == ([2.0, 1.0, 4.0, 3.0], None, [0.0, 0.0, 2.0, 2.0]) and given.areas == (12.0, None, 4.0)
  np.testing.assert_array_equal(rle.decode(given.segmentations[0]), _mask(1, 4, 2, 6))
  # polygon -> RLE, derived box and area; the empty RLE in frame 2 counts as absent
  assert derived.segmentations[0] is None and derived.segmentations[2] is None
  assert isinstance(derived.segmentations[1]["counts"], str)
  np.testing.assert_array_equal(rle.decode(derived.segmentations[1]), _mask(1, 3, 1, 5))
  assert derived.bboxes[1] == [1.0, 1.0, 4.0, 2.0] and derived.areas[1] == 8.0
  assert derived.iscrowd and not given.iscrowd
  # uncompressed [0, H*W]: no background run, the whole frame is the object
  np.testing.assert_array_equal(rle.decode(uncompressed.segmentations[0]), np.ones((H, W)))
  assert uncompressed.bboxes[0] == [0.0, 0.0, float(W), float(H)] and uncompressed.areas[0] == H * W


def test_split_without_annotations(tmp_path):
  dataset = _load_modified(tmp_path, lambda c: c.pop("annotations"))
  assert not dataset.has_annotations and dataset.tracks == [] and dataset.tracks_of(7) == []


def test_read_frame_from_dataset_and_from_folder(tmp_path):
  dataset = ytvis.load_ytvis(_write_dataset(tmp_path, _annotation_file_content()))
  frame = ytvis.read_frame(dataset, dataset.videos[3], 1)
  assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
  assert abs(int(frame[0, 0, 0]) - 120) <= 3
  np.testing.assert_array_equal(ytvis.read_frame(dataset.image_dir, dataset.videos[3], 1), frame)
  with pytest.raises(InputError, match=r"frame index 2 outside \[0, 2\)"):
    ytvis.read_frame(dataset, dataset.videos[3], 2)


def _raises(tmp_path, modify, *fragments, **kwargs):
  with pytest.raises(InputError) as info:
    _load_modified(tmp_path, modify, **kwargs)
  message = str(info.value)
  assert "train.json" in message
  for fragment in fragments:
    assert fragment in message, f"{fragment!r} not in {message!r}"
  return message


def test_malformed_json_names_line_and_column(tmp_path):
  path = tmp_path / "train.json"
  path.write_text('{"videos": [],\n  "categories": [}\n')
  with pytest.raises(InputError, match=r"train.json: malformed JSON at line 2, column 18"):
    ytvis.load_ytvis(path)


def test_missing_file(tmp_path):
  with pytest.raises(InputError, match="not found"):
    ytvis.load_ytvis(tmp_path / "absent.json")


def test_missing_top_level_key(tmp_path):
  _raises(tmp_path, lambda c: c.pop("videos"), "top level", "'videos'")


def test_video_without_frames(tmp_path):
  def empty(content):
    content["videos"][1]["file_names"] = []
    content["videos"][1]["length"] = 0
  _raises(tmp_path, empty, "video 3", "no frames")


def test_video_length_disagrees_with_file_names(tmp_path):
  _raises(tmp_path, lambda c: c["videos"][0].update(length=4), "video 7 ('vid_a')", "'length' is 4")


def test_segmentations_of_wrong_length(tmp_path):
  _raises(tmp_path, lambda c: c["annotations"][0]["segmentations"].pop(),
          "annotation 1 in video 7 ('vid_a')", "2 entries but the video has 3 frames")


def test_mask_of_wrong_size_names_the_frame(tmp_path):
  def wrong_size(content):
    content["annotations"][0]["segmentations"][2] = rle.encode(np.ones((H, W + 2)))
  _raises(tmp_path, wrong_size, "video 7 ('vid_a')", "frame 2 ('vid_a/00010.jpg')", "annotation 1",
          f"RLE size [{H}, {W + 2}] differs", f"[{H}, {W}]")


def test_corrupt_rle_names_the_frame(tmp_path):
  _raises(tmp_path, lambda c: c["annotations"][0]["segmentations"].__setitem__(0, {"size": [H, W], "counts": "0"}),
          "frame 0 ('vid_a/00000.jpg')", "do not cover")


def test_unknown_video_id(tmp_path):
  _raises(tmp_path, lambda c: c["annotations"][1].update(video_id=99), "annotation 2", "unknown video id 99")


def test_unknown_category_id(tmp_path):
  _raises(tmp_path, lambda c: c["annotations"][2].update(category_id=1),
          "annotation 5 in video 3 ('vid_b')", "unknown category id 1")


def test_duplicate_video_id(tmp_path):
  _raises(tmp_path, lambda c: c["videos"][1].update(id=7), "video id 7 appears more than once")


def test_missing_frame_file(tmp_path):
  annotation_file = _write_dataset(tmp_path, _annotation_file_content())
  os.remove(tmp_path / "train" / "JPEGImages" / "vid_b" / "00005.jpg")
  ytvis.load_ytvis(annotation_file)  # images are only read when asked
  with pytest.raises(InputError, match=r"video 3 \('vid_b'\), frame 1 \('vid_b/00005.jpg'\).*missing"):
    ytvis.load_ytvis(annotation_file, check_images=True)


def test_truncated_jpeg(tmp_path):
  annotation_file = _write_dataset(tmp_path, _annotation_file_content(), frame_size=(64, 80))
  # Frames are 64x80 here, so the size check would fire too; make the annotation agree first.
  content = _annotation_file_content()
  for video in content["videos"]:
    video.update(height=64, width=80)
  content["annotations"] = []
  with open(annotation_file, "w") as f:
    json.dump(content, f)
  frame = tmp_path / "train" / "JPEGImages" / "vid_a" / "00005.jpg"
  frame.write_bytes(frame.read_bytes()[:300])
  with pytest.raises(InputError, match=r"frame 1 \('vid_a/00005.jpg'\).*cannot decode image"):
    ytvis.load_ytvis(annotation_file, check_images=True)


def test_garbage_jpeg(tmp_path):
  annotation_file = _write_dataset(tmp_path, _annotation_file_content())
  (tmp_path / "train" / "JPEGImages" / "vid_a" / "00000.jpg").write_bytes(b"not a jpeg at all")
  with pytest.raises(InputError, match=r"frame 0 \('vid_a/00000.jpg'\).*cannot decode image"):
    ytvis.load_ytvis(annotation_file, check_images=True)


def test_jpeg_of_wrong_size(tmp_path):
  annotation_file = _write_dataset(tmp_path, _annotation_file_content())
  Image.new("RGB", (W, H + 1)).save(tmp_path / "train" / "JPEGImages" / "vid_b" / "00000.jpg")
  with pytest.raises(InputError, match=rf"frame 0 \('vid_b/00000.jpg'\).*is {H + 1}x{W} \(HxW\).*{H}x{W}"):
    ytvis.load_ytvis(annotation_file, check_images=True)


def test_cli_summary_and_error(tmp_path, capsys):
  annotation_file = _write_dataset(tmp_path, _annotation_file_content())
  ytvis.main(["--annotations", annotation_file, "--check-images"])
  out = capsys.readouterr().out
  assert "2 videos, 5 frames, 3 tracks, 4 masks, 2 categories" in out
  (tmp_path / "broken.json").write_text("{")
  with pytest.raises(SystemExit) as info:
    ytvis.main(["--annotations", str(tmp_path / "broken.json")])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert "broken.json: malformed JSON" in err and "Traceback" not in err


@pytest.mark.parametrize("annotation_file, image_dir", [
    ("train.json", "train/JPEGImages"),  # YouTube-VIS 2019
    ("train/instances.json", "train/JPEGImages"),  # YouTube-VIS 2021
    ("annotations_train.json", "train"),  # OVIS
])
def test_default_image_dir_of_each_layout(tmp_path, annotation_file, image_dir):
  (tmp_path / image_dir).mkdir(parents=True)
  assert ytvis.default_image_dir(str(tmp_path / annotation_file)) == str(tmp_path / image_dir)
  assert ytvis.default_image_dir(str(tmp_path / "elsewhere" / "x.json")) is None
