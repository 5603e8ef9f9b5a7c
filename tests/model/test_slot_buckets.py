"""Slot buckets: the smallest power-of-two prefix holding the valid slots, exact under jit and grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax.model import slot_buckets


def test_bucket_sizes():
  assert slot_buckets.bucket_sizes(128) == (8, 12, 16, 24, 32, 48, 64, 96, 128)
  assert slot_buckets.bucket_sizes(100) == (8, 12, 16, 24, 32, 48, 64, 96, 100)
  assert slot_buckets.bucket_sizes(16) == (8, 12, 16)
  assert slot_buckets.bucket_sizes(8) == (8,)
  assert slot_buckets.bucket_sizes(4) == (4,)


@pytest.mark.parametrize("num_valid,expected", [(0, 8), (1, 8), (8, 8), (9, 12), (13, 16), (16, 16), (17, 24),
                                                 (25, 32), (33, 48), (65, 96), (97, 100), (100, 100)])
def test_the_smallest_bucket_holding_the_valid_slots_runs(num_valid, expected):
  sizes = slot_buckets.bucket_sizes(100)
  slots = jnp.zeros((2, 100, 3))

  @jax.jit
  def seen(num_valid):
    return slot_buckets.on_smallest_bucket(lambda s: jnp.int32(s.shape[1]), num_valid, slots, sizes=sizes)

  assert int(seen(num_valid)) == expected


def test_masked_sum_and_its_gradient_equal_the_whole_computation():
  rng = np.random.default_rng(0)
  values = jnp.asarray(rng.normal(size=(3, 64, 5)).astype(np.float32))
  counts = np.array([5, 11, 2])
  valid = jnp.asarray(np.arange(64)[None] < counts[:, None])  # [3, 64], valid slots first
  weight = jnp.asarray(rng.normal(size=(5, 4)).astype(np.float32))

  def masked(slotted, weight):
    values, valid = slotted
    return jnp.sum(jnp.where(valid[..., None], jnp.tanh(values @ weight), 0.0))

  def bucketed(values, weight):
    sizes = slot_buckets.bucket_sizes(64)
    return slot_buckets.on_smallest_bucket(masked, jnp.max(jnp.sum(valid, 1)), (values, valid), weight,
                                           sizes=sizes)

  whole = jax.jit(jax.value_and_grad(lambda v, w: masked((v, valid), w), argnums=(0, 1)))(values, weight)
  cut = jax.jit(jax.value_and_grad(bucketed, argnums=(0, 1)))(values, weight)
  np.testing.assert_allclose(cut[0], whole[0], rtol=1e-6)
  # d tanh = 1 - tanh^2 cancels where tanh is near +-1: a 1-ulp difference in tanh between the two programs
  # (vectorised differently) becomes ~1e-7 absolute, 5.4e-7 at most here after the matmul with `weight` (an
  # AVX2-only AMD EPYC, 2026-12-07; within 1e-7 on earlier machines). A wrong slot would be off by ~0.1.
  for a, b in zip(cut[1], whole[1]):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=2e-6)
  assert np.all(np.asarray(cut[1][0])[:, 12:] == 0)  # slots past the bucket get no gradient, as padding should
