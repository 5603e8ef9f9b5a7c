"""Random YouTube-VIS ground truths and results that exercise every corner of video AP matching.

Used by the evaluation tests (invariants) and by the parity check against the official evaluator. A case has
tracks that start late and end early, frames with no mask and frames with an empty mask, duplicate and
wrong-class predictions, false positives, crowd tracks, tied scores, more than 100 predictions of one category in
a video, several frame shapes and object sizes from tiny to "large" (> 256^2 pixels), and ground truth stored as
polygons, uncompressed RLE and compressed RLE. Video, category and annotation ids are non-contiguous, and videos,
annotations and predictions are listed out of order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_api

FRAME_SHAPES = ((24, 32), (40, 30), (61, 45), (240, 320), (480, 640))  # (height, width)


def polygon(cx: float, cy: float, angles: np.ndarray, radii: np.ndarray) -> list[float]:
  """A star-shaped polygon around (cx, cy) as a flat [x0, y0, x1, y1, ...] list."""
  return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).ravel().tolist()


def polygon_rle(poly: list[float], height: int, width: int) -> dict[str, Any]:
  rle = mask_api.merge(mask_api.frPyObjects([poly], height, width))
  return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def empty_rle(height: int, width: int) -> dict[str, Any]:
  rle = mask_api.encode(np.zeros([height, width, 1], np.uint8, order="F"))[0]
  return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(rle: dict[str, Any]) -> dict[str, Any]:
  """Compressed -> uncompressed (counts as a list of run lengths, column-major, starting with zeros)."""
  flat = mask_api.decode(rle).ravel(order="F")
  change = np.flatnonzero(np.diff(flat)) + 1
  bounds = np.concatenate([[0], change, [flat.size]])
  runs = np.diff(bounds).tolist()
  if flat.size and flat[0] == 1:
    runs = [0] + runs
  return {"size": list(rle["size"]), "counts": runs}


def _track_polygons(rng, height, width, length, radius):
  """A moving, slightly deforming object: per-frame polygons along a straight path (it may leave the frame)."""
  start = rng.uniform([0, 0], [width, height])
  velocity = rng.normal(0, max(1.0, radius / 10), 2)
  angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
  radii = radius * rng.uniform(0.7, 1.0, 7)
  return [polygon(*(start + f * velocity), angles, radii * rng.uniform(0.95, 1.05, 7)) for f in range(length)]


def _object_radius(rng, height, width):
  big_frame = min(height, width) >= 400  # only these fit objects over 256^2 pixels
  kind = rng.choice(["small", "medium", "large"], p=[0.3, 0.3, 0.4] if big_frame else [0.6, 0.4, 0.0])
  radius = {"small": rng.uniform(1, 60), "medium": rng.uniform(85, 130), "large": rng.uniform(180, 260)}[kind]
  return float(min(radius, min(height, width) / 2 * rng.uniform(0.8, 1.2)))


def random_case(seed: int, num_videos: int = 4, num_categories: int = 4,
                frame_shapes=FRAME_SHAPES) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Returns (ground-truth dict in YouTube-VIS format, results list) for one seed."""
  rng = np.random.default_rng(seed)
  category_ids = sorted(rng.choice(np.arange(1, 60), num_categories, replace=False).tolist())
  video_ids = rng.choice(np.arange(1, 1000), num_videos, replace=False).tolist()  # unsorted on purpose
  videos, annotations, results = [], [], []
  next_ann_id = int(rng.integers(1, 50))
  for video_id in video_ids:
    height, width = frame_shapes[rng.integers(len(frame_shapes))]
    length = int(rng.integers(1, 9))
    videos.append({"id": video_id, "height": height, "width": width, "length": length,
                   "file_names": [f"v{video_id}/{f:05d}.jpg" for f in range(length)]})
    gt_masks = []
    for _ in range(int(rng.integers(0, 5))):
      radius = _object_radius(rng, height, width)
      polys = _track_polygons(rng, height, width, length, radius)
      first, last = sorted(rng.integers(0, length, 2))
      present = (np.arange(length) >= first) & (np.arange(length) <= last) & (rng.random(length) > 0.15)
      if rng.random() < 0.05:
        present[:] = False  # an annotation without any mask
      rles = [polygon_rle(p, height, width) if on else None for p, on in zip(polys, present)]
      category = int(rng.choice(category_ids))
      annotations.append(_gt_annotation(rng, next_ann_id, video_id, category, polys, rles))
      next_ann_id += int(rng.integers(1, 4))
      gt_masks.append((category, polys, present))
    results += _video_predictions(rng, video_id, height, width, length, category_ids, gt_masks)
    if length >= 2 and rng.random() < 0.15:
      trap_annotations, trap_results = _equal_iou_trap(rng, video_id, height, width, length, category_ids)
      for ann in trap_annotations:
        ann["id"] = next_ann_id
        next_ann_id += 1
      annotations += trap_annotations
      results += trap_results
  rng.shuffle(annotations)
  rng.shuffle(results)  # ties in score are broken by video id across videos, by file order within one
  categories = [{"id": c, "name": f"category_{c}", "supercategory": "object"} for c in category_ids]
  rng.shuffle(categories)
  return {"videos": videos, "categories": categories, "annotations": annotations}, results


