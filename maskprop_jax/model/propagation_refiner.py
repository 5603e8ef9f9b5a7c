"""Refinement of propagated masks on the reference frame's own pixels (the paper's high-resolution refinement, in
our form; off unless `propagation.refine_layers` is set).

A propagated mask comes out of features of stride 4 or more: its outline is right only to within a feature cell.
For each (reference frame, instance) the refiner takes a window around the mask (its support at probability 0.5,
widened by MARGIN of its size and one mask cell on each side), pools on a SIZE x SIZE grid of that window

  - the propagated probability (as the logit of the pooled probability), the reference frame's propagation-level
    features (projected to FEATURE_CHANNELS by a 1x1 conv on the whole frame first) and its normalised pixels (the
    image at stride 1),

runs the image-guided refiner (mask_refiner.ImageMaskRefiner, one output channel) and adds its residual to the
logit: a window mask, sampled back onto the mask grid at its cells' centres. Pooling (RoIAlign with aligned=True)
and sampling back share one convention, pixel i covering [i, i + 1), so a window's round trip moves nothing. A mask
with no pixel at 0.5 has no window and stays as it was. Training scores the window logits with a binary
cross-entropy against the ground truth pooled on the same window; the propagated masks enter without gradient, as
the center masks enter propagation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from flax import nnx

from maskprop_jax.model.conv_lowering import conv_general_dilated
from maskprop_jax.model.conv_norm_activation import conv_kernel_init
from maskprop_jax.model.mask_refiner import IMAGE_SAMPLING_RATIO, ImageMaskRefiner, pool_on_boxes

SIZE = 28  # the window's grid, as Mask R-CNN's masks
MARGIN = 0.25  # the window reaches this share of the mask's height and width beyond its support on each side
THRESHOLD = 0.5  # the support of a mask: its pixels at or above this probability
# Channels of the propagation-level features the refiner reads. They are projected on the frame, once per reference
# frame, before each window pools them: pooling and convolving all 256 channels of P3 on each of a clip's 10 x 12
# windows made the refiner cost 1.7x the propagation branch itself (configs/ytvis.py's benchmark).
FEATURE_CHANNELS = 16
_LOGIT_CLIP = 1e-4  # pooled probabilities enter as logits of p clipped to [eps, 1 - eps]


class PropagationRefiner(nnx.Module):
  """A 1x1 projection of the propagation-level features, and the image-guided refiner on [logit, projection,
  pixels] of each window (one output channel)."""

  def __init__(self, feature_channels: int, layers, *, rngs: nnx.Rngs):
    self.project = nnx.Conv(feature_channels, FEATURE_CHANNELS, (1, 1), kernel_init=conv_kernel_init,
                            bias_init=nnx.initializers.zeros, conv_general_dilated=conv_general_dilated,
                            rngs=rngs)
    self.head = ImageMaskRefiner(1 + FEATURE_CHANNELS, layers, 1, rngs=rngs)


def support_windows(probs: jax.Array, stride: int) -> tuple[jax.Array, jax.Array]:
  """Windows around masks [N, I, h, w] on a grid of `stride` input pixels: boxes [N, I, 4] (x0, y0, x1, y1) in
  input pixels and whether the mask has any pixel at THRESHOLD [N, I]."""
  height, width = probs.shape[-2:]
  on = probs >= THRESHOLD
  rows, cols = on.any(-1), on.any(-2)  # [N, I, h], [N, I, w]
  valid = rows.any(-1)

  def extent(present, size):
    index = jnp.arange(size, dtype=jnp.float32)
    first = jnp.min(jnp.where(present, index, size), axis=-1)
    last = jnp.max(jnp.where(present, index, -1), axis=-1) + 1
    return first * stride, last * stride

  y0, y1 = extent(rows, height)
  x0, x1 = extent(cols, width)
  pad_x = MARGIN * (x1 - x0) + stride
  pad_y = MARGIN * (y1 - y0) + stride
  boxes = jnp.stack([x0 - pad_x, y0 - pad_y, x1 + pad_x, y1 + pad_y], axis=-1)
  return jnp.where(valid[..., None], boxes, jnp.asarray([0.0, 0.0, 1.0, 1.0])), valid


def _pool(maps: jax.Array, boxes: jax.Array, scale: float, sampling_ratio: int = IMAGE_SAMPLING_RATIO) -> jax.Array:
  """maps [N, h, w, C] on a grid of 1/scale input pixels, boxes [N, I, 4] -> [N * I, SIZE, SIZE, C], aligned."""
  return pool_on_boxes(maps, boxes, SIZE, scale=scale, sampling_ratio=sampling_ratio, aligned=True)


def _sampling_weights(start: jax.Array, end: jax.Array, cells: int, stride: int) -> jax.Array:
  """Bilinear weights [..., cells, SIZE] that sample a window's SIZE bins spanning start..end (input pixels, [...])
  at the centres of a grid's cells (stride input pixels each); zero for cells whose centre is outside the window."""
  centre = (jnp.arange(cells, dtype=jnp.float32) + 0.5) * stride  # [cells]
  length = jnp.maximum(end - start, 1e-6)[..., None]
  position = (centre - start[..., None]) / length * SIZE - 0.5  # in bins, bin b centred at b
  inside = (position >= -0.5) & (position <= SIZE - 0.5)
  position = jnp.clip(position, 0.0, SIZE - 1.0)
  low = jnp.floor(position)
  frac = position - low
  bins = jnp.arange(SIZE, dtype=jnp.float32)
  weight = (jnp.where(bins == low[..., None], 1.0 - frac[..., None], 0.0)
            + jnp.where(bins == low[..., None] + 1, frac[..., None], 0.0))
  return jnp.where(inside[..., None], weight, 0.0)


