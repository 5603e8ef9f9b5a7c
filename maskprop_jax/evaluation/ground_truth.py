"""Reads and validates a YouTube-VIS ground-truth JSON (videos, categories, annotations) into `Track`s.

Ground truth may hold compressed RLE, uncompressed RLE (as the released YouTube-VIS files do) or polygons per
frame; all become compressed RLE. A file without `annotations` (the released valid.json) is accepted: it still
lists the videos that a results file must cover. The file's structure is checked by ytvis_json.py, the parser
the data reader uses too.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from maskprop_jax import rle as rle_lib
from maskprop_jax.evaluation import ytvis_json
from maskprop_jax.evaluation.tracks import Track, average_area, frame_areas
from maskprop_jax.evaluation.ytvis_json import Video


@dataclasses.dataclass
class GroundTruth:
  source: str  # file name (or "<ground-truth>"), for messages
  videos: dict[int, Video]  # by video id
  categories: dict[int, str]  # category id -> name, ascending ids
  tracks: list[Track]  # in file order


def load_ground_truth(annotations: str | os.PathLike | dict[str, Any]) -> GroundTruth:
  """A path to a YouTube-VIS JSON or its parsed dict -> GroundTruth. Raises InputError naming what is wrong."""
  content = ytvis_json.read(annotations, "ground-truth")
  parsed = content.annotations or []
  rles = [rle_lib.track_to_compressed(a.segmentations, a.video.height, a.video.width, a.frame_where)
          for a in parsed]
  tracks = []
  for annotation, track_rles, areas in zip(parsed, rles, frame_areas(rles)):
    # The official evaluator sizes ground truth by the file's own 'areas'; without them, by the masks.
    listed = annotation.areas if annotation.areas is not None else areas.tolist()
    tracks.append(Track(id=annotation.id, video_id=annotation.video.id, category_id=annotation.category_id,
                        rles=track_rles, areas=areas, avg_area=average_area(listed), crowd=annotation.iscrowd))
  categories = {c: content.categories[c].name for c in sorted(content.categories)}
  return GroundTruth(source=content.source, videos=content.videos, categories=categories, tracks=tracks)
