"""Checkpoints of a train state and a grain iterator: round trip, falling back past an unreadable one (and setting
it aside), and saves that fail for want of space reported once, cleanly."""

import logging

import grain
import numpy as np
import pytest

from maskprop_jax import files
from maskprop_jax.errors import InputError
from maskprop_jax.training import checkpointing


def _iterator():
  return iter(grain.MapDataset.range(100).shuffle(seed=3).to_iter_dataset())


def _state(step: int) -> dict[str, np.ndarray]:
  return {"step": np.asarray(step, np.int32), "params": {"kernel": np.full((3, 2), float(step), np.float32)}}


def _save_steps(workdir, steps) -> list[int]:
  """Saves a checkpoint after each step; returns the element the iterator yields after every saved step."""
  iterator = _iterator()
  manager = checkpointing.create_manager(workdir, keep=5, save_every=1)
  next_elements = []
  for step in steps:
    next(iterator)
    assert checkpointing.save(manager, step, _state(step), iterator)
    manager.wait_until_finished()
    # The element after this checkpoint, read from a copy so the saved position stays where it is.
    probe = _iterator()
    probe.set_state(iterator.get_state())
    next_elements.append(next(probe))
  manager.close()
  return next_elements


def _restore(workdir, set_aside_unreadable=False):
  manager = checkpointing.create_manager(workdir, keep=5, save_every=1)
  iterator = _iterator()
  state = checkpointing.restore_latest(manager, _state(0), iterator, set_aside_unreadable=set_aside_unreadable)
  manager.close()
  return state, iterator


def _damage(workdir, step: int, how: str = "truncate") -> None:
  state_files = [p for p in (workdir / "checkpoints" / str(step) / "state").rglob("*") if p.is_file()]
  assert state_files
  for path in state_files:
    if how == "truncate":
      path.write_bytes(b"\x00garbage")
    else:
      path.unlink()


def _step_dirs(workdir) -> list[str]:
  return sorted(p.name for p in (workdir / "checkpoints").iterdir())


def test_restore_latest_returns_the_newest_state_and_repositions_the_iterator(tmp_path):
  next_elements = _save_steps(tmp_path, [1, 2, 3])
  state, iterator = _restore(tmp_path)
  assert int(state["step"]) == 3
  np.testing.assert_array_equal(state["params"]["kernel"], np.full((3, 2), 3.0))
  assert next(iterator) == next_elements[-1]


def test_restore_latest_without_checkpoints_returns_none(tmp_path):
  state, _ = _restore(tmp_path)
  assert state is None


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_unreadable_latest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog, damage):
  next_elements = _save_steps(tmp_path, [1, 2])
  _damage(tmp_path, 2, damage)

  with caplog.at_level(logging.WARNING):
    state, iterator = _restore(tmp_path)
  assert int(state["step"]) == 1
  np.testing.assert_array_equal(state["params"]["kernel"], np.full((3, 2), 1.0))
  assert next(iterator) == next_elements[0]
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("step 2" in message and "cannot be read" in message for message in warnings), warnings
  assert all(len(message) < 600 for message in warnings)  # the error's first line, not a TensorStore spec dump
  assert _step_dirs(tmp_path) == ["1", "2"]  # a program that only reads a run leaves it as it is


def test_training_sets_unreadable_checkpoints_aside_so_their_steps_can_be_saved_again(tmp_path, caplog):
  _save_steps(tmp_path, [1, 2, 3])
  _damage(tmp_path, 3)
  _damage(tmp_path, 2)
  (tmp_path / "checkpoints" / "3.corrupt").mkdir()  # set aside by an earlier rerun: never overwritten

  with caplog.at_level(logging.WARNING):
    state, _ = _restore(tmp_path, set_aside_unreadable=True)
  assert int(state["step"]) == 1
  assert _step_dirs(tmp_path) == ["1", "2.corrupt", "3.corrupt", "3.corrupt2"]
  assert any("set aside as" in r.getMessage() for r in caplog.records)
  manager = checkpointing.create_manager(tmp_path, keep=5, save_every=1)
  assert manager.all_steps() == [1]
  assert checkpointing.save(manager, 2, _state(2), _iterator(), force=True)  # the step the corrupt one had
  manager.wait_until_finished()
  manager.close()
  assert _restore(tmp_path)[0]["step"] == 2


