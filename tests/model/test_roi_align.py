"""RoIAlign: hand-computed values, and parity with torchvision.ops.roi_align / MultiScaleRoIAlign."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax.model import roi_align as ra

_STATIC = ("output_size", "spatial_scale", "sampling_ratio", "aligned", "max_sampling_grid")
roi_align = jax.jit(ra.roi_align, static_argnames=_STATIC)
roi_align_single_channel = jax.jit(ra.roi_align_single_channel, static_argnames=_STATIC)
multi_scale_roi_align = jax.jit(ra.multi_scale_roi_align, static_argnames=("image_hw", "output_size",
                                                                           "sampling_ratio"))


def _random_case(seed, batch=2, height=11, width=13, channels=3, num_rois=9):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(batch, height, width, channels)).astype(np.float32)
  # Boxes of several sizes, some partly outside the map, one degenerate (zero width).
  x0 = rng.uniform(-4, width, num_rois)
  y0 = rng.uniform(-4, height, num_rois)
  boxes = np.stack([x0, y0, x0 + rng.uniform(0, 9, num_rois), y0 + rng.uniform(0, 9, num_rois)], 1)
  boxes[0, 2] = boxes[0, 0]
  batch_index = rng.integers(0, batch, num_rois).astype(np.int32)
  return features, boxes.astype(np.float32), batch_index


def test_single_sample_reads_bilinear_value():
  features = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)  # value = 4 * y + x
  boxes = jnp.array([[0.0, 0.0, 3.0, 2.0]])  # one sample at (x=1.5, y=1)
  out = roi_align(features, boxes, jnp.zeros(1, jnp.int32), output_size=1, sampling_ratio=1)
  np.testing.assert_allclose(out[0, 0, 0, 0], 4 * 1.0 + 1.5)
  # aligned shifts by half a pixel: the sample lands on (x=1, y=0.5).
  out = roi_align(features, boxes, jnp.zeros(1, jnp.int32), output_size=1, sampling_ratio=1, aligned=True)
  np.testing.assert_allclose(out[0, 0, 0, 0], 4 * 0.5 + 1.0)


def test_samples_off_the_map_are_zero_and_edges_are_clamped():
  features = jnp.ones((1, 4, 4, 1), jnp.float32)
  # Two samples in x: x=-1.5 (off the map, zero) and x=-0.5 (clamped to 0, value 1); y=2 inside.
  boxes = jnp.array([[-2.0, 1.5, 0.0, 2.5]])
  out = roi_align(features, boxes, jnp.zeros(1, jnp.int32), output_size=1, sampling_ratio=2)
  np.testing.assert_allclose(out[0, 0, 0, 0], (0 + 0 + 1 + 1) / 4)


def test_map_levels_follows_fpn_equation():
  sizes = np.array([10.0, 111.0, 112.0, 224.0, 447.0, 448.0, 2000.0])
  boxes = jnp.asarray(np.stack([np.zeros(7), np.zeros(7), sizes, sizes], 1), jnp.float32)
  np.testing.assert_array_equal(ra.map_levels(boxes, 2, 5), [0, 0, 1, 2, 2, 3, 3])
  padding = jnp.zeros((1, 4))
  np.testing.assert_array_equal(ra.map_levels(padding, 2, 5), [0])


def test_detectron2_level_rule_puts_its_epsilon_inside_the_log():
  # Two float32 steps below 224: log2(size / 224) is -1.7e-7, and size / 224 + 1e-8 still rounds below 1.
  below_224 = float(np.nextafter(np.nextafter(np.float32(224.0), np.float32(0.0)), np.float32(0.0)))
  boxes = jnp.array([[0.0, 0.0, below_224, below_224]])
  assert int(ra.map_levels(boxes, 2, 5, rule="torchvision")[0]) == 2  # level 4: 1e-6 lifts it over the boundary
  assert int(ra.map_levels(boxes, 2, 5, rule="detectron2")[0]) == 1  # level 3: 1e-8 inside the log does not


def test_infer_scales_uses_powers_of_two():
  assert ra.infer_scales([(200, 304), (100, 152), (50, 76), (25, 38)], (800, 1216)) == (0.25, 0.125, 0.0625, 0.03125)


torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def _torch_rois(boxes, batch_index):
  return torch.cat([torch.from_numpy(batch_index).float()[:, None], torch.from_numpy(boxes)], 1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2, -1])
def test_roi_align_matches_torchvision_forward_and_gradient(aligned, sampling_ratio):
  features, boxes, batch_index = _random_case(seed=3 + sampling_ratio)
  scale, size = 0.5 if aligned else 1.0, (3, 4)
  boxes = boxes / scale

  @jax.jit
  @functools.partial(jax.grad, has_aux=True)
  def pooled_sum(feats, cotangent):
    out = ra.roi_align(feats, jnp.asarray(boxes), jnp.asarray(batch_index), size, scale, sampling_ratio, aligned)
    return jnp.sum(out * cotangent), out

  cotangent = np.random.default_rng(0).normal(size=(len(boxes), *size, features.shape[-1])).astype(np.float32)
  grad, out = pooled_sum(jnp.asarray(features), jnp.asarray(cotangent))

  torch_features = torch.from_numpy(features).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
  expected = torchvision.ops.roi_align(torch_features, _torch_rois(boxes, batch_index), size, scale,
                                       sampling_ratio, aligned)
  (expected * torch.from_numpy(cotangent).permute(0, 3, 1, 2)).sum().backward()
  np.testing.assert_allclose(out, expected.permute(0, 2, 3, 1).detach().numpy(), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(grad, torch_features.grad.permute(0, 2, 3, 1).numpy(), atol=1e-5, rtol=1e-5)


def test_capped_adaptive_grid_equals_that_fixed_sampling_ratio():
  features, _, _ = _random_case(seed=5, height=30, width=30)
  boxes = np.array([[0.0, 0.0, 29.0, 25.0], [2.0, 3.0, 28.0, 29.0]], np.float32)  # adaptive grid >= 9
  batch_index = np.array([0, 1], np.int32)
  out = roi_align(jnp.asarray(features), jnp.asarray(boxes), jnp.asarray(batch_index), output_size=3,
                max_sampling_grid=4)
  expected = torchvision.ops.roi_align(torch.from_numpy(features).permute(0, 3, 1, 2), _torch_rois(boxes, batch_index),
                                       3, 1.0, 4, False)
  np.testing.assert_allclose(out, expected.permute(0, 2, 3, 1).numpy(), atol=1e-5)


@pytest.mark.parametrize("aligned", [False, True])
def test_single_channel_operators_match_torchvision_adaptive(aligned):
  rng = np.random.default_rng(7)
  masks = (rng.uniform(size=(3, 40, 50)) > 0.5).astype(np.uint8)
  boxes = np.array([[1.5, 2.0, 45.0, 37.5], [10.0, 10.0, 12.0, 30.0], [-3.0, 5.0, 20.0, 20.0],
                    [30.0, 30.0, 30.0, 30.0]], np.float32)
  mask_index = np.array([0, 2, 1, 0], np.int32)
  out = roi_align_single_channel(jnp.asarray(masks), jnp.asarray(boxes), jnp.asarray(mask_index), output_size=7,
                                 aligned=aligned)
  expected = torchvision.ops.roi_align(torch.from_numpy(masks)[:, None].float(), _torch_rois(boxes, mask_index),
                                       7, 1.0, -1, aligned)[:, 0]
  np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)


def test_multi_scale_roi_align_matches_torchvision():
  rng = np.random.default_rng(11)
  image_hw, batch, channels = (256, 224), 2, 4
  levels = [rng.normal(size=(batch, image_hw[0] // s, image_hw[1] // s, channels)).astype(np.float32)
            for s in (4, 8, 16, 32)]
  sizes = np.array([8, 60, 120, 230, 250, 500, 150, 20], np.float32)  # levels 2, 3, 4, 5
  x0 = rng.uniform(-10, 100, len(sizes)).astype(np.float32)
  y0 = rng.uniform(-10, 100, len(sizes)).astype(np.float32)
  boxes = np.stack([x0, y0, x0 + sizes, y0 + 0.9 * sizes], 1)
  batch_index = np.array([0, 0, 0, 1, 1, 1, 1, 1], np.int32)

  out = multi_scale_roi_align([jnp.asarray(f) for f in levels], jnp.asarray(boxes), jnp.asarray(batch_index),
                              image_hw=image_hw, output_size=7, sampling_ratio=2)
  pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
  torch_levels = {str(i): torch.from_numpy(f).permute(0, 3, 1, 2) for i, f in enumerate(levels)}
  per_image = [torch.from_numpy(boxes[batch_index == b]) for b in range(batch)]
  expected = pooler(torch_levels, per_image, [image_hw] * batch)
  np.testing.assert_allclose(out, expected.permute(0, 2, 3, 1).numpy(), atol=1e-5)
  # Make sure the case exercises more than one level.
  assert len(np.unique(ra.map_levels(jnp.asarray(boxes), 2, 5))) == 4
