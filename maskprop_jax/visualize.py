"""Overlays of predicted tracks on video frames (each track's mask, box, class and id in a stable colour), and the
one writer of videos and GIFs (the demo's overlays, the overlays of an evaluation)."""

from __future__ import annotations

import colorsys
import functools
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maskprop_jax import files, rle
from maskprop_jax.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".gif")


def track_colour(track_id: int) -> tuple[int, int, int]:
  """A saturated colour per id; the golden-ratio hue step keeps neighbouring ids far apart."""
  r, g, b = colorsys.hsv_to_rgb((track_id * 0.618033988749895) % 1.0, 0.85, 1.0)
  return int(255 * r), int(255 * g), int(255 * b)


def caption_font_size(height: int, width: int) -> int:
  """Caption text height in pixels: 12 px up to 432p, then growing with the frame (20 at 720p, 30 at 1080p)."""
  return max(12, round(min(height, width) / 36))


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  try:
    return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
  except (TypeError, OSError, ImportError):  # an older Pillow: its one bitmap font, about 11 px
    return ImageFont.load_default()


def _luminance(rgb: tuple[int, int, int]) -> float:
  c = np.asarray(rgb, np.float64) / 255
  c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
  return float(c @ np.asarray([0.2126, 0.7152, 0.0722]))


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
  """Black or white, whichever has the higher WCAG contrast ratio with `background`."""
  lum = _luminance(background)
  return (0, 0, 0) if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else (255, 255, 255)


