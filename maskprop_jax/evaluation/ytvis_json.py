"""The YouTube-VIS annotation file (2019, 2021, OVIS): the one parser of its `videos`, `categories` and `annotations`.

The evaluator (load_ground_truth, load_results) and the data reader (data.ytvis.load_ytvis) both build on it, so
a file is accepted or refused, and its faults named, the same way by both. Each kind of entry is checked here
once; what a caller makes of the masks (the data reader decodes them, the evaluator only measures them) is up to
it, through maskprop_jax.rle. It lives in evaluation/, which imports nothing of data/ (nor jax, TensorFlow or
PIL), so that the evaluator stays light; data/ imports it from here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from maskprop_jax import files
from maskprop_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class Video:
  id: int
  width: int
  height: int
  file_names: tuple[str, ...]  # relative to the image folder, e.g. "0043f083b5/00000.jpg"; () if the file has none
  length: int  # number of frames
  name: str  # the frames' folder, e.g. "0043f083b5" (the id where there are no file names)

  @property
  def label(self) -> str:
    """How messages name the video: "video 7 ('0043f083b5')"."""
    return f"video {self.id} ({self.name!r})" if self.file_names else f"video {self.id}"

  def frame_label(self, index: int) -> str:
    """How messages name a frame: "frame 2 ('0043f083b5/00010.jpg')"."""
    return f"frame {index} ({self.file_names[index]!r})" if self.file_names else f"frame {index}"


@dataclasses.dataclass(frozen=True)
class Category:
  id: int
  name: str
  supercategory: str


@dataclasses.dataclass(frozen=True)
class Annotation:
  """One `annotations` entry, checked against the videos and categories; masks still as the file has them."""
  id: int
  video: Video
  category_id: int
  segmentations: list[Any]  # one per frame of the video, any form maskprop_jax.rle reads
  areas: list[float | None] | None  # the file's per-frame areas (finite numbers or null), None if it has none
  iscrowd: bool
  where: str  # names the annotation in messages
  entry: dict[str, Any]  # the entry as in the file, for fields only one reader uses (bboxes)

  def frame_where(self, index: int) -> str:
    return f"{self.where}, {self.video.frame_label(index)}"


@dataclasses.dataclass(frozen=True)
class AnnotationFile:
  source: str  # the file's path (or a stand-in for parsed content), for messages
  videos: dict[int, Video]  # in file order
  categories: dict[int, Category]  # in file order
  annotations: list[Annotation] | None  # None where the file has no (or null) `annotations`: no ground truth


def read(annotations: str | os.PathLike | dict[str, Any], what: str) -> AnnotationFile:
  """A YouTube-VIS JSON file (or its parsed content) -> AnnotationFile; InputError naming what is wrong.

  `what` names the kind of file in messages ("annotation", "ground-truth").
  """
  if isinstance(annotations, dict):
    source, data = f"<{what}>", annotations
  else:
    source = os.fspath(annotations)
    data = files.read_json(source, what)
  if not isinstance(data, dict):
    raise InputError(f"{source}: top level: must be a JSON object with 'videos' and 'categories' lists, "
                     f"got {type(data).__name__}")
  for key in ("videos", "categories"):
    if key not in data:
      raise InputError(f"{source}: top level: no '{key}' list")
    if not isinstance(data[key], list):
      raise InputError(f"{source}: top level: '{key}' must be a list, got {type(data[key]).__name__}")
  videos = _unique_by_id([_parse_video(v, source, i) for i, v in enumerate(data["videos"])], "video", source)
  categories = _unique_by_id(
      [_parse_category(c, source, i) for i, c in enumerate(data["categories"])], "category", source)
  entries = data.get("annotations")
  if entries is not None and not isinstance(entries, list):
    raise InputError(f"{source}: top level: 'annotations' must be a list or null, got {type(entries).__name__}")
  parsed = None
  if entries is not None:
    parsed = [_parse_annotation(a, source, i, videos, categories) for i, a in enumerate(entries)]
    _unique_by_id(parsed, "annotation", source)
  return AnnotationFile(source=source, videos=videos, categories=categories, annotations=parsed)


def per_frame_list(entry: dict[str, Any], key: str, video: Video, where: str,
                   required: bool = False) -> list[Any] | None:
  """entry[key] checked to hold one value per frame of `video`; None if absent or null and not `required`."""
  values = entry.get(key)
  if values is None and not required:
    return None
  if not isinstance(values, list):
    got = "null" if values is None else type(values).__name__
    raise InputError(f"{where}: '{key}' must list one entry per frame, got {got}")
  if len(values) != video.length:
    raise InputError(f"{where}: '{key}' must list one entry per frame: it has {len(values)} entries but the "
                     f"video has {video.length} frames")
  return values


def is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _parse_video(entry: Any, source: str, position: int) -> Video:
  if not isinstance(entry, dict) or not _is_int(entry.get("id")):
    raise InputError(f"{source}: videos[{position}] has no integer 'id'")
  video_id = entry["id"]
  where, name = f"{source}: video {video_id}", str(video_id)
  file_names = entry.get("file_names")
  if file_names is not None:
    if not isinstance(file_names, list) or not all(isinstance(n, str) for n in file_names):
      raise InputError(f"{where}: 'file_names' must be a list of strings")
    if not file_names:
      raise InputError(f"{where}: the video has no frames ('file_names' is empty)")
    name = os.path.dirname(file_names[0]) or name
    where = f"{where} ({name!r})"
    if "length" in entry and entry["length"] != len(file_names):
      raise InputError(f"{where}: 'length' is {entry['length']!r} but 'file_names' lists {len(file_names)} frames")
  length = len(file_names) if file_names is not None else entry.get("length")
  if not _is_int(length) or length <= 0:
    raise InputError(f"{where}: needs 'file_names' or a positive integer 'length', got {length!r}")
  for key in ("width", "height"):
    if not _is_int(entry.get(key)) or entry[key] <= 0:
      raise InputError(f"{where}: '{key}' must be a positive integer, got {entry.get(key)!r}")
  return Video(id=video_id, width=entry["width"], height=entry["height"], file_names=tuple(file_names or ()),
               length=length, name=name)


def _parse_category(entry: Any, source: str, position: int) -> Category:
  if not isinstance(entry, dict) or not _is_int(entry.get("id")):
    raise InputError(f"{source}: categories[{position}] has no integer 'id'")
  return Category(id=entry["id"], name=str(entry.get("name", entry["id"])),
                  supercategory=str(entry.get("supercategory", "")))


def _parse_annotation(entry: Any, source: str, position: int, videos: dict[int, Video],
                      categories: dict[int, Category]) -> Annotation:
  if not isinstance(entry, dict) or not _is_int(entry.get("id")):
    raise InputError(f"{source}: annotations[{position}] has no integer 'id'")
  where = f"{source}: annotation {entry['id']}"
  video_id, category_id = entry.get("video_id"), entry.get("category_id")
  video = videos.get(video_id) if _is_int(video_id) else None
  if video is None:
    raise InputError(f"{where}: unknown video id {video_id!r}")
  where = f"{where} in {video.label}"
  if not _is_int(category_id) or category_id not in categories:
    raise InputError(f"{where}: unknown category id {category_id!r}")
  segmentations = per_frame_list(entry, "segmentations", video, where, required=True)
  areas = per_frame_list(entry, "areas", video, where)
  for index, area in enumerate(areas or ()):
    if area is not None and not (is_number(area) and math.isfinite(area)):
      raise InputError(f"{where}, {video.frame_label(index)}: area {area!r} is not a finite number or null")
  return Annotation(id=entry["id"], video=video, category_id=category_id, segmentations=segmentations,
                    areas=areas, iscrowd=bool(entry.get("iscrowd", 0)), where=where, entry=entry)


def _unique_by_id(items: list[Any], kind: str, source: str) -> dict[int, Any]:
  by_id: dict[int, Any] = {}
  for item in items:
    if item.id in by_id:
      raise InputError(f"{source}: {kind} id {item.id} appears more than once")
    by_id[item.id] = item
  return by_id
