"""Tests for maskprop_jax/data/synthetic.py: format, determinism, the staged events, atomic writing, the CLI."""

import json
import os

import numpy as np
import pytest

from maskprop_jax import rle
from maskprop_jax.data import synthetic, ytvis
from maskprop_jax.data.synthetic_shapes import CATEGORIES
from maskprop_jax.errors import InputError

SMALL = dict(height=32, width=48, min_frames=8, max_frames=9)


def _files(root) -> dict[str, bytes]:
  contents = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        contents[os.path.relpath(path, root)] = f.read()
  return contents


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
  """Two runs with the same arguments, and one with other split sizes; seed 5."""
  root = tmp_path_factory.mktemp("determinism")
  synthetic.generate_dataset(root / "a", 2, 1, seed=5, **SMALL)
  synthetic.generate_dataset(root / "b", 2, 1, seed=5, **SMALL)
  synthetic.generate_dataset(root / "c", 1, 2, seed=5, **SMALL)
  return root


def test_same_arguments_give_the_same_bytes(three_runs):
  first, second = _files(three_runs / "a"), _files(three_runs / "b")
  assert len(first) == 2 + sum(name.endswith(".jpg") for name in first)
  assert first.keys() == second.keys()
  for name in first:
    assert first[name] == second[name], name


def test_a_video_does_not_depend_on_the_split_sizes(three_runs):
  run_a, run_c = _files(three_runs / "a"), _files(three_runs / "c")
  for split in ("train", "valid"):
    shared = [name for name in run_a if name.startswith(f"{split}/JPEGImages/{split}_00000/")]
    assert shared and all(run_a[name] == run_c[name] for name in shared)
    tracks_a = [t for t in json.loads(run_a[f"{split}.json"])["annotations"] if t["video_id"] == 1]
    tracks_c = [t for t in json.loads(run_c[f"{split}.json"])["annotations"] if t["video_id"] == 1]
    assert tracks_a == tracks_c
  # ...while the other video of a split differs from it.
  assert run_c["valid/JPEGImages/valid_00001/00000.jpg"] != run_c["valid/JPEGImages/valid_00000/00000.jpg"]


def test_another_seed_gives_other_videos(tmp_path, three_runs):
  synthetic.generate_dataset(tmp_path / "d", 2, 1, seed=6, **SMALL)
  assert _files(tmp_path / "d")["train.json"] != _files(three_runs / "a")["train.json"]


def test_tiny_fixture_has_the_youtube_vis_layout(synthetic_dataset_dir, synthetic_train, synthetic_valid):
  for name, dataset, count in (("train", synthetic_train, 3), ("valid", synthetic_valid, 2)):
    assert dataset.has_annotations and len(dataset.videos) == count
    assert dataset.image_dir == os.path.join(synthetic_dataset_dir, name, "JPEGImages")
    assert [c.name for c in dataset.categories.values()] == [c.name for c in CATEGORIES]
    for video in dataset.videos.values():
      assert 8 <= video.length <= 12 and (video.height, video.width) == (64, 96)
      assert video.file_names[1] == f"{video.name}/00005.jpg"
  ytvis.load_ytvis(synthetic_dataset_dir / "valid.json", check_images=True)
  raw = json.loads((synthetic_dataset_dir / "train.json").read_text())
  assert set(raw) == {"info", "licenses", "videos", "categories", "annotations"}
  assert {"date_captured", "length", "file_names"} <= set(raw["videos"][0])
  assert {"iscrowd", "length", "height", "width", "areas", "bboxes"} <= set(raw["annotations"][0])


