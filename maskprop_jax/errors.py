"""The errors a user is meant to read, and how command-line tools report them.

Every reader and validator raises `InputError` with a message that names the file, video, frame or config key at
fault; `RunError` is a run that cannot go on for a reason outside the code (a full disk, a diverged loss), its
message says what to do. Command-line entry points wrap their `main` in `report_errors` (and parse their flags with
`parse_flags`) so that a user sees one paragraph on stderr and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import errno
import functools
import sys
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")

EXIT_ERROR = 2
EXIT_PREEMPTED = 143  # 128 + SIGTERM: what a scheduler sees from a job ended by its preemption notice


class InputError(ValueError):
  """Bad user input (a data set, annotation file, results file, checkpoint, video or config); the message names
  it."""


class RunError(RuntimeError):
  """A run that cannot go on (a full disk, a non-finite loss); the message says what happened and what to do."""


def _program() -> str:
  """The program as the user typed it: `train.py`, or `python -m maskprop_jax.evaluation` for a module."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if spec is not None and spec.name.startswith("maskprop_jax"):
    return "python -m " + spec.name.removesuffix(".__main__")
  return sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "maskprop_jax"


def exit_with_error(message: str) -> None:
  """Prints `<program>: error: <message>` on stderr and exits with code 2."""
  print(f"{_program()}: error: {message}", file=sys.stderr)
  sys.exit(EXIT_ERROR)


def report_errors(main: Callable[..., T]) -> Callable[..., T]:
  """Decorates a CLI `main`: an `InputError`, a `RunError` or a full disk becomes one paragraph on stderr and exit
  code 2."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except (InputError, RunError) as e:
      exit_with_error(str(e))
    except OSError as e:
      if e.errno != errno.ENOSPC:
        raise
      where = f" writing {e.filename}" if e.filename else ""
      exit_with_error(f"no space left on the device{where}: free some space and run the command again")

  return wrapped


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing (`app.run(main, flags_parser=parse_flags)`), where a bad `--config.<key>=<value>`
  override is one line naming the key and what was expected, exit code 2, instead of ml_collections' chained
  tracebacks; any other flag error is one line too. `--help` exits 0."""
  from absl import flags  # noqa: PLC0415 (the evaluator's CLI imports this module and needs no absl)

  asks_for_help = any(arg in ("-h", "-?", "--help", "--helpshort", "--helpfull", "--helpxml") for arg in argv[1:])
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:
    if asks_for_help and e.code == 1:  # absl exits 1 after printing the help a user asked for
      sys.exit(0)
    raise
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    exit_with_error(_config_override_problem(argv) or f"{message} (--help lists the flags)")
  raise AssertionError("unreachable")


def _config_override_problem(argv: Sequence[str]) -> str | None:
  """What is wrong with the first `--config.<path>=<value>` of argv that does not fit the config file: a key it
  does not have, or a value that does not parse as the type of the value it replaces."""
  import ast  # noqa: PLC0415
  import difflib  # noqa: PLC0415

  from ml_collections import config_dict  # noqa: PLC0415

  from maskprop_jax.training import runs  # noqa: PLC0415 (it imports jax, which the evaluator's CLI does without)

  argv = list(argv)
  config_file = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_file is None and "--config" in argv[:-1]:
    config_file = argv[argv.index("--config") + 1]
  if config_file is None:
    return None
  config = runs.load_config_file(config_file)
  for arg in argv:
    if not arg.startswith("--config.") or "=" not in arg:
      continue
    path, value = arg[len("--config."):].split("=", 1)
    node, walked = config, "config"
    for key in path.split("."):
      if not isinstance(node, config_dict.ConfigDict) or key not in node:
        if not isinstance(node, config_dict.ConfigDict):
          return f"--config.{path}: {walked} is a {type(node).__name__}, it has no key {key!r}"
        keys = sorted(node.keys())
        close = difflib.get_close_matches(key, keys, n=1)
        hint = f"did you mean {walked}.{close[0]}? " if close else ""
        return f"--config.{path}: {walked} has no key {key!r} ({hint}its keys: {', '.join(keys)})"
      node, walked = node[key], f"{walked}.{key}"
    if isinstance(node, bool):
      fits = value.lower() in ("true", "false", "1", "0")
    elif isinstance(node, (int, float, tuple, list)):
      try:
        parsed = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        parsed = value
      fits = isinstance(parsed, (int, float) if isinstance(node, float) else type(node))
    else:
      fits = True
    if not fits:
      return f"--config.{path}={value}: expected {_a(type(node).__name__)} like the config's {node!r}"
  return None


def _a(noun: str) -> str:
  return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"
