"""Reads and validates YouTube-VIS-format annotation files (YouTube-VIS 2019 / 2021, OVIS).

A file holds `videos` (frame file names per video), `categories` and, for splits with ground truth,
`annotations`: one track per object with a segmentation, box and area per frame of its video (null where the
object is absent). `load_ytvis` checks everything that later stages rely on and raises `InputError` naming the
file, video and frame at fault; masks are normalized to compressed RLE with str counts (see masks.py).

  python -m maskprop_jax.data.ytvis --annotations train.json [--images train/JPEGImages] [--check-images]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from maskprop_jax.data import masks
from maskprop_jax.errors import InputError, report_input_errors


@dataclasses.dataclass(frozen=True)
class Video:
  id: int
  width: int
  height: int
  file_names: tuple[str, ...]  # relative to the image directory, e.g. "0043f083b5/00000.jpg"

  @property
  def length(self) -> int:
    return len(self.file_names)

  @property
  def name(self) -> str:
    """The video's folder name, e.g. "0043f083b5"."""
    return os.path.dirname(self.file_names[0]) or str(self.id)


@dataclasses.dataclass(frozen=True)
class Category:
  id: int
  name: str
  supercategory: str


@dataclasses.dataclass(frozen=True)
class Track:
  """One annotated object through its video; per-frame entries are None where the object is absent."""
  id: int
  video_id: int
  category_id: int
  segmentations: tuple[dict[str, Any] | None, ...]  # compressed RLE {"size": [h, w], "counts": str}
  bboxes: tuple[list[float] | None, ...]  # [x, y, w, h]
  areas: tuple[float | None, ...]
  iscrowd: bool


@dataclasses.dataclass(frozen=True)
class YTVISDataset:
  path: str  # the annotation file
  image_dir: str | None  # folder holding each video's frames (`Video.file_names` are relative to it)
  videos: dict[int, Video]  # in file order
  categories: dict[int, Category]
  tracks: list[Track]
  has_annotations: bool

  @functools.cached_property
  def _tracks_by_video(self) -> dict[int, list[Track]]:
    by_video: dict[int, list[Track]] = {video_id: [] for video_id in self.videos}
    for track in self.tracks:
      by_video[track.video_id].append(track)
    return by_video

  def tracks_of(self, video_id: int) -> list[Track]:
    return self._tracks_by_video[video_id]

  @functools.cached_property
  def category_ids(self) -> list[int]:
    """Sorted category ids; the contiguous class label of category id c is `category_ids.index(c) + 1`."""
    return sorted(self.categories)

  def label_of(self, category_id: int) -> int:
    """Contiguous class label 1..num_classes of a category id (0 is left for background/padding)."""
    return self.category_ids.index(category_id) + 1


def _video_where(path: str, video: Video) -> str:
  return f"{path}: video {video.id} ({video.name!r})"


def _frame_where(path: str, video: Video, index: int) -> str:
  return f"{_video_where(path, video)}, frame {index} ({video.file_names[index]!r})"


def _read_json(path: str) -> Any:
  try:
    with open(path, "rb") as f:
      return json.load(f)
  except FileNotFoundError as e:
    raise InputError(f"{path}: annotation file not found") from e
  except json.JSONDecodeError as e:
    raise InputError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
  except UnicodeDecodeError as e:
    raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
  except OSError as e:
    raise InputError(f"{path}: cannot read annotation file: {e.strerror or e}") from e


def _require(entry: Any, keys: Sequence[str], where: str) -> None:
  if not isinstance(entry, dict):
    raise InputError(f"{where}: expected a JSON object, got {type(entry).__name__}")
  missing = [key for key in keys if key not in entry]
  if missing:
    raise InputError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}")


def _parse_video(entry: Any, path: str, position: int) -> Video:
  where = f"{path}: videos[{position}]"
  _require(entry, ("id", "width", "height", "file_names"), where)
  where = f"{path}: video {entry['id']}"
  file_names = entry["file_names"]
  if not isinstance(file_names, list) or not all(isinstance(name, str) for name in file_names):
    raise InputError(f"{where}: `file_names` must be a list of strings")
  if not file_names:
    raise InputError(f"{where}: the video has no frames (`file_names` is empty)")
  where = f"{where} ({os.path.dirname(file_names[0])!r})"
  if "length" in entry and entry["length"] != len(file_names):
    raise InputError(f"{where}: `length` is {entry['length']} but `file_names` lists {len(file_names)} frames")
  for key in ("width", "height"):
    if not isinstance(entry[key], int) or entry[key] <= 0:
      raise InputError(f"{where}: `{key}` must be a positive integer, got {entry[key]!r}")
  return Video(id=entry["id"], width=entry["width"], height=entry["height"], file_names=tuple(file_names))


