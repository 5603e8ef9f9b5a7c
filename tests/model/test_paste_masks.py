"""Mask pasting against hand-computed values and torchvision's paste_masks_in_image."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax.data import augment
from maskprop_jax.model import paste_masks, roi_targets

paste = jax.jit(paste_masks.paste_masks_in_image, static_argnames=("canvas_hw", "padding", "aligned"))


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


def test_aligned_constant_mask_by_hand():
  # A 2x2 mask of ones on the float box x 1..5, y 1..3. Pixel p reads mask cell u = (p + 0.5 - x0) / (x1 - x0) * 2
  # - 0.5, bilinear with zeros beyond the mask (grid_sample, align_corners=False): columns u = -0.75, -0.25, 0.25,
  # 0.75, 1.25, 1.75, 2.25 -> 0.25, 0.75, 1, 1, 0.75, 0.25, 0; rows u = -1, 0, 1, 2, 3 -> 0, 1, 1, 0, 0.
  out = np.asarray(paste(jnp.ones((1, 2, 2)), jnp.array([[1.0, 1.0, 5.0, 3.0]]), canvas_hw=(5, 7), aligned=True))[0]
  columns = np.array([0.25, 0.75, 1, 1, 0.75, 0.25, 0])
  rows = np.array([0, 1, 1, 0, 0])
  np.testing.assert_allclose(out, np.outer(rows, columns), atol=1e-6)


def test_aligned_targets_pasted_back_are_the_masks_they_came_from():
  # Small drawn shapes (discs, triangles, rectangles of 40-300 pixels) at fractional positions: the 28x28 targets of
  # aligned RoIAlign on the tight box, pasted back the aligned way, are the shape again; torchvision's unaligned
  # targets and integer, widened box lose a pixel's width of a small object.
  rng = np.random.default_rng(0)
  height, width = 48, 64
  yy, xx = np.mgrid[:height, :width] + 0.5
  shapes = []
  for i in range(24):
    cy, cx, r = rng.uniform(14, 34), rng.uniform(14, 50), rng.uniform(3.5, 10)
    kind = i % 3
    if kind == 0:
      shape = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    elif kind == 1:
      shape = (np.abs(yy - cy) <= r * 0.7) & (np.abs(xx - cx) <= r)
    else:
      shape = (yy - cy <= r) & (yy - cy >= -r) & (np.abs(xx - cx) <= (yy - cy + r) / 2)
    shapes.append(shape.astype(np.float32))
  masks = np.stack(shapes)
  boxes = augment.mask_boxes(masks)

  def round_trip_iou(aligned):
    targets = roi_targets.project_masks_on_boxes(
        jnp.asarray(masks)[:, None], jnp.asarray(boxes)[:, None], jnp.zeros((len(masks), 1), jnp.int32),
        jnp.tile(jnp.asarray([[height, width]]), (len(masks), 1)), 28, aligned=aligned)[:, 0]
    pasted = np.asarray(paste(targets, jnp.asarray(boxes), canvas_hw=(height, width), aligned=aligned)) >= 0.5
    truth = masks > 0
    return (pasted & truth).sum((1, 2)) / (pasted | truth).sum((1, 2))

  aligned, unaligned = round_trip_iou(True), round_trip_iou(False)
  assert aligned.min() > 0.97, aligned
  assert unaligned.mean() < 0.9 and aligned.mean() > unaligned.mean() + 0.1, (aligned.mean(), unaligned.mean())


torch = pytest.importorskip("torch")
roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")


def _random_masks_and_boxes(seed: int, min_side: float, num: int = 12) -> tuple[np.ndarray, np.ndarray]:
  """28x28 probabilities and boxes of at least min_side pixels around a 37x45 image. Boxes may stick out of the
  image but not lie wholly outside it: torchvision's slicing breaks on those (a negative slice end), and
  detections are clipped to the image before pasting anyway."""
  rng = np.random.default_rng(seed)
  masks = rng.uniform(size=(num, 28, 28)).astype(np.float32)
  x0 = rng.uniform(-15, 40, num)
  y0 = rng.uniform(-15, 30, num)
  boxes = np.stack([x0, y0, x0 + rng.uniform(min_side, 30, num), y0 + rng.uniform(min_side, 25, num)], 1)
  return masks, boxes.astype(np.float32)


def test_matches_torchvision_paste_masks_in_image():
  image_hw = (37, 45)
  masks, boxes = _random_masks_and_boxes(0, min_side=16)
  boxes[2] = [10.0, 12.0, 10.4, 12.3]  # smaller than a pixel
  boxes[0] = [3.0, 4.0, 3.0, 4.0]  # empty box
  boxes[1] = [-10.0, -10.0, 60.0, 50.0]  # covers the whole image
  out = paste(jnp.asarray(masks), jnp.asarray(boxes), canvas_hw=image_hw)
  expected = roi_heads.paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), image_hw)
  np.testing.assert_allclose(out, expected[:, 0].numpy(), atol=1e-5)


def _detectron2_paste(masks, boxes, img_h, img_w):
  """detectron2's layers/mask_ops._do_paste_mask on the whole image (skip_empty=False), transcribed."""
  import torch.nn.functional as F  # noqa: PLC0415, N812

  x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
  num = masks.shape[0]
  img_y = torch.arange(0, img_h, dtype=torch.float32) + 0.5
  img_x = torch.arange(0, img_w, dtype=torch.float32) + 0.5
  img_y = (img_y - y0) / (y1 - y0) * 2 - 1
  img_x = (img_x - x0) / (x1 - x0) * 2 - 1
  gx = img_x[:, None, :].expand(num, img_y.size(1), img_x.size(1))
  gy = img_y[:, :, None].expand(num, img_y.size(1), img_x.size(1))
  grid = torch.stack([gx, gy], dim=3)
  return F.grid_sample(masks[:, None], grid, align_corners=False)[:, 0]


