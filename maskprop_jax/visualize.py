"""Overlays of predicted tracks on video frames (each track's mask, box, class and id in a stable colour), and the
one writer of videos and GIFs (the demo's overlays, the overlays of an evaluation)."""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw

from maskprop_jax import files, rle
from maskprop_jax.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".gif")


def track_colour(track_id: int) -> tuple[int, int, int]:
  """A saturated colour per id; the golden-ratio hue step keeps neighbouring ids far apart."""
  r, g, b = colorsys.hsv_to_rgb((track_id * 0.618033988749895) % 1.0, 0.85, 1.0)
  return int(255 * r), int(255 * g), int(255 * b)


def overlay(frame: np.ndarray, instances: Sequence[tuple[int, str, np.ndarray]], alpha: float = 0.5) -> np.ndarray:
  """frame uint8 [H, W, 3]; instances: (track id, caption, bool mask [H, W]). Returns the drawn frame."""
  out = frame.astype(np.float32)
  for track_id, _, mask in instances:
    colour = np.asarray(track_colour(track_id), np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * colour
  image = Image.fromarray(out.astype(np.uint8))
  draw = ImageDraw.Draw(image)
  for track_id, caption, mask in instances:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
      continue
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    draw.rectangle(box, outline=track_colour(track_id), width=1)
    draw.text((box[0] + 1, max(box[1] - 11, 0)), caption, fill=track_colour(track_id))
  return np.asarray(image)


def overlay_frames(frames: Iterable[np.ndarray], tracks: Sequence[Any], names: dict[int, str]) -> Iterator[np.ndarray]:
  """Frames with every track drawn, one at a time (a long video never sits in memory whole).

  Tracks carry category_id, score and per-frame RLE `masks` (or None); a track's index is its id and colour.
  """
  for index, frame in enumerate(frames):
    instances = []
    for track_id, track in enumerate(tracks):
      mask = track.masks[index]
      if mask is not None:
        caption = f"{track_id} {names.get(track.category_id, track.category_id)} {track.score:.2f}"
        instances.append((track_id, caption, rle.decode(mask).astype(bool)))
    yield overlay(frame, instances)


def _even(frame: np.ndarray) -> np.ndarray:
  """H.264 in 4:2:0 needs an even height and width: repeat the last row or column where one is odd."""
  height, width = frame.shape[:2]
  return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def _write_mp4(path: Path, frames: Iterable[np.ndarray], fps: float) -> None:
  with iio.imopen(path, "w", plugin="pyav") as out:
    out.init_video_stream("libx264", fps=fps)
    for frame in frames:
      out.write_frame(_even(frame))


def _write_gif(path: Path, frames: Iterable[np.ndarray], fps: float) -> None:
  # Each frame gets its own 256-colour palette, and palette frames take a third of the memory of RGB ones.
  paletted = (Image.fromarray(frame).quantize() for frame in frames)
  first = next(paletted)
  first.save(path, format="GIF", save_all=True, append_images=paletted, duration=round(1000 / fps), loop=0)


def check_video_path(path: str | Path) -> str:
  """The video's suffix, which picks its format; InputError for one that is not written."""
  suffix = Path(path).suffix.lower()
  if suffix not in VIDEO_SUFFIXES:
    raise InputError(f"{path}: the overlay must be one of {', '.join(VIDEO_SUFFIXES)}")
  return suffix


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float) -> None:
  """Writes frames (uint8 [H, W, 3], streamed) as an MP4 (H.264) or a GIF, by `path`'s suffix, whole or not at
  all; the folder is made if needed."""
  path = Path(path)
  suffix = check_video_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with files.atomic_path(path, suffix=suffix) as tmp:  # the writers pick the format by suffix
    (_write_gif if suffix == ".gif" else _write_mp4)(tmp, frames, fps)


def write_overlay_gifs(videos: Sequence[Any], predictions: Sequence[Any], dataset: Any, out_dir: Path,
                       score_thresh: float = 0.3, fps: float = 6.0) -> None:
  """One GIF per video with its predictions of at least `score_thresh`."""
  names = {c.id: c.name for c in dataset.categories.values()}
  for video in videos:
    tracks = [p for p in predictions if p.video_id == video.video_id and p.score >= score_thresh]
    write_video(Path(out_dir) / f"{video.name}.gif", overlay_frames(video, tracks, names), fps)
