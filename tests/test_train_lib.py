"""train_lib on the tiny config: one real step, 4 devices against 1, a non-finite loss stopping the loop, the
batch scaled to the device count, an unsupported compute dtype refused."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from maskprop_jax import checkpointing, optimizer, train_lib
from maskprop_jax.data import from_config
from maskprop_jax.model import maskprop
from tiny_config import fast_compilation, prepared_tiny_config, subprocess_env  # noqa: F401 (fixtures)

TESTS_DIR = Path(__file__).parent

pytestmark = pytest.mark.usefixtures("fast_compilation")


def _leaves(tree) -> dict[str, np.ndarray]:
  return {optimizer._path_name(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def first_step(prepared_tiny_config):
  """One step of the tiny config from its initial state on its first global batch (compiled once per module)."""
  config = prepared_tiny_config
  mesh = train_lib.make_mesh()
  learning_rate_fn = optimizer.create_learning_rate_fn(config)
  tx = optimizer.create_optimizer(config, learning_rate_fn)
  graphdef, state = train_lib.create_train_state(train_lib.build_model(config, config.seed), config, tx)
  state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
  before = SimpleNamespace(params=_leaves(state.params), frozen=_leaves(state.frozen))
  local_batch = next(from_config.train_iterator(config))
  step_fn = train_lib.make_train_step(graphdef, tx, learning_rate_fn, mesh)
  state, step_metrics = step_fn(state, train_lib.global_batch(local_batch, mesh), jax.random.key(config.seed))
  return SimpleNamespace(before=before, state=state, metrics={k: float(v) for k, v in step_metrics.items()},
                         batch=local_batch, config=config)


def test_one_train_step_has_finite_losses_and_updates_the_trainable_parameters(first_step):
  metrics = first_step.metrics
  assert {"loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg",
          "loss_propagation", "grad_norm", "learning_rate"} <= set(metrics)
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  assert metrics["loss"] > 0 and metrics["grad_norm"] > 0
  np.testing.assert_allclose(metrics["learning_rate"], 0.01 * 0.001, rtol=1e-4)  # the first warmup step
  assert int(first_step.state.step) == 1

  after = _leaves(first_step.state.params)
  changed = {name for name, value in after.items() if not np.array_equal(value, first_step.before.params[name])}
  # Every part of the model learns, the propagation branch's zero-initialised offset layer included; the layers
  # before it get no gradient until it has moved away from zero (and decay alone is below float32 resolution).
  for layer in ("detector/backbone/body/layer2/0/conv1/kernel", "detector/backbone/fpn/layer_blocks/0/0/kernel",
                "detector/rpn/head/cls_logits/kernel", "detector/roi_heads/box_predictor/cls_score/kernel",
                "detector/roi_heads/mask_predictor/mask_fcn_logits/kernel", "propagation/deform_weights/0",
                "propagation/offsets/offset_convs/0/kernel", "propagation/mask_logits/kernel"):
    assert f"{layer}/value" in changed, layer
  assert len(changed) > 0.9 * len(after), sorted(set(after) - changed)
  for name, value in _leaves(first_step.state.frozen).items():
    np.testing.assert_array_equal(value, first_step.before.frozen[name], err_msg=name)


def test_four_devices_give_the_loss_and_gradient_norm_of_one_on_the_same_global_batch(first_step, tmp_path):
  config = first_step.config
  np.savez(tmp_path / "batch.npz", **first_step.batch)
  command = [sys.executable, str(TESTS_DIR / "train_worker.py"), "--data-root", config.data.root,
             "--tfds-dir", config.data.tfds_dir, "--steps", "1", "--batch", str(tmp_path / "batch.npz"),
             "--out", str(tmp_path / "four.npz")]
  result = subprocess.run(command, env=subprocess_env(num_devices=4), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(tmp_path / "four.npz") as four:
    # The batch is split over 4 devices (1 clip each); XLA all-reduces the gradients.
    for name, value in first_step.metrics.items():
      np.testing.assert_allclose(four[f"loss/{name}"][0], value, rtol=2e-5, err_msg=name)


def test_a_non_finite_loss_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(
    prepared_tiny_config, tmp_path, monkeypatch):
  config = prepared_tiny_config.copy_and_resolve_references()
  # A save is due every step but the loss is checked every 2nd: a checkpoint must still never hold a bad state.
  config.train.update(dict(num_steps=4, checkpoint_every=1, log_every=2))
  poisoned_step = 3
  real_global_batch, real_compute_losses = train_lib.global_batch, maskprop.compute_losses
  batches_made = []

  def global_batch_marking_the_poisoned_step(local_batch, mesh):
    batches_made.append(True)
    if len(batches_made) == poisoned_step:
      local_batch = dict(local_batch, frame_offsets=local_batch["frame_offsets"] + 1000)
    return real_global_batch(local_batch, mesh)

  def compute_losses_with_nan_on_marked_batches(model, batch, key):
    total, losses = real_compute_losses(model, batch, key)
    return jnp.where(jnp.any(batch["frame_offsets"] >= 1000), jnp.nan, total), losses

  monkeypatch.setattr(train_lib, "global_batch", global_batch_marking_the_poisoned_step)
  monkeypatch.setattr(maskprop, "compute_losses", compute_losses_with_nan_on_marked_batches)
  with pytest.raises(train_lib.NonFiniteLossError, match=f"loss became nan at step {poisoned_step} "):
    train_lib.train_and_evaluate(config, tmp_path)

  manager = checkpointing.create_manager(tmp_path, keep=10, save_every=1)
  assert manager.all_steps() == [1, 2]
  kept = checkpointing.restore_latest(manager, _initial_state(config), data_iterator=None)
  assert int(kept.step) == 2
  assert all(np.all(np.isfinite(v)) for v in _leaves(kept.params).values())


def _initial_state(config):
  """A train state of the config's structure (a restore target)."""
  tx = optimizer.create_optimizer(config, optimizer.create_learning_rate_fn(config))
  return train_lib.create_train_state(train_lib.build_model(config, config.seed), config, tx)[1]


