"""The model to train and its train state, and the train step.

`build_model` makes MaskProp from a config whose model section is complete (`with_effective_model` has taken a
converted detector's architecture constants into it); `train_step` is one optimizer step on a global batch, made
into a sharded, donated jit program by `make_train_step`.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from maskprop_jax.convert import loading
from maskprop_jax.model import maskprop
from maskprop_jax.training import optimizer, parallel


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # trainable parameters (nnx.State)
  frozen: Any  # frozen parameters and every other model variable (frozen batch-norm statistics)
  opt_state: optax.OptState


def with_effective_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with the network it really builds: with `model.init_from`, the converted checkpoint's architecture
  constants (the frozen batch norms' epsilon, anchors) replace the config's. A run records this config, so that
  rebuilding the run needs nothing but its directory. Idempotent; the config itself when there is no init_from."""
  if not config.model.init_from:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.model = loading.with_detector_architecture(config.model, config.model.init_from)
  return config


def build_model(config: ml_collections.ConfigDict, seed: int) -> maskprop.MaskProp:
  """MaskProp of `config.model` (see with_effective_model), randomly initialised from `seed`, its detector's
  weights loaded from `config.model.init_from` where that is set."""
  model_config = config.model
  # Initialised under jit: eager initialisation of a ResNet runs op by op and takes tens of seconds on a CPU.
  model = nnx.jit(lambda rngs: maskprop.MaskProp(model_config, rngs=rngs))(nnx.Rngs(seed))
  if model_config.init_from:
    loaded = loading.load_detector_params(model, model_config.init_from)
    logging.info("initialised the detector from %s (%d arrays)", model_config.init_from, loaded)
  return model


def split_model(model: nnx.Module, config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, trainable parameters, everything else): the split the train state keeps."""
  frozen_filter = optimizer.frozen_filter(tuple(config.optimizer.frozen_patterns))
  return nnx.split(model, nnx.All(nnx.Param, nnx.Not(frozen_filter)), ...)


def create_train_state(model: nnx.Module, config: ml_collections.ConfigDict,
                       tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
  graphdef, params, frozen = split_model(model, config)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, opt_state=tx.init(params))
  return graphdef, state


def train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, learning_rate_fn, state: TrainState,
               batch: dict[str, jax.Array], key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch; returns the new state and the step's metrics."""
  key = jax.random.fold_in(key, state.step)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.frozen)
    return maskprop.compute_losses(model, batch, key)

  (loss, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step_metrics = dict(losses, loss=loss, grad_norm=optimizer.global_norm(grads),
                      learning_rate=learning_rate_fn(state.step))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), step_metrics


def make_train_step(graphdef, tx, learning_rate_fn, mesh: Mesh):
  replicated = parallel.replicated(mesh)
  step = functools.partial(train_step, graphdef, tx, learning_rate_fn)
  # The state is donated: its buffers are reused for the new state instead of being copied.
  return jax.jit(step, in_shardings=(replicated, parallel.batch_sharded(mesh), replicated),
                 out_shardings=replicated, donate_argnums=(0,))


def model_of(graphdef: nnx.GraphDef, state: TrainState) -> maskprop.MaskProp:
  """The model a train state holds."""
  return nnx.merge(graphdef, state.params, state.frozen)
