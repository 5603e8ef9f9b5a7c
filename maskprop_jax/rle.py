"""Per-frame masks as compressed COCO run-length encodings (RLE): the one codec of data, evaluation, linking and
display.

Annotation and results files store a frame's mask as compressed RLE (`counts` a str, or bytes once loaded by
pycocotools), uncompressed RLE (`counts` a list of run lengths), polygons (lists of flat [x0, y0, x1, y1, ...])
or null. Everything downstream sees one form: a JSON-ready dict `{"size": [h, w], "counts": str}`, or None for
"no mask". Malformed masks raise `InputError` with a message that starts with the `where` the caller names.

Checks come in two strengths. `to_compressed` and `track_to_compressed` do the cheap ones that keep pycocotools'
C code inside its buffers (the size is the frame's, counts are a complete string of the RLE alphabet): enough for
the evaluator, which only asks pycocotools for areas and intersections. `normalize_frames` also parses every run
(vectorised) so that the runs cover exactly height*width pixels, as decoding a mask needs (the data reader).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from pycocotools import mask as mask_api

from maskprop_jax.errors import InputError

Rle = dict[str, Any]

# pycocotools writes each run as 6-bit groups offset by ASCII '0' (48..111); a group with bit 0x20 set is
# continued by the next character, so the last character of a string must not have it (48..79).
_COUNT_CHARS = bytes(range(48, 112))
_LAST_COUNT_CHARS = frozenset(chr(c) for c in range(48, 80))
_MAX_POLYGON_COORD = 1e5
# pycocotools 2.0.11's `area` builds a uint8 array holding the list's length, which NumPy 2 refuses for 256 and
# more; chunks of this size keep the call count low and stay clear of that bug.
_AREA_CHUNK = 255


def encode(mask: np.ndarray) -> Rle:
  """Binary mask [H, W] (any dtype, nonzero = in) -> compressed RLE with str counts."""
  if mask.ndim != 2:
    raise ValueError(f"encode expects one [H, W] mask, got shape {mask.shape}")
  binary = mask if mask.dtype == bool else mask != 0  # pycocotools starts a new run at every change of value
  rle = mask_api.encode(np.asfortranarray(binary, dtype=np.uint8))
  return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}


def encode_patch(patch: np.ndarray, top: int, left: int, image_hw: tuple[int, int]) -> dict | None:
  """COCO RLE of an [H, W] mask that is zero outside `patch` (bool [ph, pw] at row `top`, column `left`).

  Run boundaries are found in the patch alone, so the cost follows the object's size, not the frame's.
  """
  height, width = image_hw
  if not patch.any():
    return None
  # Columns as rows (RLE runs column-major), with a zero above and below each: every run closes in its column.
  padded = np.zeros((patch.shape[1], patch.shape[0] + 2), np.int8)
  padded[:, 1:-1] = patch.T
  change_col, change_row = np.nonzero(np.diff(padded, axis=1))
  positions = (left + change_col) * height + top + change_row
  if patch.shape[0] == height:
    # A run ending at the bottom of one column and one starting at the top of the next are a single run.
    unique, counts = np.unique(positions, return_counts=True)
    positions = unique[counts == 1]
  boundaries = np.concatenate([[0], positions, [height * width]])
  rle = mask_api.frPyObjects({"counts": np.diff(boundaries).tolist(), "size": [height, width]}, height, width)
  rle["counts"] = rle["counts"].decode("ascii")
  return rle


def decode(rle: Rle) -> np.ndarray:
  """Compressed RLE -> mask, uint8 [H, W] of 0/1 (a column-major view, as pycocotools returns)."""
  height, width = rle["size"]
  runs = run_lengths(rle["counts"])
  if runs.min() < 0 or runs.sum() != height * width:
    raise InputError(f"compressed RLE counts do not cover the {height}x{width} mask (runs sum to {runs.sum()})")
  # Runs alternate background/foreground and walk down the columns.
  values = (np.arange(runs.size) % 2).astype(np.uint8)
  return np.repeat(values, runs).reshape(width, height).T


def decode_many(counts: Sequence[str | bytes], height: int, width: int) -> np.ndarray:
  """Many compressed RLE `counts` strings of one size -> masks uint8 [N, H, W] of 0/1, each equal to `decode`'s.

  One vectorised parse for all strings (a training clip's masks: decoding them one at a time was most of the
  input pipeline's mask work). Raises InputError as `decode` does, for the first bad string.
  """
  runs, owner, malformed = _parse_counts([_as_bytes(c) for c in counts])
  bad = _covered(runs, owner, malformed) != height * width
  if bad.any():  # decode says what is wrong with it
    decode({"size": [height, width], "counts": counts[int(np.flatnonzero(bad)[0])]})
  # Runs alternate background/foreground from each string's first run and walk down the columns.
  values = ((np.arange(runs.size) - _first_of_segment(owner)) % 2).astype(np.uint8)
  return np.repeat(values, runs).reshape(len(counts), width, height).transpose(0, 2, 1)


def area(rle: Rle) -> int:
  """Number of pixels inside the mask."""
  return int(mask_api.area(rle))


def areas(rles: list[Rle]) -> np.ndarray:
  """Pixel areas of compressed RLEs, a few pycocotools calls for all of them. [N] int64."""
  out = np.zeros([len(rles)], np.int64)
  for start in range(0, len(rles), _AREA_CHUNK):
    out[start:start + _AREA_CHUNK] = mask_api.area(rles[start:start + _AREA_CHUNK])
  return out


def bbox(rle: Rle) -> list[float]:
  """Tight box of the mask as [x, y, w, h] (the YouTube-VIS/COCO annotation form), [0, 0, 0, 0] if empty."""
  return [float(v) for v in mask_api.toBbox(rle)]


def to_compressed(segmentation: Any, height: int, width: int, where: str) -> Rle | None:
  """Any segmentation of one frame (compressed or uncompressed RLE, polygons, null) -> compressed RLE or None.

  An empty polygon list counts as no mask, as in the official evaluator. `where` starts error messages.
  """
  if segmentation is None or (isinstance(segmentation, list) and not segmentation):
    return None
  if isinstance(segmentation, list):
    return _polygons_to_compressed(segmentation, height, width, where)
  if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
    raise InputError(f"{where}: a segmentation must be an RLE dict with 'size' and 'counts', a list of polygons "
                     f"or null, got {type(segmentation).__name__}")
  size = segmentation["size"]
  if not isinstance(size, (list, tuple)) or len(size) != 2:
    raise InputError(f"{where}: RLE size must be [height, width], got {size!r}")
  if list(size) != [height, width]:
    raise InputError(f"{where}: RLE size {list(size)} differs from the video's frame size [{height}, {width}]")
  counts = segmentation["counts"]
  if isinstance(counts, list):
    if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
      raise InputError(f"{where}: uncompressed RLE counts must be non-negative integers summing to "
                       f"{height} * {width}")
    rle = mask_api.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
  if isinstance(counts, bytes):
    counts = counts.decode("latin-1")  # one character per byte: non-ASCII bytes fail the check below
  if not isinstance(counts, str):
    raise InputError(f"{where}: RLE counts must be a str, bytes or a list of integers, got {type(counts).__name__}")
  check_compressed_counts(counts, where)
  return {"size": [height, width], "counts": counts}


def _polygons_to_compressed(polygons: list[Any], height: int, width: int, where: str) -> Rle:
  # pycocotools reads a 4-number list as a box, not a polygon, so short polygons must be refused here.
  for polygon in polygons:
    if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
      raise InputError(f"{where}: a polygon must be a flat list of at least 3 (x, y) pairs")
    if not all(isinstance(v, (int, float)) for v in polygon):
      raise InputError(f"{where}: polygon coordinates must be numbers")
  # pycocotools' rasteriser overruns its buffers on far-away vertices, so they never reach it.
  if not all(np.all(np.abs(np.asarray(p, np.float64)) <= _MAX_POLYGON_COORD) for p in polygons):
    raise InputError(f"{where}: polygon coordinates must be finite and within +-{_MAX_POLYGON_COORD:g}")
  merged = mask_api.merge(mask_api.frPyObjects(polygons, height, width))
  return {"size": [height, width], "counts": merged["counts"].decode("ascii")}


def check_compressed_counts(counts: str, where: str) -> None:
  """Raises InputError unless `counts` is a complete compressed-RLE string (safe for pycocotools to read)."""
  if not counts or counts[-1] not in _LAST_COUNT_CHARS:
    raise InputError(f"{where}: compressed RLE counts {_preview(counts)} are not a valid RLE string "
                     "(empty or cut off)")
  if not counts.isascii() or counts.encode("ascii").translate(None, _COUNT_CHARS):
    raise InputError(f"{where}: compressed RLE counts {_preview(counts)} are not a valid RLE string "
                     "(characters outside '0'..'o')")


def track_to_compressed(segmentations: Sequence[Any], height: int, width: int,
                        frame_where: Callable[[int], str]) -> list[Rle | None]:
  """`to_compressed` for every frame of a track; `frame_where(f)` names frame f in messages. The common case,
  compressed RLE of the right size, is checked with one pass over the track's joined counts, not one per frame."""
  size = [height, width]
  out: list[Rle | None] = []
  quick: list[str] = []
  for f, segmentation in enumerate(segmentations):
    if segmentation is None:
      out.append(None)
      continue
    counts = segmentation.get("counts") if isinstance(segmentation, dict) else None
    if type(counts) is str and segmentation.get("size") == size and counts and counts[-1] in _LAST_COUNT_CHARS:
      out.append({"size": size, "counts": counts})
      quick.append(counts)
    else:
      out.append(to_compressed(segmentation, height, width, frame_where(f)))
  joined = "".join(quick)
  if not joined.isascii() or joined.encode("ascii").translate(None, _COUNT_CHARS):
    for f, rle in enumerate(out):  # find the frame to name
      if rle is not None:
        check_compressed_counts(rle["counts"], frame_where(f))
  return out


def normalize_frames(segmentations: Sequence[Any], height: int, width: int, frame_where: Callable[[int], str]
                     ) -> tuple[list[Rle | None], list[int | None]]:
  """`track_to_compressed`, then every run checked to cover exactly height*width pixels, as decoding needs.

  Returns (compressed RLE or None, foreground area or None) per frame. An empty mask becomes None: it means the
  same as null, the object is not visible in that frame.
  """
  rles = track_to_compressed(segmentations, height, width, frame_where)
  present = [f for f, rle in enumerate(rles) if rle is not None]
  covered, foreground = measure_counts([rles[f]["counts"] for f in present])
  frame_areas: list[int | None] = [None] * len(rles)
  for f, frame_covered, frame_area in zip(present, covered.tolist(), foreground.tolist()):
    if frame_covered != height * width:
      raise InputError(f"{frame_where(f)}: compressed RLE counts do not cover the {height}x{width} mask")
    if frame_area == 0:
      rles[f] = None
    else:
      frame_areas[f] = frame_area
  return rles, frame_areas


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
  so every string read from a file is measured before it is decoded.
  """
  runs, owner, malformed = _parse_counts([_as_bytes(c) for c in counts])
  index_in_string = np.arange(owner.size) - _first_of_segment(owner)
  foreground = np.bincount(owner, weights=runs * (index_in_string % 2), minlength=len(counts)).astype(np.int64)
  return _covered(runs, owner, malformed), foreground


def _covered(runs: np.ndarray, owner: np.ndarray, malformed: np.ndarray) -> np.ndarray:
  """Pixels the runs of each string cover, int64 [S]; -1 for a malformed string or one with a negative run."""
  covered = np.bincount(owner, weights=runs, minlength=malformed.size).astype(np.int64)
  negative = np.bincount(owner, weights=runs < 0, minlength=malformed.size) > 0
  return np.where(malformed | negative, -1, covered)


def _preview(counts: str) -> str:
  return repr(counts if len(counts) <= 20 else counts[:17] + "...")
