"""Overlays of predicted tracks on video frames: each track's mask, box, class and id in a stable colour."""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw

from maskprop_jax.data import masks as mask_codec


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
      rle = track.masks[index]
      if rle is not None:
        caption = f"{track_id} {names.get(track.category_id, track.category_id)} {track.score:.2f}"
        instances.append((track_id, caption, mask_codec.decode(rle).astype(bool)))
    yield overlay(frame, instances)


def overlay_video(frames: Iterable[np.ndarray], tracks: Sequence[Any], names: dict[int, str]) -> list[np.ndarray]:
  """`overlay_frames` as a list."""
  return list(overlay_frames(frames, tracks, names))


def write_gif(frames: Sequence[np.ndarray], path: str | Path, fps: float = 6.0) -> None:
  iio.imwrite(path, np.stack(frames), duration=1000 / fps, loop=0)


def write_overlay_gifs(videos: Sequence[Any], predictions: Sequence[Any], dataset: Any, out_dir: Path,
                       score_thresh: float = 0.3) -> None:
  """One GIF per video with its predictions of at least `score_thresh`."""
  out_dir.mkdir(parents=True, exist_ok=True)
  names = {c.id: c.name for c in dataset.categories.values()}
  for video in videos:
    tracks = [p for p in predictions if p.video_id == video.video_id and p.score >= score_thresh]
    write_gif(overlay_video(video, tracks, names), out_dir / f"{video.name}.gif")
