"""Faults a long run meets, each ending cleanly: an unreadable checkpoint set aside and the run finished as if
uninterrupted, a full disk during a save (one line, exit 2, nothing partial, resumable), every checkpoint
unreadable for eval.py, and config mistakes refused before anything is written."""

import math
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from maskprop_jax import files
from maskprop_jax.errors import InputError
from maskprop_jax.training import checkpointing, loop, optimizer
from maskprop_jax.training.state import build_model, create_train_state
from tiny_config import (REPO_ROOT, fast_compilation, prepared_tiny_config,  # noqa: F401 (fixtures)
                         subprocess_env)

pytestmark = pytest.mark.usefixtures("fast_compilation")

NUM_STEPS = 4


def _config(prepared):
  config = prepared.copy_and_resolve_references()
  config.train.update(dict(num_steps=NUM_STEPS, checkpoint_every=2, keep_checkpoints=5))
  return config


@pytest.fixture(scope="module")
def uninterrupted(prepared_tiny_config, tmp_path_factory):
  """A finished run of NUM_STEPS steps (read-only: copy it); orbax saves step 1 (its first), 2 and 4."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  loop.train_and_evaluate(_config(prepared_tiny_config), workdir)
  return workdir


def _leaves(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _final_state(config, workdir) -> dict[str, np.ndarray]:
  """Every array of the newest checkpoint's train state (parameters, optimizer state, step)."""
  tx = optimizer.create_optimizer(config, optimizer.create_learning_rate_fn(config))
  abstract = create_train_state(build_model(config, config.seed), config, tx)[1]
  manager = checkpointing.open_for_reading(workdir)
  try:
    return _leaves(checkpointing.restore_latest(manager, abstract, data_iterator=None))
  finally:
    checkpointing.close(manager)


def _truncate(workdir, step: int) -> None:
  for path in (workdir / "checkpoints" / str(step) / "state").rglob("*"):
    if path.is_file():
      path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("stopped_at", [NUM_STEPS, 2], ids=["final_step", "middle_step"])
def test_an_unreadable_newest_checkpoint_is_set_aside_and_the_rerun_ends_as_an_uninterrupted_run(
    prepared_tiny_config, uninterrupted, tmp_path, stopped_at):
  config = _config(prepared_tiny_config)
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  for step in range(stopped_at + 1, NUM_STEPS + 1):  # a run stopped at `stopped_at`: no later checkpoints
    shutil.rmtree(workdir / "checkpoints" / str(step), ignore_errors=True)
  _truncate(workdir, stopped_at)

  loop.train_and_evaluate(config, workdir)  # before: StepAlreadyExistsError when it reached stopped_at again

  checkpoints = workdir / "checkpoints"
  assert (checkpoints / f"{stopped_at}.corrupt" / "state").is_dir()  # kept for a look, never deleted
  assert (checkpoints / str(NUM_STEPS)).is_dir()
  expected, actual = _final_state(config, uninterrupted), _final_state(config, workdir)
  assert actual.keys() == expected.keys()
  for name, value in expected.items():  # same batches, same keys: the same numbers, bit for bit
    np.testing.assert_array_equal(actual[name], value, err_msg=name)


def _clean_error(result: subprocess.CompletedProcess, program: str) -> str:
  """The one error line of a failed program, after checking it ended as an error should: exit 2, no traceback
  of the main thread or of a background one."""
  assert result.returncode == 2, result.stderr[-3000:]
  for noise in ("Traceback", "Event loop is closed", "Exception ignored", "never retrieved"):
    assert noise not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"{program}: error: "), result.stderr[-3000:]
  return last


def test_eval_of_a_run_whose_checkpoints_are_all_unreadable_ends_in_one_paragraph(
    prepared_tiny_config, uninterrupted, tmp_path):
  config = prepared_tiny_config
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  for step in (1, 2, 4):
    _truncate(workdir, step)
  result = subprocess.run([sys.executable, "eval.py", "--config", "tests/tiny_config.py", "--workdir", str(workdir),
                           f"--config.data.root={config.data.root}", f"--config.data.tfds_dir={config.data.tfds_dir}"],
                          cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  error = _clean_error(result, "eval.py")
  assert "none of the checkpoints in" in error and "(steps 4, 2, 1) can be read" in error
  assert len(result.stderr.splitlines()) < 100, result.stderr  # before: 20,000 lines of thread tracebacks


def _train_command(config, workdir, *extra: str) -> list[str]:
  return [sys.executable, "train.py", "--config", "tests/tiny_config.py", "--workdir", str(workdir),
          f"--config.data.root={config.data.root}", f"--config.data.tfds_dir={config.data.tfds_dir}",
          f"--config.train.num_steps={NUM_STEPS}", "--config.train.checkpoint_every=2", *extra]


@pytest.mark.parametrize("override, devices, expected", [
    ("--config.train.chekpoint_every=5", 1, "--config.train.chekpoint_every: config.train has no key 'chekpoint_every' "
     "(did you mean config.train.checkpoint_every?"),
    ("--config.train.num_steps=ten", 1, "--config.train.num_steps=ten: expected an int like the config's 4"),
    ("--config.train.global_batch_size=6", 4, "config.train.global_batch_size=6: expected a multiple of the 4 "
     "devices"),
], ids=["unknown_key", "wrong_type", "batch_split"])
def test_config_mistakes_on_the_command_line_are_one_line_and_nothing_is_written(prepared_tiny_config, tmp_path,
                                                                               override, devices, expected):
  workdir = tmp_path / "run"
  result = subprocess.run(_train_command(prepared_tiny_config, workdir, override), cwd=REPO_ROOT,
                          env=subprocess_env(num_devices=devices), capture_output=True, text=True, timeout=600)
  assert expected in _clean_error(result, "train.py")
  assert not workdir.exists()  # no config.json, no events file


@pytest.mark.parametrize("key, value, expected", [
    ("optimizer.lr", -0.1, "config.optimizer.lr=-0.1: expected a number > 0"),
    ("optimizer.schedule", "cosin", "config.optimizer.schedule='cosin': expected one of 'step', 'cosine', "
     "'constant'"),
    ("model.compute_dtype", "float16", "config.model.compute_dtype='float16': expected one of 'float32', "
     "'bfloat16'"),
    ("model.init_from", "{tmp}/no_weights", "no_weights: not a parameter directory"),
    ("model.propagation.upsample", 3, "config.model cannot be built: propagation.upsample=3 must be a positive "
     "divisor"),
    ("data.val_split", "test", "config.data.val_split='test': config.data.annotations has no entry for it"),
], ids=["out_of_range", "choice", "compute_dtype", "init_from", "model", "split"])
def test_config_mistakes_stop_the_run_before_anything_is_written(prepared_tiny_config, tmp_path, key, value,
                                                                 expected):
  config = _config(prepared_tiny_config)
  section, name = key.rsplit(".", 1)
  config_section = config
  for part in section.split("."):
    config_section = config_section[part]
  config_section[name] = value.format(tmp=tmp_path) if isinstance(value, str) else value
  with pytest.raises(InputError) as error:
    loop.train_and_evaluate(config, tmp_path / "run")
  assert expected in str(error.value)
  assert not (tmp_path / "run").exists()


def _private_tmpfs_available(mount_point) -> bool:
  """Whether this machine lets a process mount a tmpfs in a mount namespace of its own (root, or user namespaces)."""
  if shutil.which("unshare") is None:
    return False
  probe = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"]) + [
      "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mount_point}"]
  return subprocess.run(probe, capture_output=True).returncode == 0