def _parse_category(entry: Any, path: str, position: int) -> Category:
  _require(entry, ("id", "name"), f"{path}: categories[{position}]")
  return Category(id=entry["id"], name=str(entry["name"]), supercategory=str(entry.get("supercategory", "")))


def _per_frame_list(entry: dict[str, Any], key: str, video: Video, where: str) -> list[Any] | None:
  values = entry.get(key)
  if values is None:
    return None
  if not isinstance(values, list):
    raise InputError(f"{where}: `{key}` must be a list with one entry per frame")
  if len(values) != video.length:
    raise InputError(f"{where}: `{key}` has {len(values)} entries but the video has {video.length} frames")
  return values


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_track(entry: Any, path: str, position: int, videos: dict[int, Video],
                 categories: dict[int, Category]) -> Track:
  _require(entry, ("id", "video_id", "category_id", "segmentations"), f"{path}: annotations[{position}]")
  where = f"{path}: annotation {entry['id']}"
  video = videos.get(entry["video_id"])
  if video is None:
    raise InputError(f"{where}: unknown video id {entry['video_id']!r}")
  if entry["category_id"] not in categories:
    raise InputError(f"{where} in video {video.id} ({video.name!r}): unknown category id {entry['category_id']!r}")
  where = f"{where} in video {video.id} ({video.name!r})"
  raw_segmentations = _per_frame_list(entry, "segmentations", video, where)
  if raw_segmentations is None:
    raise InputError(f"{where}: `segmentations` is null")
  given_bboxes = _per_frame_list(entry, "bboxes", video, where)
  given_areas = _per_frame_list(entry, "areas", video, where)

  try:
    segmentations, mask_areas = masks.normalize_frames(raw_segmentations, video.height, video.width)
  except masks.FrameMaskError as e:
    raise InputError(f"{_frame_where(path, video, e.frame)}, annotation {entry['id']}: {e}") from e
  bboxes, areas = [], []
  for index, (rle, mask_area) in enumerate(zip(segmentations, mask_areas)):
    if rle is None:
      bboxes.append(None)
      areas.append(None)
      continue
    bbox = given_bboxes[index] if given_bboxes is not None else None
    area = given_areas[index] if given_areas is not None else None
    if not (bbox is None or (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox))):
      raise InputError(f"{_frame_where(path, video, index)}, annotation {entry['id']}: "
                       f"a bbox must be [x, y, w, h], got {bbox!r}")
    if not (area is None or _is_number(area)):
      raise InputError(f"{_frame_where(path, video, index)}, annotation {entry['id']}: "
                       f"an area must be a number, got {area!r}")
    bboxes.append([float(v) for v in bbox] if bbox is not None else masks.bbox(rle))
    areas.append(float(area) if area is not None else float(mask_area))
  return Track(id=entry["id"], video_id=video.id, category_id=entry["category_id"],
               segmentations=tuple(segmentations), bboxes=tuple(bboxes), areas=tuple(areas),
               iscrowd=bool(entry.get("iscrowd", 0)))


def _unique_by_id(items: list[Any], kind: str, path: str) -> dict[int, Any]:
  by_id: dict[int, Any] = {}
  for item in items:
    if item.id in by_id:
      raise InputError(f"{path}: {kind} id {item.id} appears more than once")
    by_id[item.id] = item
  return by_id


def default_image_dir(annotation_file: str) -> str | None:
  """Where the frames usually are: `train/JPEGImages` beside `train.json` (YouTube-VIS 2019), `JPEGImages`
  beside `train/instances.json` (2021), `train/` beside `annotations_train.json` (OVIS); None if none exists."""
  folder = os.path.dirname(os.path.abspath(annotation_file))
  stem = os.path.splitext(os.path.basename(annotation_file))[0]
  candidates = [os.path.join(folder, stem, "JPEGImages"), os.path.join(folder, "JPEGImages")]
  if stem.startswith("annotations_"):
    candidates.append(os.path.join(folder, stem[len("annotations_"):]))
  for candidate in candidates:
    if os.path.isdir(candidate):
      return candidate
  return None


