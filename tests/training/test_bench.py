"""training/bench.py's memory figure: XLA's accounting of a compiled step, which grows with what the step holds."""

import jax
import jax.numpy as jnp

from maskprop_jax.training import bench


def _step(state, batch, key):
  hidden = jnp.tanh(batch @ state)  # [B, 256]: a temporary the size of the batch
  return state + jnp.mean(hidden) * jax.random.normal(key, state.shape), jnp.sum(hidden)


def test_step_memory_counts_state_batch_and_temporaries():
  step = jax.jit(_step, donate_argnums=0)
  state, key = jnp.zeros((256, 256)), jax.random.key(0)
  small = bench.step_memory_bytes(step, state, jnp.ones((64, 256)), key)
  large = bench.step_memory_bytes(step, state, jnp.ones((1024, 256)), key)
  if small is None:  # a backend without memory statistics
    return
  # The state (256 KiB), donated to its update, counts once; the batch and its activations grow 16x.
  assert small >= 256 * 256 * 4 + 64 * 256 * 4
  assert large - small >= (1024 - 64) * 256 * 4
