"""Two processes on localhost (jax.distributed over CPU collectives): lockstep training, and a joint preemption."""

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maskprop_jax.errors import EXIT_PREEMPTED
from tiny_config import REPO_ROOT, prepared_tiny_config, subprocess_env  # noqa: F401 (a fixture)

TESTS_DIR = Path(__file__).parent
NUM_PROCESSES = 2
NUM_STEPS = 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(command: list[str], log: Path) -> subprocess.Popen:
  # gloo (JAX's default for CPU) carries the collectives between the processes, one CPU device each.
  with open(log, "w") as out:
    return subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(num_devices=1), stdout=out,
                            stderr=subprocess.STDOUT, text=True)


def _distributed_flags(coordinator: str, process_id: int) -> list[str]:
  return [f"--coordinator_address={coordinator}", f"--num_processes={NUM_PROCESSES}", f"--process_id={process_id}"]


def _wait_all(processes: list[subprocess.Popen], logs: list[Path], expected_code: int = 0) -> list[str]:
  """Waits for every process; returns their logs, failing with the log of the first that exits otherwise."""
  try:
    for process in processes:
      process.wait(timeout=600)
  finally:
    for process in processes:
      process.kill()
  outputs = [log.read_text() for log in logs]
  for i, (process, output) in enumerate(zip(processes, outputs)):
    assert process.returncode == expected_code, f"process {i} exited with {process.returncode}:\n{output[-3000:]}"
  return outputs


def test_two_processes_train_on_their_own_shards_and_end_with_identical_parameters(prepared_tiny_config, tmp_path):
  config = prepared_tiny_config
  coordinator = f"localhost:{_free_port()}"
  logs = [tmp_path / f"process_{i}.log" for i in range(NUM_PROCESSES)]
  processes = [
      _start([sys.executable, str(TESTS_DIR / "train_worker.py"), "--data-root", config.data.root,
              "--tfds-dir", config.data.tfds_dir, "--steps", str(NUM_STEPS),
              "--out", str(tmp_path / f"process_{i}.npz"), *_distributed_flags(coordinator, i)], logs[i])
      for i in range(NUM_PROCESSES)]
  _wait_all(processes, logs)

  first, second = (dict(np.load(tmp_path / f"process_{i}.npz")) for i in range(NUM_PROCESSES))
  assert first.keys() == second.keys()
  assert len(first["loss/loss"]) == NUM_STEPS and np.all(np.isfinite(first["loss/loss"]))
  for name in first:
    # Bit for bit: both processes hold replicas of the same global computation.
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)
  # The second step sees a new global batch (half from each process), so its loss differs from the first's.
  assert first["loss/loss"][0] != first["loss/loss"][1]


def test_sigterm_to_every_process_stops_them_together_with_one_checkpoint(prepared_tiny_config, tmp_path):
  config = prepared_tiny_config
  coordinator = f"localhost:{_free_port()}"
  workdir = tmp_path / "workdir"
  logs = [tmp_path / f"process_{i}.log" for i in range(NUM_PROCESSES)]
  processes = [
      _start([sys.executable, "train.py", "--config", "tests/tiny_config.py", "--workdir", str(workdir),
              f"--config.data.root={config.data.root}", f"--config.data.tfds_dir={config.data.tfds_dir}",
              "--config.train.num_steps=200", "--config.train.checkpoint_every=1000", "--config.train.log_every=1",
              *_distributed_flags(coordinator, i)], logs[i])
      for i in range(NUM_PROCESSES)]
  deadline = time.monotonic() + 600
  try:
    while not re.search(r"\] \[2\] .*\bloss=", logs[0].read_text()):
      if processes[0].poll() is not None or time.monotonic() > deadline:
        pytest.fail(f"process 0 did not log step 2:\n{logs[0].read_text()[-3000:]}")
      time.sleep(0.2)
    # A scheduler preempts every host; JAX's preemption service picks the step at which they all save and stop.
    for process in processes:
      process.send_signal(signal.SIGTERM)
    outputs = _wait_all(processes, logs, expected_code=EXIT_PREEMPTED)  # every one asks to be requeued
  finally:
    for process in processes:
      process.kill()

  stopped = [re.search(r"stopped at step (\d+) for preemption", output) for output in outputs]
  assert all(stopped), outputs[0][-3000:]
  steps = {int(match.group(1)) for match in stopped}
  assert len(steps) == 1 and 2 <= steps.pop() < 200
  saved = {int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()}
  assert int(stopped[0].group(1)) in saved
