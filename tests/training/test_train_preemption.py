"""train.py stopped by SIGTERM mid-run exits 143 after its checkpoint, and rerun continues exactly: the same losses
as an uninterrupted run."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maskprop_jax.errors import EXIT_PREEMPTED
from tiny_config import REPO_ROOT, prepared_tiny_config, subprocess_env  # noqa: F401 (a fixture)

NUM_STEPS = 6
LOSS_NAMES = ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg",
              "loss_propagation", "grad_norm")
# clu's logging writer: "... logging_writer.py:48] [3] clips_per_second=..., loss=5.19, ..."
LOGGED_STEP = re.compile(r"\] \[(\d+)\] .*\bloss=")


def _train_command(config, workdir: Path) -> list[str]:
  return [sys.executable, "train.py", "--config", "tests/tiny_config.py", "--workdir", str(workdir),
          f"--config.data.root={config.data.root}", f"--config.data.tfds_dir={config.data.tfds_dir}",
          f"--config.train.num_steps={NUM_STEPS}", "--config.train.checkpoint_every=1",
          "--config.train.log_every=1"]


def _summaries(workdir: Path) -> dict[str, dict[int, float]]:
  """Every scalar of the TensorBoard files in workdir: name -> {step: value} (later files win); an image is
  recorded as its encoded size."""
  tf = pytest.importorskip("tensorflow")
  values: dict[str, dict[int, float]] = {}
  for path in sorted(workdir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        array = tf.make_ndarray(value.tensor)
        number = float(len(array.flat[-1])) if array.dtype == object else float(array)
        values.setdefault(value.tag, {})[event.step] = number
  return values


def _run_until_sigterm(command: list[str], env: dict[str, str], after_step: int) -> tuple[int, str]:
  """Runs training and sends SIGTERM once it has logged `after_step`; returns its exit code and its log."""
  process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
  log = []
  try:
    for line in process.stdout:
      log.append(line)
      logged = LOGGED_STEP.search(line)
      if logged and int(logged.group(1)) == after_step:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout=600), "".join(log)
  finally:
    process.kill()


def test_sigterm_then_rerun_gives_the_losses_of_an_uninterrupted_run(prepared_tiny_config, tmp_path):
  config = prepared_tiny_config
  # The three runs compile the same programs: the first one's compilations serve the other two.
  env = subprocess_env(compilation_cache=tmp_path / "compilation_cache")
  uninterrupted = subprocess.run(_train_command(config, tmp_path / "uninterrupted") +
                                 ["--config.evaluation.num_overlays=1"], cwd=REPO_ROOT, env=env,
                                 capture_output=True, text=True, timeout=600)
  assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
  # The final evaluation draws the first validation video's tracks.
  assert len(list((tmp_path / "uninterrupted" / "results" / "overlays").glob("*.*"))) == 1

  resumed_workdir = tmp_path / "resumed"
  command = _train_command(config, resumed_workdir)
  returncode, log = _run_until_sigterm(command, env, after_step=2)
  assert returncode == EXIT_PREEMPTED, log[-3000:]  # a scheduler requeues the job instead of recording it done
  stopped = re.search(r"stopped at step (\d+) for preemption", log)
  assert stopped, log[-3000:]
  stopped_at = int(stopped.group(1))
  assert 2 <= stopped_at < NUM_STEPS
  steps_before_rerun = set(_summaries(resumed_workdir)["loss"])
  assert steps_before_rerun == set(range(1, stopped_at + 1))

  rerun = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"restored checkpoint at step {stopped_at}" in rerun.stderr

  expected, actual = _summaries(tmp_path / "uninterrupted"), _summaries(resumed_workdir)
  for name in LOSS_NAMES:
    steps = sorted(expected[name])
    assert steps == list(range(1, NUM_STEPS + 1)) and sorted(actual[name]) == steps, name
    # Same parameters, same batches, same random keys: the same numbers, bit for bit.
    np.testing.assert_array_equal([actual[name][s] for s in steps], [expected[name][s] for s in steps],
                                  err_msg=name)
  # Both runs end with an evaluation of the same final model, its metrics and a picture of each validation video.
  assert expected["eval/AP"] == actual["eval/AP"]
  assert [tag for tag in expected if tag.startswith("eval/overlay/")], sorted(expected)
