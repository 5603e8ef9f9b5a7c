"""The paste rules (maskprop_jax/paste.py) give the same weights in NumPy, for linking, as in jnp, for the model."""

import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax import paste


@pytest.mark.parametrize("aligned", [False, True])
def test_numpy_and_jnp_weights_are_equal(aligned):
  rng = np.random.default_rng(0)
  masks = rng.random([5, 28, 28]).astype(np.float32)
  corner = rng.uniform(-10, 50, [5, 2])
  boxes = np.concatenate([corner, corner + rng.uniform(0.5, 60, [5, 2])], axis=1).astype(np.float32)
  image_hw = np.array([47, 71], np.int32)
  np_out = paste.paste_weights(masks, boxes, (48, 80), image_hw, aligned=aligned, xp=np)
  jnp_out = paste.paste_weights(jnp.asarray(masks), jnp.asarray(boxes), (48, 80), jnp.asarray(image_hw),
                                aligned=aligned, xp=jnp)
  for a, b in zip(np_out, jnp_out):
    assert a.dtype == np.float32
    if aligned:  # XLA fuses detectron2's float32 chain of ops (FMAs): equal to a few ulps of the weights
      np.testing.assert_allclose(a, np.asarray(b), rtol=0, atol=4e-6)
    else:  # torchvision's, in integer pixels and one float32 scale, is bit for bit
      np.testing.assert_array_equal(a, np.asarray(b))
  masks_out, rows, cols = np_out
  assert masks_out.shape[-1] == (28 if aligned else 30)  # torchvision's rule pads the mask by one cell
  assert rows.shape == (5, 48, masks_out.shape[-1]) and cols.shape == (5, 80, masks_out.shape[-1])
  assert not rows[:, 47:].any() and not cols[:, 71:].any()  # nothing beyond the image
