"""Reads and validates YouTube-VIS-format annotation files (YouTube-VIS 2019 / 2021, OVIS).

A file holds `videos` (frame file names per video), `categories` and, for splits with ground truth,
`annotations`: one track per object with a segmentation, box and area per frame of its video (null where the
object is absent). `load_ytvis` checks everything that later stages rely on and raises `InputError` naming the
file, video and frame at fault (the file's structure is checked by evaluation/ytvis_json.py, the parser the
evaluator uses too); masks are normalized to compressed RLE with str counts (see maskprop_jax/rle.py).

  python -m maskprop_jax.data.ytvis --annotations train.json [--images train/JPEGImages] [--check-images]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from maskprop_jax import rle
from maskprop_jax.errors import InputError, report_errors
from maskprop_jax.evaluation import ytvis_json
from maskprop_jax.evaluation.ytvis_json import Category, Video


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


def _frame_where(path: str, video: Video, index: int) -> str:
  return f"{path}: {video.label}, {video.frame_label(index)}"


def _parse_track(annotation: ytvis_json.Annotation) -> Track:
  """Masks with every run checked, as decoding needs (an empty mask counts as absent); boxes and areas as the
  file gives them, else measured on the masks."""
  video = annotation.video
  segmentations, mask_areas = rle.normalize_frames(annotation.segmentations, video.height, video.width,
                                                   annotation.frame_where)
  given_bboxes = ytvis_json.per_frame_list(annotation.entry, "bboxes", video, annotation.where)
  bboxes, areas = [], []
  for index, (mask, mask_area) in enumerate(zip(segmentations, mask_areas)):
    if mask is None:
      bboxes.append(None)
      areas.append(None)
      continue
    bbox = given_bboxes[index] if given_bboxes is not None else None
    if not (bbox is None or (isinstance(bbox, list) and len(bbox) == 4 and all(map(ytvis_json.is_number, bbox)))):
      raise InputError(f"{annotation.frame_where(index)}: a bbox must be [x, y, w, h], got {bbox!r}")
    area = annotation.areas[index] if annotation.areas is not None else None
    bboxes.append([float(v) for v in bbox] if bbox is not None else rle.bbox(mask))
    areas.append(float(area) if area is not None else float(mask_area))
  return Track(id=annotation.id, video_id=video.id, category_id=annotation.category_id,
               segmentations=tuple(segmentations), bboxes=tuple(bboxes), areas=tuple(areas),
               iscrowd=annotation.iscrowd)


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
  content = ytvis_json.read(path, "annotation")
  for video in content.videos.values():
    if not video.file_names:
      raise InputError(f"{path}: {video.label}: no 'file_names' (the files of its frames)")
  tracks = [_parse_track(annotation) for annotation in content.annotations or []]
  resolved_image_dir = os.fspath(image_dir) if image_dir is not None else default_image_dir(path)
  dataset = YTVISDataset(path=path, image_dir=resolved_image_dir, videos=content.videos,
                         categories=content.categories, tracks=tracks,
                         has_annotations=content.annotations is not None)
  if check_images:
    for video in dataset.videos.values():
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


@report_errors
def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.data.ytvis", description=__doc__.split("\n")[0])
  parser.add_argument("--annotations", required=True, help="YouTube-VIS / OVIS annotation JSON file")
  parser.add_argument("--images", default=None, help="image folder (default: found beside the annotations)")
  parser.add_argument("--check-images", action="store_true",
                      help="decode every frame and check its size (default: check the annotations only)")
  args = parser.parse_args(argv)
  dataset = load_ytvis(args.annotations, args.images, check_images=args.check_images)
  counts = summary(dataset)
  print(f"{dataset.path}: " + ", ".join(f"{value} {key}" for key, value in counts.items())
        + ("" if dataset.has_annotations else " (no annotations)"))
  if args.check_images:
    print(f"all {counts['frames']} frames under {dataset.image_dir} decode at their video's size")


if __name__ == "__main__":
  main()