def sample_back(window_values: jax.Array, boxes: jax.Array, grid_hw: tuple[int, int], stride: int) -> jax.Array:
  """Window values [N, I, SIZE, SIZE] at boxes [N, I, 4] -> [N, I, h, w] on a grid of `stride` input pixels, zero
  outside each window."""
  rows = _sampling_weights(boxes[..., 1], boxes[..., 3], grid_hw[0], stride)  # [N, I, h, SIZE]
  cols = _sampling_weights(boxes[..., 0], boxes[..., 2], grid_hw[1], stride)  # [N, I, w, SIZE]
  return jnp.einsum("niya,niab,nixb->niyx", rows, window_values, cols, precision=jax.lax.Precision.HIGHEST)


def window_logits(refiner: PropagationRefiner, probs: jax.Array, boxes: jax.Array, inputs: jax.Array,
                  features: jax.Array, mask_stride: int, feature_stride: int) -> jax.Array:
  """Refined box-relative logits [N, I, SIZE, SIZE] of masks probs [N, I, h, w] (mask grid of `mask_stride`) in
  windows boxes [N, I, 4], from the frames' normalised inputs [N, H, W, 3] and features [N, H/s, W/s, C]."""
  batch, num_masks = probs.shape[:2]
  # Each instance's mask is its own "image": pooled with a batch index per (frame, instance). Probabilities are
  # pooled, then made logits: pooled logits would erode every outline (a bin half on a 0.9 cell, half on a 1e-4
  # one averages to a logit of -3.5), by up to a pixel of the input once linking pastes the window at the video's
  # resolution.
  flat = probs.reshape(batch * num_masks, *probs.shape[2:], 1)  # [N * I, h, w, 1]
  pooled = jnp.clip(_pool(flat, boxes.reshape(batch * num_masks, 1, 4), 1.0 / mask_stride), _LOGIT_CLIP,
                    1 - _LOGIT_CLIP)  # [N * I, S, S, 1]
  pooled_logit = jnp.log(pooled) - jnp.log(1 - pooled)
  pooled_features = _pool(refiner.project(features), boxes, 1.0 / feature_stride)  # [N * I, S, S, F]
  pixels = _pool(inputs, boxes, 1.0)  # [N * I, S, S, 3]
  residual = refiner.head(jnp.concatenate([pooled_logit, pooled_features], axis=-1), pixels)[..., 0]
  return (pooled_logit[..., 0] + residual).reshape(batch, num_masks, SIZE, SIZE)


class Windows(NamedTuple):
  """The refined masks as the refiner made them: box-relative, finer than the mask grid for objects bigger than
  SIZE grid cells (linking pastes them at the video's resolution, as a box mask with the aligned rule)."""

  probs: jax.Array  # [N, I, SIZE, SIZE] refined probabilities on each window
  boxes: jax.Array  # [N, I, 4] the windows (x0, y0, x1, y1) in input pixels
  valid: jax.Array  # [N, I] whether the mask had a window (a pixel at THRESHOLD); where not, it is unrefined


def refine(refiner: PropagationRefiner, probs: jax.Array, inputs: jax.Array, features: jax.Array,
           mask_stride: int, feature_stride: int) -> tuple[jax.Array, Windows]:
  """(refined probabilities [N, I, h, w] on the mask grid, the refined windows) of propagated masks probs
  [N, I, h, w] (see window_logits)."""
  boxes, valid = support_windows(probs, mask_stride)
  box_probs = jax.nn.sigmoid(window_logits(refiner, probs, boxes, inputs, features, mask_stride, feature_stride))
  refined = sample_back(box_probs, boxes, probs.shape[-2:], mask_stride)
  return jnp.where(valid[..., None, None], refined, probs), Windows(box_probs, boxes, valid)


def refine_loss(refiner: PropagationRefiner, probs: jax.Array, inputs: jax.Array, features: jax.Array,
                target_masks: jax.Array, track_valid: jax.Array, mask_stride: int,
                feature_stride: int) -> jax.Array:
  """Binary cross-entropy of the refined window logits against the ground truth on the same windows.

  probs [N, I, h, w] propagated (no gradient flows into them); inputs [N, H, W, 3]; features [N, H/s, W/s, C];
  target_masks [N, I, H, W] 0/1 at input resolution (zero beyond the image); track_valid [N, I].
  """
  probs = jax.lax.stop_gradient(probs)
  boxes, has_window = support_windows(probs, mask_stride)
  logits = window_logits(refiner, probs, boxes, inputs, features, mask_stride, feature_stride)
  batch, num_masks = probs.shape[:2]
  flat_targets = target_masks.astype(jnp.float32).reshape(batch * num_masks, *target_masks.shape[2:], 1)
  # Bins as wide as several pixels average all of theirs (the adaptive grid), as Mask R-CNN's targets do.
  targets = _pool(flat_targets, boxes.reshape(batch * num_masks, 1, 4), 1.0, -1)
  targets = targets.reshape(batch, num_masks, SIZE, SIZE)  # [N, I, S, S]
  per_mask = optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=(-2, -1))  # [N, I]
  weight = (track_valid & has_window).astype(jnp.float32)
  return jnp.sum(per_mask * weight) / jnp.maximum(jnp.sum(weight), 1.0)
