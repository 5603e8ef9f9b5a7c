"""What a config's mask representation allows: ground truth passed through it, scored by the official video AP.

    python -m maskprop_jax.inference.resolution_cap --config configs/ytvis.py --annotations GT.json [--json F]

A perfect model still writes its masks through the config's representation, so these are the best scores it can
reach. Each ground-truth track becomes a prediction of its own category with score 1, its frames' masks made the
way predicted ones are, from the ground truth at the video's own resolution (what a model could at best draw:
every cell, bin or window holds the share of it the object covers):
  - grid: as the propagation branch writes a frame: the mask area-pooled onto the mask grid (stride
    model.propagation's mask stride of the network input, in the video's pixels), then finished as linking
    finishes a frame (linking.frames.Binarizer: bilinear to the video's size, inference.mask_threshold);
  - center: as Mask R-CNN writes a clip's center frame: the M x M mask target on the mask's tight box
    (roi_targets.project_masks_on_boxes with the config's roi_heads.aligned), pasted at the video's resolution
    (inference.full_resolution_masks) or, without it, pasted and then pooled onto the grid;
  - propagated: as a propagated frame is written: with a propagation refiner (propagation.refine_layers) and
    full_resolution_masks, the refiner's window around the grid mask's support, its SIZE x SIZE cells pooled
    (aligned) and pasted at the video's resolution; otherwise the grid;
  - linked: what linking finishes (frames.Binarizer.compose): on each frame, the center mask of the clip centred
    there and the propagated masks of the other clips that cover it (inference.half_window, clip_stride), each
    weighted as the linker weighs it (inference.temporal_decay). This is the config's cap.
Printed: the 12 stats of each path and the mean per-frame IoU with the ground truth by object size.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maskprop_jax import evaluation, files, rle
from maskprop_jax.data import augment
from maskprop_jax.evaluation import diagnose, ytvis_json
from maskprop_jax.inference.predictor import clip_windows
from maskprop_jax.linking.frames import Binarizer, BoxMask
from maskprop_jax.linking.iou import mask_iou
from maskprop_jax.model import maskprop, propagation_refiner, roi_targets, transform

PATHS = ("grid", "center", "propagated", "linked")
MASKS_PER_CALL = 16  # video-size masks go through the jitted pooling this many at a time


@functools.partial(jax.jit, static_argnames=("size", "aligned"))
def _box_targets(masks: jax.Array, boxes: jax.Array, *, size: int, aligned: bool) -> jax.Array:
  """Video-size masks [N, H, W] and boxes [N, 4] in its pixels -> [N, size, size] pooled targets."""
  hw = jnp.broadcast_to(jnp.asarray(masks.shape[1:], jnp.int32), (masks.shape[0], 2))
  first = jnp.zeros((masks.shape[0], 1), jnp.int32)  # each mask is its own box's only ground truth
  return roi_targets.project_masks_on_boxes(masks[:, None], boxes[:, None], first, hw, size, aligned=aligned)[:, 0]


def area_pool_matrix(size: int, cells: int, cell_length: float) -> np.ndarray:
  """[cells, size]: each cell's share of every pixel of an axis of `size` pixels, cell j spanning pixels
  [j * cell_length, (j + 1) * cell_length), divided by cell_length (a cell beyond the image counts it as 0, as
  the network's padding does)."""
  edges = np.arange(cells + 1, dtype=np.float64) * cell_length
  pixel = np.arange(size, dtype=np.float64)
  overlap = np.clip(np.minimum(edges[1:, None], pixel + 1) - np.maximum(edges[:-1, None], pixel), 0.0, None)
  return (overlap / cell_length).astype(np.float32)


class _Representation:
  """One video size's forms of a mask: grid, center box mask, refined window."""

  def __init__(self, config: ml_collections.ConfigDict, video_hw: tuple[int, int]):
    self.geometry = maskprop.InputGeometry.for_video(config.model, video_hw)
    self.stride = maskprop.mask_stride(config.model)
    self.mask_size = 2 * config.model.detector.roi_heads.mask_output_size
    self.aligned = bool(config.model.detector.roi_heads.aligned)
    self.refines = bool(tuple(config.model.propagation.get("refine_layers", ())))
    self.full_resolution = bool(config.inference.get("full_resolution_masks", False))
    self.binarize = Binarizer(self.geometry.mask_hw, video_hw, config.inference.mask_threshold)
    scale = [v / r for v, r in zip(video_hw, self.geometry.resized_hw)]  # video pixels per input pixel
    self.rows = area_pool_matrix(video_hw[0], self.geometry.mask_hw[0], self.stride * scale[0])
    self.cols = area_pool_matrix(video_hw[1], self.geometry.mask_hw[1], self.stride * scale[1])

  def to_grid(self, mask: np.ndarray) -> np.ndarray:
    return self.rows @ mask.astype(np.float32) @ self.cols.T

  def video_box(self, input_box: np.ndarray) -> np.ndarray:
    return transform.resize_boxes(input_box, self.geometry.resized_hw, self.geometry.video_hw, xp=np)

  def forms(self, masks: list[np.ndarray]) -> list[dict[str, Any]]:
    """Per mask (bool, the video's size): grid [h, w]; center and window (BoxMask, or None where the config
    writes that form through the grid), and the grid form of the center mask."""
    out = [dict(grid=self.to_grid(m)) for m in masks]
    for start in range(0, len(masks), MASKS_PER_CALL):
      chunk = np.stack(masks[start:start + MASKS_PER_CALL]).astype(np.float32)
      tight = augment.mask_boxes(chunk)
      centers = np.asarray(_box_targets(jnp.asarray(chunk), jnp.asarray(tight), size=self.mask_size,
                                        aligned=self.aligned))
      windowed = self.refines and self.full_resolution
      if windowed:  # the refiner's windows around the grid masks' support, pooled at the video's size
        grids = np.stack([out[start + i]["grid"] for i in range(len(chunk))])
        windows, _ = propagation_refiner.support_windows(jnp.asarray(grids)[None], self.stride)
        windows = self.video_box(np.asarray(windows[0]))
        refined = np.asarray(_box_targets(jnp.asarray(chunk), jnp.asarray(windows), size=propagation_refiner.SIZE,
                                          aligned=True))
      for i in range(len(chunk)):
        form = out[start + i]
        form["center"] = BoxMask(centers[i], tight[i], self.aligned)
        form["window"] = BoxMask(refined[i], windows[i], True) if windowed else None
        if not self.full_resolution:  # pasted at the video's size, then onto the grid
          pasted, top, left = form["center"].pasted(self.geometry.video_hw)
          full = np.zeros(self.geometry.video_hw, np.float32)
          full[top:top + pasted.shape[0], left:left + pasted.shape[1]] = pasted
          form["center_grid"], form["center"] = self.to_grid(full), None
    return out

  def finish(self, parts: list[tuple[float, np.ndarray | BoxMask]]) -> dict | None:
    """A frame made of weighted grid masks and box masks, as linking finishes it."""
    grid = [w * m for w, m in parts if not isinstance(m, BoxMask)]
    boxes = [(w, m) for w, m in parts if isinstance(m, BoxMask)]
    total = float(sum(w for w, _ in parts))
    if not boxes:
      return self.binarize(sum(grid) / total)
    return self.binarize.compose(sum(grid) if grid else None, boxes, total)


def video_masks(config: ml_collections.ConfigDict, video: ytvis_json.Video, tracks: list[list[np.ndarray | None]]
                ) -> dict[str, list[list[dict | None]]]:
  """The tracks' frames (binary [H, W] or None) of one video through each path -> per path, per track, RLEs."""
  rep = _Representation(config, (video.height, video.width))
  present = [(t, f) for t, track in enumerate(tracks) for f, mask in enumerate(track)
             if mask is not None and mask.any()]
  forms = dict(zip(present, rep.forms([tracks[t][f] for t, f in present])))
  inference = config.inference
  windows = clip_windows(len(tracks[0]), inference.half_window, inference.clip_stride)
  decay = inference.get("temporal_decay", 0.0)
  out = {path: [[None] * len(track) for track in tracks] for path in PATHS}
  for (t, f), form in forms.items():
    center = form["center"] if form["center"] is not None else form["center_grid"]
    propagated = form["window"] if form["window"] is not None else form["grid"]
    out["grid"][t][f] = rep.finish([(1.0, form["grid"])])
    out["center"][t][f] = rep.finish([(1.0, center)])
    out["propagated"][t][f] = rep.finish([(1.0, propagated)])
    linked = [(math.exp(-abs(f - c) / decay) if decay > 0 else 1.0, center if c == f else propagated)
              for c, begin, stop in windows if begin <= f < stop]
    out["linked"][t][f] = rep.finish(linked)
  return out


def measure(config: ml_collections.ConfigDict, annotations: str | dict[str, Any]) -> dict[str, Any]:
  """{path: {"stats": the 12 stats, "iou_by_size": {size group: mean per-frame IoU}}} for an annotation file (a
  path or its parsed dict)."""
  ground_truth = evaluation.load_ground_truth(annotations)  # read and checked once, scored twice
  if not ground_truth.tracks:
    raise SystemExit(f"{ground_truth.source}: no annotations to pass through the representation")
  by_video: dict[int, list[evaluation.Track]] = {}
  for track in ground_truth.tracks:
    by_video.setdefault(track.video_id, []).append(track)
  results: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
  ious: dict[str, list[tuple[float, float]]] = {path: [] for path in PATHS}  # (area, IoU) per present frame
  for video_id, tracks_here in by_video.items():
    video = ground_truth.videos[video_id]
    truth = [[None if r is None else rle.decode(r).astype(bool) for r in track.rles] for track in tracks_here]
    for path, tracks in video_masks(config, video, truth).items():
      for gt_track, masks, true_masks in zip(tracks_here, tracks, truth):
        results[path].append(dict(video_id=video_id, category_id=gt_track.category_id, score=1.0,
                                  segmentations=masks))
        for mask, true_mask in zip(masks, true_masks):
          if true_mask is not None and true_mask.any():
            made = np.zeros_like(true_mask) if mask is None else rle.decode(mask).astype(bool)
            ious[path].append((float(true_mask.sum()), mask_iou(made, true_mask)))
  report = {}
  for path in PATHS:
    areas, values = np.asarray(ious[path]).T
    groups = diagnose.size_groups(areas)
    stats = evaluation.evaluate_tracks(ground_truth, evaluation.load_results(results[path], ground_truth))
    report[path] = dict(stats=stats,
                        iou_by_size={name: float(values[groups == k].mean()) if np.any(groups == k) else None
                                     for k, name in enumerate(diagnose.SIZE_NAMES)})
  return report


def format_report(report: dict[str, Any]) -> str:
  stat_names = list(report[PATHS[0]]["stats"])
  size_names = list(report[PATHS[0]]["iou_by_size"])
  lines = ["| path | " + " | ".join(stat_names) + " |", "|---" * (len(stat_names) + 1) + "|"]
  lines += [f"| {p} | " + " | ".join(f"{v:.4f}" for v in report[p]["stats"].values()) + " |" for p in PATHS]
  lines += ["", "mean per-frame IoU with the ground truth, by its area (pixels)",
            "| path | " + " | ".join(size_names) + " |", "|---" * (len(size_names) + 1) + "|"]
  lines += [f"| {p} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in report[p]["iou_by_size"].values())
            + " |" for p in PATHS]
  return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.inference.resolution_cap",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="a configs/*.py file")
  parser.add_argument("--annotations", required=True, help="a YouTube-VIS-format annotation file with ground truth")
  parser.add_argument("--json", help="also write the report here as JSON (default: print only)")
  return parser.parse_args(argv)


def _load_config(path: str) -> ml_collections.ConfigDict:
  from maskprop_jax.training import runs  # noqa: PLC0415 (the one config loader; only the command line needs it)

  return runs.load_config_file(path)


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  report = measure(_load_config(args.config), args.annotations)
  print(format_report(report))
  if args.json:
    files.write_json(args.json, report)


if __name__ == "__main__":
  main(sys.argv[1:])
