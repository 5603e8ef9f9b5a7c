"""Per-frame instance masks in the forms YouTube-VIS files use, normalized to compressed RLE.

Annotation files store a frame's mask as compressed RLE (`counts` a str, or bytes once loaded by pycocotools),
uncompressed RLE (`counts` a list of run lengths), polygons (a list of flat [x0, y0, x1, y1, ...] lists) or null.
Everything downstream sees one form: a JSON-ready dict `{"size": [h, w], "counts": str}`, or None for "absent".
Malformed masks raise `InputError` with a message that says what is wrong; callers prefix where it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from maskprop_jax.errors import InputError

Rle = dict[str, Any]


def _json_ready(rle: Rle) -> Rle:
  counts = rle["counts"]
  if isinstance(counts, bytes):
    counts = counts.decode("ascii")
  return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def _check_size(size: Any, height: int, width: int) -> None:
  if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) for s in size)):
    raise InputError(f"RLE `size` must be [height, width], got {size!r}")
  if (size[0], size[1]) != (height, width):
    raise InputError(f"mask size {list(size)} differs from the video's [height, width] = [{height}, {width}]")


def _polygons_to_rle(polygons: list[Any], height: int, width: int) -> Rle:
  for polygon in polygons:
    # pycocotools reads a 4-number list as a box, not a polygon, so short polygons must be rejected here.
    if (not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2
        or not all(isinstance(v, (int, float)) for v in polygon)):
      raise InputError("a polygon must be a flat list of at least 3 (x, y) pairs")
  parts = mask_utils.frPyObjects(polygons, height, width)
  return mask_utils.merge(parts)


def run_lengths(counts: str | bytes) -> np.ndarray:
  """Decodes a compressed RLE `counts` string into its run lengths (0-runs and 1-runs alternating), int64 [R].

  pycocotools decodes a string whose runs do not cover the image by reading past its buffer, so strings from
  files are checked with this before they reach it. The format: each run is a little-endian sequence of 5-bit
  chunks stored as chr(48 + chunk), bit 0x20 = "more chunks follow", bit 0x10 of the last chunk = negative;
  from the fourth run on, a run is stored as the difference to the run two places before it.
  """
  if isinstance(counts, str):
    counts = counts.encode("ascii", errors="replace")
  chunks = np.frombuffer(counts, np.uint8).astype(np.int64) - 48  # [C]
  if chunks.size == 0 or chunks.min() < 0 or chunks.max() > 63 or chunks[-1] & 0x20:
    raise InputError("compressed RLE counts are not a valid RLE string")
  ends = (chunks & 0x20) == 0
  starts = np.concatenate([[True], ends[:-1]])
  start_index = np.flatnonzero(starts)  # [R]
  position = np.arange(chunks.size) - start_index[np.cumsum(starts) - 1]  # chunk's place within its run
  runs = np.add.reduceat((chunks & 0x1F) << (5 * position), start_index)
  runs -= np.where(chunks[ends] & 0x10, 1 << (5 * (position[ends] + 1)), 0)
  runs[2::2] = np.cumsum(runs[2::2])
  runs[1::2] = np.cumsum(runs[1::2])
  return runs


def _checked_run_lengths(counts: str | bytes, height: int, width: int) -> np.ndarray:
  runs = run_lengths(counts)
  if runs.min() < 0 or runs.sum() != height * width:
    raise InputError(f"compressed RLE counts do not cover the {height}x{width} mask (runs sum to {runs.sum()})")
  return runs


def to_compressed_rle(segmentation: Any, height: int, width: int) -> Rle | None:
  """Normalizes one frame's segmentation (any YouTube-VIS/COCO form, or None) to JSON-ready compressed RLE."""
  if segmentation is None:
    return None
  if isinstance(segmentation, list):
    if not segmentation:
      return None
    return _json_ready(_polygons_to_rle(segmentation, height, width))
  if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
    raise InputError(
        f"a segmentation must be an RLE dict with `size` and `counts`, a list of polygons or null, "
        f"got {type(segmentation).__name__}")
  _check_size(segmentation["size"], height, width)
  counts = segmentation["counts"]
  if isinstance(counts, list):
    if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
      raise InputError(f"uncompressed RLE counts must be non-negative ints summing to {height}*{width}")
    return _json_ready(mask_utils.frPyObjects(segmentation, height, width))
  if isinstance(counts, (str, bytes)):
    _checked_run_lengths(counts, height, width)
    return _json_ready(segmentation)
  raise InputError(f"RLE `counts` must be a str, bytes or a list of ints, got {type(counts).__name__}")


def _for_pycocotools(rle: Rle) -> Rle:
  counts = rle["counts"]
  return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode(rle: Rle) -> np.ndarray:
  """Compressed RLE -> mask, uint8 [H, W] of 0/1 (a column-major view, as pycocotools returns)."""
  height, width = rle["size"]
  runs = _checked_run_lengths(rle["counts"], height, width)
  # Runs alternate background/foreground and walk down the columns.
  values = (np.arange(runs.size) % 2).astype(np.uint8)
  return np.repeat(values, runs).reshape(width, height).T


def encode(mask: np.ndarray) -> Rle:
  """Binary mask [H, W] (any dtype, nonzero = in) -> JSON-ready compressed RLE with str counts."""
  if mask.ndim != 2:
    raise ValueError(f"encode expects one [H, W] mask, got shape {mask.shape}")
  return _json_ready(mask_utils.encode(np.asfortranarray(mask != 0, dtype=np.uint8)))


def area(rle: Rle) -> int:
  """Number of pixels inside the mask."""
  return int(mask_utils.area(_for_pycocotools(rle)))


def bbox(rle: Rle) -> list[float]:
  """Tight box of the mask as [x, y, w, h] (the YouTube-VIS/COCO annotation form), [0, 0, 0, 0] if empty."""
  return [float(v) for v in mask_utils.toBbox(_for_pycocotools(rle))]
