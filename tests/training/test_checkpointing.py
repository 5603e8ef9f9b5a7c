"""Checkpoints of a train state and a grain iterator: round trip, and falling back past an unreadable one."""

import logging

import grain
import numpy as np
import pytest

from maskprop_jax.training import checkpointing
from maskprop_jax.errors import InputError


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


def _restore(workdir):
  manager = checkpointing.create_manager(workdir, keep=5, save_every=1)
  iterator = _iterator()
  state = checkpointing.restore_latest(manager, _state(0), iterator)
  manager.close()
  return state, iterator


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
  state_files = [p for p in (tmp_path / "checkpoints" / "2" / "state").rglob("*") if p.is_file()]
  assert state_files
  for path in state_files:
    if damage == "truncate":
      path.write_bytes(b"\x00garbage")
    else:
      path.unlink()

  with caplog.at_level(logging.WARNING):
    state, iterator = _restore(tmp_path)
  assert int(state["step"]) == 1
  np.testing.assert_array_equal(state["params"]["kernel"], np.full((3, 2), 1.0))
  assert next(iterator) == next_elements[0]
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("step 2" in message and "cannot be read" in message for message in warnings), warnings


def test_checkpoints_that_do_not_fit_the_state_raise_instead_of_starting_over(tmp_path):
  _save_steps(tmp_path, [1, 2])
  manager = checkpointing.create_manager(tmp_path, keep=5, save_every=1)
  other_model = {"step": np.asarray(0, np.int32), "params": {"weights": np.zeros((4,), np.float32)}}
  with pytest.raises(InputError, match=r"none of the checkpoints in .*checkpoints \(steps 2, 1\) can be read"):
    checkpointing.restore_latest(manager, other_model, _iterator())
  manager.close()
