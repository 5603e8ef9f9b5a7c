"""A finished frame: the soft mask upsampled only where it can reach the threshold, then thresholded and encoded."""

import numpy as np
import pytest

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


def _dense_paste(mask: frames.BoxMask, video_hw) -> np.ndarray:
  """The box mask pasted on the whole frame, the network's way (paste_masks_in_image, jnp)."""
  from maskprop_jax.model.paste_masks import paste_masks_in_image  # noqa: PLC0415 (linking itself has no jax)

  return np.asarray(paste_masks_in_image(mask.probs, mask.box, video_hw, aligned=mask.aligned))


@pytest.mark.parametrize("aligned", [False, True])
def test_compose_is_the_weighted_mean_of_upsampled_grid_masks_and_pasted_box_masks(aligned):
  rng = np.random.default_rng(1)
  grid_hw, video_hw = (12, 20), (37, 61)
  grid_sum = np.zeros(grid_hw, np.float32)
  grid_sum[2:9, 4:15] = 1.7 * rng.random([7, 11])  # two clips' masks, weights 1 and 0.7
  boxes = [frames.BoxMask(rng.random([28, 28]).astype(np.float32), np.array([10.3, 4.6, 41.8, 30.2], np.float32),
                          aligned),
           frames.BoxMask(rng.random([28, 28]).astype(np.float32), np.array([30.0, 20.5, 70.0, 50.0], np.float32),
                          aligned)]  # reaching beyond the frame
  parts = [(0.5, boxes[0]), (0.25, boxes[1])]
  binarize = frames.Binarizer(grid_hw, video_hw, 0.5)
  dense = binarize.rows.weights @ grid_sum @ binarize.cols.weights.T
  dense = dense + sum(w * _dense_paste(m, video_hw) for w, m in parts)
  got = rle.decode(binarize.compose(grid_sum, parts, 2.45))
  expected = dense / 2.45 >= 0.5
  # The same sums in another order: only pixels within rounding of the threshold may differ.
  differ = got.astype(bool) != expected
  assert np.all(np.abs(dense[differ] / 2.45 - 0.5) < 1e-5) and expected.sum() > 50
  # Without a grid part: the box masks alone; nothing reaching the threshold: no mask.
  alone = rle.decode(binarize.compose(None, [(1.0, boxes[0])], 1.0)).astype(bool)
  np.testing.assert_array_equal(alone, _dense_paste(boxes[0], video_hw) >= 0.5)
  assert binarize.compose(None, [(0.1, boxes[0])], 1.0) is None
  # Only a grid part: what __call__ gives for the mean.
  assert binarize.compose(grid_sum, [], 1.7) == binarize(grid_sum / 1.7)


def test_a_box_mask_beyond_the_frame_pastes_nothing():
  mask = frames.BoxMask(np.ones([28, 28], np.float32), np.array([70.0, 5.0, 90.0, 20.0], np.float32), True)
  assert mask.pasted((37, 61)) is None


def test_disjoint_masks_give_a_contested_pixel_to_the_more_confident_object_but_keep_duplicates():
  grid_hw = (20, 30)
  binarize = frames.Binarizer(grid_hw, grid_hw, 0.5)  # the identity upsampling: grid cells are pixels
  front, behind, twin = (np.zeros(grid_hw, np.float32) for _ in range(3))
  front[4:12, 4:12] = 0.9
  behind[8:16, 10:20] = 0.7  # shares a 4x2 corner with `front`: 8 of its 80 pixels
  twin[4:12, 4:10] = 0.6  # `front` drawn again, by a duplicate track
  masks = [(front, [], 1.0), (behind, [], 1.0), (twin, [], 1.0)]
  overlapping = [rle.decode(m).astype(bool) for m in binarize.compose_many(masks)]
  got = [rle.decode(m).astype(bool) for m in binarize.compose_many(masks, disjoint=True)]
  np.testing.assert_array_equal(got[0], overlapping[0])  # the more confident keeps every pixel
  np.testing.assert_array_equal(got[1], overlapping[1] & ~(front >= 0.5))  # the corner goes to `front`
  np.testing.assert_array_equal(got[2], overlapping[2])  # a duplicate is no other object: left as it is
  assert overlapping[1].sum() - got[1].sum() == 8
