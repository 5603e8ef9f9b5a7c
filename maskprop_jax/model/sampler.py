"""torchvision's BalancedPositiveNegativeSampler with static shapes.

From labels (>= 1 positive, 0 negative, < 0 ignored) it draws, uniformly at random,
  num_pos = min(#positives, int(batch_size * positive_fraction)) positives and
  num_neg = min(#negatives, batch_size - num_pos) negatives,
exactly the counts torchvision draws with randperm. Here each element gets a uniform random score and the top_k
scorers among the positives (negatives) are taken, so shapes never depend on the data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _first_k_of_class(in_class: jnp.ndarray, count: jnp.ndarray, max_count: int, key: jax.Array) -> jnp.ndarray:
  """Mask of `count` (<= max_count, <= in_class.sum()) random members of `in_class`: [N] -> [N]."""
  num = in_class.shape[0]
  max_count = min(max_count, num)
  if max_count == 0:
    return jnp.zeros_like(in_class)
  scores = jnp.where(in_class, jax.random.uniform(key, (num,)), -1.0)  # [N] members score in [0, 1)
  _, chosen = jax.lax.top_k(scores, max_count)  # [max_count], members first
  take = jnp.arange(max_count) < count  # [max_count]
  return jnp.zeros_like(in_class).at[chosen].set(take)


def sample(
    labels: jnp.ndarray,
    batch_size: int,
    positive_fraction: float,
    key: jax.Array,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Random balanced sample of one image's labels [N]; returns (pos_mask [N], neg_mask [N]) bool.

  For a batch of images, vmap over labels and a split key.
  """
  positive = labels >= 1  # [N]
  negative = labels == 0  # [N]
  max_pos = int(batch_size * positive_fraction)
  num_pos = jnp.minimum(jnp.sum(positive), max_pos)
  num_neg = jnp.minimum(jnp.sum(negative), batch_size - num_pos)
  pos_key, neg_key = jax.random.split(key)
  pos_mask = _first_k_of_class(positive, num_pos, max_pos, pos_key)
  neg_mask = _first_k_of_class(negative, num_neg, batch_size, neg_key)
  return pos_mask, neg_mask
