"""Checkpoints of the train state and the data iterator with orbax: saving that fails loudly and cleanly, restoring
that falls back past unreadable checkpoints and sets them aside.

One checkpoint holds the train state (step, trainable and frozen model state, optimizer state) and the grain
iterator's state, so a resumed run sees exactly the batches an uninterrupted one would have. Saving is
asynchronous; every process takes part, as orbax requires on multi-host runs.

Faults a long run meets, and what happens:
- A checkpoint that cannot be read (a file truncated by a crash or a bad disk): training falls back to the newest
  readable one and renames the unreadable ones to `<step>.corrupt` (kept, never deleted), so that the run can save
  that step again and finish. Programs that only read a run (eval.py, the demo) fall back without renaming.
- A save that fails (a full disk, a lost mount): `SaveError` as soon as the loop asks (`check_saves`, every step),
  naming the disk and the space a checkpoint needs; the partial directory is removed and the checkpoints before it
  stay as they were. A save that cannot fit is refused before anything is written.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from maskprop_jax import files
from maskprop_jax.errors import InputError, RunError

CHECKPOINT_DIR = "checkpoints"  # inside a run's workdir
SET_ASIDE_SUFFIX = ".corrupt"  # an unreadable checkpoint <step> is renamed <step>.corrupt
_PARTIAL_SUFFIX = ".orbax-checkpoint-tmp"  # orbax writes a checkpoint there, then renames it to <step>
_estimated_bytes: dict[str, int] = {}  # checkpoint directory -> the size of its last save, as estimated before it


class SaveError(RunError):
  """A checkpoint could not be written; the message names the disk and what to do."""


def create_manager(workdir: str | Path, *, keep: int, save_every: int) -> ocp.CheckpointManager:
  """The training run's manager: saves every `save_every` steps, keeps the newest `keep`, and removes partial
  checkpoints a crash left behind."""
  _quiet_background_failures()
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                         enable_async_checkpointing=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINT_DIR, options=options)


def open_for_reading(workdir: str | Path) -> ocp.CheckpointManager:
  """A manager that only reads a run's checkpoints (and never touches a save in progress by the run)."""
  _quiet_background_failures()
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # orbax warns that a read-only manager is read-only
  try:
    return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINT_DIR, options=options)
  finally:
    absl_logger.setLevel(level)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any, *, force: bool = False) -> bool:
  """Starts saving when the step is due (or `force`); returns whether a save started.

  SaveError, with nothing written, if the previous save failed or the disk cannot hold this checkpoint.
  """
  if not (force or manager.should_save(step)):
    return False
  check_saves(manager, wait=True)
  _check_space(manager, step, state)
  try:
    return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      data=grain.checkpoint.CheckpointSave(data_iterator)),
                        force=force)
  except (OSError, ValueError) as e:  # the synchronous part of the save (directories, metadata) failed
    raise _save_failed(manager, step, e) from None


def check_saves(manager: ocp.CheckpointManager, *, wait: bool) -> bool:
  """Whether no save is in flight; SaveError if the last one failed. With `wait`, waits for a save in flight."""
  if not wait and manager.is_saving_in_progress():
    return False
  try:
    manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001 (orbax's background threads re-raise whatever failed in them)
    raise _save_failed(manager, None, e) from None
  return True


def close(manager: ocp.CheckpointManager) -> None:
  """Closes the manager after a failure too (its background threads are joined, not left to die at exit)."""
  try:
    manager.close()
  except Exception as e:  # noqa: BLE001 (the failure was reported already; this is the cleanup after it)
    logging.debug("closing the checkpoint manager after a failure: %s", e)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iterator: Any, *,
                   set_aside_unreadable: bool = False) -> Any | None:
  """The newest readable checkpoint's train state (the iterator, if given, is restored in place), or None.

  A checkpoint that cannot be read (a half-written directory after a crash, a corrupted file) is skipped with a
  warning and the one before it is tried; with `set_aside_unreadable` (training), the ones skipped are renamed to
  `<step>.corrupt` once an older one has been read. If none can be read, InputError and nothing renamed:
  starting over silently would overwrite a run whose checkpoints only fail to match this config.
  """
  items = dict(state=ocp.args.StandardRestore(abstract_state))
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = _restore_newest(manager, ocp.args.Composite(**items), set_aside_unreadable)
  return None if restored is None else restored[1].state


def restore_latest_weights(manager: ocp.CheckpointManager, abstract_weights: dict[str, Any]
                           ) -> tuple[int, dict[str, Any]] | None:
  """(step, weights) of the newest readable checkpoint, or None: only the train state's entries named in
  `abstract_weights` (e.g. {"params": ..., "frozen": ...} of shape-dtype structs) are read, never the optimizer
  state, so a program that only runs the model builds and reads no more than the model."""
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_weights)
  args = ocp.args.Composite(state=ocp.args.PyTreeRestore(item=abstract_weights, restore_args=restore_args,
                                                         partial_restore=True))
  restored = _restore_newest(manager, args, set_aside_unreadable=False)
  return None if restored is None else (restored[0], dict(restored[1].state))


