"""Files the package writes and reads: whole or not at all, and JSON with errors that name the file.

Every output of a program (results, metrics, run configs, converted weights' metadata, overlays, prepared data
sets' metadata) goes through `write_atomically` or `atomic_path`: it is written next to its destination and
renamed over it, so a crash or a full disk never leaves a half-written file where a reader would trust it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from maskprop_jax.errors import InputError

if TYPE_CHECKING:  # the evaluator imports this module, and starts faster without ml_collections
  import ml_collections


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
  """A temporary path beside `path` to write to; it is renamed over `path` when the block ends without error,
  removed otherwise. `suffix` ends its name, for writers that pick a format by suffix (".gif", ".png").
  The folder must exist (InputError otherwise): a mistyped output folder is an error, not a new folder."""
  path = Path(path)
  if not path.parent.is_dir():
    raise InputError(f"{path}: cannot write here (no folder {path.parent})")
  if path.is_dir():
    raise InputError(f"{path}: a folder is in the way of the file")
  # Beside the destination (one file system, so the rename is atomic), a plain file (created with the umask's
  # permissions, unlike mkstemp's 0600).
  tmp = path.with_name(f".{path.name}.partial{suffix}")
  try:
    yield tmp
    os.replace(tmp, path)
  except PermissionError as e:
    raise InputError(f"{path}: cannot write here ({e.strerror})") from None
  finally:
    tmp.unlink(missing_ok=True)


def write_atomically(path: str | os.PathLike, payload: bytes | str | Callable[[Path], None]) -> None:
  """Writes bytes, text, or whatever `payload(tmp_path)` writes, to `path` whole or not at all."""
  with atomic_path(path) as tmp:
    if callable(payload):
      payload(tmp)
    elif isinstance(payload, str):
      tmp.write_text(payload)
    else:
      tmp.write_bytes(payload)


def write_json(path: str | os.PathLike, value: Any, **dump_options: Any) -> None:
  """`value` as a JSON file, written atomically (`dump_options` go to json.dumps, e.g. indent=2)."""
  write_atomically(path, json.dumps(value, **dump_options))


def read_json(path: str | os.PathLike, what: str) -> Any:
  """The parsed content of a JSON file; InputError naming the file (and `what` it should be) otherwise."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      return json.load(f)
  except FileNotFoundError:
    raise InputError(f"{path}: {what} file not found") from None
  except IsADirectoryError:
    raise InputError(f"{path}: a directory, not a {what} file") from None
  except json.JSONDecodeError as e:
    raise InputError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
  except UnicodeDecodeError as e:
    raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
  except OSError as e:
    raise InputError(f"{path}: cannot read the {what} file ({e.strerror})") from None


def _tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def config_from_json(values: dict[str, Any]) -> "ml_collections.ConfigDict":
  """A ConfigDict saved as JSON: JSON turned its tuples into lists, turned back here so that the config hashes and
  compares as the original (model configs are part of jit's static arguments)."""
  import ml_collections  # noqa: PLC0415

  return ml_collections.ConfigDict(_tuples(values))


@dataclasses.dataclass(frozen=True)
class Disk:
  """The file system a path is on, as a user would look it up (`df`): what it is, where, how full."""

  device: str  # e.g. /dev/nvme0n1p1, or tmpfs
  fs_type: str
  mount_point: str
  free: int  # bytes available to this user
  total: int

  def __str__(self) -> str:
    return (f"{self.device} ({self.fs_type}) mounted at {self.mount_point}: {human_bytes(self.free)} free of "
            f"{human_bytes(self.total)}")


def disk_of(path: str | os.PathLike) -> Disk:
  """The disk holding `path` (or, if it does not exist yet, its nearest existing parent)."""
  path = Path(path).absolute()
  while not path.exists() and path != path.parent:
    path = path.parent
  usage = os.statvfs(path)
  mount = path.resolve()
  while not os.path.ismount(mount):
    mount = mount.parent
  device, fs_type = "?", "?"
  with contextlib.suppress(OSError):
    for line in Path("/proc/mounts").read_text().splitlines():  # Linux; elsewhere the mount point alone
      fields = line.split()
      if len(fields) >= 3 and fields[1].replace("\\040", " ") == str(mount):
        device, fs_type = fields[0], fields[2]  # the last entry wins, as in the kernel's view
  return Disk(device, fs_type, str(mount), usage.f_bavail * usage.f_frsize, usage.f_blocks * usage.f_frsize)


def directory_bytes(path: str | os.PathLike) -> int:
  """The bytes of the files under `path` (0 if it does not exist)."""
  return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def human_bytes(n: float) -> str:
  for unit in ("bytes", "KB", "MB", "GB", "TB"):
    if abs(n) < 1000 or unit == "TB":
      return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
    n /= 1000
  raise AssertionError("unreachable")
