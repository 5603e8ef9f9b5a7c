"""Training: train state, the sharded train step, the loop with checkpoints, metrics, preemption and evaluation.

Data parallel over every device of every host: a Mesh with one `data` axis, the global batch sharded along it, the
model and optimizer state replicated; `jax.jit` inserts the gradient all-reduce. Each process feeds its own shard
of the data and the per-process batches are assembled into one global array.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metric_writers, metrics, periodic_actions
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from maskprop_jax import checkpointing, optimizer, run_config
from maskprop_jax.data import from_config
from maskprop_jax.model import maskprop


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # trainable parameters (nnx.State)
  frozen: Any  # frozen parameters and every other model variable (frozen batch-norm statistics)
  opt_state: optax.OptState


class NonFiniteLossError(RuntimeError):
  pass


def make_mesh() -> Mesh:
  # Auto axes: XLA propagates the batch sharding through the model (no per-op sharding annotations needed).
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def scale_to_devices(config: ml_collections.ConfigDict, num_devices: int) -> ml_collections.ConfigDict:
  """The config with its batch fixed for `num_devices`; unchanged unless `train.per_device_batch_size` is set.

  With `train.per_device_batch_size` the global batch grows with the devices (a TPU pod of any size), and the
  schedule follows the linear scaling rule from `train.reference_batch_size` (the batch its numbers were written
  for): the learning rate times global / reference, the step counts (training, warmup, decays) times reference /
  global, so that a run sees the same number of epochs on any number of chips.
  """
  per_device = config.train.get("per_device_batch_size", 0)
  if not per_device:
    return config
  config = config.copy_and_resolve_references()
  global_batch = per_device * num_devices
  reference = config.train.get("reference_batch_size", 0) or global_batch
  steps_scale = reference / global_batch

  def scaled(steps: int) -> int:
    return max(1, round(steps * steps_scale))

  config.train.global_batch_size = global_batch
  config.train.num_steps = scaled(config.train.num_steps)
  config.optimizer.lr = config.optimizer.lr / steps_scale
  config.optimizer.warmup_steps = scaled(config.optimizer.warmup_steps) if config.optimizer.warmup_steps else 0
  config.optimizer.decay_steps = tuple(scaled(step) for step in config.optimizer.decay_steps)
  return config


def build_model(config: ml_collections.ConfigDict, seed: int) -> nnx.Module:
  model_config = config.model
  if model_config.init_from:
    model_config = ml_collections.ConfigDict(model_config.to_dict())
    maskprop.detector_config_from(model_config.init_from, model_config)
  # Initialised under jit: eager initialisation of a ResNet runs op by op and takes tens of seconds on a CPU.
  model = nnx.jit(lambda rngs: maskprop.MaskProp(model_config, rngs=rngs))(nnx.Rngs(seed))
  if model_config.init_from:
    loaded = maskprop.load_detector_params(model, model_config.init_from)
    logging.info("initialised the detector from %s (%d arrays)", model_config.init_from, loaded)
  return model


def create_train_state(model: nnx.Module, config: ml_collections.ConfigDict,
                       tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
  frozen_filter = optimizer.frozen_filter(tuple(config.optimizer.frozen_patterns))
  graphdef, params, frozen = nnx.split(model, nnx.All(nnx.Param, nnx.Not(frozen_filter)), ...)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, opt_state=tx.init(params))
  return graphdef, state


def train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, learning_rate_fn, state: TrainState,
               batch: dict[str, jax.Array], key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch; returns the new state and the step's metrics."""
  key = jax.random.fold_in(key, state.step)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.frozen)
    return maskprop.compute_losses(model, batch, key)

  (loss, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step_metrics = dict(losses, loss=loss, grad_norm=optimizer.global_norm(grads),
                      learning_rate=learning_rate_fn(state.step))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), step_metrics