def load_ytvis(annotation_file: str | os.PathLike[str], image_dir: str | os.PathLike[str] | None = None, *,
               check_images: bool = False) -> YTVISDataset:
  """Reads and validates a YouTube-VIS / OVIS annotation file; raises `InputError` naming what is wrong.

  image_dir defaults to `default_image_dir(annotation_file)`. With check_images=True every frame is decoded
  and its size compared with the video's (slow on full data sets: it reads every JPEG).
  """
  path = os.fspath(annotation_file)
  data = _read_json(path)
  _require(data, ("videos", "categories"), f"{path}: top level")
  for key in ("videos", "categories"):
    if not isinstance(data[key], list):
      raise InputError(f"{path}: `{key}` must be a list")
  videos = _unique_by_id([_parse_video(v, path, i) for i, v in enumerate(data["videos"])], "video", path)
  categories = _unique_by_id(
      [_parse_category(c, path, i) for i, c in enumerate(data["categories"])], "category", path)
  annotations = data.get("annotations")
  if annotations is not None and not isinstance(annotations, list):
    raise InputError(f"{path}: `annotations` must be a list or null")
  tracks = [_parse_track(a, path, i, videos, categories) for i, a in enumerate(annotations or [])]
  _unique_by_id(tracks, "annotation", path)

  resolved_image_dir = os.fspath(image_dir) if image_dir is not None else default_image_dir(path)
  dataset = YTVISDataset(path=path, image_dir=resolved_image_dir, videos=videos, categories=categories,
                         tracks=tracks, has_annotations=annotations is not None)
  if check_images:
    for video in videos.values():
      for index in range(video.length):
        read_frame(dataset, video, index)
  return dataset


def read_frame(dataset_or_image_dir: YTVISDataset | str | os.PathLike[str], video: Video, index: int) -> np.ndarray:
  """Decodes one frame of `video` as RGB, uint8 [H, W, 3]; raises `InputError` if missing, corrupt or of the
  wrong size."""
  if isinstance(dataset_or_image_dir, YTVISDataset):
    annotation_file, image_dir = dataset_or_image_dir.path, dataset_or_image_dir.image_dir
  else:
    annotation_file, image_dir = None, os.fspath(dataset_or_image_dir)
  if not 0 <= index < video.length:
    raise InputError(f"video {video.id} ({video.name!r}): frame index {index} outside [0, {video.length})")
  where = _frame_where(annotation_file or image_dir or "<no image dir>", video, index)
  if image_dir is None:
    raise InputError(f"{where}: no image directory given and none found beside the annotation file")
  frame_path = os.path.join(image_dir, video.file_names[index])
  where = f"{where}: {frame_path}"
  try:
    with Image.open(frame_path) as image:
      image.load()  # decodes every byte: verify() alone misses truncated files
      frame = np.asarray(image.convert("RGB"))
  except FileNotFoundError as e:
    raise InputError(f"{where}: frame file is missing") from e
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise InputError(f"{where}: cannot decode image ({e})") from e
  if frame.shape[:2] != (video.height, video.width):
    raise InputError(f"{where}: image is {frame.shape[0]}x{frame.shape[1]} (HxW) but the video is "
                     f"{video.height}x{video.width}")
  return frame


def summary(dataset: YTVISDataset) -> dict[str, int]:
  """Counts a user checks first: videos, frames, tracks, annotated masks, categories."""
  return {
      "videos": len(dataset.videos),
      "frames": sum(video.length for video in dataset.videos.values()),
      "tracks": len(dataset.tracks),
      "masks": sum(seg is not None for track in dataset.tracks for seg in track.segmentations),
      "categories": len(dataset.categories),
  }


@report_input_errors
def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.data.ytvis", description=__doc__.split("\n")[0])
  parser.add_argument("--annotations", required=True, help="YouTube-VIS / OVIS annotation JSON file")
  parser.add_argument("--images", default=None, help="image folder (default: found beside the annotations)")
  parser.add_argument("--check-images", action="store_true", help="decode every frame and check its size")
  args = parser.parse_args(argv)
  dataset = load_ytvis(args.annotations, args.images, check_images=args.check_images)
  counts = summary(dataset)
  print(f"{dataset.path}: " + ", ".join(f"{value} {key}" for key, value in counts.items())
        + ("" if dataset.has_annotations else " (no annotations)"))
  if args.check_images:
    print(f"all {counts['frames']} frames under {dataset.image_dir} decode at their video's size")


if __name__ == "__main__":
  main()
