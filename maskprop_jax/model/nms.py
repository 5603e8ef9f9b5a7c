"""Non-maximum suppression with static shapes, equal to torchvision.ops.nms and batched_nms.

torchvision's NMS sorts boxes by score (descending, ties by index), walks them in that order, keeps a box unless a
kept box overlaps it with IoU > threshold, and returns the kept indices in that order. Here the same greedy walk
runs over tiles of the sorted boxes inside a `lax.while_loop`:
  1. a tile is first compared with the (at most `max_output`) boxes kept so far: one [T, K] IoU block;
  2. inside the tile, greedy suppression is the unique fixed point of
     keep[j] = candidate[j] and not any(keep[i] and IoU(i, j) > threshold for i < j),
     which a short inner loop finds (each pass settles at least one more box, usually two or three passes suffice);
  3. the loop stops as soon as `max_output` boxes are kept, since callers (RPN post-NMS top-n, detections per image)
     only ever look at the first `max_output` kept boxes, or when the valid boxes (sorted first) run out.
Work is O(N * max_output) like the CPU kernel, with vector-friendly blocks for accelerators. Outputs are
`keep_idx [max_output]` (indices into the input, highest score first) and `keep_valid [max_output]`; unused slots
hold index 0 and valid False. For a batch of images, `jax.vmap` these functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from maskprop_jax.model import box_ops

# torchvision (CPU) switches batched_nms from the coordinate-offset trick to one NMS per category above this many
# boxes; the two differ only in float rounding of IoU values that sit exactly at the threshold.
TORCHVISION_CPU_COORDINATE_TRICK_MAX_BOXES = 1000


def float32_threshold(threshold: float) -> np.float32:
  """The float32 t with (v > t) == (v > threshold) for every float32 v.

  torchvision compares float32 IoU values with a double threshold; float32(0.3) is above 0.3, so rounding the
  threshold to nearest would keep boxes whose IoU is exactly float32(0.3) that torchvision suppresses.
  """
  rounded = np.float32(threshold)
  if float(rounded) > threshold:
    rounded = np.nextafter(rounded, np.float32(-np.inf))
  return rounded


def _iou_exceeds(
    kept_boxes: jnp.ndarray,  # [K, 4] higher-scored boxes
    kept_areas: jnp.ndarray,  # [K]
    boxes: jnp.ndarray,  # [T, 4]
    areas: jnp.ndarray,  # [T]
    threshold: np.float32,
) -> jnp.ndarray:
  """[K, T] mask IoU(kept, box) > threshold, with torchvision's kernel arithmetic (areas computed once)."""
  inter = box_ops.pairwise_intersection(kept_boxes, boxes)  # [K, T]
  union = kept_areas[:, None] + areas[None, :] - inter
  return inter / union > threshold


