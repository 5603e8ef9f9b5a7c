"""Training step time of a config: milliseconds per step on real batches, compilation apart.

    python -m maskprop_jax.training.bench --config configs/synthetic.py [--steps 20] [--config.key=value ...]

Builds the model, optimizer and train step exactly as train.py does (training/state.py, the data mesh over every
device), draws --steps + 1 batches from the config's training pipeline before any timing (so the input pipeline
is not timed; its own speed is `python -m maskprop_jax.data.bench`), runs one step to compile, then times each
of the next --steps steps to completion (block_until_ready). Prints one table row: compile seconds, median, p10
and p90 milliseconds per step, clips per second, and the memory a device holds during a step (XLA's accounting of
the compiled step: state, batch, outputs and temporaries; what `data.num_ref_frames` and the batch size cost). The data set is prepared on first use, as train.py does.
Comparing two versions of the code: run this file by path with PYTHONPATH set to each checkout, alternately.

    python -m maskprop_jax.training.bench --config configs/synthetic.py --profile [--steps 20]

instead prints where a step's time goes: milliseconds per step per model part (backbone, fpn, rpn, roi_heads.*,
propagation.*, optimizer), forward and backward apart, from a profiler trace of --steps steps
(training/profile.py; the parts sum to the measured step, the time outside any HLO instruction its own row).
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from maskprop_jax import logs
from maskprop_jax.data import from_config
from maskprop_jax.errors import parse_flags
from maskprop_jax.training import config_checks, optimizer, parallel, profile
from maskprop_jax.training.state import build_model, create_train_state, make_train_step, with_effective_model

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
flags.DEFINE_integer("steps", 20, "Timed steps (after one compiling step); traced steps with --profile.")
flags.DEFINE_boolean("profile", False, "Print milliseconds per step per model part (a profiler trace) instead.")
flags.mark_flags_as_required(["config"])


def _train_step(config, num_batches: int):
  """(jitted train step, train state, num_batches global batches, key) of config, as train.py builds them."""
  config = parallel.scale_to_devices(config, jax.device_count())
  config_checks.check_config(config, jax.device_count())
  config = with_effective_model(config)
  mesh = parallel.make_mesh()
  train_iter = from_config.train_iterator(config)
  batches = [parallel.global_batch(next(train_iter), mesh) for _ in range(num_batches)]
  learning_rate_fn = optimizer.create_learning_rate_fn(config)
  tx = optimizer.create_optimizer(config, learning_rate_fn)
  graphdef, state = create_train_state(build_model(config, config.seed), config, tx)
  state = jax.device_put(state, parallel.replicated(mesh))
  step_fn = make_train_step(graphdef, tx, learning_rate_fn, mesh)
  return step_fn, state, batches, jax.random.key(config.seed)


def step_memory_bytes(step_fn, state, batch, key) -> int | None:
  """Bytes a device holds while the compiled step runs, by XLA's own accounting: its arguments (parameters,
  optimizer state, batch), outputs and temporaries, less the outputs that reuse donated arguments. None where the
  backend does not report it."""
  stats = step_fn.lower(state, batch, key).compile().memory_analysis()
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
             - stats.alias_size_in_bytes)


def step_times(config, num_steps: int) -> tuple[float, list[float], int | None]:
  """(compile seconds, seconds of each of num_steps steps, step_memory_bytes) of config's train step on its own
  batches."""
  step_fn, state, batches, key = _train_step(config, num_steps + 1)
  start = time.perf_counter()  # compile seconds: the step's compilation (once, for its memory too) and first run
  memory = step_memory_bytes(step_fn, state, batches[0], key)
  state, _ = jax.block_until_ready(step_fn(state, batches[0], key))
  compile_seconds = time.perf_counter() - start
  seconds = []
  for batch in batches[1:]:
    start = time.perf_counter()
    state, _ = jax.block_until_ready(step_fn(state, batch, key))
    seconds.append(time.perf_counter() - start)
  return compile_seconds, seconds, memory


def step_profile(config, num_steps: int) -> list[profile.Row]:
  """profile.profile_breakdown of config's train step by model part, over num_steps steps (one batch each)."""
  step_fn, state, batches, key = _train_step(config, num_steps + 1)
  later = iter(batches[1:] + batches[:1])  # after the warm-up call and after each traced one (the last unused)
  # The step donates its state: each call gets the state the previous one returned, and the next batch.
  return profile.profile_breakdown(step_fn, (state, batches[0], key), steps=num_steps, group=profile.model_parts,
                                   next_args=lambda args, out: (out[0], next(later), key))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logs.configure(FLAGS.verbosity)
  config = FLAGS.config
  if FLAGS.profile:
    print(profile.format_table(step_profile(config, FLAGS.steps), title="part of a train step"))
    return
  compile_seconds, seconds, memory = step_times(config, FLAGS.steps)
  ms = 1000 * np.asarray(seconds)
  print(f"{'devices':>8s} {'batch':>6s} {'compile s':>10s} {'median ms':>10s} {'p10 ms':>8s} {'p90 ms':>8s} "
        f"{'clips/s':>8s} {'step MiB/device':>16s}")
  median = statistics.median(ms)
  memory_text = "-" if memory is None else f"{memory / 2**20:.0f}"
  print(f"{jax.device_count():8d} {config.train.global_batch_size:6d} {compile_seconds:10.1f} {median:10.1f} "
        f"{np.percentile(ms, 10):8.1f} {np.percentile(ms, 90):8.1f} "
        f"{1000 * config.train.global_batch_size / median:8.2f} {memory_text:>16s}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
