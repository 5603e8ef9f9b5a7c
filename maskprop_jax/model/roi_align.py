"""RoIAlign with torchvision.ops.roi_align semantics, channels-last and static-shape.

Every RoI is sampled on a fixed grid of `pooled x sampling` points per axis, gathered from one flat
[rows, C] feature table. Per-RoI scalars (scale, map height/width, offset into the table) make the same code serve
a single feature map and a whole FPN pyramid: MultiScaleRoIAlign is one pass over the concatenated levels, not
one call per level. The bilinear taps are accumulated one (row tap, column tap) pair at a time in a scan, so
memory is that of the output, not of every sample.

torchvision's rule, which this reproduces per axis (the 2-D rule is the product of the two axes):
  start = box * scale - (0.5 if aligned else 0); length = end - start (at least 1 unless aligned)
  bin = length / pooled; grid = sampling_ratio if > 0 else ceil(bin)
  sample s of bin p at start + p * bin + (s + 0.5) * bin / grid
  a sample below -1 or above the map size contributes zero; otherwise it is clamped into the map and
  interpolated bilinearly; the output is the sum over the grid divided by max(grid_h * grid_w, 1).
With sampling_ratio <= 0 (adaptive) the grid varies per RoI; static shapes need a cap (`max_sampling_grid`) and
RoIs whose adaptive grid exceeds it are sampled on the capped grid instead (exact for every RoI within the cap).

Gradients flow to the features only (torchvision's roi_align has no gradient for the boxes either).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import jax
import jax.numpy as jnp

LevelRule = Literal["torchvision", "detectron2"]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(size, int):
    return size, size
  height, width = size
  return int(height), int(width)


def default_sampling_cap(height: int, width: int, output_size: tuple[int, int]) -> int:
  """The adaptive grid of any RoI inside an (height, width) map, plus one for the aligned half-pixel shift."""
  return max(math.ceil(height / output_size[0]), math.ceil(width / output_size[1])) + 1


def axis_samples(
    start: jax.Array,
    length: jax.Array,
    pooled: int,
    grid: jax.Array,
    max_grid: int,
    extent: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """Sample rows (or columns) of one axis and their bilinear weights.

  Args:
    start: [R] first coordinate of the RoI on the feature map.
    length: [R] RoI extent on the feature map (already clamped as torchvision does).
    pooled: output bins along this axis.
    grid: [R] int32 samples per bin (<= max_grid).
    max_grid: static number of sample slots per bin.
    extent: [R] int32 size of the feature map along this axis.

  Returns:
    index [R, pooled, 2 * max_grid] int32 (low and high neighbour of each sample) and weight [R, pooled,
    2 * max_grid] float32: the 1-D bilinear weights, zero for unused slots and for samples off the map.
  """
  bin_size = (length / pooled)[:, None, None]  # [R, 1, 1]
  bin_index = jnp.arange(pooled, dtype=length.dtype)[None, :, None]  # [1, P, 1]
  slot = jnp.arange(max_grid)[None, None, :]  # [1, 1, S]
  grid = grid[:, None, None]
  size = extent[:, None, None]
  # Same evaluation order as torchvision's kernel, so the float32 coordinates agree bit for bit. An empty grid
  # (zero-size aligned RoI) samples nothing; dividing by 1 instead keeps its unused coordinates finite.
  coord = (start[:, None, None] + bin_index * bin_size
           + (slot + 0.5).astype(length.dtype) * bin_size / jnp.maximum(grid, 1))
  used = (slot < grid) & (coord >= -1.0) & (coord <= size)  # [R, P, S]
  coord = jnp.maximum(coord, 0.0)
  low = jnp.floor(coord).astype(jnp.int32)
  at_end = low >= size - 1
  low = jnp.where(at_end, size - 1, low)
  high = jnp.where(at_end, size - 1, low + 1)
  frac = jnp.where(at_end, 0.0, coord - low.astype(coord.dtype))
  weight = jnp.where(used[..., None], jnp.stack([1.0 - frac, frac], axis=-1), 0.0)  # [R, P, S, 2]
  index = jnp.stack([low, high], axis=-1)
  num_rois = start.shape[0]
  return index.reshape(num_rois, pooled, -1), weight.reshape(num_rois, pooled, -1)


def roi_geometry(
    boxes: jax.Array,
    scale: jax.Array,
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    max_sampling_grid: int,
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array], jax.Array]:
  """Per-RoI start, length and grid along y and x, and the sample count torchvision divides by.

  boxes: [R, 4] x0, y0, x1, y1 in image pixels; scale: [R] feature-map pixels per image pixel.
  Returns ((y_start, y_length, y_grid), (x_start, x_length, x_grid), count [R]).
  """
  offset = 0.5 if aligned else 0.0
  boxes = jax.lax.stop_gradient(boxes.astype(jnp.float32))
  scaled = boxes * scale[:, None] - offset  # [R, 4]
  x_start, y_start = scaled[:, 0], scaled[:, 1]
  width = scaled[:, 2] - x_start
  height = scaled[:, 3] - y_start
  if not aligned:
    width = jnp.maximum(width, 1.0)
    height = jnp.maximum(height, 1.0)

  def grid_for(length, pooled):
    if sampling_ratio > 0:
      return jnp.full(length.shape, sampling_ratio, jnp.int32)
    adaptive = jnp.ceil(length / pooled).astype(jnp.int32)
    return jnp.clip(adaptive, 0, max_sampling_grid)

  y_grid = grid_for(height, output_size[0])
  x_grid = grid_for(width, output_size[1])
  count = jnp.maximum(y_grid * x_grid, 1).astype(jnp.float32)
  return (y_start, height, y_grid), (x_start, width, x_grid), count


def roi_align_from_table(
    table: jax.Array,
    row_offset: jax.Array,
    map_height: jax.Array,
    map_width: jax.Array,
    boxes: jax.Array,
    scale: jax.Array,
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    max_sampling_grid: int,
) -> jax.Array:
  """RoIAlign of RoIs that each read their own map inside a flat feature table.

  Args:
    table: [T, C] every feature map of interest, each flattened row-major (y, x) and concatenated.
    row_offset: [R] int32 first table row of the RoI's feature map.
    map_height, map_width: [R] int32 size of the RoI's feature map.
    boxes: [R, 4] image-pixel boxes; scale: [R] float32 map pixels per image pixel.
    output_size: (pooled_h, pooled_w); sampling_ratio, aligned: as torchvision.ops.roi_align.
    max_sampling_grid: static cap of the adaptive grid (used when sampling_ratio <= 0).

  Returns:
    [R, pooled_h, pooled_w, C] in the table's dtype.
  """
  max_grid = sampling_ratio if sampling_ratio > 0 else max_sampling_grid
  (y_start, y_len, y_grid), (x_start, x_len, x_grid), count = roi_geometry(
      boxes, scale, output_size, sampling_ratio, aligned, max_sampling_grid)
  rows, row_weight = axis_samples(y_start, y_len, output_size[0], y_grid, max_grid, map_height)  # [R, P, A]
  cols, col_weight = axis_samples(x_start, x_len, output_size[1], x_grid, max_grid, map_width)  # [R, Q, B]
  # One (row tap, column tap) pair per step: each step gathers [R, P, Q, C], so memory stays at the size of
  # the output however many samples a bin has (gathering all taps at once would be A * B times bigger).
  flat = (row_offset[:, None, None]
          + rows.transpose(2, 0, 1)[:, None, :, :, None] * map_width[:, None, None]
          + cols.transpose(2, 0, 1)[None, :, :, None, :])  # [A, B, R, P, Q]
  weight = row_weight.transpose(2, 0, 1)[:, None, :, :, None] * col_weight.transpose(2, 0, 1)[None, :, :, None, :]
  taps = flat.shape[0] * flat.shape[1]

  def accumulate(total, tap):
    index, tap_weight = tap  # [R, P, Q] each
    return total + table[index].astype(jnp.float32) * tap_weight[..., None], None

  pooled, _ = jax.lax.scan(
      accumulate, jnp.zeros(flat.shape[2:] + table.shape[-1:], jnp.float32),
      (flat.reshape(taps, *flat.shape[2:]), weight.reshape(taps, *flat.shape[2:])))  # [R, P, Q, C]
  return (pooled / count[:, None, None, None]).astype(table.dtype)


def roi_align(
    features: jax.Array,
    boxes: jax.Array,
    batch_index: jax.Array,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    max_sampling_grid: int | None = None,
) -> jax.Array:
  """torchvision.ops.roi_align for NHWC features.

  Args:
    features: [B, H, W, C].
    boxes: [R, 4] x0, y0, x1, y1 in input coordinates (multiplied by spatial_scale).
    batch_index: [R] int image of each RoI.
    output_size: pooled (h, w) or one int.
    spatial_scale, sampling_ratio, aligned: as torchvision.
    max_sampling_grid: cap of the adaptive grid; default covers every RoI inside the map.

  Returns:
    [R, pooled_h, pooled_w, C].
  """
  output_size = _pair(output_size)
  batch, height, width, channels = features.shape
  if max_sampling_grid is None:
    max_sampling_grid = default_sampling_cap(height, width, output_size)
  num_rois = boxes.shape[0]
  table = features.reshape(batch * height * width, channels)
  row_offset = batch_index.astype(jnp.int32) * (height * width)
  return roi_align_from_table(
      table, row_offset,
      jnp.full((num_rois,), height, jnp.int32), jnp.full((num_rois,), width, jnp.int32),
      boxes, jnp.full((num_rois,), spatial_scale, jnp.float32),
      output_size, sampling_ratio, aligned, max_sampling_grid)


def roi_align_matrices(
    boxes: jax.Array,
    map_hw: tuple[int, int],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    max_sampling_grid: int | None = None,
    valid_hw: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """RoIAlign as two dense 1-D operators: out[r] = row_op[r] @ map @ col_op[r].T / count[r].

  Bilinear sampling is separable and torchvision's grid is a product grid, so this is exact; it suits
  single-channel maps pooled with large adaptive grids (ground-truth masks), where gathering every sample of
  every bin would be far bigger than the [R, P, H] and [R, Q, W] operators.

  map_hw is the static (padded) map size; valid_hw [R, 2], when given, is the true size of each RoI's map
  inside it: roi_align then treats that size as the map's edge (clamping and zeroing samples there), as it
  would on the unpadded map.

  Returns row_op [R, P, H], col_op [R, Q, W] (float32) and count [R].
  """
  output_size = _pair(output_size)
  height, width = map_hw
  if max_sampling_grid is None:
    max_sampling_grid = default_sampling_cap(height, width, output_size)
  max_grid = sampling_ratio if sampling_ratio > 0 else max_sampling_grid
  num_rois = boxes.shape[0]
  (y_start, y_len, y_grid), (x_start, x_len, x_grid), count = roi_geometry(
      boxes, jnp.full((num_rois,), spatial_scale, jnp.float32), output_size, sampling_ratio, aligned,
      max_sampling_grid)

  if valid_hw is None:
    valid_hw = jnp.broadcast_to(jnp.asarray([height, width], jnp.int32), (num_rois, 2))
  valid_hw = jnp.asarray(valid_hw, jnp.int32)

  def dense(start, length, grid, pooled, size, valid_size):
    index, weight = axis_samples(start, length, pooled, grid, max_grid, valid_size)
    hits = index[..., None] == jnp.arange(size)  # [R, P, A, size]
    return jnp.sum(jnp.where(hits, weight[..., None], 0.0), axis=2)  # [R, P, size]

  row_op = dense(y_start, y_len, y_grid, output_size[0], height, valid_hw[:, 0])
  col_op = dense(x_start, x_len, x_grid, output_size[1], width, valid_hw[:, 1])
  return row_op, col_op, count


def roi_align_single_channel(
    maps: jax.Array,
    boxes: jax.Array,
    map_index: jax.Array,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    max_sampling_grid: int | None = None,
    valid_hw: jax.Array | None = None,
    rois_per_step: int = 8,
) -> jax.Array:
  """roi_align of single-channel maps through the separable operators (see roi_align_matrices).

  maps: [G, H, W] (any numeric dtype); boxes: [R, 4]; map_index: [R] int map of each RoI; valid_hw: optional
  [R, 2] true size of each RoI's map inside the padded [H, W]. RoIs are pooled `rois_per_step` at a time, so
  that memory holds a few [H, W] maps and operators rather than one per RoI (image-size masks are large).
  Returns [R, pooled_h, pooled_w] float32.
  """
  num_rois = boxes.shape[0]
  if valid_hw is None:
    valid_hw = jnp.broadcast_to(jnp.asarray(maps.shape[1:], jnp.int32), (num_rois, 2))

  def pool(roi):
    box, index, hw = roi  # [4], [], [2]
    row_op, col_op, count = roi_align_matrices(
        box[None], maps.shape[1:], output_size, spatial_scale, sampling_ratio, aligned, max_sampling_grid,
        hw[None])  # [1, P, H], [1, Q, W], [1]
    selected = maps[index].astype(jnp.float32)  # [H, W]
    pooled = jnp.einsum("ph,hw,qw->pq", row_op[0], selected, col_op[0], precision=jax.lax.Precision.HIGHEST)
    return pooled / count[0]

  return jax.lax.map(pool, (boxes, map_index, jnp.asarray(valid_hw, jnp.int32)), batch_size=rois_per_step)


def infer_scales(feature_hw: Sequence[tuple[int, int]], image_hw: tuple[int, int]) -> tuple[float, ...]:
  """Map pixels per image pixel of each level, as torchvision infers them: a power of two from the heights."""
  return tuple(2.0 ** round(math.log2(h / image_hw[0])) for h, _ in feature_hw)


def map_levels(
    boxes: jax.Array,
    k_min: int,
    k_max: int,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
    rule: LevelRule = "torchvision",
) -> jax.Array:
  """FPN level of each box (Eqn. 1 of the FPN paper), 0 for k_min. boxes: [R, 4] -> [R] int32.

  "torchvision" adds eps after the log (torchvision's LevelMapper); "detectron2" adds 1e-8 inside it
  (detectron2's assign_boxes_to_levels).
  """
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  size = jnp.sqrt(area)
  if rule == "torchvision":
    level = jnp.floor(canonical_level + jnp.log2(size / canonical_scale) + jnp.float32(eps))
  elif rule == "detectron2":
    level = jnp.floor(canonical_level + jnp.log2(size / canonical_scale + 1e-8))
  else:
    raise ValueError(f"unknown level rule {rule!r}; expected 'torchvision' or 'detectron2'")
  # Degenerate (padding) boxes have zero or negative area; send them to the finest level, like a tiny box.
  level = jnp.where(jnp.isnan(level), k_min, level)
  return (jnp.clip(level, k_min, k_max) - k_min).astype(jnp.int32)


def multi_scale_roi_align(
    features: Sequence[jax.Array],
    boxes: jax.Array,
    batch_index: jax.Array,
    image_hw: tuple[int, int],
    output_size: int | Sequence[int],
    sampling_ratio: int,
    aligned: bool = False,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    level_rule: LevelRule = "torchvision",
    max_sampling_grid: int | None = None,
) -> jax.Array:
  """torchvision.ops.MultiScaleRoIAlign: each RoI pooled from the FPN level its size selects.

  Args:
    features: per level [B, H_l, W_l, C], finest first (P2..P5 in Mask R-CNN).
    boxes: [R, 4] image-pixel boxes; batch_index: [R] int image of each RoI.
    image_hw: static (H, W) of the network input, used to infer each level's scale.
    output_size, sampling_ratio, aligned: as roi_align.
    canonical_scale, canonical_level, level_rule: the level mapper (see map_levels).
    max_sampling_grid: cap of the adaptive grid; the default covers every RoI inside the coarsest map (the
      level mapper sends big RoIs there, so only long thin RoIs on fine levels can exceed it).

  Returns:
    [R, pooled_h, pooled_w, C].
  """
  output_size = _pair(output_size)
  shapes = [f.shape for f in features]
  scales = infer_scales([(s[1], s[2]) for s in shapes], image_hw)
  if max_sampling_grid is None:
    max_sampling_grid = default_sampling_cap(shapes[-1][1], shapes[-1][2], output_size)
  table = jnp.concatenate([f.reshape(-1, f.shape[-1]) for f in features], axis=0)  # [T, C]
  if len(features) == 1:
    level = jnp.zeros(boxes.shape[:1], jnp.int32)
  else:
    k_min = int(round(-math.log2(scales[0])))
    k_max = int(round(-math.log2(scales[-1])))
    level = map_levels(boxes, k_min, k_max, canonical_scale, canonical_level, rule=level_rule)

  starts = [0]
  for s in shapes[:-1]:
    starts.append(starts[-1] + s[0] * s[1] * s[2])
  level_start = jnp.asarray(starts, jnp.int32)[level]
  level_height = jnp.asarray([s[1] for s in shapes], jnp.int32)[level]
  level_width = jnp.asarray([s[2] for s in shapes], jnp.int32)[level]
  level_scale = jnp.asarray(scales, jnp.float32)[level]
  row_offset = level_start + batch_index.astype(jnp.int32) * level_height * level_width
  return roi_align_from_table(
      table, row_offset, level_height, level_width, boxes, level_scale,
      output_size, sampling_ratio, aligned, max_sampling_grid)
