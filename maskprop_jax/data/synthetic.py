"""A synthetic video instance segmentation data set in YouTube-VIS 2019 format, small enough for a CPU.

Each video shows 1 to 6 textured shapes (synthetic_shapes.CATEGORIES) over a textured, slowly panning
background. Shapes move along straight or curved paths, grow or shrink, spin, pass in front of one another
(the masks are the VISIBLE parts, so a shape hidden behind another has a null segmentation in that frame) and
enter or leave the frame. Every video is drawn from its own generator seeded with (seed, split, index), so a
video's frames and masks do not depend on how many videos the run makes.

  python -m maskprop_jax.data.synthetic --out DIR --train-videos 100 --val-videos 20 --seed 0

writes DIR/train.json, DIR/train/JPEGImages/<video>/<frame>.jpg and the same for `valid` (with ground truth).
Frames are named like YouTube-VIS's (every 5th frame of a source video: 00000.jpg, 00005.jpg, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np
from PIL import Image

from maskprop_jax import rle
from maskprop_jax.data.synthetic_shapes import CATEGORIES, SUPERCATEGORY, background, object_coordinates, \
    paint_colours
from maskprop_jax.errors import InputError, report_errors

SPLITS = ("train", "valid")
JPEG_QUALITY = 90
FRAME_NAME_STEP = 5  # YouTube-VIS keeps every 5th frame of the source video and names frames by source index
MAX_INSTANCES = 6
LARGE_PROBABILITY = 0.1  # chance that a shape is drawn from the large sizes
HIDE_PROBABILITY = 0.35  # chance that a video stages one shape passing fully behind a bigger one
DATE_CAPTURED = "2019-04-01 00:00:00.000000"  # fixed: output bytes must depend on the arguments only
MOTION_MODES = ("inside", "enter", "leave", "cross")
MOTION_MODE_PROBABILITIES = (0.5, 0.17, 0.17, 0.16)


@dataclasses.dataclass(frozen=True)
class InstancePlan:
  """How one shape moves through a video; tau in [0, 1] runs from the first frame to the last."""
  category: int  # index into CATEGORIES (category id - 1)
  start: tuple[float, float]  # (x, y) centre at tau = 0, pixels
  end: tuple[float, float]  # at tau = 1
  bend: float  # sideways offset of the path at its widest, pixels (0: a straight path)
  wiggles: int  # 1: the path is an arc, 2: an S-curve
  radius: float  # at tau = 0, pixels
  growth: float  # log(radius at tau=1 / radius at tau=0)
  angle: float  # rotation at tau = 0, radians
  spin: float  # rotation added by tau = 1
  brightness: float
  depth: float  # larger is closer to the camera

  def centre(self, tau: float) -> tuple[float, float]:
    (sx, sy), (ex, ey) = self.start, self.end
    dx, dy = ex - sx, ey - sy
    length = np.hypot(dx, dy)
    nx, ny = (-dy / length, dx / length) if length > 1e-6 else (0.0, 1.0)
    offset = self.bend * np.sin(np.pi * self.wiggles * tau)
    return sx + dx * tau + nx * offset, sy + dy * tau + ny * offset

  def radius_at(self, tau: float) -> float:
    return self.radius * float(np.exp(self.growth * tau))

  def largest_radius(self) -> float:
    return self.radius * float(np.exp(max(self.growth, 0.0)))


def _point_inside(rng: np.random.Generator, height: int, width: int) -> tuple[float, float]:
  return rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height


def _point_outside(rng: np.random.Generator, height: int, width: int, margin: float, side: int
                   ) -> tuple[float, float]:
  """A centre far enough beyond side 0 (left), 1 (right), 2 (top) or 3 (bottom) that the shape is not visible."""
  along_x, along_y = rng.uniform(0, width), rng.uniform(0, height)
  return ((-margin, along_y), (width + margin, along_y), (along_x, -margin), (along_x, height + margin))[side]


def _sample_instance(rng: np.random.Generator, height: int, width: int, depth: float, *,
                     mode: str | None = None, category: int | None = None) -> InstancePlan:
  short_side = min(height, width)
  # Sizes as fractions of the frame, so they mean the same at any frame size. YouTube-VIS frames are 720x1280
  # and its evaluator calls a track small below 128^2 px (1.8% of the frame) and large above 256^2 px (7.1%);
  # the smallest shapes here go below 32^2 px-equivalent (0.11%), and a few big ones fill most of the frame.
  large = rng.random() < LARGE_PROBABILITY
  if large:
    radius = short_side * float(rng.uniform(0.5, 0.75))
    mode = mode or "inside"
    depth += MAX_INSTANCES  # in front of every smaller shape
  else:
    radius = short_side * float(np.exp(rng.uniform(np.log(0.025), np.log(0.45))))
  growth = float(rng.uniform(-0.6, 0.6)) if rng.random() < 0.5 else 0.0
  margin = radius * np.exp(max(growth, 0.0)) * 1.05 + 1.0
  mode = mode or str(rng.choice(MOTION_MODES, p=MOTION_MODE_PROBABILITIES))
  side = int(rng.integers(4))
  if mode == "inside":
    start = _point_inside(rng, height, width)
    drift = rng.normal(0, 0.25 * short_side, 2)
    end = (float(np.clip(start[0] + drift[0], 0, width)), float(np.clip(start[1] + drift[1], 0, height)))
  elif mode == "enter":
    start, end = _point_outside(rng, height, width, margin, side), _point_inside(rng, height, width)
  elif mode == "leave":
    start, end = _point_inside(rng, height, width), _point_outside(rng, height, width, margin, side)
  else:  # cross: in through one side, out through the opposite one
    start, end = _point_outside(rng, height, width, margin, side), _point_outside(rng, height, width, margin,
                                                                                   side ^ 1)
  travel = float(np.hypot(end[0] - start[0], end[1] - start[1]))
  curved = rng.random() < 0.5
  return InstancePlan(
      category=int(rng.integers(len(CATEGORIES))) if category is None else category,
      start=(float(start[0]), float(start[1])), end=(float(end[0]), float(end[1])),
      bend=float(rng.uniform(-0.3, 0.3) * max(travel, 0.3 * short_side)) if curved else 0.0,
      wiggles=int(rng.integers(1, 3)), radius=radius, growth=growth,
      angle=float(rng.uniform(0, 2 * np.pi)),
      spin=float(rng.uniform(-np.pi, np.pi)) if rng.random() < 0.6 else 0.0,
      brightness=float(rng.uniform(0.85, 1.15)), depth=depth)


def _hide_behind(rng: np.random.Generator, instances: list[InstancePlan], height: int, width: int,
                 length: int) -> list[InstancePlan]:
  """Makes the frontmost shape a big solid one and moves another so it is fully behind it in one frame."""
  front_index = int(np.argmax([plan.depth for plan in instances]))
  back_index = int(rng.choice([i for i in range(len(instances)) if i != front_index]))
  solid = [i for i, category in enumerate(CATEGORIES) if category.solid_core >= 0.7]
  front = _sample_instance(rng, height, width, instances[front_index].depth, mode="inside",
                           category=int(rng.choice(solid)))
  front = dataclasses.replace(front, radius=max(front.radius, 0.22 * min(height, width)))
  tau = int(rng.integers(length)) / max(length - 1, 1)
  back = instances[back_index]
  # Fits inside the front shape's solid core at `tau` once the centres coincide there.
  largest_back_radius = 0.85 * CATEGORIES[front.category].solid_core * front.radius_at(tau)
  back = dataclasses.replace(back, radius=min(back.radius, largest_back_radius / float(np.exp(back.growth * tau))))
  (fx, fy), (bx, by) = front.centre(tau), back.centre(tau)
  shift_x, shift_y = fx - bx, fy - by
  back = dataclasses.replace(back, start=(back.start[0] + shift_x, back.start[1] + shift_y),
                             end=(back.end[0] + shift_x, back.end[1] + shift_y))
  hidden = list(instances)
  hidden[front_index], hidden[back_index] = front, back
  return hidden


def sample_video_plan(rng: np.random.Generator, height: int, width: int, length: int) -> list[InstancePlan]:
  """1 to MAX_INSTANCES shapes with distinct depths."""
  count = int(rng.integers(1, MAX_INSTANCES + 1))
  depths = rng.permutation(count)
  instances = [_sample_instance(rng, height, width, float(depth)) for depth in depths]
  if count >= 2 and rng.random() < HIDE_PROBABILITY:
    instances = _hide_behind(rng, instances, height, width, length)
  return instances


def render_video(rng: np.random.Generator, plan: Sequence[InstancePlan], height: int, width: int, length: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Draws the video; returns frames uint8 [T, H, W, 3] and the visible part of each shape, bool [T, N, H, W]."""
  pan_room = max(4, int(0.15 * min(height, width)))
  canvas = background(rng, height + pan_room, width + pan_room)  # [H + p, W + p, 3]
  pan_from, pan_to = rng.integers(0, pan_room + 1, 2), rng.integers(0, pan_room + 1, 2)
  frames = np.empty((length, height, width, 3), np.uint8)
  visible = np.zeros((length, len(plan), height, width), bool)
  ys, xs = np.arange(height)[:, None], np.arange(width)[None, :]
  front_to_back = sorted(range(len(plan)), key=lambda i: -plan[i].depth)
  for t in range(length):
    tau = t / max(length - 1, 1)
    oy, ox = np.round(pan_from + (pan_to - pan_from) * tau).astype(int)
    frame = canvas[oy:oy + height, ox:ox + width] * rng.normal(1.0, 0.02)  # [H, W, 3], light flicker
    covered = np.zeros((height, width), bool)  # pixels already taken by shapes nearer the camera
    for i in front_to_back:
      shape_plan = plan[i]
      cx, cy = shape_plan.centre(tau)
      radius = shape_plan.radius_at(tau)
      x0, x1 = max(int(np.floor(cx - radius)), 0), min(int(np.ceil(cx + radius)) + 1, width)
      y0, y1 = max(int(np.floor(cy - radius)), 0), min(int(np.ceil(cy + radius)) + 1, height)
      if x0 >= x1 or y0 >= y1:
        continue  # entirely outside the frame
      category = CATEGORIES[shape_plan.category]
      u, v = object_coordinates(ys[y0:y1], xs[:, x0:x1], (cx, cy), radius,
                                shape_plan.angle + shape_plan.spin * tau)  # [h, w] each
      inside = category.outline(u, v)
      shown = inside & ~covered[y0:y1, x0:x1]
      window = frame[y0:y1, x0:x1]
      window[shown] = paint_colours(category, u, v, shape_plan.brightness)[shown]
      visible[t, i, y0:y1, x0:x1] = shown
      covered[y0:y1, x0:x1] |= inside
    frame += rng.normal(0, 2.0, frame.shape)  # sensor noise
    frames[t] = np.clip(np.round(frame), 0, 255).astype(np.uint8)
  return frames, visible


