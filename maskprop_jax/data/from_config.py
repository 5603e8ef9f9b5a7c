"""The data a config names: where its YouTube-VIS files are, preparing them on first use, and the iterators.

config.data fields: name (a TFDS builder config: synthetic, ytvis2019, ytvis2021, ovis, or a user's own data set's
name of letters, digits, _ and -), root (the YouTube-VIS folder), annotations / images (per split, relative to
root), tfds_dir (where prepared records go), and for the synthetic set the generator's arguments under `synthetic`
(generated into root when it is missing).
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import ml_collections
from jax.experimental import multihost_utils

from maskprop_jax.data import pipeline, prepare, synthetic, video_reader
from maskprop_jax.errors import InputError


def annotation_file(config: ml_collections.ConfigDict, split: str) -> Path:
  return Path(config.data.root) / config.data.annotations[split]


def images_dir(config: ml_collections.ConfigDict, split: str) -> Path:
  return Path(config.data.root) / config.data.images[split]


def ensure_split(config: ml_collections.ConfigDict, split: str) -> Path:
  """The prepared records of a split: generates the synthetic set and prepares the records when missing."""
  data = config.data
  if jax.process_count() > 1:
    # Hosts share the data folder: process 0 writes it while the others wait, then everyone reads it.
    if jax.process_index() == 0:
      _prepare(config, split)
    multihost_utils.sync_global_devices(f"prepared {data.name} {split}")
  return _prepare(config, split)


def _prepare(config: ml_collections.ConfigDict, split: str) -> Path:
  data = config.data
  if split not in data.annotations:
    raise InputError(f"config.data.annotations names no file for split {split!r} "
                     f"(it has {', '.join(data.annotations)})")
  if data.name == "synthetic" and not annotation_file(config, split).exists():
    s = data.synthetic
    logging.info("generating the synthetic data set into %s (%d train, %d valid videos, seed %d)", data.root,
                 s.train_videos, s.val_videos, s.seed)
    synthetic.generate_dataset(data.root, s.train_videos, s.val_videos, s.seed, height=s.height, width=s.width,
                               min_frames=s.min_frames, max_frames=s.max_frames, overwrite=True)
  return prepare.ensure_prepared(data.tfds_dir, data.name, split, images_dir=images_dir(config, split),
                                 annotation_file=annotation_file(config, split))


def categories(config: ml_collections.ConfigDict, split: str) -> list[dict]:
  """The categories of a prepared split ({"id", "name", "label"}, label = contiguous 1..C by id)."""
  return prepare.read_metadata(ensure_split(config, split))["categories"]


def train_iterator(config: ml_collections.ConfigDict):
  """This process's iterator of training batches (a grain iterator whose state orbax checkpoints)."""
  data = config.data
  ensure_split(config, data.train_split)
  return pipeline.make_train_iterator(
      data.tfds_dir, data.name, data.train_split, global_batch_size=config.train.global_batch_size,
      image_hw=tuple(data.image_hw), max_instances=data.max_instances, num_ref_frames=data.num_ref_frames,
      max_ref_offset=data.max_ref_offset, scale_range=tuple(data.scale_range), flip=data.flip,
      seed=config.seed, worker_count=data.worker_count)


def eval_videos(config: ml_collections.ConfigDict, split: str):
  """The videos of a split in order, each yielding its frames at their original size."""
  ensure_split(config, split)
  return video_reader.videos_from_records(config.data.tfds_dir, config.data.name, split)
