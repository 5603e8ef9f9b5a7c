"""A run's configuration on disk: config files (configs/*.py) and the config.json that train.py leaves in its workdir.

Tools that work on a finished run (the demo, propagation_eval) need the exact configuration it trained with;
train.py writes it to `<workdir>/config.json`, and `load_run_config` reads it back.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import ml_collections

from maskprop_jax.errors import InputError

CONFIG_FILE = "config.json"


def load_config_file(path: str | os.PathLike[str]) -> ml_collections.ConfigDict:
  """`get_config()` of a config file such as configs/synthetic.py."""
  path = Path(path)
  if not path.is_file():
    raise InputError(f"{path}: config file not found")
  spec = importlib.util.spec_from_file_location(f"maskprop_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  # configs/*.py import their shared defaults as `configs.default`, which needs the folder above configs/ on the
  # import path: train.py has it as the script's folder, a tool run from elsewhere does not.
  root = str(path.resolve().parent.parent) if path.resolve().parent.name == "configs" else None
  added = root is not None and root not in sys.path
  if added:
    sys.path.insert(0, root)
  try:
    spec.loader.exec_module(module)
  except ImportError as e:
    raise InputError(f"{path}: cannot be loaded ({e})") from e
  except SyntaxError as e:
    raise InputError(f"{path}: not a valid Python config file ({e})") from e
  finally:
    if added:
      sys.path.remove(root)
  if not hasattr(module, "get_config"):
    raise InputError(f"{path}: a config file must define get_config()")
  return module.get_config()


def save_run_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> Path:
  """Writes `<workdir>/config.json` (whole or not at all) and returns its path."""
  path = Path(workdir) / CONFIG_FILE
  tmp = path.with_name(f".{CONFIG_FILE}.tmp")
  tmp.write_text(config.to_json(indent=2, sort_keys=True))
  os.replace(tmp, path)
  return path


def _tuples(value: Any) -> Any:
  """JSON turns the config's tuples into lists; turn them back so that the config hashes and compares as before."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_run_config(workdir: str | os.PathLike[str]) -> ml_collections.ConfigDict:
  """The configuration a train.py run saved in its workdir."""
  path = Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise InputError(f"{workdir}: no {CONFIG_FILE} (train.py writes one into its workdir); pass the run's config "
                     "file with --config")
  try:
    values = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise InputError(f"{path}: unreadable run config ({e})") from e
  if not isinstance(values, dict):
    raise InputError(f"{path}: a run config must be a JSON object")
  return ml_collections.ConfigDict(_tuples(values))
