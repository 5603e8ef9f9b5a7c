"""Anchor generator: hand-computed anchors and exact parity with torchvision's AnchorGenerator."""

import numpy as np
import pytest

from maskprop_jax.model import anchors


def test_cell_anchors_golden():
  # size 32: sqrt(0.5) = 0.7071 -> width 45.25, height 22.63 for ratio 0.5; halves rounded to integers.
  np.testing.assert_array_equal(
      anchors.cell_anchors((32,), (0.5, 1.0, 2.0)), [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]]
  )
  unrounded = anchors.cell_anchors((32,), (0.5,), round_to_int=False)
  np.testing.assert_allclose(unrounded, [[-16 * 2**0.5, -8 * 2**0.5, 16 * 2**0.5, 8 * 2**0.5]], rtol=1e-6)


def test_grid_order_and_strides():
  generator = anchors.AnchorGenerator(sizes=((8,), (16,)), aspect_ratios=((1.0,), (1.0, 2.0)))
  boxes, counts = generator((64, 96), [(2, 3), (1, 2)])
  assert counts == (6, 4) and boxes.shape == (10, 4) and boxes.dtype == np.float32
  # Level 0: stride (32, 32), x fastest; level 1: stride (64, 48), then anchors of one location.
  np.testing.assert_array_equal(boxes[:4], [[-4, -4, 4, 4], [28, -4, 36, 4], [60, -4, 68, 4], [-4, 28, 4, 36]])
  np.testing.assert_array_equal(boxes[6:], [[-8, -8, 8, 8], [-6, -11, 6, 11], [40, -8, 56, 8], [42, -11, 54, 11]])


def test_lists_from_configs_are_hashable():
  generator = anchors.AnchorGenerator(sizes=[[8], [16]], aspect_ratios=[[1.0], [1.0, 2.0]])
  assert hash(generator) == hash(anchors.AnchorGenerator(sizes=((8,), (16,)), aspect_ratios=((1.0,), (1.0, 2.0))))
  assert generator.num_anchors_per_location() == (1, 2)


def test_level_mismatch_is_rejected():
  with pytest.raises(ValueError, match="2 feature maps"):
    anchors.AnchorGenerator()((64, 64), [(16, 16), (8, 8)])
  with pytest.raises(ValueError, match="aspect ratios"):
    anchors.AnchorGenerator(sizes=((8,),), aspect_ratios=((1.0,), (2.0,)))


def test_parity_with_torchvision():
  torch = pytest.importorskip("torch")
  anchor_utils = pytest.importorskip("torchvision.models.detection.anchor_utils")
  image_list = pytest.importorskip("torchvision.models.detection.image_list")
  sizes = ((32,), (64,), (128,), (256,), (512,))
  ratios = ((0.5, 1.0, 2.0),) * 5
  feature_sizes = [(50, 76), (25, 38), (13, 19), (7, 10), (4, 5)]
  images = image_list.ImageList(torch.zeros(2, 3, 200, 304), [(200, 300), (180, 304)])
  features = [torch.zeros(2, 1, h, w) for h, w in feature_sizes]
  expected = anchor_utils.AnchorGenerator(sizes, ratios)(images, features)
  got, counts = anchors.AnchorGenerator(sizes, ratios)((200, 304), feature_sizes)
  assert counts == tuple(h * w * 3 for h, w in feature_sizes)
  for per_image in expected:
    np.testing.assert_array_equal(got, per_image.numpy())