def test_aligned_matches_detectron2_paste():
  image_hw = (37, 45)
  masks, boxes = _random_masks_and_boxes(1, min_side=0.5)
  boxes[2] = [10.0, 12.0, 10.4, 12.3]  # smaller than a pixel
  boxes[1] = [-10.0, -10.0, 60.0, 50.0]  # covers the whole image
  out = paste(jnp.asarray(masks), jnp.asarray(boxes), canvas_hw=image_hw, aligned=True)
  expected = _detectron2_paste(torch.from_numpy(masks), torch.from_numpy(boxes), *image_hw)
  np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)


def test_thresholded_paste_equals_torchvision_pixel_for_pixel():
  # Random-weight models give mask probabilities of 0.2-0.7, so many pasted pixels lie near the 0.5 threshold:
  # with the same 28x28 probabilities, a pixel may differ only where torchvision's value is within float rounding
  # of 0.5 (the resize's float32 sums in another order). Small boxes such as 22x44 included.
  rng = np.random.default_rng(2)
  num, image_hw = 40, (480, 640)
  masks = rng.uniform(0.2, 0.7, size=(num, 28, 28)).astype(np.float32)
  x0, y0 = rng.uniform(0, 600, num), rng.uniform(0, 440, num)
  sizes = rng.uniform(10, 200, (num, 2))
  boxes = np.stack([x0, y0, x0 + sizes[:, 0], y0 + sizes[:, 1]], 1).astype(np.float32)
  boxes[0] = [101.3, 57.8, 123.3, 101.8]  # 22 x 44
  ours = np.asarray(paste(jnp.asarray(masks), jnp.asarray(boxes), canvas_hw=image_hw))
  expected = roi_heads.paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes),
                                            image_hw)[:, 0].numpy()
  differ = (ours >= 0.5) != (expected >= 0.5)
  assert np.all(np.abs(expected[differ] - 0.5) < 1e-6), np.abs(expected[differ] - 0.5).max()
  assert (expected >= 0.5).sum() > 50_000  # the masks are not empty
