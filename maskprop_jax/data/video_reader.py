"""Frames of one video in order, at their original size, for inference, evaluation and the demo.

A `VideoFrames` knows the video's id, name, frame count and size before any frame is decoded, and yields
RGB uint8 [H, W, 3] frames one at a time (a long video never sits in memory whole). It can come from
  - the prepared TFDS records of a split (`videos_from_records`),
  - a YouTube-VIS-format annotation file and image folder (`videos_from_ytvis`),
  - a folder of frame images (`video_from_folder`),
  - an mp4 or other video file read with imageio's pyav plugin (`video_from_file`);
`open_video(path)` picks between the last two. A missing or corrupt frame, a frame of another size than the
rest and an empty video raise `InputError` naming the file.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from maskprop_jax.data import prepare
from maskprop_jax.data import ytvis
from maskprop_jax.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True)
class VideoFrames:
  """One video: what is known up front, and `iter()` for its frames (each uint8 [height, width, 3])."""

  video_id: int | None  # the data set's video id; None for a user's video
  name: str
  height: int
  width: int
  frame_names: tuple[str, ...]  # file name per frame ("<video>/<frame>.jpg" in a data set, "frame_00012" in a file)
  read_frames: Callable[[], Iterator[np.ndarray]] = dataclasses.field(repr=False)

  @property
  def num_frames(self) -> int:
    return len(self.frame_names)

  def __len__(self) -> int:
    return self.num_frames

  def __iter__(self) -> Iterator[np.ndarray]:
    count = 0
    for count, frame in enumerate(self.read_frames(), start=1):
      if count > self.num_frames:
        raise InputError(f"{self._where()}: holds more frames than the {self.num_frames} it declares")
      if frame.shape != (self.height, self.width, 3):
        raise InputError(
            f"{self._where()}, frame {self.frame_names[count - 1]}: decoded to {frame.shape[:2]} (HxW), "
            f"the video is {self.height}x{self.width}"
        )
      yield frame
    if count < self.num_frames:
      raise InputError(f"{self._where()}: ends after {count} of its {self.num_frames} frames (truncated or corrupt)")

  def _where(self) -> str:
    return f"video {self.name!r}" if self.video_id is None else f"video {self.video_id} ({self.name!r})"


def decode_image(encoded: bytes, where: str) -> np.ndarray:
  """Encoded image -> RGB uint8 [H, W, 3]; InputError naming `where` if it does not decode completely."""
  try:
    with Image.open(io.BytesIO(encoded)) as image:
      image.load()  # decodes every byte, so a truncated file fails here and not later
      return np.asarray(image.convert("RGB"))
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise InputError(f"{where}: cannot decode image ({e})") from e


def _read_bytes(path: Path, where: str) -> bytes:
  try:
    return path.read_bytes()
  except FileNotFoundError as e:
    raise InputError(f"{where}: frame file {path} is missing") from e
  except OSError as e:
    raise InputError(f"{where}: cannot read frame file {path}: {e.strerror or e}") from e


def _text(value: bytes | str) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def video_from_record(record: dict) -> VideoFrames:
  """A video record of a prepared split (as `prepare.open_records` returns it)."""
  video_id, name = int(record["video_id"]), _text(record["name"])
  frame_names = tuple(_text(f) for f in record["file_names"])
  if not frame_names:
    raise InputError(f"video {video_id} ({name!r}): the video has no frames")

  def read_frames() -> Iterator[np.ndarray]:
    for frame_name, encoded in zip(frame_names, record["frames"]):
      yield decode_image(encoded, f"video {video_id} ({name!r}), frame {frame_name}")

  return VideoFrames(video_id, name, int(record["height"]), int(record["width"]), frame_names, read_frames)


def videos_from_records(data_dir: str | os.PathLike[str], name: str, split: str) -> Iterator[VideoFrames]:
  """Every video of a prepared split, in video-id order; a record is read only when its turn comes."""
  records = prepare.open_records(prepare.prepared_dir(data_dir, name), split)
  for index in range(len(records)):
    yield video_from_record(records[index])


def video_from_ytvis(dataset: ytvis.YTVISDataset, video_id: int) -> VideoFrames:
  """One video of a loaded YouTube-VIS-format annotation file; its frames come from `dataset.image_dir`."""
  if video_id not in dataset.videos:
    raise InputError(f"{dataset.path}: unknown video id {video_id}")
  video = dataset.videos[video_id]

  def read_frames() -> Iterator[np.ndarray]:
    for index in range(video.length):
      yield ytvis.read_frame(dataset, video, index)

  return VideoFrames(video.id, video.name, video.height, video.width, video.file_names, read_frames)


def videos_from_ytvis(dataset: ytvis.YTVISDataset) -> Iterator[VideoFrames]:
  """Every video of the annotation file in id order."""
  for video_id in sorted(dataset.videos):
    yield video_from_ytvis(dataset, video_id)


def _natural_key(name: str) -> list[int | str]:
  """"frame_2" before "frame_10": digit runs compare as numbers."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def video_from_folder(folder: str | os.PathLike[str]) -> VideoFrames:
  """Image files of a folder in natural name order; the size is read from the first file's header."""
  folder = Path(folder)
  if not folder.is_dir():
    raise InputError(f"{folder}: not a folder of frames")
  files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
  files.sort(key=lambda p: _natural_key(p.name))
  if not files:
    raise InputError(f"{folder}: the video is empty (no {', '.join(IMAGE_SUFFIXES)} files)")
  try:
    with Image.open(files[0]) as first:
      width, height = first.size
  except (OSError, SyntaxError, ValueError) as e:
    raise InputError(f"video {folder.name!r}, frame {files[0]}: cannot decode image ({e})") from e

  def read_frames() -> Iterator[np.ndarray]:
    for path in files:
      where = f"video {folder.name!r}, frame {path}"
      yield decode_image(_read_bytes(path, where), where)

  return VideoFrames(None, folder.name, height, width, tuple(p.name for p in files), read_frames)