@pytest.fixture(scope="module")
def modest_set(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("modest")
  synthetic.generate_dataset(out_dir, 24, 0, seed=1, height=48, width=72, min_frames=8, max_frames=16)
  return ytvis.load_ytvis(out_dir / "train.json")


def test_counts_sizes_and_mask_consistency(modest_set):
  for video in modest_set.videos.values():
    assert 1 <= len(modest_set.tracks_of(video.id)) <= synthetic.MAX_INSTANCES
    assert 8 <= video.length <= 16
  for track in modest_set.tracks:
    assert any(seg is not None for seg in track.segmentations)
    for seg, bbox, area in zip(track.segmentations, track.bboxes, track.areas):
      if seg is None:
        assert bbox is None and area is None
        continue
      mask = rle.decode(seg)
      assert mask.shape == (48, 72)
      ys, xs = np.nonzero(mask)
      assert area == mask.sum() > 0
      assert bbox == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
  mean_area_fraction = np.array([np.mean([a for a in t.areas if a]) for t in modest_set.tracks]) / (48 * 72)
  # As fractions of a 720x1280 YouTube-VIS frame: below 32^2 px, below 128^2 (evaluator's small), above 256^2.
  assert (mean_area_fraction < 32**2 / (720 * 1280)).any()
  assert (mean_area_fraction < 128**2 / (720 * 1280)).sum() >= 5
  assert (mean_area_fraction > 256**2 / (720 * 1280)).sum() >= 5
  assert len({track.category_id for track in modest_set.tracks}) >= 4


def test_shapes_enter_leave_and_disappear_for_a_while(modest_set):
  entering = leaving = interrupted = 0
  for track in modest_set.tracks:
    present = [i for i, seg in enumerate(track.segmentations) if seg is not None]
    entering += present[0] > 0
    leaving += present[-1] < len(track.segmentations) - 1
    interrupted += present[-1] - present[0] + 1 > len(present)
  assert entering > 0 and leaving > 0 and interrupted > 0


def _plan(category, start, end, radius, depth):
  return synthetic.InstancePlan(category=category, start=start, end=end, bend=0.0, wiggles=1, radius=radius,
                                growth=0.0, angle=0.0, spin=0.0, brightness=1.0, depth=depth)


def test_masks_are_the_visible_parts():
  front_disc = _plan(0, (36.0, 24.0), (36.0, 24.0), radius=14.0, depth=1.0)
  back_square = _plan(1, (6.0, 24.0), (66.0, 24.0), radius=5.0, depth=0.0)  # passes behind the disc
  frames, visible = synthetic.render_video(np.random.default_rng(0), [front_disc, back_square], 48, 72, 9)
  assert frames.shape == (9, 48, 72, 3) and frames.dtype == np.uint8
  assert visible.shape == (9, 2, 48, 72)
  assert not (visible[:, 0] & visible[:, 1]).any()
  disc_area = visible[0, 0].sum()
  assert all(visible[t, 0].sum() == disc_area for t in range(9))  # the front shape is never covered
  square_area = visible[:, 1].sum(axis=(1, 2))  # [T]
  assert square_area[0] == square_area[8] > 0
  assert 0 < square_area[2] < square_area[0]  # partly behind the disc
  assert square_area[4] == 0  # wholly behind it: its segmentation in that frame is null


def test_existing_folder_is_refused_unless_overwrite(tmp_path):
  out_dir = tmp_path / "data"
  out_dir.mkdir()
  (out_dir / "keep.txt").write_text("mine")
  with pytest.raises(InputError, match="already exists"):
    synthetic.generate_dataset(out_dir, 1, 0, seed=0, **SMALL)
  assert (out_dir / "keep.txt").read_text() == "mine"
  synthetic.generate_dataset(out_dir, 1, 0, seed=0, overwrite=True, **SMALL)
  assert sorted(os.listdir(out_dir)) == ["train", "train.json", "valid", "valid.json"]
  assert sorted(os.listdir(tmp_path)) == ["data"]


def test_a_crash_leaves_nothing_behind(tmp_path, monkeypatch):
  real_write_split = synthetic._write_split

  def crash_on_valid(root, split, *args):
    if split == "valid":
      raise RuntimeError("disk full")
    real_write_split(root, split, *args)

  monkeypatch.setattr(synthetic, "_write_split", crash_on_valid)
  with pytest.raises(RuntimeError, match="disk full"):
    synthetic.generate_dataset(tmp_path / "data", 1, 1, seed=0, **SMALL)
  assert os.listdir(tmp_path) == []


def test_cli(tmp_path, capsys):
  synthetic.main(["--out", str(tmp_path / "cli"), "--train-videos", "1", "--val-videos", "1", "--seed", "3",
                  "--height", "32", "--width", "48", "--min-frames", "8", "--max-frames", "8"])
  assert "wrote 1 train and 1 valid videos" in capsys.readouterr().out
  assert ytvis.load_ytvis(tmp_path / "cli" / "valid.json").videos[1].length == 8
  with pytest.raises(SystemExit) as info:
    synthetic.main(["--out", str(tmp_path / "bad"), "--train-videos", "1", "--val-videos", "0", "--seed", "0",
                    "--min-frames", "9", "--max-frames", "8"])
  assert info.value.code == 2
  assert "min_frames <= max_frames" in capsys.readouterr().err
  assert not (tmp_path / "bad").exists()