def _equal_iou_trap(rng, video_id, height, width, length, category_ids):
  """Two ground-truth tracks with exactly the same video IoU to one prediction, where which of them it takes
  decides whether a second prediction finds a match.

  A shape and its copy moved by whole pixels (same area) are G1 in frame f0 and G2 in frame f1; prediction 1
  covers both (IoU 1/2 with each), prediction 2 is G2 alone.
  """
  size = min(height, width) / 6
  base = np.array([[0, 0], [size, size / 4], [size / 2, size], [size / 5, size * 0.8]])
  offsets = [rng.integers(0, [width - size, height - size]) for _ in range(2)]
  polys = [(base + o).ravel().tolist() for o in offsets]
  f0, f1 = sorted(rng.choice(length, 2, replace=False))
  category = int(rng.choice(category_ids))

  def frames(*pairs):
    segmentations = [None] * length
    for f, poly in pairs:
      segmentations[f] = polygon_rle(poly, height, width)
    return segmentations

  annotations = []
  for f, poly in ((f0, polys[0]), (f1, polys[1])):
    segmentations = frames((f, poly))
    annotations.append({"video_id": video_id, "category_id": category, "iscrowd": 0,
                        "segmentations": segmentations,
                        "areas": [int(mask_api.area(r)) if r is not None else None for r in segmentations]})
  high, low = sorted(rng.random(2))[::-1]
  results = [{"video_id": video_id, "category_id": category, "score": float(high),
              "segmentations": frames((f0, polys[0]), (f1, polys[1]))},
             {"video_id": video_id, "category_id": category, "score": float(low),
              "segmentations": frames((f1, polys[1]))}]
  return annotations, results


def _gt_annotation(rng, ann_id, video_id, category, polys, rles):
  fmt = rng.choice(["polygon", "uncompressed", "compressed"])
  segmentations = []
  for poly, rle in zip(polys, rles):
    if rle is None:
      segmentations.append(None)
    elif fmt == "polygon":
      segmentations.append([poly])
    elif fmt == "uncompressed":
      segmentations.append(uncompressed_rle(rle))
    else:
      segmentations.append(rle)
  areas = [int(mask_api.area(r)) if r is not None else None for r in rles]
  return {"id": ann_id, "video_id": video_id, "category_id": category, "iscrowd": int(rng.random() < 0.1),
          "segmentations": segmentations, "areas": areas}


def _video_predictions(rng, video_id, height, width, length, category_ids, gt_masks):
  tied_scores = rng.random() < 0.5
  out = []

  def add(category, polys, present, score=None):
    segmentations = []
    for poly, on in zip(polys, present):
      if not on:
        segmentations.append(None)
      elif rng.random() < 0.05:
        segmentations.append(empty_rle(height, width))  # a frame with an empty mask
      else:
        segmentations.append(polygon_rle(poly, height, width))
    score = float(rng.random()) if score is None else score
    if tied_scores:
      score = round(score, 1)
    out.append({"video_id": video_id, "category_id": int(category), "score": score,
                "segmentations": segmentations})

  def jitter(polys, amount):
    shift = rng.normal(0, amount, 2)
    return [(np.asarray(p).reshape(-1, 2) + shift + rng.normal(0, amount / 3, (len(p) // 2, 2))).ravel().tolist()
            for p in polys]

  def around(present):
    """The ground truth's frames, starting later / ending earlier / extended, with holes."""
    idx = np.flatnonzero(present)
    if idx.size == 0:
      return rng.random(length) < 0.5
    if rng.random() < 0.5:
      return present
    first = int(np.clip(idx[0] + rng.integers(-1, 2), 0, length - 1))
    last = int(np.clip(idx[-1] + rng.integers(-1, 2), first, length - 1))
    frames = np.arange(length)
    return (frames >= first) & (frames <= last) & (rng.random(length) > 0.05)

  for category, polys, present in gt_masks:
    amount = float(rng.choice([0.0, 0.3, 1.0, 3.0])) * max(1.0, np.sqrt(height * width) / 100)
    if rng.random() < 0.85:
      add(category, jitter(polys, amount), around(present))
    if rng.random() < 0.3:  # a duplicate
      add(category, jitter(polys, amount + 1), around(present))
    if rng.random() < 0.25:  # the right object, the wrong class
      add(rng.choice(category_ids), jitter(polys, amount), around(present))
  for _ in range(int(rng.integers(0, 4))):  # false positives
    radius = _object_radius(rng, height, width)
    add(rng.choice(category_ids), _track_polygons(rng, height, width, length, radius), rng.random(length) < 0.7)
  if rng.random() < 0.08 and height * width <= 4096:  # past the 100-prediction cap of one category
    category = rng.choice(category_ids)
    for _ in range(105):
      add(category, _track_polygons(rng, height, width, length, 4.0), rng.random(length) < 0.5)
  return out
