"""What a config's mask representation allows: ground truth passed through it, scored by the official video AP.

    python -m maskprop_jax.inference.resolution_cap --config configs/ytvis.py --annotations GT.json [--json F]

A perfect model still writes its masks through the config's representation, so these are the best scores it can
reach. Each ground-truth track becomes a prediction of its own category with score 1, its frames' masks made the
way predicted ones are:
  - grid: as the propagation branch writes every frame: the mask resized to the network input (nearest, as the
    training targets are), area-pooled onto the mask grid (stride model.propagation's mask stride), then finished
    as linking finishes frames (linking.frames.Binarizer: bilinear to the video's size, inference.mask_threshold);
  - center: as Mask R-CNN's mask of a clip's center frame: the mask resized as above, its tight box, the M x M mask
    target on that box (roi_targets.project_masks_on_boxes), pasted back (paste_masks_in_image; both with the
    config's roi_heads.aligned), then pooled onto the grid and finished as above.
Printed: the 12 stats of each path and the mean per-frame IoU with the ground truth by object size.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maskprop_jax import files, rle
from maskprop_jax.data import augment
from maskprop_jax import evaluation
from maskprop_jax.evaluation import diagnose, ytvis_json
from maskprop_jax.linking.frames import Binarizer
from maskprop_jax.linking.iou import mask_iou
from maskprop_jax.model import maskprop, paste_masks, propagation, roi_targets

PATHS = ("grid", "center")
MASKS_PER_CALL = 64  # masks go through the jitted paths this many at a time: one program per video size


@functools.partial(jax.jit, static_argnames=("stride", "mask_size", "aligned"))
def _represent(masks: jax.Array, boxes: jax.Array, image_hw: jax.Array, *, stride: int, mask_size: int,
               aligned: bool) -> tuple[jax.Array, jax.Array]:
  """Ground-truth masks [N, H, W] on the padded network input and their tight boxes [N, 4] -> (grid, center) soft
  masks on the mask grid."""
  grid = propagation.downsample_masks(masks, stride)
  hw = jnp.broadcast_to(image_hw, (masks.shape[0], 2))
  first_gt = jnp.zeros((masks.shape[0], 1), jnp.int32)  # each mask is its own box's only ground truth
  targets = roi_targets.project_masks_on_boxes(masks[:, None], boxes[:, None], first_gt, hw, mask_size,
                                               aligned=aligned)[:, 0]  # [N, M, M]
  pasted = paste_masks.paste_masks_in_image(targets, boxes, masks.shape[1:], image_hw, aligned=aligned)
  return grid, propagation.downsample_masks(pasted, stride)


def video_masks(config: ml_collections.ConfigDict, video: ytvis_json.Video, tracks: list[list[np.ndarray | None]]
                ) -> dict[str, list[list[dict | None]]]:
  """The tracks' frames (binary [H, W] or None) of one video through each path -> per path, per track, RLEs."""
  geometry = maskprop.InputGeometry.for_video(config.model, (video.height, video.width))
  stride = maskprop.mask_stride(config.model)
  rows = augment.nearest_indices(video.height, geometry.resized_hw[0])
  cols = augment.nearest_indices(video.width, geometry.resized_hw[1])
  binarize = Binarizer(geometry.mask_hw, (video.height, video.width), config.inference.mask_threshold)
  present = [(t, f) for t, track in enumerate(tracks) for f, mask in enumerate(track)
             if mask is not None and mask.any()]
  out = {path: [[None] * len(track) for track in tracks] for path in PATHS}
  canvas = np.zeros((MASKS_PER_CALL,) + geometry.canvas_hw, np.float32)
  for start in range(0, len(present), MASKS_PER_CALL):
    chunk = present[start:start + MASKS_PER_CALL]
    canvas[:] = 0.0
    boxes = np.zeros((MASKS_PER_CALL, 4), np.float32)
    for i, (t, f) in enumerate(chunk):
      canvas[i, :len(rows), :len(cols)] = tracks[t][f][rows[:, None], cols[None, :]]
      boxes[i] = augment.mask_box(canvas[i])
    soft = _represent(jnp.asarray(canvas), jnp.asarray(boxes), jnp.asarray(geometry.resized_hw, jnp.int32),
                      stride=stride, mask_size=2 * config.model.detector.roi_heads.mask_output_size,
                      aligned=bool(config.model.detector.roi_heads.aligned))
    for path, masks in zip(PATHS, soft):
      masks = np.asarray(masks)[:, :geometry.mask_hw[0], :geometry.mask_hw[1]]
      for i, (t, f) in enumerate(chunk):
        out[path][t][f] = binarize(masks[i])
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
