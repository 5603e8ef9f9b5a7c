"""Image transform: torchvision's resize sizes, normalisation, padding, box rescaling."""

import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax.model.transform import (
  InputFormat, normalize, padded_hw, preprocess_image, resize_bilinear, resize_boxes, resized_hw)


def test_resized_hw_short_side_then_long_side_cap():
  assert resized_hw((480, 640), 800, 1333) == (800, 1066)  # floor(640 * 800 / 480) = 1066
  assert resized_hw((100, 1000), 800, 1333) == (133, 1333)  # long side caps the scale
  assert padded_hw((800, 1066)) == (800, 1088)


def test_normalize_detectron2_bgr_255():
  fmt = InputFormat(mean=(10.0, 20.0, 30.0), std=(1.0, 2.0, 5.0), scale=255.0, channel_order="BGR")
  rgb = jnp.array([[[0.0, 0.2, 1.0]]])
  np.testing.assert_allclose(normalize(rgb, fmt)[0, 0], [255 - 10, (51 - 20) / 2, (0 - 30) / 5], rtol=1e-6)


def test_preprocess_pads_with_zeros_and_reports_size():
  image = np.full((30, 50, 3), 255, np.uint8)
  fmt = InputFormat(mean=(0.0,) * 3, std=(1.0,) * 3)
  padded, hw = preprocess_image(image, fmt, min_size=40, max_size=1000)
  assert hw == (40, 66) and padded.shape == (64, 96, 3)
  np.testing.assert_allclose(padded[:40, :66], 1.0, rtol=1e-6)
  assert float(jnp.abs(padded[40:]).max()) == 0.0 and float(jnp.abs(padded[:, 66:]).max()) == 0.0


def test_preprocess_rejects_non_rgb():
  with pytest.raises(ValueError, match="RGB"):
    preprocess_image(np.zeros((4, 4), np.uint8), InputFormat(), 4, 4)


def test_resize_boxes_per_image_sizes():
  boxes = jnp.array([[[10.0, 20.0, 30.0, 40.0]], [[10.0, 20.0, 30.0, 40.0]]])  # [B=2, N=1, 4]
  out = resize_boxes(boxes, jnp.array([[100, 200], [50, 50]]), jnp.array([[200, 100], [100, 100]]))
  np.testing.assert_allclose(out[:, 0], [[5, 40, 15, 80], [20, 40, 60, 80]])


@pytest.mark.parametrize("hw", [(37, 53), (61, 100), (120, 90)])
def test_resize_matches_torch_interpolate(hw):
  torch = pytest.importorskip("torch")
  image = np.random.default_rng(0).random((3, *hw), dtype=np.float32)
  scale = min(48 / min(hw), 80 / max(hw))
  expected = torch.nn.functional.interpolate(
    torch.from_numpy(image)[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
    align_corners=False)[0].numpy().transpose(1, 2, 0)
  out_hw = resized_hw(hw, 48, 80)
  assert out_hw == expected.shape[:2]
  np.testing.assert_allclose(resize_bilinear(jnp.asarray(image.transpose(1, 2, 0)), out_hw), expected, atol=3e-7)


def test_matches_generalized_rcnn_transform():
  torch = pytest.importorskip("torch")
  from torchvision.models.detection.transform import GeneralizedRCNNTransform

  image = np.random.default_rng(1).integers(0, 256, (45, 70, 3), dtype=np.uint8)
  reference = GeneralizedRCNNTransform(64, 96, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).eval()
  batch, _ = reference([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
  expected = batch.tensors[0].numpy().transpose(1, 2, 0)
  padded, hw = preprocess_image(image, InputFormat(), 64, 96)
  assert hw == tuple(batch.image_sizes[0]) and padded.shape == expected.shape
  np.testing.assert_allclose(padded, expected, atol=2e-6)
