"""A training run on disk, and the one way to load it: config files, the run's record, its latest weights.

train.py records in its workdir what it takes to rebuild the run with nothing else at hand:

    <workdir>/config.json       the config it trained with, its model section as built (the architecture
                                constants of converted weights included: training.state.with_effective_model)
    <workdir>/categories.json   the data set's categories, [{"id", "name"}] in label order (label = index + 1)
    <workdir>/checkpoints/      orbax checkpoints of the train state and the data iterator

`load_run` is what eval.py, the demo and propagation_eval use: the model of the run's config, the weights of its
newest readable checkpoint (the optimizer state is not read), and its categories.
"""

from __future__ import annotations

import importlib.util
import dataclasses
import logging
import os
import sys
from pathlib import Path

import jax
import ml_collections
from flax import nnx

from maskprop_jax import files
from maskprop_jax.errors import InputError
from maskprop_jax.model import maskprop
from maskprop_jax.training import checkpointing, state

CONFIG_FILE = "config.json"
CATEGORIES_FILE = "categories.json"


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
  files.write_atomically(path, config.to_json(indent=2, sort_keys=True))
  return path


def load_run_config(workdir: str | os.PathLike[str]) -> ml_collections.ConfigDict:
  """The configuration a train.py run saved in its workdir."""
  path = Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise InputError(f"{workdir}: no {CONFIG_FILE} (train.py writes one into its workdir); pass the run's config "
                     "file with --config")
  try:
    values = files.read_json(path, "run config")
  except InputError as e:
    raise InputError(f"{path}: unreadable run config ({e})") from e
  if not isinstance(values, dict):
    raise InputError(f"{path}: a run config must be a JSON object")
  return files.config_from_json(values)


@dataclasses.dataclass(frozen=True)
class Categories:
  """A model's categories: labels 1..C are ids[label - 1], named names[label - 1]."""

  ids: list[int]
  names: list[str]

  @classmethod
  def unnamed(cls, num_classes: int) -> "Categories":
    labels = list(range(1, num_classes + 1))
    return cls(labels, [f"class {label}" for label in labels])


def save_categories(categories: list[dict], workdir: str | os.PathLike[str]) -> None:
  """Records the categories ({"id", "name", ...} sorted by id, as training labels them) in the workdir."""
  entries = [{"id": int(c["id"]), "name": str(c["name"])} for c in sorted(categories, key=lambda c: int(c["id"]))]
  files.write_json(Path(workdir) / CATEGORIES_FILE, entries, indent=2)


def load_categories(workdir: str | os.PathLike[str], config: ml_collections.ConfigDict) -> Categories:
  """The categories a run recorded; for a run from before they were recorded, those of its data set's annotation
  files where this machine has them; else unnamed labels."""
  num_classes = config.model.detector.num_classes - 1
  path = Path(workdir) / CATEGORIES_FILE
  candidates = [path] + [Path(config.data.root) / config.data.annotations[split]
                         for split in (config.data.val_split, config.data.train_split)
                         if split in config.data.annotations]
  for candidate in candidates:
    try:
      values = files.read_json(candidate, "categories")
      entries = values["categories"] if isinstance(values, dict) else values
      pairs = sorted((int(c["id"]), str(c["name"])) for c in entries)
    except (InputError, KeyError, TypeError, ValueError):
      continue
    if len(pairs) == num_classes:
      return Categories([i for i, _ in pairs], [n for _, n in pairs])
  return Categories.unnamed(num_classes)


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained model, ready for inference (eval mode), and what it was trained with."""

  model: maskprop.MaskProp
  config: ml_collections.ConfigDict
  step: int | None  # None: not a trained run (converted weights)
  categories: Categories


def abstract_model(config: ml_collections.ConfigDict) -> maskprop.MaskProp:
  """The model of `config.model`, its shapes only (nothing initialised)."""
  return nnx.eval_shape(lambda: maskprop.MaskProp(config.model, rngs=nnx.Rngs(0)))


def has_checkpoint(workdir: str | os.PathLike[str]) -> bool:
  directory = Path(workdir) / checkpointing.CHECKPOINT_DIR
  return directory.is_dir() and any(child.name.isdigit() for child in directory.iterdir())


def load_run(workdir: str | os.PathLike[str], config: ml_collections.ConfigDict | None = None) -> Run:
  """The model of a train.py run at its newest readable checkpoint, built as the run built it.

  The model's architecture always comes from the run's config.json (with a converted detector's constants in it;
  the converted weights themselves are not needed). `config`, where given (eval.py's --config, the demo's), supplies
  every other setting: the data to evaluate, the inference settings.
  """
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise InputError(f"{workdir}: no such run directory")
  if config is not None and not (workdir / CONFIG_FILE).is_file():
    # A run copied without its record: the config given must be the one it trained with.
    logging.warning("%s has no %s: building the model of the config given", workdir, CONFIG_FILE)
    run_config = state.with_effective_model(config)
  else:
    run_config = load_run_config(workdir)
  if config is None:
    config = run_config
  else:
    config = ml_collections.ConfigDict(config.to_dict())
    config.model = run_config.model
  model = abstract_model(config)
  graphdef, params, frozen = state.split_model(model, run_config)
  as_struct = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
  abstract_weights = {"params": jax.tree.map(as_struct, params), "frozen": jax.tree.map(as_struct, frozen)}
  manager = checkpointing.open_for_reading(workdir)
  try:
    restored = checkpointing.restore_latest_weights(manager, abstract_weights)
  finally:
    checkpointing.close(manager)
  if restored is None:
    raise InputError(f"{workdir}: no checkpoint in {workdir / checkpointing.CHECKPOINT_DIR}")
  step, weights = restored
  model = nnx.merge(graphdef, weights["params"], weights["frozen"])
  model.eval()
  logging.info("loaded the checkpoint of step %d from %s", step, workdir)
  return Run(model, config, step, load_categories(workdir, run_config))

