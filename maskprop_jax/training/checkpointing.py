"""Checkpoints of the train state and the data iterator with orbax, and restoring with a fallback.

One checkpoint holds the train state (step, trainable and frozen model state, optimizer state) and the grain
iterator's state, so a resumed run sees exactly the batches an uninterrupted one would have. Saving is
asynchronous; every process takes part, as orbax requires on multi-host runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grain
import orbax.checkpoint as ocp

from maskprop_jax.errors import InputError

CHECKPOINT_DIR = "checkpoints"  # inside a run's workdir


def create_manager(workdir: str | Path, *, keep: int, save_every: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINT_DIR, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any, *, force: bool = False) -> bool:
  """Saves when the step is due (or `force`); returns whether a save started."""
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    data=grain.checkpoint.CheckpointSave(data_iterator)),
                      force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iterator: Any) -> Any | None:
  """The newest readable checkpoint's train state (the iterator, if given, is restored in place), or None.

  A checkpoint that cannot be read (a half-written directory after a crash, a corrupted file) is skipped with a
  warning and the one before it is tried. If none can be read, InputError: starting over silently would overwrite
  a run whose checkpoints only fail to match this config.
  """
  items = dict(state=ocp.args.StandardRestore(abstract_state))
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = _restore_newest(manager, ocp.args.Composite(**items))
  return None if restored is None else restored[1].state


def restore_latest_weights(manager: ocp.CheckpointManager, abstract_weights: dict[str, Any]
                           ) -> tuple[int, dict[str, Any]] | None:
  """(step, weights) of the newest readable checkpoint, or None: only the train state's entries named in
  `abstract_weights` (e.g. {"params": ..., "frozen": ...} of shape-dtype structs) are read, never the optimizer
  state, so a program that only runs the model builds and reads no more than the model."""
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_weights)
  args = ocp.args.Composite(state=ocp.args.PyTreeRestore(item=abstract_weights, restore_args=restore_args,
                                                         partial_restore=True))
  restored = _restore_newest(manager, args)
  return None if restored is None else (restored[0], dict(restored[1].state))


def _restore_newest(manager: ocp.CheckpointManager, args: ocp.args.Composite) -> tuple[int, Any] | None:
  steps = sorted(manager.all_steps(), reverse=True)
  newest_error = None
  for step in steps:
    try:
      restored = manager.restore(step, args=args)
    except Exception as e:  # orbax raises many types for unreadable checkpoints; any of them means "skip it"
      logging.warning("checkpoint at step %d in %s cannot be read (%s: %s); trying the one before",
                      step, manager.directory, type(e).__name__, e)
      newest_error = newest_error or e
      continue
    logging.info("restored checkpoint at step %d from %s", step, manager.directory)
    return step, restored
  if steps:
    raise InputError(f"none of the checkpoints in {manager.directory} (steps {', '.join(map(str, steps))}) can be "
                     f"read with this config; the newest failed with {type(newest_error).__name__}: {newest_error}. "
                     "Use the config the run was started with, or another workdir to start over")
  return None
