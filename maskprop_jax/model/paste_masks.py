"""Pasting fixed-size RoI masks into full images with static shapes, under jit: torchvision's rule or detectron2's
(aligned). The rules themselves, and why they differ, are maskprop_jax/paste.py's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskprop_jax import paste


def paste_masks_in_image(
    masks: jax.Array,
    boxes: jax.Array,
    canvas_hw: tuple[int, int],
    image_hw: jax.Array | None = None,
    padding: int = 1,
    *,
    aligned: bool = False,
) -> jax.Array:
  """Pastes masks [..., M, M] at boxes [..., 4] into images of static size canvas_hw = (H, W).

  Args:
    masks: [..., M, M] mask probabilities (or logits; any float values are resized as they are).
    boxes: [..., 4] x0, y0, x1, y1 in pixels of the target image.
    canvas_hw: static output size.
    image_hw: optional [..., 2] (or [2]) true image size when it is smaller than the canvas; torchvision
      clips the paste to the image, and pixels beyond it stay zero.
    padding: torchvision's padding (1) of the mask before resizing (unused when aligned).
    aligned: detectron2's rule (see maskprop_jax/paste.py) instead of torchvision's.

  Returns:
    [..., H, W] float32.
  """
  image_hw = canvas_hw if image_hw is None else image_hw
  masks, rows, cols = paste.paste_weights(masks, boxes, canvas_hw, image_hw, padding, aligned=aligned, xp=jnp)
  return jnp.einsum("...yi,...ij,...xj->...yx", rows, masks, cols, precision=jax.lax.Precision.HIGHEST)
