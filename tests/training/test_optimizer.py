"""Learning-rate schedules (golden values worked out by hand), weight decay on weights only, frozen parameters."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

import tiny_config
from maskprop_jax.training import optimizer
from maskprop_jax.training.state import build_model, create_train_state


def _config(**optimizer_fields) -> ml_collections.ConfigDict:
  config = tiny_config.get_config()
  config.optimizer.update(optimizer_fields)
  return config


def _schedule(num_steps: int, **optimizer_fields):
  config = _config(**optimizer_fields)
  config.train.num_steps = num_steps
  return optimizer.create_learning_rate_fn(config)


def test_step_schedule_is_detectron2s_warmup_then_multistep():
  # The R50 recipe (float32 arithmetic, hence rtol 1e-4 near 0): lr 0.02, 1000 warmup steps from 0.02 * 0.001,
  # x0.1 at steps 40k and 53k (of 60k).
  lr = _schedule(60_000, lr=0.02, warmup_steps=1_000, warmup_factor=0.001, schedule="step",
                 decay_steps=(40_000, 53_000), gamma=0.1)
  golden = {0: 2e-5, 500: 0.01001, 999: 0.01998002, 1_000: 0.02, 39_999: 0.02, 40_000: 0.002, 52_999: 0.002,
            53_000: 0.0002, 59_999: 0.0002}
  for step, expected in golden.items():
    np.testing.assert_allclose(float(lr(step)), expected, rtol=1e-4, err_msg=f"step {step}")


def test_cosine_schedule_warms_up_then_decays_to_zero_at_the_last_step():
  lr = _schedule(1_500, lr=2e-3, warmup_steps=100, warmup_factor=0.01, schedule="cosine")
  # Warmup from 2e-5 to 2e-3; the cosine covers the remaining 1400 steps: half-way (step 800) is lr / 2.
  golden = {0: 2e-5, 50: 1.01e-3, 100: 2e-3, 450: 2e-3 * (1 + np.cos(np.pi / 4)) / 2, 800: 1e-3, 1_500: 0.0}
  for step, expected in golden.items():
    np.testing.assert_allclose(float(lr(step)), expected, rtol=1e-5, atol=1e-9, err_msg=f"step {step}")


def test_decay_steps_inside_the_warmup_are_ignored_and_constant_holds():
  lr = _schedule(100, lr=0.1, warmup_steps=10, warmup_factor=0.5, schedule="step", decay_steps=(5, 50), gamma=0.1)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10, 49, 50)], [0.05, 0.075, 0.1, 0.1, 0.01], rtol=1e-6)
  constant = _schedule(100, lr=0.1, warmup_steps=0, schedule="constant")
  np.testing.assert_allclose([float(constant(s)) for s in (0, 99)], [0.1, 0.1], rtol=1e-6)


def test_unknown_schedule_and_optimizer_are_rejected():
  with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear'"):
    _schedule(10, schedule="linear")
  with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
    optimizer.create_optimizer(_config(name="lamb"), optax.constant_schedule(0.1))


class _Block(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.norm = nnx.LayerNorm(4, rngs=rngs)
    self.fc = nnx.Linear(4, 2, rngs=rngs)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_reaches_weights_but_not_biases_nor_norms(name):
  params = nnx.state(_Block(nnx.Rngs(0)), nnx.Param)
  params = jax.tree.map(jnp.ones_like, params)
  tx = optimizer.create_optimizer(_config(name=name, weight_decay=0.5, clip_grad_norm=0.0),
                                  optax.constant_schedule(0.1))
  # With zero gradients, the only update is the decay: -lr * weight_decay * w on weights, nothing elsewhere.
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  flat = {optimizer._path_name(path): np.asarray(u) for path, u in jax.tree_util.tree_leaves_with_path(updates)}
  assert set(flat) == {"conv/kernel/value", "conv/bias/value", "norm/scale/value", "norm/bias/value",
                       "fc/kernel/value", "fc/bias/value"}
  for path, update in flat.items():
    expected = -0.05 if "kernel" in path else 0.0
    np.testing.assert_allclose(update, expected, rtol=1e-6, err_msg=path)


def test_clipping_bounds_the_global_norm_of_the_update():
  params = {"w": jnp.ones((2, 2))}
  tx = optimizer.create_optimizer(_config(name="sgd", momentum=0.0, weight_decay=0.0, clip_grad_norm=1.0),
                                  optax.constant_schedule(1.0))
  updates, _ = tx.update({"w": jnp.full((2, 2), 10.0)}, tx.init(params), params)
  np.testing.assert_allclose(float(optimizer.global_norm(updates)), 1.0, rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_model():
  # Shapes only: which parameters are frozen depends on the model's structure, not on its values.
  return nnx.eval_shape(lambda: build_model(tiny_config.get_config(), seed=0))


def test_frozen_patterns_split_those_parameters_out_of_the_optimizer(tiny_model):
  config = tiny_config.get_config()
  patterns = config.optimizer.frozen_patterns
  assert patterns == (r"^detector/backbone/body/(conv1|bn1|layer1)/",)
  tx = optimizer.create_optimizer(config, optimizer.create_learning_rate_fn(config))
  _, state = create_train_state(tiny_model, config, tx)

  def names(tree):
    return {optimizer._path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}

  trainable, frozen = names(state.params), names(state.frozen)
  assert "detector/backbone/body/conv1/kernel/value" in frozen
  assert "detector/backbone/body/layer1/0/conv1/kernel/value" in frozen
  assert "detector/backbone/body/layer2/0/conv1/kernel/value" in trainable
  assert not any(name.startswith(("detector/backbone/body/conv1/", "detector/backbone/body/layer1/"))
                 for name in trainable)
  # Frozen parameters have no optimizer state: the momentum buffers mirror the trainable parameters only.
  buffers = names(state.opt_state)
  assert not any("backbone/body/layer1/" in name or "backbone/body/conv1/" in name for name in buffers)
  assert any(name.endswith("detector/backbone/body/layer2/0/conv1/kernel/value") for name in buffers)
  everything = names(nnx.state(tiny_model))
  assert trainable | frozen == everything and not trainable & frozen
