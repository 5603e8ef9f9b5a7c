"""Per-frame masks as compressed COCO run-length encodings (RLE), the form results and ground truth are scored in.

Every helper returns RLEs whose `counts` is an ASCII `str`, so they can go straight into JSON; pycocotools accepts
them as they are. Checks here are the cheap ones that keep pycocotools' C decoder inside its buffers: the `size`
must be the video's frame size and `counts` must be a well-formed LEB128-like string.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_api

from maskprop_jax.errors import InputError

# pycocotools writes each count as 6-bit groups offset by ASCII '0' (48..111); a group with bit 0x20 set is
# continued by the next character, so the last character of a string must not have it (48..79).
_COUNT_CHARS = bytes(range(48, 112))
_LAST_COUNT_CHARS = frozenset(chr(c) for c in range(48, 80))
_MAX_POLYGON_COORD = 1e5


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
  """[H, W] binary mask (bool or 0/1 integers) -> compressed RLE with str counts."""
  if mask.ndim != 2:
    raise ValueError(f"expected a [H, W] mask, got shape {mask.shape}")
  rle = mask_api.encode(np.asfortranarray(mask, dtype=np.uint8))
  return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}


def to_compressed(segmentation: Any, height: int, width: int, where: str) -> dict[str, Any] | None:
  """Any COCO segmentation of one frame (compressed or uncompressed RLE, polygons, null) -> compressed RLE or None.

  `where` names the frame for error messages. An empty polygon list counts as no mask, as in the official
  evaluator.
  """
  if segmentation is None or (isinstance(segmentation, list) and not segmentation):
    return None
  if isinstance(segmentation, list):
    if not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation):
      raise InputError(f"{where}: a polygon segmentation must be lists of at least 3 (x, y) pairs")
    try:
      coords = np.concatenate([np.asarray(p, np.float64) for p in segmentation])
    except (TypeError, ValueError):
      raise InputError(f"{where}: polygon coordinates must be numbers") from None
    # pycocotools' rasteriser overruns its buffers on far-away vertices, so they never reach it.
    if not np.all(np.abs(coords) <= _MAX_POLYGON_COORD):
      raise InputError(f"{where}: polygon coordinates must be finite and within +-{_MAX_POLYGON_COORD:g}")
    merged = mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    return {"size": [height, width], "counts": merged["counts"].decode("ascii")}
  if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
    raise InputError(f"{where}: a segmentation must be an RLE with 'size' and 'counts', a polygon list or null")
  size = segmentation["size"]
  if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
    raise InputError(f"{where}: RLE size {size} does not match the video's frame size [{height}, {width}]")
  counts = segmentation["counts"]
  if isinstance(counts, list):
    if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
      raise InputError(f"{where}: uncompressed RLE counts must be non-negative integers summing to "
                       f"{height} * {width}")
    rle = mask_api.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
  if isinstance(counts, bytes):
    counts = counts.decode("latin-1")
  if not isinstance(counts, str):
    raise InputError(f"{where}: RLE counts must be a string (compressed) or a list of integers")
  check_compressed_counts(counts, where)
  return {"size": [height, width], "counts": counts}


def track_to_compressed(segmentations: list[Any], height: int, width: int, where: str) -> list[dict[str, Any] | None]:
  """`to_compressed` for every frame of a track. The common case, compressed RLE of the right size, is checked
  with one pass over the track's joined counts instead of one per frame."""
  size = [height, width]
  out: list[dict[str, Any] | None] = []
  quick: list[str] = []
  for f, segmentation in enumerate(segmentations):
    counts = segmentation.get("counts") if isinstance(segmentation, dict) else None
    if type(counts) is str and segmentation.get("size") == size and counts and counts[-1] in _LAST_COUNT_CHARS:
      out.append({"size": size, "counts": counts})
      quick.append(counts)
    else:
      out.append(to_compressed(segmentation, height, width, f"{where}, frame {f}"))
  joined = "".join(quick)
  if not joined.isascii() or joined.encode("ascii").translate(None, _COUNT_CHARS):
    for f, rle in enumerate(out):  # find the frame to name
      if rle is not None:
        check_compressed_counts(rle["counts"], f"{where}, frame {f}")
  return out


def check_compressed_counts(counts: str, where: str) -> None:
  """Raises InputError unless `counts` is a complete compressed-RLE string (safe for pycocotools to decode)."""
  if not counts or counts[-1] not in _LAST_COUNT_CHARS:
    raise InputError(f"{where}: compressed RLE counts {_preview(counts)} are empty or cut off")
  if not counts.isascii() or counts.encode("ascii").translate(None, _COUNT_CHARS):
    raise InputError(f"{where}: compressed RLE counts {_preview(counts)} hold characters outside '0'..'o'")


# pycocotools 2.0.11's `area` builds a uint8 array holding the list's length, which NumPy 2 refuses for 256 and
# more; chunks of this size keep the call count low and stay clear of that bug.
_AREA_CHUNK = 255


def areas(rles: list[dict[str, Any]]) -> np.ndarray:
  """Pixel areas of compressed RLEs, a few pycocotools calls for all of them. [N] int64."""
  out = np.zeros([len(rles)], np.int64)
  for start in range(0, len(rles), _AREA_CHUNK):
    out[start:start + _AREA_CHUNK] = mask_api.area(rles[start:start + _AREA_CHUNK])
  return out


def _preview(counts: str) -> str:
  return repr(counts if len(counts) <= 20 else counts[:17] + "...")
