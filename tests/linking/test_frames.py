"""A finished frame: the soft mask upsampled only where it can reach the threshold, and its RLE built from a patch."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

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


@pytest.mark.parametrize("seed", range(6))
def test_encode_patch_equals_pycocotools(seed):
  rng = np.random.default_rng(seed)
  height, width = 9, 7
  patch = rng.random([rng.integers(1, 10), rng.integers(1, 8)]) > 0.4
  top, left = rng.integers(0, height - patch.shape[0] + 1), rng.integers(0, width - patch.shape[1] + 1)
  full = np.zeros([height, width], np.uint8)
  full[top:top + patch.shape[0], left:left + patch.shape[1]] = patch
  expected = mask_utils.encode(np.asfortranarray(full))
  got = frames.encode_patch(patch, top, left, (height, width))
  if not full.any():
    assert got is None
  else:
    assert got["counts"] == expected["counts"].decode("ascii") and got["size"] == [height, width]