def _video_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, SPLITS.index(split), index])


def _track_annotation(track_id: int, video_id: int, category_id: int, visible: np.ndarray) -> dict[str, Any]:
  """YouTube-VIS annotation of one shape from its visible masks bool [T, H, W]."""
  segmentations, bboxes, areas = [], [], []
  for mask in visible:
    if not mask.any():
      segmentations.append(None)
      bboxes.append(None)
      areas.append(None)
      continue
    encoded = rle.encode(mask)
    segmentations.append(encoded)
    bboxes.append(rle.bbox(encoded))
    areas.append(rle.area(encoded))
  return {"id": track_id, "video_id": video_id, "category_id": category_id, "iscrowd": 0, "length": 1,
          "height": int(visible.shape[1]), "width": int(visible.shape[2]),
          "segmentations": segmentations, "bboxes": bboxes, "areas": areas}


def _write_split(root: str, split: str, num_videos: int, seed: int, height: int, width: int, min_frames: int,
                 max_frames: int) -> None:
  videos, annotations = [], []
  os.makedirs(os.path.join(root, split, "JPEGImages"))
  for index in range(num_videos):
    rng = _video_rng(seed, split, index)
    length = int(rng.integers(min_frames, max_frames + 1))
    while True:  # redraw until some shape is seen: a video without annotations teaches nothing
      plan = sample_video_plan(rng, height, width, length)
      frames, visible = render_video(rng, plan, height, width, length)
      seen = [i for i in range(len(plan)) if visible[:, i].any()]
      if seen:
        break
    video_id, name = index + 1, f"{split}_{index:05d}"
    file_names = [f"{name}/{t * FRAME_NAME_STEP:05d}.jpg" for t in range(length)]
    os.makedirs(os.path.join(root, split, "JPEGImages", name))
    for frame, file_name in zip(frames, file_names):
      Image.fromarray(frame).save(os.path.join(root, split, "JPEGImages", file_name), quality=JPEG_QUALITY)
    videos.append({"id": video_id, "width": width, "height": height, "length": length,
                   "date_captured": DATE_CAPTURED, "license": 1, "flickr_url": "", "coco_url": "",
                   "file_names": file_names})
    for i in seen:
      annotations.append(_track_annotation(len(annotations) + 1, video_id, plan[i].category + 1, visible[:, i]))
  content = {
      "info": {"description": f"maskprop_jax synthetic shapes, {split} split", "version": "1.0",
               "year": 2019, "contributor": "maskprop_jax", "date_created": DATE_CAPTURED},
      "licenses": [{"id": 1, "name": "CC0", "url": ""}],
      "videos": videos,
      "categories": [{"id": i + 1, "name": category.name, "supercategory": SUPERCATEGORY}
                     for i, category in enumerate(CATEGORIES)],
      "annotations": annotations,
  }
  with open(os.path.join(root, f"{split}.json"), "w") as f:
    json.dump(content, f, separators=(",", ":"))