def test_when_no_checkpoint_can_be_read_nothing_is_set_aside(tmp_path):
  _save_steps(tmp_path, [1, 2])
  _damage(tmp_path, 1)
  _damage(tmp_path, 2)
  with pytest.raises(InputError, match=r"none of the checkpoints .* \(steps 2, 1\) can be read"):
    _restore(tmp_path, set_aside_unreadable=True)
  assert _step_dirs(tmp_path) == ["1", "2"]


def test_a_save_the_disk_cannot_hold_is_refused_before_anything_is_written(tmp_path, monkeypatch):
  _save_steps(tmp_path, [1])
  checkpoint_bytes = files.directory_bytes(tmp_path / "checkpoints" / "1")
  full = files.Disk("/dev/full0", "ext4", "/mnt/runs", free=checkpoint_bytes // 2, total=10 * checkpoint_bytes)
  monkeypatch.setattr(files, "disk_of", lambda path: full)
  manager = checkpointing.create_manager(tmp_path, keep=5, save_every=1)
  with pytest.raises(checkpointing.SaveError) as error:
    checkpointing.save(manager, 2, _state(2), _iterator())
  message = str(error.value)
  assert message.startswith("no space left for the checkpoint of step 2 in ")
  assert "/dev/full0 (ext4) mounted at /mnt/runs" in message and files.human_bytes(checkpoint_bytes) in message
  assert "nothing of it was written, the last good checkpoint (step 1) is kept" in message
  checkpointing.close(manager)
  assert _step_dirs(tmp_path) == ["1"]


def test_a_save_that_fails_in_the_background_is_reported_once_and_its_partial_files_removed(tmp_path, monkeypatch):
  _save_steps(tmp_path, [1, 2])
  manager = checkpointing.create_manager(tmp_path, keep=5, save_every=1)
  partial = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp" / "state"
  partial.mkdir(parents=True)
  (partial / "chunk").write_bytes(b"half")

  def failed_write():  # what orbax re-raises from its thread when tensorstore's write hit ENOSPC
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "params.kernel/0": Failed to write 4096 bytes to file 6: '
                     "No space left on device")

  monkeypatch.setattr(manager, "wait_until_finished", failed_write)
  with pytest.raises(checkpointing.SaveError) as error:
    checkpointing.check_saves(manager, wait=True)
  message = str(error.value)
  assert message.startswith("no space left for the checkpoint of step 3 in ")
  assert f"mounted at {files.disk_of(tmp_path).mount_point}" in message
  assert "its partial files were removed, the last good checkpoint (step 2) is kept" in message
  assert _step_dirs(tmp_path) == ["1", "2"]
  assert int(_restore(tmp_path)[0]["step"]) == 2


def test_checkpoints_that_do_not_fit_the_state_raise_instead_of_starting_over(tmp_path):
  _save_steps(tmp_path, [1, 2])
  manager = checkpointing.create_manager(tmp_path, keep=5, save_every=1)
  other_model = {"step": np.asarray(0, np.int32), "params": {"weights": np.zeros((4,), np.float32)}}
  with pytest.raises(InputError, match=r"none of the checkpoints in .*checkpoints \(steps 2, 1\) can be read"):
    checkpointing.restore_latest(manager, other_model, _iterator())
  manager.close()


def test_partial_checkpoints_left_by_a_crash_are_removed_when_training_resumes(tmp_path):
  _save_steps(tmp_path, [1])
  for step in (2, 3):  # kill -9 in the middle of a save (asynchronous saves can overlap a step)
    partial = tmp_path / "checkpoints" / f"{step}.orbax-checkpoint-tmp" / "state"
    partial.mkdir(parents=True)
    (partial / "chunk").write_bytes(b"half")
  manager = checkpointing.create_manager(tmp_path, keep=5, save_every=1)
  assert manager.all_steps() == [1]
  assert checkpointing.save(manager, 2, _state(2), _iterator())
  assert checkpointing.check_saves(manager, wait=True)
  manager.close()
  assert _step_dirs(tmp_path) == ["1", "2"]
