"""The training loop: `train_and_evaluate(config, workdir, evaluate)` with checkpoints, metrics and preemption.

The loop owns the order of things (check the config, record the run, restore, step, log, save, stop on
preemption); the model and the step are in state.py, the mesh and the batch in parallel.py, checkpoints and their
faults in checkpointing.py, the config's checks in config_checks.py. It knows nothing of inference: evaluation is
the `evaluate(config, model, workdir, step, num_overlays)` function the caller hands in (train.py gives it
inference.evaluate.evaluate_run), called every `train.eval_every` steps and at the end.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Protocol

import jax
import ml_collections
import numpy as np
from clu import metrics

from maskprop_jax.data import from_config
from maskprop_jax.errors import EXIT_PREEMPTED, RunError
from maskprop_jax.model import maskprop
from maskprop_jax.training import checkpointing, config_checks, optimizer, parallel, runs
from maskprop_jax.training.state import (build_model, create_train_state, make_train_step, model_of,
                                         with_effective_model)


class Evaluate(Protocol):
  """What the loop calls to evaluate a model: the metrics (flat name -> number) it logs and returns, and images
  (name -> uint8 [N, H, W, 3]) it logs."""

  def __call__(self, config: ml_collections.ConfigDict, model: maskprop.MaskProp, workdir: Path, *, step: int,
               num_overlays: int) -> dict[str, float | np.ndarray]: ...


class NonFiniteLossError(RunError):
  pass


class Preempted(Exception):
  """Training stopped for a preemption notice, after its checkpoint was written: rerun the command to continue.

  train.py exits with EXIT_PREEMPTED (143, as a process ended by SIGTERM) so that a scheduler requeues the job.
  """

  def __init__(self, step: int):
    super().__init__(f"stopped at step {step} for preemption; rerun the same command to continue")
    self.step = step


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
    logging.warning("SIGTERM received: saving a checkpoint, then exiting with code %d", EXIT_PREEMPTED)
    self.requested = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       evaluate: Evaluate | None = None) -> dict[str, float]:
  """Trains (resuming from the latest checkpoint in `workdir` if any), evaluates with `evaluate` (every
  `train.eval_every` steps and at the end; not at all when None), returns the final metrics.

  Nothing is written before the config, the weights it starts from and the data have been checked (InputError).
  Raises Preempted after the checkpoint of a preemption is written, RunError when a checkpoint cannot be saved
  or the loss stops being finite (the checkpoints before stay intact).
  """
  config = parallel.scale_to_devices(config, jax.device_count())
  config_checks.check_config(config, jax.device_count())
  config = with_effective_model(config)  # reads init_from's metadata: InputError if it is not converted weights
  train_iter = from_config.train_iterator(config)
  categories = from_config.categories(config, config.data.train_split)  # every process: it syncs on the data
  model = build_model(config, config.seed)

  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    runs.save_run_config(config, workdir)  # eval.py, the demo and propagation_eval rebuild the model from it
    runs.save_categories(categories, workdir)  # the demo names a run's classes with them
  # clu's writers import TensorFlow (seconds, and its banners): only a run that trains pays for them.
  from clu import metric_writers, periodic_actions  # noqa: PLC0415

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  mesh = parallel.make_mesh()
  num_steps = config.train.num_steps
  learning_rate_fn = optimizer.create_learning_rate_fn(config)
  tx = optimizer.create_optimizer(config, learning_rate_fn)
  graphdef, state = create_train_state(model, config, tx)
  del model

  manager = checkpointing.create_manager(workdir, keep=config.train.keep_checkpoints,
                                         save_every=config.train.checkpoint_every)
  try:
    restored = checkpointing.restore_latest(manager, state, train_iter, set_aside_unreadable=True)
  except BaseException:
    checkpointing.close(manager)
    raise
  if restored is not None:
    state = restored
  state = jax.device_put(state, parallel.replicated(mesh))
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
  saving = False  # a save started and not yet known to have succeeded
  final_metrics: dict[str, float] = {}
  try:
    for step in range(start_step, num_steps):
      batch = parallel.global_batch(next(train_iter), mesh)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, step_metrics = step_fn(state, batch, key)
      if saving:  # a failed save stops the run at the step it is noticed, not at the next save
        saving = not checkpointing.check_saves(manager, wait=False)
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
      saving |= checkpointing.save(manager, step + 1, state, train_iter, force=is_last or stopping)
      if stopping:
        checkpointing.check_saves(manager, wait=True)
        raise Preempted(step + 1)
      if evaluate and config.train.eval_every and (step + 1) % config.train.eval_every == 0 and not is_last:
        final_metrics = _evaluate(evaluate, config, model_of(graphdef, state), workdir, writer, step + 1)
    if pending is not None:
      _check_finite(*pending)
    checkpointing.check_saves(manager, wait=True)
  finally:
    preemption.restore()
    checkpointing.close(manager)
    writer.flush()  # a stopped run's last losses reach the summaries too
  if evaluate:
    final_metrics = _evaluate(evaluate, config, model_of(graphdef, state), workdir, writer, num_steps,
                              num_overlays=config.evaluation.num_overlays)
  writer.flush()
  return final_metrics


def _check_finite(step: int, step_metrics: dict[str, jax.Array]) -> None:
  loss = float(step_metrics["loss"])
  if not np.isfinite(loss):
    parts = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(step_metrics.items()) if k != "loss")
    raise NonFiniteLossError(f"the loss became {loss} at step {step} ({parts}); training stopped, the last "
                             "good checkpoint is kept: lower the learning rate or check the data")


def _evaluate(evaluate: Evaluate, config, model, workdir: Path, writer, step: int,
              num_overlays: int = 0) -> dict[str, float]:
  outputs = evaluate(config, model, workdir, step=step, num_overlays=num_overlays)
  images = {f"eval/{k}": v for k, v in outputs.items() if isinstance(v, np.ndarray) and v.ndim == 4}
  scores = {k: float(v) for k, v in outputs.items() if f"eval/{k}" not in images}
  writer.write_scalars(step, {f"eval/{k}": v for k, v in scores.items()})
  if images:
    writer.write_images(step, images)
  return scores