def _greedy_over_sorted(
    boxes: jnp.ndarray,  # [N, 4] valid boxes first, each part by descending score
    candidate: jnp.ndarray,  # [N] bool
    num_candidates: jnp.ndarray,  # scalar: candidates are the first num_candidates boxes
    category: jnp.ndarray,  # [N] int32; only boxes of equal category suppress each other
    threshold: np.float32,
    max_output: int,
    tile_size: int,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Greedy NMS over pre-sorted boxes; returns (positions in sorted order [max_output], valid [max_output])."""
  num_boxes = boxes.shape[0]
  tile = min(tile_size, num_boxes)
  num_tiles = -(-num_boxes // tile)
  pad = num_tiles * tile - num_boxes
  boxes = jnp.pad(boxes, ((0, pad), (0, 0)))
  candidate = jnp.pad(candidate, (0, pad))
  category = jnp.pad(category, (0, pad))
  areas = box_ops.box_area(boxes)  # [N_pad]
  earlier_in_tile = jnp.arange(tile)[:, None] < jnp.arange(tile)[None, :]  # [T, T] i < j

  def settle_tile(tile_candidate, suppresses):
    # Fixed point of keep[j] = candidate[j] & ~any_i(keep[i] & suppresses[i, j]) (suppresses is strictly upper).
    def step(state):
      keep, _ = state
      new_keep = tile_candidate & ~jnp.any(suppresses & keep[:, None], axis=0)
      return new_keep, jnp.any(new_keep != keep)

    keep, _ = jax.lax.while_loop(lambda s: s[1], step, (tile_candidate, jnp.array(True)))
    return keep

  def body(state):
    t, count, kept_pos, kept_boxes, kept_areas, kept_category, kept_valid = state
    start = t * tile
    tile_boxes = jax.lax.dynamic_slice_in_dim(boxes, start, tile)  # [T, 4]
    tile_areas = jax.lax.dynamic_slice_in_dim(areas, start, tile)  # [T]
    tile_category = jax.lax.dynamic_slice_in_dim(category, start, tile)  # [T]
    tile_candidate = jax.lax.dynamic_slice_in_dim(candidate, start, tile)  # [T]

    by_kept = _iou_exceeds(kept_boxes, kept_areas, tile_boxes, tile_areas, threshold)  # [K, T]
    by_kept &= kept_valid[:, None] & (kept_category[:, None] == tile_category[None, :])
    tile_candidate &= ~jnp.any(by_kept, axis=0)

    within = _iou_exceeds(tile_boxes, tile_areas, tile_boxes, tile_areas, threshold)  # [T, T]
    within &= earlier_in_tile & (tile_category[:, None] == tile_category[None, :])
    keep = settle_tile(tile_candidate, within)  # [T]

    # Append this tile's kept boxes after the ones kept so far; slots past max_output are dropped.
    slot = jnp.where(keep, count + jnp.cumsum(keep) - 1, max_output)  # [T]
    kept_pos = kept_pos.at[slot].set(start + jnp.arange(tile), mode="drop")
    kept_boxes = kept_boxes.at[slot].set(tile_boxes, mode="drop")
    kept_areas = kept_areas.at[slot].set(tile_areas, mode="drop")
    kept_category = kept_category.at[slot].set(tile_category, mode="drop")
    kept_valid = kept_valid.at[slot].set(True, mode="drop")
    count = jnp.minimum(count + jnp.sum(keep), max_output)
    return t + 1, count, kept_pos, kept_boxes, kept_areas, kept_category, kept_valid

  def not_done(state):
    t, count = state[0], state[1]
    return (t * tile < num_candidates) & (count < max_output)

  init = (
      jnp.array(0, jnp.int32),
      jnp.array(0, jnp.int32),
      jnp.zeros((max_output,), jnp.int32),
      jnp.zeros((max_output, 4), boxes.dtype),
      jnp.zeros((max_output,), boxes.dtype),
      jnp.zeros((max_output,), category.dtype),
      jnp.zeros((max_output,), bool),
  )
  state = jax.lax.while_loop(not_done, body, init)
  return state[2], state[6]


def _check_shapes(boxes, scores, valid, idxs=None):
  n = boxes.shape[0]
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"nms expects boxes of shape [N, 4], got {boxes.shape}")
  for name, array in (("scores", scores), ("valid", valid), ("idxs", idxs)):
    if array is not None and array.shape != (n,):
      raise ValueError(f"nms expects {name} of shape [{n}], got {array.shape}")


def _valid_first_by_descending_score(scores: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """Order [N]: valid boxes by descending score, equal scores in index order (torchvision's stable sort).

  Scores are mapped to int32 keys with the same order (the IEEE-754 bit trick: flip the magnitude bits of negative
  numbers) and invalid boxes get the smallest key, so that one top_k -- which puts equal keys in index order and
  is several times faster than a multi-key sort on CPU -- does the whole job.
  """
  bits = jax.lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.int32)
  keys = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
  keys = jnp.where(valid, keys, jnp.iinfo(jnp.int32).min)
  return jax.lax.top_k(keys, scores.shape[0])[1]


def _nms_with_categories(boxes, scores, valid, category, iou_threshold, max_output, tile_size):
  order = _valid_first_by_descending_score(scores, valid)  # [N]
  positions, keep_valid = _greedy_over_sorted(
      boxes[order], valid[order], jnp.sum(valid), category[order], float32_threshold(iou_threshold), max_output,
      tile_size,
  )
  keep_idx = jnp.where(keep_valid, order[positions], 0).astype(jnp.int32)
  return keep_idx, keep_valid


@functools.partial(jax.jit, static_argnames=("iou_threshold", "max_output", "tile_size"))
def nms(
    boxes: jnp.ndarray,
    scores: jnp.ndarray,
    valid: jnp.ndarray,
    iou_threshold: float,
    max_output: int,
    tile_size: int = 128,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """torchvision.ops.nms(boxes[valid], scores[valid], iou_threshold)[:max_output] with static shapes.

  Args:
    boxes: [N, 4] float.
    scores: [N] float.
    valid: [N] bool; invalid boxes neither are kept nor suppress others.
    iou_threshold: a box is suppressed by a kept box when their IoU is strictly greater.
    max_output: number of output slots.
    tile_size: boxes compared per block; any value gives the same result.

  Returns:
    keep_idx [max_output] int32 indices into boxes, in descending score order; keep_valid [max_output] bool.
  """
  _check_shapes(boxes, scores, valid)
  category = jnp.zeros(boxes.shape[:1], jnp.int32)
  return _nms_with_categories(boxes, scores, valid, category, iou_threshold, max_output, tile_size)


@functools.partial(
    jax.jit, static_argnames=("iou_threshold", "max_output", "tile_size", "coordinate_trick_max_boxes")
)
def batched_nms(
    boxes: jnp.ndarray,
    scores: jnp.ndarray,
    idxs: jnp.ndarray,
    valid: jnp.ndarray,
    iou_threshold: float,
    max_output: int,
    tile_size: int = 128,
    coordinate_trick_max_boxes: int = TORCHVISION_CPU_COORDINATE_TRICK_MAX_BOXES,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """torchvision.ops.batched_nms on the valid boxes, first `max_output` kept, with static shapes.

  Boxes of different `idxs` (category or pyramid level) never suppress each other. Like torchvision, up to
  `coordinate_trick_max_boxes` valid boxes are shifted by idx * (max coordinate + 1) so that categories cannot
  overlap and one NMS runs over the shifted boxes; above that, IoU is computed on the raw boxes within each
  category. Both give the same kept set except when rounding moves an IoU across the threshold, and the switch
  is replicated so that results match torchvision (CPU) to the bit.

  Args:
    boxes: [N, 4]; scores: [N]; idxs: [N] int category of each box; valid: [N] bool.
    iou_threshold, max_output, tile_size: as in `nms`.
    coordinate_trick_max_boxes: torchvision's CPU switch point (its GPU one is 25000).

  Returns:
    keep_idx [max_output] int32 in descending score order; keep_valid [max_output] bool.
  """
  _check_shapes(boxes, scores, valid, idxs)
  idxs = idxs.astype(jnp.int32)
  use_trick = jnp.sum(valid) <= coordinate_trick_max_boxes
  max_coordinate = jnp.max(jnp.where(valid[:, None], boxes, -jnp.inf))
  max_coordinate = jnp.where(jnp.any(valid), max_coordinate, 0.0)
  offsets = idxs.astype(boxes.dtype) * (max_coordinate + jnp.asarray(1, boxes.dtype))  # [N]
  boxes = jnp.where(use_trick, boxes + offsets[:, None], boxes)
  category = jnp.where(use_trick, 0, idxs)
  return _nms_with_categories(boxes, scores, valid, category, iou_threshold, max_output, tile_size)
