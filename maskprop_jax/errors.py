"""The one error type for bad user input, and how command-line tools report it.

Every reader and validator raises `InputError` with a message that names the file, video or frame at fault.
Command-line entry points wrap their `main` in `report_input_errors` so that a user sees one paragraph on
stderr and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")

EXIT_BAD_INPUT = 2


class InputError(ValueError):
  """Bad user input (a data set, annotation file, results file, checkpoint or video); the message names it."""


def report_input_errors(main: Callable[..., T]) -> Callable[..., T]:
  """Decorates a CLI `main`: an `InputError` becomes one paragraph on stderr and exit code 2."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except InputError as e:
      prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "maskprop_jax"
      print(f"{prog}: error: {e}", file=sys.stderr)
      sys.exit(EXIT_BAD_INPUT)

  return wrapped
