"""Mask pasting against hand-computed values and torchvision's paste_masks_in_image."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax.model import paste_masks

paste = jax.jit(paste_masks.paste_masks_in_image, static_argnames=("canvas_hw", "padding"))


def test_constant_mask_follows_torchvision_resize_by_hand():
  masks = jnp.ones((1, 4, 4))
  # Scaled by 6/4 about the center (4, 3): x 1..7, y 1.5..4.5 -> integer box (1, 1, 7, 4), 7 x 4 pixels.
  out = np.asarray(paste(masks, jnp.array([[2.0, 2.0, 6.0, 4.0]]), canvas_hw=(6, 6), padding=1))[0]
  # The padded profile [0, 1, 1, 1, 1, 0] resized to 7 columns (source = (j + 0.5) * 6 / 7 - 0.5) and to 4 rows
  # (source = (i + 0.5) * 1.5 - 0.5); column 7 lies beyond the 6-pixel image.
  columns = np.array([0, 0, 11 / 14, 1, 1, 1, 11 / 14])[:6]
  rows = np.array([0, 0.25, 1, 1, 0.25, 0])
  np.testing.assert_allclose(out, np.outer(rows, columns), atol=1e-6)


def test_image_size_limits_the_paste_inside_a_larger_canvas():
  masks = jnp.ones((2, 4, 4))
  boxes = jnp.array([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 9.0]])
  out = np.asarray(paste(masks, boxes, canvas_hw=(10, 10), image_hw=jnp.array([[10, 10], [5, 7]])))
  assert out[0, 6:, 8].sum() > 0 and out[1, 5:].sum() == 0 and out[1, :, 7:].sum() == 0


torch = pytest.importorskip("torch")
roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")


def test_matches_torchvision_paste_masks_in_image():
  rng = np.random.default_rng(0)
  num, image_hw = 12, (37, 45)
  masks = rng.uniform(size=(num, 28, 28)).astype(np.float32)
  # Boxes may stick out of the image but not lie wholly outside it: torchvision's slicing breaks on those
  # (a negative slice end), and detections are clipped to the image before pasting anyway.
  x0 = rng.uniform(-15, 40, num)
  y0 = rng.uniform(-15, 30, num)
  boxes = np.stack([x0, y0, x0 + rng.uniform(16, 30, num), y0 + rng.uniform(16, 25, num)], 1).astype(np.float32)
  boxes[2] = [10.0, 12.0, 10.4, 12.3]  # smaller than a pixel
  boxes[0] = [3.0, 4.0, 3.0, 4.0]  # empty box
  boxes[1] = [-10.0, -10.0, 60.0, 50.0]  # covers the whole image
  out = paste(jnp.asarray(masks), jnp.asarray(boxes), canvas_hw=image_hw)
  expected = roi_heads.paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), image_hw)
  np.testing.assert_allclose(out, expected[:, 0].numpy(), atol=1e-5)
