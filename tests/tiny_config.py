"""A MaskProp config small enough that a train step compiles in seconds on a CPU, for the training tests.

As a config file it runs the full program on a few tiny synthetic videos (generated into data.root if missing):

    python train.py --config tests/tiny_config.py --workdir /tmp/tiny \
        --config.data.root=/tmp/tiny_data --config.data.tfds_dir=/tmp/tiny_tfds

Expected runtime: about a minute on 2 CPU cores (mostly compilation). The tests point data.root at the session's
synthetic data set (tests/conftest.py) and share one prepared copy of its records (`prepared_tiny_config`).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import ml_collections
import pytest

from maskprop_jax.training import runs
from maskprop_jax.data import from_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def get_config() -> ml_collections.ConfigDict:
  config = runs.load_config_file(REPO_ROOT / "configs" / "default.py")
  data = config.data
  data.name = "synthetic"
  data.root = "/tmp/maskprop_tiny/data"
  data.tfds_dir = "/tmp/maskprop_tiny/tfds"
  data.image_hw = (64, 96)
  data.scale_range = (56, 64)
  data.max_instances = 4
  data.num_ref_frames = 1
  data.max_ref_offset = 2
  data.worker_count = 0
  # The same set as the tests' session fixture (tests/conftest.py), so either can stand in for the other.
  data.synthetic.update(dict(train_videos=3, val_videos=2, seed=0, height=64, width=96, min_frames=8,
                             max_frames=12))

  detector = config.model.detector
  detector.num_classes = 7  # the synthetic set's 6 shape categories + background
  detector.backbone.update(dict(stage_blocks=(1, 1, 1, 1), width_per_group=8, fpn_channels=16))
  detector.input.update(dict(min_size=64, max_size=96))
  detector.anchors.sizes = ((8,), (16,), (32,), (64,), (128,))
  detector.rpn.update(dict(pre_nms_top_n_train=64, post_nms_top_n_train=32, pre_nms_top_n_test=64,
                           post_nms_top_n_test=16, batch_size_per_image=32))
  detector.roi_heads.update(dict(box_fc_dim=32, mask_layers=(16,), batch_size_per_image=16, detections_per_img=4))
  config.model.propagation.update(dict(level=1, offset_width=8, head_width=8, head_depth=1))

  config.train.update(dict(global_batch_size=4, num_steps=4, log_every=1, checkpoint_every=2, keep_checkpoints=3))
  # The default SGD recipe, scaled down: short warmup, and the default's frozen stem and first stage.
  config.optimizer.update(dict(lr=0.01, warmup_steps=2, decay_steps=(3,)))
  config.inference.update(dict(half_window=1, score_thresh=0.0))
  return config


@pytest.fixture(scope="session")
def prepared_tiny_config(synthetic_dataset_dir, tmp_path_factory) -> ml_collections.ConfigDict:
  """The tiny config on the session's synthetic data set, its records prepared once (read-only: copy it)."""
  config = get_config()
  config.data.root = str(synthetic_dataset_dir)
  config.data.tfds_dir = str(tmp_path_factory.getbasetemp() / "tiny_tfds")
  for split in (config.data.train_split, config.data.val_split):
    from_config.ensure_split(config, split)
  return config


@pytest.fixture(scope="module")
def fast_compilation():
  """Compiles with most XLA optimisations off while a test module runs: half the compile time, slower steps."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


def subprocess_env(num_devices: int = 1, compilation_cache: Path | None = None) -> dict[str, str]:
  """The environment of a training subprocess: CPU with `num_devices` devices, compiled as `fast_compilation`
  does (so its numbers match this process's), optionally sharing compiled programs through a cache folder."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  if compilation_cache is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(compilation_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env
