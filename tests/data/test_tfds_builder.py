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


def _tiny_source(root: Path, videos: int = 2, seed: int = 1) -> Path:
  synthetic.generate_dataset(root, videos, 0, seed=seed, height=16, width=16, min_frames=2, max_frames=3)
  return root


def _cli(capsys, *args) -> tuple[object, str, str]:
  """prepare.main's exit code (None when it returns), stdout and stderr."""
  try:
    prepare.main([str(a) for a in args])
    code = None
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err


@pytest.mark.parametrize("name", ["my videos", "../elsewhere", "v1.0", "", "bäume"])
def test_cli_rejects_a_name_that_cannot_be_a_folder(tmp_path, capsys, name):
  source = _tiny_source(tmp_path / "source")
  code, _, err = _cli(capsys, "--annotations", source / "train.json", "--data-dir", tmp_path / "tfds", "--name", name)
  assert code == EXIT_ERROR
  assert f"data set name {name!r}: use letters, digits, '_' and '-' only" in err and len(err.splitlines()) == 1
  assert not (tmp_path / "tfds").exists()


def test_a_users_own_name_is_prepared_beside_the_known_ones(source, tmp_path):
  assert all(prepare.tfds_builder.check_name(n) == n for n in prepare.tfds_builder.CONFIG_DESCRIPTIONS)
  path = prepare.ensure_prepared(tmp_path, "my-videos_2", "valid", images_dir=source / "valid" / "JPEGImages",
                                 annotation_file=source / "valid.json")
  assert path == tmp_path / "vis_videos" / "my-videos_2" / "1.0.0" == prepare.prepared_dir(tmp_path, "my-videos_2")
  assert len(prepare.open_records(path, "valid")) == 2
  assert json.loads((path / prepare.INFO_FILE).read_text())["configName"] == "my-videos_2"
  with pytest.raises(InputError, match="data set name 'my/videos'"):  # what from_config calls, with config.data.name
    prepare.ensure_prepared(tmp_path, "my/videos", "valid", images_dir=None, annotation_file=source / "valid.json")


def test_missing_sources_are_an_error_even_for_a_prepared_split(prepared, source, tmp_path, capsys):
  code, _, err = _cli(capsys, "--annotations", tmp_path / "nothing.json", "--data-dir", prepared)
  assert code == EXIT_ERROR and f"--annotations {tmp_path / 'nothing.json'}: no such file" in err
  code, _, err = _cli(capsys, "--annotations", source / "train.json", "--images", tmp_path / "no_frames",
                      "--data-dir", prepared)
  assert code == EXIT_ERROR and f"--images {tmp_path / 'no_frames'}: no such folder" in err
  code, out, _ = _cli(capsys, "--annotations", source / "train.json", "--data-dir", prepared)
  assert code is None and "already prepared, reusing it" in out


def test_overwrite_replaces_a_split_only_once_the_new_one_is_built(tmp_path, capsys):
  out = tmp_path / "tfds"
  old = _tiny_source(tmp_path / "old", videos=3, seed=1)
  new = _tiny_source(tmp_path / "new", videos=2, seed=2)
  for split, source in (("train", old), ("valid", old)):  # a second split, which the overwrite must leave alone
    assert _cli(capsys, "--annotations", source / "train.json", "--data-dir", out, "--split", split)[0] is None
  dataset_dir = prepare.prepared_dir(out, "synthetic")
  valid_files = sorted(p.name for p in dataset_dir.glob("vis_videos-valid.*"))

  # A failed rebuild (a frame is missing) leaves the old split as it was.
  frame = sorted((new / "train" / "JPEGImages").glob("*/*.jpg"))[0]
  frame_bytes = frame.read_bytes()
  frame.unlink()
  code, _, err = _cli(capsys, "--annotations", new / "train.json", "--data-dir", out, "--overwrite")
  assert code == EXIT_ERROR and frame.name in err
  assert len(prepare.open_records(dataset_dir, "train")) == 3
  frame.write_bytes(frame_bytes)

  code, stdout, _ = _cli(capsys, "--annotations", new / "train.json", "--data-dir", out, "--overwrite")
  assert code is None and "split 'train' with 2 videos" in stdout
  records = prepare.open_records(dataset_dir, "train")
  new_ids = [v["id"] for v in json.loads((new / "train.json").read_text())["videos"]]
  assert [int(records[i]["video_id"]) for i in range(len(records))] == sorted(new_ids)
  assert prepare.split_info(dataset_dir, "train")["video_ids"] == sorted(new_ids)
  assert len(prepare.open_records(dataset_dir, "valid")) == 3
  assert sorted(p.name for p in dataset_dir.glob("vis_videos-valid.*")) == valid_files
  assert not [p for p in out.iterdir() if p.name.startswith(".prepare-")]  # no scratch folder left
