"""Data parallelism over every device of every host: joining a multi-host run, the mesh, the batch.

A Mesh with one `data` axis; the global batch is sharded along it, the model and optimizer state replicated, and
`jax.jit` inserts the gradient all-reduce. Each process feeds its own shard of the data and the per-process
batches are assembled into one global array. With `train.per_device_batch_size` the global batch (and with it
the learning rate and the step counts) follows the number of devices.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def _cluster_detected() -> bool:
  """A multi-process job that jax.distributed.initialize() can configure by itself."""
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return slurm_tasks > 1 or "," in tpu_hosts


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Connects this process to the others; a no-op for a single process on one machine."""
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif _cluster_detected():
    jax.distributed.initialize()
  else:
    return
  logging.info("process %d of %d, %d local and %d global devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def make_mesh() -> Mesh:
  # Auto axes: XLA propagates the batch sharding through the model (no per-op sharding annotations needed).
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec("data"))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the per-process batches into global arrays sharded along the data axis."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


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
  global_batch_size = per_device * num_devices
  reference = config.train.get("reference_batch_size", 0) or global_batch_size
  steps_scale = reference / global_batch_size

  def scaled(steps: int) -> int:
    return max(1, round(steps * steps_scale))

  config.train.global_batch_size = global_batch_size
  config.train.num_steps = scaled(config.train.num_steps)
  config.optimizer.lr = config.optimizer.lr / steps_scale
  config.optimizer.warmup_steps = scaled(config.optimizer.warmup_steps) if config.optimizer.warmup_steps else 0
  config.optimizer.decay_steps = tuple(scaled(step) for step in config.optimizer.decay_steps)
  return config
