"""Two processes on localhost (jax.distributed over CPU collectives) train the tiny config in lockstep."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from tiny_config import prepared_tiny_config, subprocess_env  # noqa: F401 (a fixture)

TESTS_DIR = Path(__file__).parent
NUM_PROCESSES = 2
NUM_STEPS = 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_on_their_own_shards_and_end_with_identical_parameters(prepared_tiny_config, tmp_path):
  config = prepared_tiny_config
  coordinator = f"localhost:{_free_port()}"
  # One CPU device per process; gloo (JAX's default for CPU) carries the gradient all-reduce between them.
  env = dict(subprocess_env(num_devices=1), JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  workers = [
      subprocess.Popen([sys.executable, str(TESTS_DIR / "train_worker.py"), "--data-root", config.data.root,
                        "--tfds-dir", config.data.tfds_dir, "--steps", str(NUM_STEPS),
                        "--out", str(tmp_path / f"process_{i}.npz"), "--coordinator_address", coordinator,
                        "--num_processes", str(NUM_PROCESSES), "--process_id", str(i)],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(NUM_PROCESSES)]
  try:
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
  finally:
    for worker in workers:
      worker.kill()
  for i, (worker, output) in enumerate(zip(workers, outputs)):
    assert worker.returncode == 0, f"process {i}:\n{output[-3000:]}"

  first, second = (dict(np.load(tmp_path / f"process_{i}.npz")) for i in range(NUM_PROCESSES))
  assert first.keys() == second.keys()
  assert len(first["loss/loss"]) == NUM_STEPS and np.all(np.isfinite(first["loss/loss"]))
  for name in first:
    # Bit for bit: both processes hold replicas of the same global computation.
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)
  # The second step sees a new global batch (half from each process), so its loss differs from the first's.
  assert first["loss/loss"][0] != first["loss/loss"][1]