def make_train_step(graphdef, tx, learning_rate_fn, mesh: Mesh):
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
  step = functools.partial(train_step, graphdef, tx, learning_rate_fn)
  # The state is donated: its buffers are reused for the new state instead of being copied.
  return jax.jit(step, in_shardings=(replicated, batch_sharding, replicated), out_shardings=replicated,
                 donate_argnums=(0,))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the per-process batches into global arrays sharded along the data axis."""
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def _metrics_collection(names) -> type[metrics.Collection]:
  return metrics.Collection.create(**{name: metrics.Average.from_output(name) for name in sorted(names)})


class _Preemption:
  """SIGTERM (a scheduler's preemption notice) asks the loop to checkpoint and exit cleanly.

  Only for a single process: in a multi-process run, JAX's preemption service already listens for SIGTERM and
  agrees with every process on the step to stop at (`manager.reached_preemption`); a handler of our own would
  replace its listener and let one process stop while the others wait for it in a collective.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
  """Trains (resuming from the latest checkpoint in `workdir` if any), evaluates, returns the final metrics."""
  config = scale_to_devices(config, jax.device_count())
  if config.model.compute_dtype != "float32":
    # The model's layers take no dtype yet: a bfloat16 setting would silently train in float32.
    raise ValueError(f"config.model.compute_dtype={config.model.compute_dtype!r} is not supported yet; use "
                     "'float32' (on TPUs, float32 convolutions already run as bfloat16 passes on the MXU)")
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    run_config.save_run_config(config, workdir)  # the demo and propagation_eval rebuild the model from it
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  mesh = make_mesh()
  num_steps = config.train.num_steps
  if config.train.global_batch_size % jax.device_count():
    raise ValueError(f"global batch size {config.train.global_batch_size} does not split over "
                     f"{jax.device_count()} devices")

  train_iter = from_config.train_iterator(config)
  model = build_model(config, config.seed)
  learning_rate_fn = optimizer.create_learning_rate_fn(config)
  tx = optimizer.create_optimizer(config, learning_rate_fn)
  graphdef, state = create_train_state(model, config, tx)
  del model

  manager = checkpointing.create_manager(workdir, keep=config.train.keep_checkpoints,
                                         save_every=config.train.checkpoint_every)
  restored = checkpointing.restore_latest(manager, state, train_iter)
  if restored is not None:
    state = restored
  state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
  start_step = int(state.step)
  step_fn = make_train_step(graphdef, tx, learning_rate_fn, mesh)
  key = jax.random.key(config.seed)

  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  hooks = [report]
  if jax.process_index() == 0 and config.train.profile_steps:
    hooks.append(periodic_actions.Profile(num_profile_steps=config.train.profile_steps, logdir=str(workdir)))
  preemption = _Preemption()
  collection, accumulated = None, None
  last_log, steps_since_log = time.perf_counter(), 0
  pending = None  # the previous step's metrics, checked for a finite loss one step late so dispatch runs ahead
  final_metrics: dict[str, float] = {}
  try:
    for step in range(start_step, num_steps):
      batch = global_batch(next(train_iter), mesh)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, step_metrics = step_fn(state, batch, key)
      if pending is not None:
        _check_finite(*pending)
      pending = (step + 1, step_metrics)
      if collection is None:
        collection = _metrics_collection(step_metrics)
      update = collection.single_from_model_output(**step_metrics)
      accumulated = update if accumulated is None else accumulated.merge(update)
      steps_since_log += 1
      for hook in hooks:
        hook(step + 1)
      is_last = step + 1 == num_steps
      if (step + 1) % config.train.log_every == 0 or is_last:
        _check_finite(*pending)
        elapsed = time.perf_counter() - last_log
        summary = {k: float(v) for k, v in accumulated.compute().items()}
        summary["clips_per_second"] = config.train.global_batch_size * steps_since_log / elapsed
        summary["step_time_ms"] = 1000 * elapsed / steps_since_log
        writer.write_scalars(step + 1, summary)
        accumulated, last_log, steps_since_log = None, time.perf_counter(), 0
      stopping = preemption.requested or manager.reached_preemption(step + 1)
      if is_last or stopping or manager.should_save(step + 1):
        _check_finite(*pending)  # a checkpoint never holds the state of a step whose loss was not finite
      # One save call: a second, forced save of a step already saved would fail (orbax never overwrites).
      checkpointing.save(manager, step + 1, state, train_iter, force=is_last or stopping)
      if stopping:
        manager.wait_until_finished()
        logging.warning("stopped at step %d for preemption; rerun the same command to continue", step + 1)
        return {}
      if config.train.eval_every and (step + 1) % config.train.eval_every == 0 and not is_last:
        final_metrics = _evaluate(config, graphdef, state, workdir, writer, step + 1)
    if pending is not None:
      _check_finite(*pending)
  finally:
    preemption.restore()
    manager.wait_until_finished()
    writer.flush()  # a stopped run's last losses reach the summaries too
  final_metrics = _evaluate(config, graphdef, state, workdir, writer, num_steps,
                            num_overlays=config.evaluation.num_overlays)
  writer.flush()
  return final_metrics


def restore_model(config: ml_collections.ConfigDict, workdir: str | Path) -> tuple[nnx.Module, int | None]:
  """The model of the latest readable checkpoint in workdir and its step; the initial model if there is none."""
  model = build_model(config, config.seed)
  tx = optimizer.create_optimizer(config, optimizer.create_learning_rate_fn(config))
  graphdef, state = create_train_state(model, config, tx)
  manager = checkpointing.create_manager(workdir, keep=config.train.keep_checkpoints, save_every=1)
  restored = checkpointing.restore_latest(manager, state, data_iterator=None)
  if restored is None:
    return model, None
  return nnx.merge(graphdef, restored.params, restored.frozen), int(restored.step)


def _check_finite(step: int, step_metrics: dict[str, jax.Array]) -> None:
  loss = float(step_metrics["loss"])
  if not np.isfinite(loss):
    parts = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(step_metrics.items()) if k != "loss")
    raise NonFiniteLossError(f"the loss became {loss} at step {step} ({parts}); training stopped, the last "
                             "good checkpoint is kept: lower the learning rate or check the data")


def _evaluate(config, graphdef, state: TrainState, workdir: Path, writer, step: int,
              num_overlays: int = 0) -> dict[str, float]:
  from maskprop_jax import eval_lib  # imported here: evaluation pulls in inference and linking

  model = nnx.merge(graphdef, state.params, state.frozen)
  scores = eval_lib.evaluate_split(config, model, workdir, split=config.data.val_split, step=step,
                                   num_overlays=num_overlays)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in scores.items()})
  return scores
