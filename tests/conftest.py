"""Fixtures shared by every test file: a tiny synthetic YouTube-VIS data set, generated once per session."""

import importlib.util
import pathlib

import pytest

# torchvision must load before TensorFlow (which clu and tfds import): the other order can crash the process
# when torch loads triton's native library. Tests that use torchvision skip cleanly when it is not installed.
if importlib.util.find_spec("torchvision") is not None:
  import torchvision.ops  # noqa: F401

from maskprop_jax.data import synthetic, ytvis

TINY_HEIGHT, TINY_WIDTH = 64, 96


@pytest.fixture(scope="session")
def synthetic_dataset_dir(tmp_path_factory) -> pathlib.Path:
  """Folder with train.json + train/JPEGImages (3 videos) and valid.json + valid/JPEGImages (2 videos, with
  ground truth); 64x96 frames, 8 to 12 frames per video, seed 0. Read-only: copy it before changing files."""
  out_dir = tmp_path_factory.mktemp("synthetic_dataset")
  synthetic.generate_dataset(out_dir, train_videos=3, val_videos=2, seed=0, height=TINY_HEIGHT, width=TINY_WIDTH,
                             min_frames=8, max_frames=12)
  return out_dir


@pytest.fixture(scope="session")
def synthetic_train(synthetic_dataset_dir) -> ytvis.YTVISDataset:
  return ytvis.load_ytvis(synthetic_dataset_dir / "train.json")


@pytest.fixture(scope="session")
def synthetic_valid(synthetic_dataset_dir) -> ytvis.YTVISDataset:
  return ytvis.load_ytvis(synthetic_dataset_dir / "valid.json")