def test_a_full_disk_stops_training_with_one_line_and_the_run_resumes_once_there_is_room(
    prepared_tiny_config, uninterrupted, tmp_path):
  """On a tmpfs that holds one checkpoint and not two: the save of step 2 is refused before it starts (its size is
  known from step 1's); with the space check faked away, the real write fails with ENOSPC in orbax's threads and is
  reported the same way; after the disk grows, rerunning continues from step 1 and finishes."""
  disk = tmp_path / "disk"
  disk.mkdir()
  if not _private_tmpfs_available(disk):
    pytest.skip("cannot mount a tmpfs here (needs root or user namespaces)")
  config = prepared_tiny_config
  checkpoint_mb = files.directory_bytes(uninterrupted / "checkpoints" / "2") / 1e6
  small_mb = math.ceil(1.6 * checkpoint_mb)
  train = " ".join(_train_command(config, disk / "run"))
  # train.py with the space check before each save disabled, so that the save itself runs out of space.
  without_space_check = train.replace("train.py", "-c 'import runpy, sys; sys.argv = sys.argv[1:]; "
                                      "from maskprop_jax.training import checkpointing; "
                                      "checkpointing._check_space = lambda *args: None; "
                                      "runpy.run_path(sys.argv[0], run_name=\"__main__\")' train.py", 1)
  out = tmp_path / "out"
  out.mkdir()
  script = textwrap.dedent(f"""\
      mount -t tmpfs -o size={small_mb}m tmpfs {disk}
      {train} > {out}/refused.log 2>&1; echo $? > {out}/refused.rc
      ls {disk}/run/checkpoints > {out}/refused.ls
      rm -rf {disk}/run
      {without_space_check} > {out}/failed.log 2>&1; echo $? > {out}/failed.rc
      ls {disk}/run/checkpoints > {out}/failed.ls
      mount -o remount,size={4 * small_mb}m {disk}
      {train} > {out}/resumed.log 2>&1; echo $? > {out}/resumed.rc
      ls {disk}/run/checkpoints > {out}/resumed.ls
      """)
  unshare = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
  subprocess.run(unshare + ["sh", "-c", script], cwd=REPO_ROOT, timeout=900,
                 env=subprocess_env(compilation_cache=tmp_path / "compilation_cache"))

  def outcome(name):
    stderr = (out / f"{name}.log").read_text()
    result = subprocess.CompletedProcess([], int((out / f"{name}.rc").read_text()), "", stderr)
    return result, (out / f"{name}.ls").read_text().split()

  for name, what in (("refused", "nothing of it was written"), ("failed", "its partial files were removed")):
    result, checkpoints = outcome(name)
    error = _clean_error(result, "train.py")
    assert error.startswith("train.py: error: no space left for the checkpoint of step 2 in "), error
    assert f"tmpfs (tmpfs) mounted at {disk}" in error and f"{what}, the last good checkpoint (step 1) is kept" in error
    assert checkpoints == ["1"]  # no partial directory
  result, checkpoints = outcome("resumed")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "restored checkpoint at step 1" in result.stderr
  assert "4" in checkpoints


def test_eval_of_a_workdir_without_a_checkpoint_is_an_error_unless_initial_weights_are_asked_for(
    prepared_tiny_config, tmp_path):
  config = prepared_tiny_config
  command = [sys.executable, "eval.py", "--config", "tests/tiny_config.py", "--workdir", str(tmp_path / "empty"),
             f"--config.data.root={config.data.root}", f"--config.data.tfds_dir={config.data.tfds_dir}"]
  result = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  error = _clean_error(result, "eval.py")  # before: scored random weights and exited 0
  assert "no checkpoint in" in error and "--initial_weights" in error
  assert not (tmp_path / "empty").exists()
