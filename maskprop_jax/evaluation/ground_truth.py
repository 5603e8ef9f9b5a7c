"""Reads and validates a YouTube-VIS ground-truth JSON (videos, categories, annotations) into `Track`s.

Ground truth may hold compressed RLE, uncompressed RLE (as the released YouTube-VIS files do) or polygons per
frame; all become compressed RLE. A file without `annotations` (the released valid.json) is accepted: it still
lists the videos that a results file must cover.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from maskprop_jax.errors import InputError
from maskprop_jax.evaluation import rle as rle_lib
from maskprop_jax.evaluation.tracks import Track, Video, average_area, frame_areas


@dataclasses.dataclass
class GroundTruth:
  source: str  # file name (or "<ground truth>"), for messages
  videos: dict[int, Video]  # by video id
  categories: dict[int, str]  # category id -> name, ascending ids
  tracks: list[Track]  # in file order


def load_ground_truth(annotations: str | os.PathLike | dict[str, Any]) -> GroundTruth:
  """A path to a YouTube-VIS JSON or its parsed dict -> GroundTruth. Raises InputError naming what is wrong."""
  if isinstance(annotations, dict):
    source, data = "<ground truth>", annotations
  else:
    source, data = os.fspath(annotations), read_json(annotations, "ground-truth")
  if not isinstance(data, dict):
    raise InputError(f"{source}: a ground-truth file must be a JSON object with 'videos' and 'categories'")
  for key in ("videos", "categories"):
    if not isinstance(data.get(key), list):
      raise InputError(f"{source}: the ground truth has no '{key}' list")
  videos = _read_videos(data["videos"], source)
  categories = _read_categories(data["categories"], source)
  annotations_list = data.get("annotations", [])
  if not isinstance(annotations_list, list):
    raise InputError(f"{source}: 'annotations' must be a list")
  tracks = _read_tracks(annotations_list, videos, categories, source)
  return GroundTruth(source=source, videos=videos, categories=categories, tracks=tracks)


def read_json(path: str | os.PathLike, what: str) -> Any:
  try:
    with open(path, "rb") as f:
      return json.load(f)
  except FileNotFoundError:
    raise InputError(f"{os.fspath(path)}: {what} file not found") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"{os.fspath(path)}: {what} file is not valid JSON ({e})") from None


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _read_videos(entries: list[Any], source: str) -> dict[int, Video]:
  videos: dict[int, Video] = {}
  for i, v in enumerate(entries):
    if not isinstance(v, dict) or not _is_int(v.get("id")):
      raise InputError(f"{source}: videos[{i}] has no integer 'id'")
    file_names = v.get("file_names")
    name = file_names[0].rsplit("/", 1)[0] if isinstance(file_names, list) and file_names else str(v["id"])
    where = f"{source}: video {v['id']} ({name})"
    length = v.get("length", len(file_names) if isinstance(file_names, list) else None)
    height, width = v.get("height"), v.get("width")
    if not all(_is_int(x) and x > 0 for x in (height, width, length)):
      raise InputError(f"{where} needs positive integer 'height', 'width' and 'length' (or 'file_names')")
    if v["id"] in videos:
      raise InputError(f"{where} is listed twice")
    videos[v["id"]] = Video(id=v["id"], name=name, height=height, width=width, length=length)
  return videos


def _read_categories(entries: list[Any], source: str) -> dict[int, str]:
  categories: dict[int, str] = {}
  for i, c in enumerate(entries):
    if not isinstance(c, dict) or not _is_int(c.get("id")):
      raise InputError(f"{source}: categories[{i}] has no integer 'id'")
    if c["id"] in categories:
      raise InputError(f"{source}: category {c['id']} is listed twice")
    categories[c["id"]] = str(c.get("name", c["id"]))
  return dict(sorted(categories.items()))


def _read_tracks(entries: list[Any], videos: dict[int, Video], categories: dict[int, str],
                 source: str) -> list[Track]:
  parsed = []  # (annotation, video, per-frame RLEs)
  for i, ann in enumerate(entries):
    if not isinstance(ann, dict) or not _is_int(ann.get("id")):
      raise InputError(f"{source}: annotations[{i}] has no integer 'id'")
    where = f"{source}: annotation {ann['id']}"
    video = videos.get(ann.get("video_id"))
    if video is None:
      raise InputError(f"{where} refers to video {ann.get('video_id')!r}, which is not in 'videos'")
    where += f" (video {video.id}, {video.name})"
    if ann.get("category_id") not in categories:
      raise InputError(f"{where} has category {ann.get('category_id')!r}, which is not in 'categories'")
    segmentations = ann.get("segmentations")
    if not isinstance(segmentations, list) or len(segmentations) != video.length:
      raise InputError(f"{where}: 'segmentations' must list one entry per frame ({video.length})")
    rles = rle_lib.track_to_compressed(segmentations, video.height, video.width, where)
    parsed.append((ann, video, rles, where))
  tracks = []
  for (ann, video, rles, where), areas in zip(parsed, frame_areas([p[2] for p in parsed])):
    tracks.append(Track(id=ann["id"], video_id=video.id, category_id=ann["category_id"], rles=rles, areas=areas,
                        avg_area=_annotated_average_area(ann, areas, video, where),
                        crowd=bool(ann.get("iscrowd", 0))))
  return tracks


def _annotated_average_area(ann: dict[str, Any], mask_areas: Any, video: Video, where: str) -> float:
  """The official evaluator sizes ground truth by the file's own 'areas'; without them, by the masks."""
  listed = ann.get("areas")
  if listed is None:
    return average_area(mask_areas.tolist())
  if not isinstance(listed, list) or len(listed) != video.length:
    raise InputError(f"{where}: 'areas' must list one entry per frame ({video.length})")
  for f, a in enumerate(listed):
    if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a)):
      raise InputError(f"{where}, frame {f}: area {a!r} is not a finite number or null")
  return average_area(listed)
