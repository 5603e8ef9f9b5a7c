"""What a program's log shows: its own messages, the training metrics and progress, and the warnings and errors of
every library; the libraries' INFO chatter (orbax's per-save lines and dict dumps, JAX's backend probing,
TensorFlow's banners) only when `--verbosity` (absl's flag) is 1 or more.

train.py, eval.py and the other absl programs call `configure(FLAGS.verbosity)` first thing in `main`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_PROGRAMS = ("train.py", "eval.py")
# clu's lines a user reads: the losses of each logged step, and the steps/s and ETA of training.
_KEPT_LIBRARY_FILES = ("clu/metric_writers/logging_writer.py", "clu/platform/local.py")


# Warnings a library logs about its own code, which a user can do nothing about: (file, start of the message).
_LIBRARY_SELF_WARNINGS = (
    # tfds' example serializer reads its own deprecated TensorInfo.dtype while it writes records.
    ("tensorflow_datasets/core/features/feature.py", "`TensorInfo.dtype` is deprecated"),
)


class _OwnInfoOnly(logging.Filter):
  """Passes warnings and errors (but a library's warnings about itself), and INFO records from this package, its
  programs and clu's progress lines."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return not any(record.pathname.endswith(path) and str(record.msg).startswith(start)
                     for path, start in _LIBRARY_SELF_WARNINGS)
    path = record.pathname
    return (path.startswith(_PACKAGE_DIR) or Path(path).name in _PROGRAMS
            or any(path.endswith(kept) for kept in _KEPT_LIBRARY_FILES))


def configure(verbosity: int = 0) -> None:
  """Quiets library INFO logs unless verbosity >= 1. Call it before TensorFlow is imported (its C++ banners read
  TF_CPP_MIN_LOG_LEVEL once, at import)."""
  if verbosity >= 1:
    return
  # TensorFlow's banners at import: its CPU-feature INFO line, and the oneDNN notice, which it prints whatever the
  # log level unless oneDNN is off (TensorFlow only reads and writes files here; it computes nothing).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  from absl import logging as absl_logging  # noqa: PLC0415 (the package's argparse programs have no absl)

  import tensorflow_datasets as tfds  # noqa: PLC0415 (imports no TensorFlow by itself)

  # On absl's handler (absl programs: every library's records reach it) and on the `absl` logger (the argparse
  # programs, whose records of absl-logging libraries go to Python's default handler).
  for target in (absl_logging.get_absl_handler(), logging.getLogger("absl")):
    if not any(isinstance(f, _OwnInfoOnly) for f in target.filters):
      target.addFilter(_OwnInfoOnly())
  tfds.disable_progress_bar()  # its bars, written for a terminal, fill a log with escape codes; we log progress
