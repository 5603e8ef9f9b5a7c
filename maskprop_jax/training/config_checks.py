"""The whole training config checked before a run writes anything: one line naming the key and what was expected.

`check_config` runs first in `train_and_evaluate`: a typo'd value, a batch that does not split over the devices
or a missing weights folder stops the run before it makes its workdir, not minutes (or a checkpoint) later. The
checks are rules on values (a type and a range or a set of choices) and on relations between them; what only the
model can tell (its module arguments) is found by building it abstractly, which costs no memory and no compute.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import ml_collections

from maskprop_jax.data import tfds_builder
from maskprop_jax.errors import InputError
from maskprop_jax.kernels import IMPLS

Rule = tuple[str, Callable[[Any], bool], str]  # (key path, predicate on its value, what was expected)


def _number(kind: type | tuple[type, ...], low: float | None = None, high: float | None = None, *,
            low_open: bool = False) -> tuple[Callable[[Any], bool], str]:
  def ok(v):
    if isinstance(v, bool) or not isinstance(v, kind):
      return False
    return (low is None or (v > low if low_open else v >= low)) and (high is None or v <= high)
  name = "an integer" if kind is int else "a number"
  bounds = ("" if low is None else f" {'>' if low_open else '>='} {low}") + \
      ("" if high is None else f"{' and' if low is not None else ''} <= {high}")
  return ok, name + bounds


def _int_pair(v) -> bool:
  return isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v)


def _data_set_name(v) -> bool:
  return isinstance(v, str) and tfds_builder.NAME_PATTERN.fullmatch(v) is not None


def _choice(*choices: str) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


def _regexes(v) -> bool:
  try:
    return isinstance(v, (tuple, list)) and all(isinstance(p, str) and re.compile(p) for p in v)
  except re.error:
    return False


POSITIVE_INT = _number(int, 1)
NON_NEGATIVE_INT = _number(int, 0)
FRACTION = _number((int, float), 0, 1)

RULES: tuple[Rule, ...] = tuple((path, *check) for path, check in (
    ("seed", NON_NEGATIVE_INT),
    ("data.name", (_data_set_name, "letters, digits, '_' and '-' (a prepared data set's name)")),
    ("data.image_hw", (_int_pair, "two positive integers (height, width)")),
    ("data.scale_range", (_int_pair, "two positive integers (shortest side, min and max)")),
    ("data.max_instances", POSITIVE_INT),
    ("data.num_ref_frames", POSITIVE_INT),
    ("data.max_ref_offset", POSITIVE_INT),
    ("data.worker_count", NON_NEGATIVE_INT),
    ("data.flip", (lambda v: isinstance(v, bool), "true or false")),
    ("model.compute_dtype", _choice("float32", "bfloat16")),  # model/precision.py
    ("model.propagation.impl", _choice(*IMPLS)),
    ("model.init_from", (lambda v: isinstance(v, str), "a folder of converted weights, or ''")),
    ("train.global_batch_size", POSITIVE_INT),
    ("train.num_steps", POSITIVE_INT),
    ("train.log_every", POSITIVE_INT),
    ("train.checkpoint_every", POSITIVE_INT),
    ("train.keep_checkpoints", POSITIVE_INT),
    ("train.eval_every", NON_NEGATIVE_INT),
    ("train.profile_steps", NON_NEGATIVE_INT),
    ("train.per_device_batch_size", NON_NEGATIVE_INT),
    ("train.reference_batch_size", NON_NEGATIVE_INT),
    ("optimizer.name", _choice("sgd", "adamw")),
    ("optimizer.schedule", _choice("step", "cosine", "constant")),
    ("optimizer.lr", _number((int, float), 0, low_open=True)),
    ("optimizer.momentum", _number((int, float), 0, 1)),
    ("optimizer.weight_decay", _number((int, float), 0)),
    ("optimizer.warmup_steps", NON_NEGATIVE_INT),
    ("optimizer.warmup_factor", _number((int, float), 0, 1, low_open=True)),
    ("optimizer.decay_steps", (lambda v: isinstance(v, (tuple, list)) and all(
        isinstance(s, int) and s > 0 for s in v) and list(v) == sorted(v), "increasing positive step numbers")),
    ("optimizer.gamma", _number((int, float), 0, low_open=True)),
    ("optimizer.clip_grad_norm", _number((int, float), 0)),
    ("optimizer.frozen_patterns", (_regexes, "a tuple of regular expressions")),
    ("evaluation.num_overlays", NON_NEGATIVE_INT),
    ("inference.half_window", POSITIVE_INT),
    ("inference.clip_stride", POSITIVE_INT),
    ("inference.score_thresh", FRACTION),
    ("inference.extend_score_thresh", FRACTION),
    ("inference.extend_match_threshold", FRACTION),
    ("inference.match_threshold", FRACTION),
    ("inference.mask_threshold", FRACTION),
    ("inference.duplicate_iou", FRACTION),
    ("inference.temporal_decay", _number((int, float), 0)),
    ("inference.clip_prior", _number((int, float), 0)),
    ("inference.reid_max_gap", NON_NEGATIVE_INT),
    ("inference.reid_distance", _number((int, float), 0, low_open=True)),
))


def _lookup(config: ml_collections.ConfigDict, path: str) -> tuple[bool, Any]:
  node: Any = config
  for key in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      return False, None
    node = node[key]
  return True, node


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """InputError naming the first key whose value cannot train (`num_devices`: the devices the batch splits over).

  Keys a config file removed are not required (older run configs lack some); the values present must fit.
  """
  for path, ok, expected in RULES:
    present, value = _lookup(config, path)
    if present and not ok(value):
      raise InputError(f"config.{path}={value!r}: expected {expected}")
  for split_key in ("train_split", "val_split"):
    split = config.data[split_key]
    for table in ("annotations", "images"):
      if split not in config.data[table]:
        raise InputError(f"config.data.{split_key}={split!r}: config.data.{table} has no entry for it (it has "
                         f"{', '.join(sorted(config.data[table])) or 'none'})")
  low, high = config.data.scale_range
  if low > high:
    raise InputError(f"config.data.scale_range={tuple(config.data.scale_range)!r}: expected min <= max")
  if high > max(config.data.image_hw):
    raise InputError(f"config.data.scale_range={tuple(config.data.scale_range)!r}: frames resized to it do not fit "
                     f"config.data.image_hw={tuple(config.data.image_hw)!r}")
  if config.train.global_batch_size % num_devices:
    raise InputError(f"config.train.global_batch_size={config.train.global_batch_size}: expected a multiple of the "
                     f"{num_devices} devices it is split over (or set config.train.per_device_batch_size)")
  _check_model(config.model)


def _check_model(model_config: ml_collections.ConfigDict) -> None:
  """The model's own argument checks, run by building it without its arrays."""
  from flax import nnx  # noqa: PLC0415 (jax-heavy; only needed once the simple rules pass)

  from maskprop_jax.model import maskprop  # noqa: PLC0415

  try:
    nnx.eval_shape(lambda: maskprop.MaskProp(model_config, rngs=nnx.Rngs(0)))
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    raise InputError(f"config.model cannot be built: {message}") from None
