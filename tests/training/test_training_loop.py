"""The training loop and step on the tiny config: one real step, 4 devices against 1, a non-finite loss stopping
the loop, a run fine-tuned from converted weights rebuilt identically by every program."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from maskprop_jax.training import checkpointing, loop, optimizer, parallel
from maskprop_jax.training.state import build_model, create_train_state, make_train_step
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
  mesh = parallel.make_mesh()
  learning_rate_fn = optimizer.create_learning_rate_fn(config)
  tx = optimizer.create_optimizer(config, learning_rate_fn)
  graphdef, state = create_train_state(build_model(config, config.seed), config, tx)
  state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
  before = SimpleNamespace(params=_leaves(state.params), frozen=_leaves(state.frozen))
  local_batch = next(from_config.train_iterator(config))
  step_fn = make_train_step(graphdef, tx, learning_rate_fn, mesh)
  state, step_metrics = step_fn(state, parallel.global_batch(local_batch, mesh), jax.random.key(config.seed))
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
  real_global_batch, real_compute_losses = parallel.global_batch, maskprop.compute_losses
  batches_made = []

  def global_batch_marking_the_poisoned_step(local_batch, mesh):
    batches_made.append(True)
    if len(batches_made) == poisoned_step:
      local_batch = dict(local_batch, frame_offsets=local_batch["frame_offsets"] + 1000)
    return real_global_batch(local_batch, mesh)

  def compute_losses_with_nan_on_marked_batches(model, batch, key):
    total, losses = real_compute_losses(model, batch, key)
    return jnp.where(jnp.any(batch["frame_offsets"] >= 1000), jnp.nan, total), losses

  monkeypatch.setattr(parallel, "global_batch", global_batch_marking_the_poisoned_step)
  monkeypatch.setattr(maskprop, "compute_losses", compute_losses_with_nan_on_marked_batches)
  with pytest.raises(loop.NonFiniteLossError, match=f"loss became nan at step {poisoned_step} "):
    loop.train_and_evaluate(config, tmp_path)

  manager = checkpointing.create_manager(tmp_path, keep=10, save_every=1)
  assert manager.all_steps() == [1, 2]
  kept = checkpointing.restore_latest(manager, _initial_state(config), data_iterator=None)
  assert int(kept.step) == 2
  assert all(np.all(np.isfinite(v)) for v in _leaves(kept.params).values())


def _initial_state(config):
  """A train state of the config's structure (a restore target)."""
  tx = optimizer.create_optimizer(config, optimizer.create_learning_rate_fn(config))
  return create_train_state(build_model(config, config.seed), config, tx)[1]


def test_a_run_from_converted_weights_is_rebuilt_as_trained_by_eval_the_demo_and_propagation_eval(
    prepared_tiny_config, tmp_path):
  """torchvision's COCO v1 weights have frozen batch norms with epsilon 0 (the config's default is 1e-5): the run
  records the network it really built, and every program rebuilds that one from the run directory alone."""
  from flax import nnx  # noqa: PLC0415

  from maskprop_jax.convert import params_io  # noqa: PLC0415
  from maskprop_jax.demo import video as demo_video  # noqa: PLC0415
  from maskprop_jax.inference import predictor  # noqa: PLC0415
  from maskprop_jax.model import mask_rcnn, maskprop as maskprop_model  # noqa: PLC0415
  from maskprop_jax.training import runs  # noqa: PLC0415

  config = prepared_tiny_config.copy_and_resolve_references()
  coco = config.model.detector.copy_and_resolve_references()
  coco.backbone.bn_eps = 0.0
  converted = tmp_path / "converted"
  detector = mask_rcnn.build_mask_rcnn(coco, nnx.Rngs(3))
  params_io.save_params(converted, nnx.to_pure_dict(nnx.state(detector)), coco,
                        category_ids=list(range(coco.num_classes)), class_names=[str(i) for i in range(7)])
  config.model.init_from = str(converted)
  config.train.update(dict(num_steps=1, checkpoint_every=1))
  frame = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)

  def outputs(model):
    graphdef, state = nnx.split(model)
    geometry = maskprop_model.InputGeometry.for_video(model.config, frame.shape[:2])
    _, features = predictor.frame_features(graphdef, state, frame, geometry)
    detections = predictor.detect(graphdef, state, features, jnp.asarray([geometry.resized_hw], jnp.int32))
    return [np.asarray(f) for f in features] + [np.asarray(x) for x in detections]

  trained = {}

  def evaluate(config, model, workdir, *, step, num_overlays):
    model.eval()
    trained["eps"] = model.config.detector.backbone.bn_eps
    trained["outputs"] = outputs(model)
    return {}

  workdir = tmp_path / "run"
  loop.train_and_evaluate(config, workdir, evaluate)
  assert trained["eps"] == 0.0
  for path in converted.rglob("*"):  # the run directory is all a program needs
    if path.is_file():
      path.unlink()

  eval_model = runs.load_run(workdir, prepared_tiny_config).model  # as eval.py loads it, with its --config
  demo_run = demo_video.model_from_run(str(workdir), None)
  propagation_eval_model = runs.load_run(workdir).model  # as propagation_eval loads it
  categories = from_config.categories(config, config.data.train_split)
  assert demo_run.categories.names == [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
  for model in (eval_model, demo_run.model, propagation_eval_model):
    assert model.config.detector.backbone.bn_eps == 0.0
    for got, want in zip(outputs(model), trained["outputs"], strict=True):
      np.testing.assert_array_equal(got, want)
