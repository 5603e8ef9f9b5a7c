"""Learning-rate schedules and the optimizer: SGD with momentum, decoupled from norms and biases, warmup, clipping.

The recipe of Mask R-CNN training (detectron2, torchvision references): linear warmup from `warmup_factor * lr`,
then a step decay by `gamma` at fixed steps or a cosine decay; weight decay on weights only (not on biases nor on
normalisation parameters); gradient clipping by global norm. Parameters of frozen stages are split off the model
before differentiation (`frozen_filter`), so they get neither gradients nor optimizer state.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

Schedule = Callable[[jax.Array | int], jax.Array]


def create_learning_rate_fn(config: ml_collections.ConfigDict) -> Schedule:
  """config.optimizer: lr, warmup_steps, warmup_factor, schedule ("step" | "cosine" | "constant"), decay_steps,
  gamma, and config.train.num_steps."""
  opt = config.optimizer
  total_steps = config.train.num_steps
  warmup_steps = min(opt.warmup_steps, total_steps)
  warmup = optax.linear_schedule(opt.lr * opt.warmup_factor, opt.lr, max(warmup_steps, 1))
  if opt.schedule == "step":
    # Boundaries are given in steps from the start of training, as detectron2's STEPS are.
    decay = optax.piecewise_constant_schedule(
        opt.lr, {int(step) - warmup_steps: opt.gamma for step in opt.decay_steps if step > warmup_steps})
  elif opt.schedule == "cosine":
    decay = optax.cosine_decay_schedule(opt.lr, max(total_steps - warmup_steps, 1))
  elif opt.schedule == "constant":
    decay = optax.constant_schedule(opt.lr)
  else:
    raise ValueError(f"unknown learning-rate schedule {opt.schedule!r}: use step, cosine or constant")
  return optax.join_schedules([warmup, decay], [warmup_steps])


def _path_name(path: tuple[Any, ...]) -> str:
  """'backbone/body/layer1/0/conv1/kernel' for a pytree key path."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def frozen_filter(patterns: tuple[str, ...]) -> Callable[[tuple[Any, ...], Any], bool]:
  """An nnx filter selecting the parameters whose path ('backbone/body/layer1/0/conv1/kernel') matches a pattern."""
  compiled = [re.compile(p) for p in patterns]
  return lambda path, value: any(p.search(_path_name(path)) for p in compiled)


def weight_decay_mask(params: Any) -> Any:
  """True for weights that get weight decay; False for biases and normalisation parameters (ndim <= 1)."""

  def decays(path, leaf):
    return leaf.ndim > 1 and _path_name(path).rsplit("/", 1)[-1] not in ("bias", "scale")

  return jax.tree_util.tree_map_with_path(decays, params)


def create_optimizer(config: ml_collections.ConfigDict, learning_rate_fn: Schedule) -> optax.GradientTransformation:
  """SGD with momentum (or AdamW for small experiments), weight decay on weights only, clipping first."""
  opt = config.optimizer
  if opt.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask=weight_decay_mask),
                     optax.sgd(learning_rate_fn, opt.momentum))
  elif opt.name == "adamw":
    tx = optax.adamw(learning_rate_fn, weight_decay=opt.weight_decay, mask=weight_decay_mask)
  else:
    raise ValueError(f"unknown optimizer {opt.name!r}: use sgd or adamw")
  if opt.clip_grad_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.clip_grad_norm), tx)
  return tx


def global_norm(tree: Any) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)))