def _count_frames(path: Path) -> int:
  """Frames in the first video stream: the container's count, else the number of non-empty packets."""
  import av  # pylint: disable=import-outside-toplevel  # only needed for video files

  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    return stream.frames or sum(1 for packet in container.demux(stream) if packet.size)


def video_from_file(path: str | os.PathLike[str]) -> VideoFrames:
  """A video file (mp4, webm, avi, ...) decoded with imageio's pyav plugin, frames named frame_00000, ..."""
  import imageio.v3 as iio  # pylint: disable=import-outside-toplevel  # only needed for video files

  path = Path(path)
  if not path.is_file():
    raise InputError(f"{path}: video file not found")
  try:
    properties = iio.improps(path, plugin="pyav")
    num_frames = _count_frames(path)
  except (OSError, ValueError, IndexError, StopIteration) as e:
    raise InputError(f"{path}: cannot read as a video ({e})") from e
  if num_frames == 0:
    raise InputError(f"{path}: the video is empty (no frames)")
  height, width = properties.shape[-3:-1]

  def read_frames() -> Iterator[np.ndarray]:
    try:
      for frame in iio.imiter(path, plugin="pyav", format="rgb24"):
        yield np.asarray(frame, np.uint8)
    except (OSError, ValueError) as e:
      raise InputError(f"{path}: cannot decode the video ({e})") from e

  frame_names = tuple(f"frame_{i:05d}" for i in range(num_frames))
  return VideoFrames(None, path.stem, int(height), int(width), frame_names, read_frames)


def open_video(path: str | os.PathLike[str]) -> VideoFrames:
  """A folder of frames or a video file, whichever `path` is."""
  return video_from_folder(path) if Path(path).is_dir() else video_from_file(path)
