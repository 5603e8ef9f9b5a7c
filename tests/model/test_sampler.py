"""Balanced sampler: exact counts of torchvision's sampler, only eligible elements, different keys differ."""

import jax
import numpy as np

from maskprop_jax.model import sampler

_sample = jax.jit(sampler.sample, static_argnums=(1, 2))


def _labels(num_pos, num_neg, num_ignored, length=None):
  """Labels padded with ignored entries to `length` so that cases share one compiled function."""
  length = length or num_pos + num_neg + num_ignored
  return np.array([1] * num_pos + [0] * num_neg + [-1] * (length - num_pos - num_neg), np.int32)


def test_counts_follow_torchvision():
  cases = [  # (positives, negatives, expected sampled positives, expected sampled negatives) for 16 at 0.25
      (10, 100, 4, 12),
      (2, 100, 2, 14),
      (10, 5, 4, 5),
      (0, 3, 0, 3),
  ]
  for num_pos, num_neg, want_pos, want_neg in cases:
    labels = _labels(num_pos, num_neg, 0, length=120)
    pos, neg = _sample(labels, 16, 0.25, jax.random.key(0))
    assert int(pos.sum()) == want_pos and int(neg.sum()) == want_neg, (num_pos, num_neg)
    assert np.all(labels[np.asarray(pos)] >= 1) and np.all(labels[np.asarray(neg)] == 0)


def test_class_labels_count_as_positive_and_keys_vary():
  labels = np.array([3, 0, 7, 0, -1, 2, 0, 0] * 10, np.int32)
  masks = [np.asarray(_sample(labels, 16, 0.5, jax.random.key(seed))[0]) for seed in range(3)]
  assert all(m.sum() == 8 for m in masks)
  assert not np.array_equal(masks[0], masks[1]) or not np.array_equal(masks[1], masks[2])


def test_batch_via_vmap():
  labels = np.stack([_labels(3, 20, 1), _labels(20, 2, 2)])
  keys = jax.random.split(jax.random.key(1), 2)
  pos, neg = jax.vmap(sampler.sample, in_axes=(0, None, None, 0))(labels, 8, 0.5, keys)
  np.testing.assert_array_equal(pos.sum(1), [3, 4])
  np.testing.assert_array_equal(neg.sum(1), [5, 2])
