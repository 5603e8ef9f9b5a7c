"""A finished frame: the soft mask upsampled only where it can reach the threshold, then thresholded and encoded."""

import numpy as np

from maskprop_jax import rle
from maskprop_jax.linking import frames


def test_binarizer_equals_full_upsampling_then_threshold():
  rng = np.random.default_rng(0)
  soft = np.zeros([12, 20], np.float32)
  soft[3:7, 5:11] = rng.random([4, 6])
  binarize = frames.Binarizer((12, 20), (37, 61), 0.5)
  full = binarize.rows.weights @ soft @ binarize.cols.weights.T >= 0.5
  np.testing.assert_array_equal(rle.decode(binarize(soft)), full)
  assert binarize(np.full([12, 20], 0.2, np.float32)) is None
