"""Per-frame instance masks in the forms YouTube-VIS files use, normalized to compressed RLE.

Annotation files store a frame's mask as compressed RLE (`counts` a str, or bytes once loaded by pycocotools),
uncompressed RLE (`counts` a list of run lengths), polygons (a list of flat [x0, y0, x1, y1, ...] lists) or null.
Everything downstream sees one form: a JSON-ready dict `{"size": [h, w], "counts": str}`, or None for "absent".
Malformed masks raise `InputError` with a message that says what is wrong; callers prefix where it is.
"""

from __future__ import annotations

from typing import Any, Sequence

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


def _first_of_segment(keys: np.ndarray) -> np.ndarray:
  """For sorted keys [N]: the index of the first element with the same key, for every element, int64 [N]."""
  is_first = np.ones(keys.size, bool)
  is_first[1:] = keys[1:] != keys[:-1]
  return np.maximum.accumulate(np.where(is_first, np.arange(keys.size), 0))


def _parse_counts(strings: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Run lengths of many compressed RLE `counts` strings at once (one string at a time costs ~15 NumPy calls).

  The format (pycocotools' rleToString): each run is a little-endian sequence of 5-bit chunks stored as
  chr(48 + chunk), bit 0x20 = "more chunks follow", bit 0x10 of a run's last chunk = negative; from the fourth
  run of a string on, a run is stored as the difference to the run two places before it.
  Returns runs int64 [R] (all strings' runs, 0-runs and 1-runs alternating), owner int64 [R] (index of the
  string each run belongs to) and malformed bool [S].
  """
  lengths = np.array([len(s) for s in strings], np.int64)  # [S]
  chunks = np.frombuffer(b"".join(strings), np.uint8).astype(np.int64) - 48  # [C]
  if chunks.size == 0:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.ones(len(strings), bool)
  chunk_owner = np.repeat(np.arange(len(strings)), lengths)  # [C]
  malformed = lengths == 0
  malformed |= np.bincount(chunk_owner, weights=(chunks < 0) | (chunks > 63), minlength=len(strings)) > 0
  chunks = np.clip(chunks, 0, 63)
  nonempty = lengths > 0
  last_chunk = (np.cumsum(lengths) - 1)[nonempty]
  ends = (chunks & 0x20) == 0
  malformed[nonempty] |= ~ends[last_chunk]
  ends[last_chunk] = True  # a run never continues into the next string, even in a malformed one
  starts = np.concatenate([[True], ends[:-1]])
  run_start = np.flatnonzero(starts)  # [R]
  position = np.arange(chunks.size) - run_start[np.cumsum(starts) - 1]  # chunk's place within its run
  # Runs in valid files need at most 7 chunks; cap the shift so garbage cannot overflow int64.
  malformed |= np.bincount(chunk_owner, weights=position > 11, minlength=len(strings)) > 0
  position = np.minimum(position, 11)
  values = np.add.reduceat((chunks & 0x1F) << (5 * position), run_start)  # [R]
  values -= np.where(chunks[ends] & 0x10, 1 << (5 * (position[ends] + 1)), 0)
  owner = chunk_owner[run_start]  # [R]
  index_in_string = np.arange(owner.size) - _first_of_segment(owner)  # [R]
  # Undo the differences with a cumulative sum along each string's odd runs and along its even runs from the
  # third on (the first run stands alone); runs are ordered by string, so each chain is a contiguous segment
  # of the odd (even) runs and one global cumulative sum per parity, restarted at each string, does it.
  runs = values.copy()
  for in_chain in (index_in_string % 2 == 1, (index_in_string % 2 == 0) & (index_in_string > 0)):
    chain_values, chain_owner = values[in_chain], owner[in_chain]
    totals = np.cumsum(chain_values)
    first = _first_of_segment(chain_owner)  # where each run's string starts within this chain
    runs[in_chain] = totals - totals[first] + chain_values[first]
  return runs, owner, malformed


def _as_bytes(counts: str | bytes) -> bytes:
  if not counts.isascii():
    raise InputError("compressed RLE counts are not a valid RLE string (non-ASCII characters)")
  return counts.encode("ascii") if isinstance(counts, str) else counts


def run_lengths(counts: str | bytes) -> np.ndarray:
  """Decodes one compressed RLE `counts` string into its run lengths (0-runs, 1-runs alternating), int64 [R]."""
  runs, _, malformed = _parse_counts([_as_bytes(counts)])
  if malformed[0]:
    raise InputError("compressed RLE counts are not a valid RLE string")
  return runs


def measure_counts(counts: Sequence[str | bytes]) -> tuple[np.ndarray, np.ndarray]:
  """Per compressed RLE string: (pixels its runs cover, -1 if malformed or a run is negative; foreground pixels).

  pycocotools decodes a string whose runs do not cover exactly height*width pixels by walking off its buffer,
  so every string read from a file is measured before it is used.
  """
  runs, owner, malformed = _parse_counts([_as_bytes(c) for c in counts])
  index_in_string = np.arange(owner.size) - _first_of_segment(owner)
  covered = np.bincount(owner, weights=runs, minlength=len(counts)).astype(np.int64)  # [S]
  foreground = np.bincount(owner, weights=runs * (index_in_string % 2), minlength=len(counts)).astype(np.int64)
  negative = np.bincount(owner, weights=runs < 0, minlength=len(counts)) > 0
  return np.where(malformed | negative, -1, covered), foreground


def _checked_run_lengths(counts: str | bytes, height: int, width: int) -> np.ndarray:
  runs = run_lengths(counts)
  if runs.min() < 0 or runs.sum() != height * width:
    raise InputError(f"compressed RLE counts do not cover the {height}x{width} mask (runs sum to {runs.sum()})")
  return runs


def _convert(segmentation: Any, height: int, width: int) -> Rle | None:
  """Any segmentation form -> JSON-ready compressed RLE, checking everything but a compressed string's runs."""
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
    _as_bytes(counts)  # rejects non-ASCII before it is turned into str
    return _json_ready(segmentation)
  raise InputError(f"RLE `counts` must be a str, bytes or a list of ints, got {type(counts).__name__}")


def to_compressed_rle(segmentation: Any, height: int, width: int) -> Rle | None:
  """Normalizes one frame's segmentation (any YouTube-VIS/COCO form, or None) to JSON-ready compressed RLE."""
  rle = _convert(segmentation, height, width)
  if rle is not None:
    _checked_run_lengths(rle["counts"], height, width)
  return rle


class FrameMaskError(InputError):
  """A malformed segmentation in one frame of a track; `frame` is its index so callers can name the file."""

  def __init__(self, frame: int, message: str):
    super().__init__(message)
    self.frame = frame


def normalize_frames(segmentations: Sequence[Any], height: int, width: int
                     ) -> tuple[list[Rle | None], list[int | None]]:
  """A track's per-frame segmentations -> (compressed RLE or None, foreground area or None) per frame.

  An empty mask becomes None: it means the same as null, the object is not visible in that frame.
  Raises FrameMaskError naming the first bad frame.
  """
  rles = []
  for frame, segmentation in enumerate(segmentations):
    try:
      rles.append(_convert(segmentation, height, width))
    except InputError as e:
      raise FrameMaskError(frame, str(e)) from e
  present = [frame for frame, rle in enumerate(rles) if rle is not None]
  covered, foreground = measure_counts([rles[frame]["counts"] for frame in present])
  areas: list[int | None] = [None] * len(rles)
  for frame, frame_covered, frame_area in zip(present, covered.tolist(), foreground.tolist()):
    if frame_covered != height * width:
      raise FrameMaskError(frame, f"compressed RLE counts do not cover the {height}x{width} mask")
    if frame_area == 0:
      rles[frame] = None
    else:
      areas[frame] = frame_area
  return rles, areas


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