def test_scale_to_devices_grows_the_batch_with_the_chips_and_keeps_the_epochs(prepared_tiny_config):
  config = prepared_tiny_config.copy_and_resolve_references()
  assert train_lib.scale_to_devices(config, 64) is config  # a fixed global batch stays as written
  config.train.update(dict(per_device_batch_size=2, reference_batch_size=16, num_steps=40_000))
  config.optimizer.update(dict(lr=0.02, warmup_steps=1_000, decay_steps=(30_000, 36_000)))
  scaled = train_lib.scale_to_devices(config, 64)  # a 64-chip pod: 128 clips per step, 8 times the reference
  assert scaled.train.global_batch_size == 128 and scaled.train.num_steps == 5_000
  np.testing.assert_allclose(scaled.optimizer.lr, 0.16)
  assert scaled.optimizer.warmup_steps == 125 and tuple(scaled.optimizer.decay_steps) == (3_750, 4_500)
  assert config.train.num_steps == 40_000  # the caller's config is left alone
  half = train_lib.scale_to_devices(config, 4)  # 8 clips per step: twice the steps at half the learning rate
  assert half.train.num_steps == 80_000 and half.optimizer.lr == pytest.approx(0.01)


def test_an_unsupported_compute_dtype_is_refused_before_training(prepared_tiny_config, tmp_path):
  config = prepared_tiny_config.copy_and_resolve_references()
  config.model.compute_dtype = "bfloat16"
  with pytest.raises(ValueError, match="compute_dtype='bfloat16' is not supported yet"):
    train_lib.train_and_evaluate(config, tmp_path)
  assert not any(tmp_path.iterdir())  # nothing written