def _restore_newest(manager: ocp.CheckpointManager, args: ocp.args.Composite, set_aside_unreadable: bool
                    ) -> tuple[int, Any] | None:
  steps = sorted(manager.all_steps(), reverse=True)
  unreadable: dict[int, Exception] = {}
  for step in steps:
    try:
      restored = manager.restore(step, args=args)
    except Exception as e:  # noqa: BLE001 (orbax raises many types for unreadable checkpoints: any means "skip")
      logging.warning("checkpoint at step %d in %s cannot be read (%s); trying the one before", step,
                      manager.directory, _first_line(e))
      unreadable[step] = e
      continue
    if unreadable and set_aside_unreadable:
      _set_aside(manager, sorted(unreadable))
    logging.info("restored checkpoint at step %d from %s", step, manager.directory)
    return step, restored
  if steps:
    newest = unreadable[steps[0]]
    raise InputError(f"none of the checkpoints in {manager.directory} (steps {', '.join(map(str, steps))}) can be "
                     f"read with this config; the newest failed with {_first_line(newest)}. Use the config the run "
                     f"was started with, or another workdir to start over")
  return None


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Renames unreadable checkpoints to <step>.corrupt (never deletes them: a user may want to look), so that the
  run can write those steps again."""
  if jax.process_index() == 0:
    for step in steps:
      source = Path(manager.directory) / str(step)
      target = source.with_name(f"{step}{SET_ASIDE_SUFFIX}")
      copies = 1
      while target.exists():
        copies += 1
        target = source.with_name(f"{step}{SET_ASIDE_SUFFIX}{copies}")
      source.rename(target)
      logging.warning("the unreadable checkpoint of step %d is set aside as %s; training continues from an "
                      "earlier one", step, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("maskprop_jax checkpoints set aside")
  manager.reload()


def _checkpoint_bytes(manager: ocp.CheckpointManager, state: Any) -> int:
  """About how much one checkpoint takes: the newest one on disk, else the state's arrays (compressed a little
  by orbax) and a margin for metadata."""
  latest = manager.latest_step()
  if latest is not None and (Path(manager.directory) / str(latest)).is_dir():
    return files.directory_bytes(Path(manager.directory) / str(latest))
  return sum(int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(state)
             if hasattr(leaf, "shape")) + (1 << 20)


def _check_space(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  needed = _estimated_bytes[str(manager.directory)] = _checkpoint_bytes(manager, state)
  disk = files.disk_of(manager.directory)
  fits = disk.free >= needed
  if jax.process_count() > 1:  # every process saves its part; all stop or none does
    fits = bool(np.all(multihost_utils.process_allgather(np.asarray(fits))))
  if not fits:
    raise SaveError(_disk_full_message(manager, step, needed, disk, "nothing of it was written"))


def _save_failed(manager: ocp.CheckpointManager, step: int | None, error: Exception) -> SaveError:
  """The SaveError for a failed save, after removing its partial directory."""
  close(manager)  # waits for the writes still in flight, so that nothing writes into what is removed next
  if jax.process_index() == 0:
    for partial in Path(manager.directory).glob(f"*{_PARTIAL_SUFFIX}*"):
      shutil.rmtree(partial, ignore_errors=True)
      if step is None and partial.name.split(".")[0].isdigit():
        step = int(partial.name.split(".")[0])
  what = f"step {step}" if step is not None else "the last step"
  if _is_disk_full(error):
    needed = _estimated_bytes.get(str(manager.directory)) or _checkpoint_bytes(manager, {})
    return SaveError(_disk_full_message(manager, step, needed, files.disk_of(manager.directory),
                                         "its partial files were removed"))
  return SaveError(f"saving the checkpoint of {what} to {manager.directory} failed ({_first_line(error)}); "
                   f"{_kept(manager)}. Fix the cause and rerun the same command to continue")


def _disk_full_message(manager, step, needed: int, disk: files.Disk, partial: str) -> str:
  return (f"no space left for the checkpoint of step {step} in {manager.directory}: it needs about "
          f"{files.human_bytes(needed)}, and the disk is {disk}; {partial}, {_kept(manager)}. Free some space "
          "(or lower config.train.keep_checkpoints) and rerun the same command to continue")


def _kept(manager: ocp.CheckpointManager) -> str:
  steps = [s for s in manager.all_steps() if (Path(manager.directory) / str(s)).is_dir()]
  return (f"the last good checkpoint (step {max(steps)}) is kept" if steps else
          "there is no earlier checkpoint to resume from")


def _is_disk_full(error: BaseException | None) -> bool:
  while error is not None:
    if getattr(error, "errno", None) == 28 or "No space left on device" in str(error):  # ENOSPC
      return True
    error = error.__cause__ or error.__context__
  return False


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  text = text.split(" [tensorstore_spec=")[0].split(" See full TensorStore details")[0]
  return f"{type(error).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


_quieted = False


def _quiet_background_failures() -> None:
  """Keeps orbax's background threads from burying the one message a failure gets.

  When a read or write fails, orbax's threads log it with a traceback each (many, for one failure), asyncio logs
  the futures nobody awaited, the coroutines of the other arrays are collected with their errors unread, and
  tensorstore's callbacks for the reads still in flight hit an event loop already closed ("Event loop is closed",
  hundreds of times). The failure itself reaches the main thread (restore raises,
  `check_saves` raises), which reports it once; this drops the echoes.
  """
  global _quieted
  if _quieted:
    return
  _quieted = True
  for name in ("absl", "asyncio"):
    logging.getLogger(name).addFilter(_drop_background_failure)
  previous_hook = sys.unraisablehook

  def unraisable_hook(unraisable):
    late_callback = (isinstance(unraisable.exc_value, RuntimeError)
                     and str(unraisable.exc_value) == "Event loop is closed")
    code = getattr(unraisable.object, "cr_code", None)  # a coroutine collected with its exception unread
    if late_callback or (code is not None and "/orbax/" in code.co_filename):
      return
    previous_hook(unraisable)

  sys.unraisablehook = unraisable_hook


def _drop_background_failure(record: logging.LogRecord) -> bool:
  if record.name == "asyncio":
    return "exception was never retrieved" not in record.getMessage()
  echo = record.threadName != "MainThread" or record.exc_info is not None  # the main thread re-raises the rest
  return not (record.levelno >= logging.ERROR and echo and "/orbax/" in record.pathname)
