"""Model parameters on disk: an orbax checkpoint of the nnx state as a pure dict, plus a small JSON.

    DIR/params/      orbax StandardCheckpointer directory (every variable of the model: weights and frozen stats)
    DIR/model.json   {"format", "config" (the model's ConfigDict), "category_ids", "class_names", "source"}

The JSON is written last and atomically, so a directory with a model.json always holds a complete checkpoint.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from maskprop_jax.errors import InputError

FORMAT = "maskprop_jax.mask_rcnn.v1"
PARAMS_SUBDIR = "params"
METADATA_FILE = "model.json"


def merge_pure_dict(abstract_model: nnx.Module, pure: dict) -> nnx.Module:
  """Builds a concrete module from an abstract one (nnx.eval_shape) and a pure dict of its state."""
  graphdef, state = nnx.split(abstract_model)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def save_params(
  out_dir: str | os.PathLike,
  pure_state: dict,
  config: ml_collections.ConfigDict,
  *,
  category_ids: list[int],
  class_names: list[str],
  source: str = "",
) -> None:
  """Writes `pure_state` (nnx.to_pure_dict(nnx.state(model)), or a converter's output) and its metadata."""
  out_dir = os.path.abspath(os.fspath(out_dir))
  if len(category_ids) != config.num_classes or len(class_names) != config.num_classes:
    raise ValueError(
      f"{len(category_ids)} category ids and {len(class_names)} class names for {config.num_classes} classes"
    )
  os.makedirs(out_dir, exist_ok=True)
  params_dir = os.path.join(out_dir, PARAMS_SUBDIR)
  arrays = jax.tree.map(lambda x: np.asarray(x), pure_state)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(params_dir, arrays, force=True)
    checkpointer.wait_until_finished()
  metadata = {
    "format": FORMAT,
    "config": config.to_dict(),
    "category_ids": [int(c) for c in category_ids],
    "class_names": list(class_names),
    "source": source,
  }
  tmp = os.path.join(out_dir, METADATA_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(metadata, f, indent=1)
  os.replace(tmp, os.path.join(out_dir, METADATA_FILE))


def read_metadata(params_dir: str | os.PathLike) -> dict[str, Any]:
  """The JSON of a parameter directory, with "config" turned back into a ConfigDict."""
  path = os.path.join(os.fspath(params_dir), METADATA_FILE)
  if not os.path.isfile(path):
    raise InputError(f"{params_dir}: not a parameter directory (no {METADATA_FILE}); create one with "
                     "`python -m maskprop_jax.convert`")
  try:
    with open(path) as f:
      metadata = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise InputError(f"{path}: unreadable model metadata ({e})") from e
  if not isinstance(metadata, dict) or metadata.get("format") != FORMAT or "config" not in metadata:
    raise InputError(f"{path}: not a {FORMAT} metadata file")
  metadata["config"] = _config_from_json(metadata["config"])
  return metadata


def _config_from_json(value: Any) -> ml_collections.ConfigDict:
  """JSON turns tuples into lists; turn them back so configs compare and hash as the originals."""

  def tuples(x):
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(tuples(v) for v in x)
    return x

  return ml_collections.ConfigDict(tuples(value))


def load_params(params_dir: str | os.PathLike, build_abstract: Callable[[ml_collections.ConfigDict], nnx.Module]):
  """Restores a module: `build_abstract(config)` must return it abstractly (nnx.eval_shape of its constructor).

  Returns (module, metadata).
  """
  metadata = read_metadata(params_dir)
  abstract_model = build_abstract(metadata["config"])
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(nnx.state(abstract_model))
  )
  params_path = os.path.join(os.path.abspath(os.fspath(params_dir)), PARAMS_SUBDIR)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      pure = checkpointer.restore(params_path, target)
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise InputError(f"{params_path}: the parameters do not match the model in {METADATA_FILE} ({e})") from e
  return merge_pure_dict(abstract_model, pure), metadata
