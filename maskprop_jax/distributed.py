"""Joining a multi-host run: jax.distributed.initialize from flags, or auto-detected on TPU pods and SLURM."""

from __future__ import annotations

import logging
import os

import jax


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
