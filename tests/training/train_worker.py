"""A training process the distributed tests start: a few train steps of the tiny config, results to a file.

    python tests/training/train_worker.py --data-root D --tfds-dir T --steps N --out FILE.npz
        [--batch BATCH.npz] [--coordinator_address host:port --num_processes P --process_id I]

Without --batch it trains on this process's shard of the tiny config's training data (each process of a
multi-process run reads its own); with --batch it trains every step on that one global batch. The device count
comes from the environment (XLA_FLAGS=--xla_force_host_platform_device_count=N). FILE.npz holds the losses of
every step (`loss/<name>`, [steps]) and this process's copy of the final trainable parameters (`param/<path>`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from maskprop_jax.data import from_config
from maskprop_jax.training import optimizer, parallel
from maskprop_jax.training.state import build_model, create_train_state, make_train_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, where tiny_config lives
import tiny_config  # noqa: E402


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-root", required=True)
  parser.add_argument("--tfds-dir", required=True)
  parser.add_argument("--steps", type=int, required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--batch", help="a global batch (npz) to train every step on, instead of the data")
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  return parser.parse_args()


def _local_copy(x: jax.Array) -> np.ndarray:
  """This process's copy of a replicated array."""
  return np.asarray(x.addressable_data(0))


def main() -> None:
  args = _parse_args()
  parallel.initialize(args.coordinator_address, args.num_processes, args.process_id)
  config = tiny_config.get_config()
  config.data.root, config.data.tfds_dir = args.data_root, args.tfds_dir

  mesh = parallel.make_mesh()
  learning_rate_fn = optimizer.create_learning_rate_fn(config)
  tx = optimizer.create_optimizer(config, learning_rate_fn)
  graphdef, state = create_train_state(build_model(config, config.seed), config, tx)
  state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
  step_fn = make_train_step(graphdef, tx, learning_rate_fn, mesh)
  key = jax.random.key(config.seed)

  if args.batch:
    with np.load(args.batch) as saved:
      fixed = dict(saved)
    batches = iter(lambda: fixed, None)
  else:
    batches = from_config.train_iterator(config)
  losses: dict[str, list[float]] = {}
  for _ in range(args.steps):
    state, step_metrics = step_fn(state, parallel.global_batch(next(batches), mesh), key)
    for name, value in step_metrics.items():
      losses.setdefault(name, []).append(float(_local_copy(value)))

  arrays = {f"loss/{name}": np.asarray(values) for name, values in losses.items()}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    arrays[f"param/{jax.tree_util.keystr(path)}"] = _local_copy(leaf)
  np.savez(args.out, **arrays)


if __name__ == "__main__":
  main()
