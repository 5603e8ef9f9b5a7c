"""Video-level tracks (ground truth or predicted) in the form the evaluator scores them."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from maskprop_jax import rle as rle_lib


@dataclasses.dataclass
class Track:
  """One instance over a whole video: a ground-truth annotation or a prediction."""

  id: int  # annotation id; for predictions, the 1-based position in the results file
  video_id: int
  category_id: int
  rles: list[dict[str, Any] | None]  # [L] compressed RLE per frame, None where there is no mask
  areas: np.ndarray  # [L] int64 pixel area per frame, 0 where there is no mask
  avg_area: float  # what the small / medium / large ranges are judged on
  score: float = 1.0
  crowd: bool = False


def average_area(frame_areas: Sequence[Any]) -> float:
  """Mean of the frames' areas, skipping frames without a mask AND frames whose area is 0, as the official
  evaluator does; 0 when no frame has a non-empty mask."""
  nonzero = [a for a in frame_areas if a]
  return float(np.array(nonzero).mean()) if nonzero else 0.0


def frame_areas(rles_per_track: Sequence[Sequence[dict[str, Any] | None]]) -> list[np.ndarray]:
  """Pixel areas of every frame of every track with a single pycocotools call. One [L] int64 array per track."""
  flat = [r for rles in rles_per_track for r in rles if r is not None]
  flat_areas = rle_lib.areas(flat)
  out, start = [], 0
  for rles in rles_per_track:
    present = np.array([r is not None for r in rles], bool)
    track_areas = np.zeros([len(rles)], np.int64)
    count = int(present.sum())
    track_areas[present] = flat_areas[start:start + count]
    start += count
    out.append(track_areas)
  return out