def _place(box: tuple[int, int, int, int], size: tuple[int, int], frame_hw: tuple[int, int],
           taken: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
  """The first of a few spots around `box` (above, inside its top, below, inside its bottom; left or right
  aligned; then further above or below) that lies inside the frame and clear of the captions in `taken`; the
  first spot where none is clear. Returns the caption's (x0, y0, x1, y1), x1 and y1 exclusive."""
  (x0, y0, x1, y1), (w, h), (height, width) = box, size, frame_hw
  rows = [y0 - h, y0, y1 + 1, y1 + 1 - h] + [y0 - k * h for k in (2, 3)] + [y1 + 1 + k * h for k in (1, 2)]
  spots = []
  for y in rows:
    for x in (x0, x1 + 1 - w):
      # Clamped into the frame: a box at an edge keeps its caption whole (it then sits inside the box).
      x, y = min(max(x, 0), max(width - w, 0)), min(max(y, 0), max(height - h, 0))
      spots.append((x, y, x + w, y + h))
  for spot in spots:
    if all(spot[2] <= t[0] or t[2] <= spot[0] or spot[3] <= t[1] or t[3] <= spot[1] for t in taken):
      return spot
  return spots[0]


def overlay(frame: np.ndarray, instances: Sequence[tuple[int, str, np.ndarray]], alpha: float = 0.5) -> np.ndarray:
  """frame uint8 [H, W, 3]; instances: (track id, caption, bool mask [H, W]). Returns the drawn frame.

  Each track gets its mask tinted, its box outlined and its caption on a filled label in its colour; the text and
  line widths scale with the frame. All boxes are drawn before any caption so that no line cuts through text, and
  captions are placed in instance order, each clear of the earlier ones where one of its spots allows.
  """
  height, width = frame.shape[:2]
  out = frame.astype(np.float32)
  boxes = []
  for track_id, caption, mask in instances:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
      continue
    colour = np.asarray(track_colour(track_id), np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * colour
    boxes.append((track_id, caption, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))))
  image = Image.fromarray(out.astype(np.uint8))
  draw = ImageDraw.Draw(image)
  line = max(1, round(min(height, width) / 360))
  for track_id, _, box in boxes:
    draw.rectangle(box, outline=track_colour(track_id), width=line)
  font = _font(caption_font_size(height, width))
  _, top, _, bottom = font.getbbox("Ag|0")  # one line height for every caption, whatever its letters
  pad = max(1, (bottom - top) // 6)
  taken: list[tuple[int, int, int, int]] = []
  for track_id, caption, box in boxes:
    size = (int(font.getbbox(caption)[2]) + 2 * pad, int(bottom - top) + 2 * pad)
    spot = _place(box, size, (height, width), taken)
    taken.append(spot)
    colour = track_colour(track_id)
    draw.rectangle((spot[0], spot[1], spot[2] - 1, spot[3] - 1), fill=colour)
    draw.text((spot[0] + pad, spot[1] + pad - top), caption, fill=text_colour(colour), font=font)
  return np.asarray(image)


def overlay_frames(frames: Iterable[np.ndarray], tracks: Sequence[Any], names: dict[int, str]) -> Iterator[np.ndarray]:
  """Frames with every track drawn, one at a time (a long video never sits in memory whole).

  Tracks carry category_id, score and per-frame RLE `masks` (or None); a track's index is its id and colour.
  """
  for index, frame in enumerate(frames):
    yield overlay_frame(frame, index, tracks, names)


def overlay_frame(frame: np.ndarray, index: int, tracks: Sequence[Any], names: dict[int, str]) -> np.ndarray:
  """Frame `index` of a video with every track that has a mask there drawn (see overlay_frames)."""
  instances = []
  for track_id, track in enumerate(tracks):
    mask = track.masks[index]
    if mask is not None:
      caption = f"{track_id} {names.get(track.category_id, track.category_id)} {track.score:.2f}"
      instances.append((track_id, caption, rle.decode(mask).astype(bool)))
  return overlay(frame, instances)


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


def preferred_video_suffix() -> str:
  """".mp4" where pyav can encode H.264, ".gif" otherwise: an overlay's GIF is tens of times the MP4's size."""
  try:
    import av  # noqa: PLC0415 (an optional dependency: asked at the call, so a test can take it away)
    av.codec.Codec("libx264", "w")
  except (ImportError, ValueError):  # no pyav, or one built without an H.264 encoder
    return ".gif"
  return ".mp4"


OVERLAY_SCORE_THRESH = 0.3  # an evaluation's overlays draw the tracks a user would look at, not every candidate


def write_overlay_videos(videos: Sequence[Any], predictions: Sequence[Any], dataset: Any, out_dir: Path,
                         score_thresh: float = OVERLAY_SCORE_THRESH, fps: float = 6.0,
                         suffix: str | None = None) -> list[Path]:
  """One overlay video per video with its predictions of at least `score_thresh`, as `suffix` (.mp4 or .gif;
  by default preferred_video_suffix()). Returns the files written."""
  suffix = suffix or preferred_video_suffix()
  names = {c.id: c.name for c in dataset.categories.values()}
  paths = []
  for video in videos:
    paths.append(Path(out_dir) / f"{video.name}{suffix}")
    write_video(paths[-1], overlay_frames(video, _tracks_of(video, predictions, score_thresh), names), fps)
  return paths


def middle_frame_overlays(videos: Sequence[Any], predictions: Sequence[Any], dataset: Any,
                          score_thresh: float = OVERLAY_SCORE_THRESH) -> dict[str, np.ndarray]:
  """{video name: its middle frame with its tracks drawn, uint8 [1, H, W, 3]}: an evaluation's pictures for
  TensorBoard, where a training run's overlays become a sequence over its evaluations."""
  names = {c.id: c.name for c in dataset.categories.values()}
  images = {}
  for video in videos:
    middle = video.num_frames // 2
    for index, frame in enumerate(video):  # frames stream: read up to the middle one, draw only that one
      if index == middle:
        tracks = _tracks_of(video, predictions, score_thresh)
        images[video.name] = overlay_frame(frame, index, tracks, names)[None]
        break
  return images


def _tracks_of(video: Any, predictions: Sequence[Any], score_thresh: float) -> list[Any]:
  return [p for p in predictions if p.video_id == video.video_id and p.score >= score_thresh]
