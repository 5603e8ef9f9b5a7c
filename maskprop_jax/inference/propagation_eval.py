"""Does the propagation branch beat copying? Ground-truth masks propagated over clips vs copied to every frame.

    python -m maskprop_jax.inference.propagation_eval --workdir RUN [--config configs/synthetic.py] [--split valid]
    python -m maskprop_jax.inference.propagation_eval --workdir RUN --images DIR/JPEGImages --annotations DIR.json

For every ground-truth track present on a clip's center frame c (c = 0, s, 2s, ... as in inference, s the
config's clip stride), its ground-truth mask on c goes to the propagation grid the way a detection's mask does
(resized and padded with the frame, area-pooled to the propagation level) and the trained model propagates it to
every other frame c+d of the window |d| <= T. Each propagated mask is upsampled to the video's size and
thresholded as linking does, and its IoU with the track's ground truth on c+d is set against copying the center
mask to c+d: copied from the same grid (the branch's very input, so the difference is what propagation adds) and
copied at full resolution. A frame where the track is absent scores 1 for an empty mask and 0 for any other; the
last row keeps only the frames where it is present. A second table splits the present pairs by the ground-truth
mask's area on c+d (diagnose.py's size bins): small objects are where a coarse grid loses most. A third splits
the pairs present on both frames by how far the object's centroid moved from c to c+d, in cells of the propagation
level's features: the offset block sees about +-3 cells, and beyond them only the motion prior (model/motion.py)
can find the object.

On each center frame the detector runs as inference runs it (the detections that become clip tracks), and each
non-crowd ground-truth track there is matched to the detection of highest mask IoU, of any class: a fourth table
gives, by the track's area on c, how many are found (IoU >= 0.5), how many of those with the right class, and the
mean best IoU; a last line the detections per center frame and the share that match no ground truth. Together
they say whether the video AP is lost at detection (missed, misclassified, spurious) or at propagation.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import sys
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskprop_jax import rle
from maskprop_jax.bilinear import bilinear_matrix
from maskprop_jax.data import from_config, video_reader, ytvis
from maskprop_jax.errors import InputError, report_errors
from maskprop_jax.evaluation.diagnose import FOUND_IOU, SIZE_NAMES, size_groups
from maskprop_jax.inference import evaluate, predictor
from maskprop_jax.linking.iou import mask_iou, soft_iou
from maskprop_jax.model import maskprop, propagation, transform
from maskprop_jax.training import runs

TRACK_SLOTS = 8  # tracks propagated per call: one compiled program for any number of tracks on a frame
METHODS = ("propagated", "copy_grid", "copy_full")
# Bins of an object's shift from c to c+d in feature cells: the offset block sees about +-3 cells around each
# location (three 3x3 convolutions), so a shift beyond that is one it can only guess from context.
SHIFT_EDGES = (1.0, 2.0, 4.0, 8.0)
SHIFT_NAMES = ("<1", "1-2", "2-4", "4-8", ">=8")


@dataclasses.dataclass
class PairIous:
  """IoU of each method on (track, center, frame c+d) pairs, grouped by |d|; `present` marks a visible track,
  `areas` its ground-truth mask's pixels on c+d (0 where absent)."""

  ious: dict[int, list[np.ndarray]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
  present: dict[int, list[bool]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
  areas: dict[int, list[int]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
  shifts: dict[int, list[float]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
  num_center_tracks: int = 0

  def add(self, distance: int, ious: np.ndarray, present: bool, area: int, shift: float = np.nan) -> None:
    """`shift`: how far the object's centroid moved from c to c+d, in cells of the propagation level's features
    (NaN where it is absent on either frame)."""
    self.ious[distance].append(ious)
    self.present[distance].append(present)
    self.areas[distance].append(area)
    self.shifts[distance].append(shift)


@dataclasses.dataclass
class CenterDetections:
  """Center-frame detection against ground truth: per (non-crowd track, center frame) its area on the frame, the
  best mask IoU of any detection and whether that detection has the track's class; counts per center frame."""

  areas: list[int] = dataclasses.field(default_factory=list)
  best_iou: list[float] = dataclasses.field(default_factory=list)
  class_ok: list[bool] = dataclasses.field(default_factory=list)
  num_frames: int = 0
  num_detections: int = 0
  num_unmatched: int = 0  # detections with IoU < FOUND_IOU with every ground truth of their frame

  def add(self, areas: np.ndarray, best_iou: np.ndarray, class_ok: np.ndarray, det_matched: np.ndarray) -> None:
    self.areas.extend(int(a) for a in areas)
    self.best_iou.extend(float(v) for v in best_iou)
    self.class_ok.extend(bool(v) for v in class_ok)
    self.num_frames += 1
    self.num_detections += len(det_matched)
    self.num_unmatched += int(np.sum(~np.asarray(det_matched, bool)))


def match_detections(det_masks: np.ndarray, det_labels: np.ndarray, gt_masks: np.ndarray,
                     gt_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Binary detection masks [D, H, W] with labels [D] against ground-truth masks [G, H, W] with labels [G]:
  each GT's best IoU over detections of any class [G] (0 without detections), whether that detection's label is
  the GT's [G] (the first, i.e. best-scored, of equal IoUs), and whether each detection reaches IoU >= FOUND_IOU
  with some GT [D]."""
  num_dets, num_gts = det_masks.shape[0], gt_masks.shape[0]
  if num_dets == 0 or num_gts == 0:
    return np.zeros(num_gts), np.zeros(num_gts, bool), np.zeros(num_dets, bool)
  ious = soft_iou(det_masks.reshape(num_dets, -1).astype(np.float32),
                  gt_masks.reshape(num_gts, -1).astype(np.float32))  # [D, G]
  best = ious.argmax(0)  # [G]
  return ious.max(0), np.asarray(det_labels)[best] == np.asarray(gt_labels), (ious >= FOUND_IOU).any(1)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _grid_masks(masks: jax.Array, geometry: maskprop.InputGeometry, stride: int) -> jax.Array:
  """Video-size binary masks [N, H, W] -> soft masks on the propagation grid of the padded canvas [N, h, w]."""
  resized = transform.resize_bilinear(jnp.moveaxis(masks, 0, -1).astype(jnp.float32), geometry.resized_hw)
  canvas = jnp.moveaxis(transform.pad_to(resized, geometry.canvas_hw), -1, 0)  # [N, Hc, Wc]
  return propagation.downsample_masks(canvas, stride)


class _Upsampler:
  """Grid masks -> video-size binary masks, as linking turns soft masks into a video's masks."""

  def __init__(self, mask_hw: tuple[int, int], video_hw: tuple[int, int], threshold: float):
    self.mask_hw, self.threshold = mask_hw, threshold
    self.ry = bilinear_matrix(mask_hw[0], video_hw[0])  # [H, h]
    self.rx = bilinear_matrix(mask_hw[1], video_hw[1])  # [W, w]

  def __call__(self, grid: np.ndarray) -> np.ndarray:  # [..., h', w'] (the canvas's grid) -> bool [..., H, W]
    grid = grid[..., :self.mask_hw[0], :self.mask_hw[1]]
    # Two matmuls, not np.einsum: unoptimised einsum loops over all of y, x, h, w at once, about a second per mask
    # on a stride-1 mask grid.
    return self.ry @ grid @ self.rx.T >= self.threshold


def centroid(mask: np.ndarray | None) -> np.ndarray | None:
  """(y, x) mean of a binary mask's pixels; None for an absent or empty mask."""
  if mask is None or not mask.any():
    return None
  ys, xs = np.nonzero(mask)
  return np.array([ys.mean(), xs.mean()])


def _track_masks(track: ytvis.Track, num_frames: int) -> list[np.ndarray | None]:
  return [None if track.segmentations[f] is None else rle.decode(track.segmentations[f]).astype(bool)
          for f in range(num_frames)]


def center_detections(video_predictor: predictor.VideoPredictor, clip: predictor.Clip,
                      geometry: maskprop.InputGeometry, timer: predictor.Timer) -> tuple[np.ndarray, np.ndarray]:
  """Soft masks on the mask grid [K, h, w] and labels [K] of the center frame's detections that inference makes
  clip tracks of (score threshold, duplicate suppression): the predictor's own step, on the clip cut to its center
  frame, where a clip track is the detection's mask and class alone (nothing to propagate to)."""
  alone = dataclasses.replace(clip, start=clip.center, stop=clip.center + 1)
  tracks = video_predictor.clip_tracks(alone, geometry, timer)
  if not tracks:
    return np.zeros((0,) + geometry.mask_hw, np.float32), np.zeros(0, np.int64)
  # class_probs holds the detection's score on its label's entry only (maskprop.ClipDetections).
  labels = np.asarray([int(np.argmax(t.class_probs)) + 1 for t in tracks], np.int64)
  return np.stack([t.masks[0] for t in tracks]), labels


def measure_video(model: maskprop.MaskProp, video: video_reader.VideoFrames, tracks: Sequence[ytvis.Track],
                  settings: predictor.ClipSettings, result: PairIous, detections: CenterDetections,
                  category_ids: Sequence[int]) -> None:
  """Adds the IoUs of one video's (track, center, frame) pairs to `result`, and its center frames' detections
  matched to ground truth to `detections` (label l is category_ids[l - 1])."""
  graphdef, state = nnx.split(model)
  video_predictor = predictor.VideoPredictor(model, settings)
  video_hw = (video.height, video.width)
  geometry = maskprop.InputGeometry.for_video(model.config, video_hw)
  upsample = _Upsampler(geometry.mask_hw, video_hw, settings.link.mask_threshold)
  tracks = [t for t in tracks if not t.iscrowd]
  gt = [_track_masks(t, video.num_frames) for t in tracks]  # [track][frame] bool [H, W] or None
  # A category the model does not predict gets label 0, which no detection has.
  # Video pixels per cell of the propagation level's features (the level's stride on the resized frame).
  cell = model.stride * video_hw[0] / geometry.resized_hw[0]
  centroids = [[centroid(m) for m in masks] for masks in gt]
  gt_labels = np.asarray([category_ids.index(t.category_id) + 1 if t.category_id in category_ids else 0
                          for t in tracks], np.int64)
  empty = np.zeros(video_hw, bool)
  timer = predictor.Timer(sync=False)

  def features(frame):  # the frame's features and propagation terms, as inference computes them
    return predictor.frame_features_and_terms(graphdef, state, frame, geometry, timer)

  for clip in predictor.video_clips(video, video.num_frames, video_hw, settings.half_window, settings.clip_stride,
                                    features):
    center = clip.center
    on_center = [k for k in range(len(tracks)) if gt[k][center] is not None]
    result.num_center_tracks += len(on_center)
    grid_dets, det_labels = center_detections(video_predictor, clip, geometry, timer)  # [K, h, w], [K]
    center_gt = np.stack([gt[k][center] for k in on_center]) if on_center else np.zeros((0,) + video_hw, bool)
    detections.add(center_gt.sum((1, 2)),
                   *match_detections(upsample(grid_dets), det_labels, center_gt, gt_labels[on_center]))
    references = clip.references()
    if not references:
      continue
    reference_terms = tuple(clip.features[f].terms for f in references)
    reference_inputs = tuple(clip.features[f].inputs for f in references) if model.refines_propagation else None
    for first in range(0, len(on_center), TRACK_SLOTS):
      group = on_center[first:first + TRACK_SLOTS]
      center_masks = np.zeros((TRACK_SLOTS,) + video_hw, np.uint8)
      center_masks[:len(group)] = [gt[k][center] for k in group]
      grid = _grid_masks(jnp.asarray(center_masks), geometry, model.mask_stride)  # [S, h', w']
      probs, _ = predictor.propagate(graphdef, state, clip.features[center].terms, grid[None], reference_terms,
                                     reference_inputs)
      probs = np.asarray(probs)  # [L, S, h', w']
      copy_grid = upsample(np.asarray(grid))  # [S, H, W]
      propagated = upsample(probs[:, :len(group)])  # [L, S', H, W]
      for slot, k in enumerate(group):
        for row, f in enumerate(references):
          target = gt[k][f] if gt[k][f] is not None else empty
          ious = np.array([mask_iou(propagated[row, slot], target), mask_iou(copy_grid[slot], target),
                           mask_iou(gt[k][center], target)])
          area = int(gt[k][f].sum()) if gt[k][f] is not None else 0
          start, end = centroids[k][center], centroids[k][f]
          shift = np.nan if start is None or end is None else float(np.hypot(*(end - start))) / cell
          result.add(abs(f - center), ious, gt[k][f] is not None, area, shift)


def measure(model: maskprop.MaskProp, dataset: ytvis.YTVISDataset, settings: predictor.ClipSettings,
            videos: Iterable[video_reader.VideoFrames] | None = None,
            category_ids: Sequence[int] | None = None) -> tuple[PairIous, CenterDetections]:
  """IoUs of every video of an annotated data set (or of `videos` of it), and its center-frame detections.
  `category_ids`: the category id of each label 1..C, as the run recorded them (default: the data set's, sorted,
  as training labels them)."""
  if not dataset.has_annotations:
    raise InputError(f"{dataset.path} has no ground-truth annotations to compare against")
  category_ids = list(category_ids if category_ids is not None else dataset.category_ids)
  result, detections = PairIous(), CenterDetections()
  for video in videos if videos is not None else video_reader.videos_from_ytvis(dataset):
    measure_video(model, video, dataset.tracks_of(video.video_id), settings, result, detections, category_ids)
  return result, detections


def _mean(values: np.ndarray) -> float:
  return float(np.mean(values)) if values.size else np.nan


def _row(label: str, ious: list[np.ndarray]) -> str:
  mean = np.mean(ious, axis=0) if ious else np.full(len(METHODS), np.nan)
  return f"{label:>14}  {len(ious):>6}  {mean[0]:>10.4f}  {mean[1]:>11.4f}  {mean[2]:>15.4f}"


def _header(first: str) -> str:
  return f"{first:>14}  {'pairs':>6}  {'propagated':>10}  {'copy (grid)':>11}  {'copy (full res)':>15}"


def format_table(result: PairIous, title: str) -> str:
  """Mean IoU per |d| and over all pairs, for each method."""
  lines = [title, _header("|d|")]
  for distance in sorted(result.ious):
    lines.append(_row(str(distance), result.ious[distance]))
  every = [iou for d in sorted(result.ious) for iou in result.ious[d]]
  present = [iou for d in sorted(result.ious) for iou, p in zip(result.ious[d], result.present[d]) if p]
  lines.append(_row("all", every))
  lines.append(_row("all, present", present))
  return "\n".join(lines)


def format_size_table(result: PairIous) -> str:
  """Mean IoU of each method over the pairs whose track is present on c+d, by its GT mask area there."""
  pairs = [(iou, area) for d in sorted(result.ious)
           for iou, present, area in zip(result.ious[d], result.present[d], result.areas[d]) if present]
  groups = size_groups([area for _, area in pairs])  # [N]
  lines = ["present pairs by GT mask area on c+d (pixels); mean mask IoU", _header("area")]
  for index, name in enumerate(SIZE_NAMES):
    lines.append(_row(name, [iou for (iou, _), group in zip(pairs, groups) if group == index]))
  return "\n".join(lines)


def format_shift_table(result: PairIous) -> str:
  """Mean IoU of each method over the pairs whose track is present on c and c+d, by how far it moved between them
  in feature cells: where propagation stops following the object."""
  pairs = [(iou, shift) for d in sorted(result.ious) for iou, shift in zip(result.ious[d], result.shifts[d])
           if np.isfinite(shift)]
  groups = np.searchsorted(SHIFT_EDGES, [shift for _, shift in pairs], side="right")
  lines = ["present pairs by the object's centroid shift from c to c+d (cells of the propagation level); mean mask "
           "IoU", _header("shift")]
  for index, name in enumerate(SHIFT_NAMES):
    lines.append(_row(name, [iou for (iou, _), group in zip(pairs, groups) if group == index]))
  return "\n".join(lines)


def format_detection_table(detections: CenterDetections, score_thresh: float) -> str:
  """Per GT area bin on the center frame: GT count, recall at IoU >= FOUND_IOU (any class, right class), mean best
  IoU; and a line on the detections themselves."""
  best, class_ok = np.asarray(detections.best_iou), np.asarray(detections.class_ok, bool)  # [G], [G]
  groups = size_groups(detections.areas)
  lines = [f"center-frame detection (score >= {score_thresh:g}, after duplicate suppression) against the GT tracks "
           f"there, by GT mask area (pixels)",
           f"{'area':>14}  {'GTs':>6}  {'recall@.5':>10}  {'+ class':>8}  {'mean best IoU':>13}"]
  for label, chosen in [(name, groups == k) for k, name in enumerate(SIZE_NAMES)] + [("all", groups >= 0)]:
    found = best[chosen] >= FOUND_IOU
    lines.append(f"{label:>14}  {int(chosen.sum()):>6}  {_mean(found):>10.4f}  {_mean(found & class_ok[chosen]):>8.4f}"
                 f"  {_mean(best[chosen]):>13.4f}")
  per_frame = detections.num_detections / max(detections.num_frames, 1)
  unmatched = detections.num_unmatched / detections.num_detections if detections.num_detections else np.nan
  lines.append(f"{detections.num_detections} detections on {detections.num_frames} center frames "
               f"({per_frame:.2f} per frame); matching no GT at IoU >= {FOUND_IOU}: {unmatched:.4f}")
  return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.inference.propagation_eval",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a train.py run directory (its latest checkpoint is used)")
  parser.add_argument("--config", help="the run's config file (default: the run's config.json)")
  parser.add_argument("--split", help="split to measure (default: config.data.val_split); with --annotations, the "
                      "name the tables carry (default: named after the annotation file)")
  parser.add_argument("--images", help="a YouTube-VIS-format JPEGImages folder to measure instead of a split "
                      "(with --annotations; default: the config's split)")
  parser.add_argument("--annotations", help="its annotation file, with ground truth (with --images; default: the "
                      "config's split)")
  args = parser.parse_args(argv)
  if bool(args.images) != bool(args.annotations):
    parser.error("--images and --annotations go together")
  return args


@report_errors
def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  run = runs.load_run(args.workdir, runs.load_config_file(args.config) if args.config else None)
  model, config, step = run.model, run.config, run.step
  if args.annotations:
    name = args.split or evaluate.results_name(args.annotations)
    dataset = ytvis.load_ytvis(args.annotations, args.images)
  else:
    name = args.split or config.data.val_split
    if config.data.name == "synthetic":
      from_config.ensure_split(config, name)  # generated on first use, as training does
    dataset = ytvis.load_ytvis(from_config.annotation_file(config, name), from_config.images_dir(config, name))
  unknown = sorted(set(dataset.category_ids) - set(run.categories.ids))
  if unknown:
    print(f"note: categories {unknown} of {dataset.path} are not the run's ({run.categories.ids}): their tracks "
          "never have the right class", file=sys.stderr)
  settings = predictor.ClipSettings.from_config(config)
  result, detections = measure(model, dataset, settings, category_ids=run.categories.ids)
  num_pairs = sum(len(v) for v in result.ious.values())
  print(format_table(result, f"{name}: {len(dataset.videos)} videos, {result.num_center_tracks} center-frame "
                             f"tracks, {num_pairs} (track, frame) pairs; checkpoint of step {step}, "
                             f"T={config.inference.half_window}; mean mask IoU"))
  print()
  print(format_size_table(result))
  print()
  print(format_shift_table(result))
  print()
  print(format_detection_table(detections, settings.score_thresh))
  sys.stdout.flush()


if __name__ == "__main__":
  main()
