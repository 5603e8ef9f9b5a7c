"""Preparing YouTube-VIS-format splits as TFDS array_record files (tfds_builder.py and prepare.py)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from maskprop_jax import rle
from maskprop_jax.data import prepare
from maskprop_jax.data import synthetic
from maskprop_jax.errors import EXIT_ERROR, InputError


@pytest.fixture(scope="module")
def source(synthetic_dataset_dir):
  """The shared tiny synthetic data set (3 train and 2 valid videos); read-only."""
  return synthetic_dataset_dir


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory):
  """train prepared first, then valid without its annotations joining it."""
  data_dir = tmp_path_factory.mktemp("tfds")
  prepare.ensure_prepared(data_dir, "synthetic", "train", images_dir=source / "train" / "JPEGImages",
                          annotation_file=source / "train.json")
  valid = json.loads((source / "valid.json").read_text())
  del valid["annotations"]
  valid_no_gt = tmp_path_factory.mktemp("valid") / "valid_no_gt.json"
  valid_no_gt.write_text(json.dumps(valid))
  prepare.ensure_prepared(data_dir, "synthetic", "valid", images_dir=source / "valid" / "JPEGImages",
                          annotation_file=valid_no_gt)
  return data_dir


def test_records_hold_encoded_frames_and_rle_counts(source, prepared):
  annotations = json.loads((source / "train.json").read_text())
  dataset_dir = prepare.prepared_dir(prepared, "synthetic")
  records = prepare.open_records(dataset_dir, "train")
  videos = sorted(annotations["videos"], key=lambda v: v["id"])
  assert len(records) == len(videos)
  for index, video in enumerate(videos):
    record = records[index]
    assert int(record["video_id"]) == video["id"]
    assert (int(record["height"]), int(record["width"])) == (video["height"], video["width"])
    for file_name, frame in zip(video["file_names"], record["frames"], strict=True):
      assert frame == (source / "train" / "JPEGImages" / file_name).read_bytes()
    tracks = [a for a in annotations["annotations"] if a["video_id"] == video["id"]]
    assert [int(i) for i in record["tracks"]["id"]] == [t["id"] for t in tracks]
    for n, track in enumerate(tracks):
      assert int(record["tracks"]["label"][n]) == track["category_id"]  # synthetic ids are already 1..C
      for f, segmentation in enumerate(track["segmentations"]):
        present = segmentation is not None and rle.area(segmentation) > 0
        assert bool(record["tracks"]["present"][n][f]) == present
        if present:
          counts = record["tracks"]["rle_counts"][n][f].decode()
          np.testing.assert_array_equal(rle.decode({"size": segmentation["size"], "counts": counts}),
                                        rle.decode(segmentation))


def test_metadata_lists_both_splits_in_record_order(source, prepared):
  metadata = prepare.read_metadata(prepare.prepared_dir(prepared, "synthetic"))
  train = json.loads((source / "train.json").read_text())
  by_id = {v["id"]: v for v in train["videos"]}
  assert metadata["splits"]["train"]["video_ids"] == sorted(by_id)
  assert metadata["splits"]["train"]["num_frames"] == [len(by_id[v]["file_names"]) for v in sorted(by_id)]
  assert metadata["splits"]["train"]["has_annotations"]
  assert not metadata["splits"]["valid"]["has_annotations"]
  assert [c["label"] for c in metadata["categories"]] == list(range(1, len(train["categories"]) + 1))
  valid_records = prepare.open_records(prepare.prepared_dir(prepared, "synthetic"), "valid")
  assert len(valid_records) == 2 and len(valid_records[0]["tracks"]["id"]) == 0


def test_ensure_prepared_reuses_a_prepared_split(prepared, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("prepared again")

  monkeypatch.setattr(prepare, "prepare_split", fail)
  path = prepare.ensure_prepared(prepared, "synthetic", "train", images_dir=None, annotation_file="unused.json")
  assert path == prepare.prepared_dir(prepared, "synthetic")


def test_unknown_split_names_the_prepared_ones(prepared):
  with pytest.raises(InputError, match="no split 'test'.*train, valid"):
    prepare.open_records(prepare.prepared_dir(prepared, "synthetic"), "test")


def _remove_a_frame(root: Path) -> str:
  frame = sorted((root / "train" / "JPEGImages").glob("*/*.jpg"))[2]
  frame.unlink()
  return frame.name


def _truncate_a_frame(root: Path) -> str:
  frame = sorted((root / "train" / "JPEGImages").glob("*/*.jpg"))[1]
  frame.write_bytes(frame.read_bytes()[: 200])
  return frame.name


def _break_the_json(root: Path) -> str:
  path = root / "train.json"
  path.write_text(path.read_text()[:-10])
  return "malformed JSON"


@pytest.mark.parametrize("damage", [_remove_a_frame, _truncate_a_frame, _break_the_json])
def test_bad_input_raises_and_writes_nothing(damage, tmp_path):
  root = tmp_path / "source"
  synthetic.generate_dataset(root, 2, 0, seed=1, height=16, width=16, min_frames=2, max_frames=3)
  expected = damage(root)
  out = tmp_path / "tfds"
  with pytest.raises(InputError, match=expected):
    prepare.ensure_prepared(out, "synthetic", "train", images_dir=root / "train" / "JPEGImages",
                            annotation_file=root / "train.json")
  assert not out.exists()


def test_cli_prints_one_paragraph_and_exits_non_zero(tmp_path, capsys):
  root = tmp_path / "source"
  synthetic.generate_dataset(root, 1, 0, seed=2, height=16, width=16, min_frames=2, max_frames=2)
  _break_the_json(root)
  with pytest.raises(SystemExit) as exit_info:
    prepare.main(["--images", str(root / "train" / "JPEGImages"), "--annotations", str(root / "train.json"),
                  "--data-dir", str(tmp_path / "tfds")])
  assert exit_info.value.code == EXIT_ERROR
  stderr = capsys.readouterr().err.strip()
  assert "error:" in stderr and "Traceback" not in stderr and "\n" not in stderr
  assert not (tmp_path / "tfds").exists()


def test_cli_rejects_an_unknown_name(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    prepare.main(["--annotations", "a.json", "--data-dir", str(tmp_path), "--name", "coco"])
  assert exit_info.value.code != 0
  assert os.listdir(tmp_path) == []