def _check_arguments(train_videos: int, val_videos: int, height: int, width: int, min_frames: int,
                     max_frames: int) -> None:
  if train_videos < 0 or val_videos < 0:
    raise InputError(f"video counts must be >= 0, got train {train_videos}, valid {val_videos}")
  if height < 16 or width < 16:
    raise InputError(f"frames must be at least 16x16 pixels, got {height}x{width}")
  if not 1 <= min_frames <= max_frames:
    raise InputError(f"need 1 <= min_frames <= max_frames, got {min_frames} and {max_frames}")


def generate_dataset(out_dir: str | os.PathLike[str], train_videos: int, val_videos: int, seed: int, *,
                     height: int = 128, width: int = 192, min_frames: int = 8, max_frames: int = 40,
                     overwrite: bool = False) -> str:
  """Writes the data set to out_dir (which must be absent or empty unless overwrite) and returns its path.

  Everything is written to a temporary folder beside out_dir and renamed at the end, so an interrupted run
  leaves no half-written data set behind.
  """
  _check_arguments(train_videos, val_videos, height, width, min_frames, max_frames)
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.isfile(out_dir) or (os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite):
    raise InputError(f"{out_dir}: already exists and is not an empty folder "
                     "(--overwrite, or overwrite=True, replaces it)")
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
  try:
    for split, num_videos in zip(SPLITS, (train_videos, val_videos)):
      _write_split(staging, split, num_videos, seed, height, width, min_frames, max_frames)
    os.chmod(staging, 0o755)  # mkdtemp makes it private
    if os.path.isdir(out_dir) and os.listdir(out_dir):
      retired = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
      os.rename(out_dir, os.path.join(retired, "data"))
      os.rename(staging, out_dir)
      shutil.rmtree(retired)
    else:
      os.replace(staging, out_dir)  # an empty folder is replaced in one step
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return out_dir


@report_errors
def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.data.synthetic",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="output folder (absent or empty)")
  parser.add_argument("--train-videos", type=int, required=True, help="number of videos in the train split")
  parser.add_argument("--val-videos", type=int, required=True, help="number of videos in the valid split")
  parser.add_argument("--seed", type=int, required=True, help="seed: the same seed makes the same videos")
  parser.add_argument("--height", type=int, default=128, help="frame height in pixels (default: %(default)s)")
  parser.add_argument("--width", type=int, default=192, help="frame width in pixels (default: %(default)s)")
  parser.add_argument("--min-frames", type=int, default=8, help="fewest frames of a video (default: %(default)s)")
  parser.add_argument("--max-frames", type=int, default=40, help="most frames of a video (default: %(default)s)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a non-empty --out folder (default: refuse to)")
  args = parser.parse_args(argv)
  out_dir = generate_dataset(args.out, args.train_videos, args.val_videos, args.seed, height=args.height,
                             width=args.width, min_frames=args.min_frames, max_frames=args.max_frames,
                             overwrite=args.overwrite)
  print(f"wrote {args.train_videos} train and {args.val_videos} valid videos to {out_dir}")


if __name__ == "__main__":
  main()
