"""Every configs/*.py: loads, names its own run command and runtime, describes a data set and a model that builds."""

import re

import jax
import numpy as np
import pytest
from flax import nnx

from maskprop_jax.training import parallel, runs
from maskprop_jax.data import synthetic, tfds_builder
from maskprop_jax.model import maskprop
from tiny_config import REPO_ROOT

CONFIG_NAMES = sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.py") if p.stem != "default")
# category counts of the data sets (+1 for the background class)
NUM_CLASSES = {"ytvis2019": 41, "ytvis2021": 41, "ovis": 26, "synthetic": 7}


def _load(name: str):
  path = REPO_ROOT / "configs" / f"{name}.py"
  return runs.load_config_file(path), path.read_text()


def test_the_issue_configs_exist():
  assert {"ytvis", "ytvis_r101", "ytvis_x101", "ytvis2021", "ovis", "ytvis_tpu", "synthetic"} <= set(CONFIG_NAMES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_documents_its_command_and_builds_its_model(name):
  config, source = _load(name)
  docstring = re.match(r'\s*"""(.*?)"""', source, re.DOTALL).group(1)
  assert f"python train.py --config configs/{name}.py --workdir" in docstring
  assert "Expected runtime" in docstring
  if config.model.init_from:  # converted weights: the docstring says how to make them
    assert f"--out {config.model.init_from}" in docstring

  data = config.data
  assert data.name in tfds_builder.CONFIG_DESCRIPTIONS
  assert {data.train_split, data.val_split} <= set(data.annotations) & set(data.images)
  assert config.model.detector.num_classes == NUM_CLASSES[data.name]
  # bfloat16 where GPUs and TPUs run (configs/ytvis.py and those built on it), float32 for the CPU's main job.
  assert config.model.compute_dtype == ("float32" if data.name == "synthetic" else "bfloat16")
  opt = config.optimizer
  if opt.schedule == "step":
    assert all(opt.warmup_steps < step < config.train.num_steps for step in opt.decay_steps)

  model = nnx.eval_shape(lambda: maskprop.MaskProp(config.model, rngs=nnx.Rngs(0)))
  assert model.num_classes == NUM_CLASSES[data.name] - 1


def test_paper_clip_length_in_the_youtube_vis_configs():
  for name in ("ytvis", "ytvis_r101", "ytvis_x101", "ytvis2021", "ovis", "ytvis_tpu"):
    config, _ = _load(name)
    assert config.inference.half_window == 6 and config.data.max_ref_offset == 6, name  # clips of 2T+1 = 13
    # At most D center-frame detections become a clip's tracks: 10 on YouTube-VIS, 20 on crowded OVIS.
    assert config.model.detector.roi_heads.detections_per_img == (20 if name == "ovis" else 10), name
    assert "max_instances" not in config.inference, name  # read nowhere: not offered as a setting


def test_backbones_of_the_r101_and_x101_configs():
  shapes = {}
  for name in ("ytvis", "ytvis_r101", "ytvis_x101"):
    config, _ = _load(name)
    model = nnx.eval_shape(lambda: maskprop.MaskProp(config.model, rngs=nnx.Rngs(0)))
    shapes[name] = {k: v.shape for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
                    if k[:4] == ("detector", "backbone", "body", "layer3")}
  assert len(shapes["ytvis"]) < len(shapes["ytvis_r101"]) == len(shapes["ytvis_x101"])  # 6 vs 23 blocks
  conv2 = ("detector", "backbone", "body", "layer3", 0, "conv2", "kernel")
  assert shapes["ytvis_r101"][conv2] == (3, 3, 256, 256)
  # 32 groups of 8 channels per 64 planes: 1024 channels, each output sees its group's 32 inputs.
  assert shapes["ytvis_x101"][conv2] == (3, 3, 32, 1024)


def test_tpu_config_batch_and_schedule_grow_with_the_chips():
  config, _ = _load("ytvis_tpu")
  on_16_chips = parallel.scale_to_devices(config, 16)
  assert on_16_chips.train.global_batch_size == 32 and on_16_chips.train.num_steps == 20_000
  np.testing.assert_allclose(on_16_chips.optimizer.lr, 0.04)
  on_64_chips = parallel.scale_to_devices(config, 64)
  assert on_64_chips.train.global_batch_size == 128 and on_64_chips.train.num_steps == 5_000
  assert on_64_chips.train.global_batch_size % 64 == 0
  assert jax.tree.leaves(on_64_chips.optimizer.decay_steps) == [3_750, 4_500]


def test_synthetic_config_gives_every_object_of_a_frame_a_slot():
  config, _ = _load("synthetic")
  # An object left without a slot on a center frame would be trained as background.
  assert config.data.max_instances >= synthetic.MAX_INSTANCES
