"""Does the propagation branch beat copying? Ground-truth masks propagated over clips vs copied to every frame.

    python -m maskprop_jax.inference.propagation_eval --workdir RUN [--config configs/synthetic.py] [--split valid]

For every ground-truth track present on a clip's center frame c (c = 0, s, 2s, ... as in inference, s the
config's clip stride), its ground-truth mask on c goes to the propagation grid the way a detection's mask does
(resized and padded with the frame, area-pooled to the propagation level) and the trained model propagates it to
every other frame c+d of the window |d| <= T. Each propagated mask is upsampled to the video's size and
thresholded as linking does, and its IoU with the track's ground truth on c+d is set against copying the center
mask to c+d: copied from the same grid (the branch's very input, so the difference is what propagation adds) and
copied at full resolution. A frame where the track is absent scores 1 for an empty mask and 0 for any other; the
last row keeps only the frames where it is present.
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
from maskprop_jax.inference import predictor
from maskprop_jax.linking.iou import mask_iou
from maskprop_jax.model import maskprop, propagation, transform
from maskprop_jax.training import runs

TRACK_SLOTS = 8  # tracks propagated per call: one compiled program for any number of tracks on a frame
METHODS = ("propagated", "copy_grid", "copy_full")


@dataclasses.dataclass
class PairIous:
  """IoU of each method on (track, center, frame c+d) pairs, grouped by |d|; `present` marks a visible track."""

  ious: dict[int, list[np.ndarray]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
  present: dict[int, list[bool]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
  num_center_tracks: int = 0

  def add(self, distance: int, ious: np.ndarray, present: bool) -> None:
    self.ious[distance].append(ious)
    self.present[distance].append(present)


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
    return np.einsum("yh,...hw,xw->...yx", self.ry, grid, self.rx) >= self.threshold


def _track_masks(track: ytvis.Track, num_frames: int) -> list[np.ndarray | None]:
  return [None if track.segmentations[f] is None else rle.decode(track.segmentations[f]).astype(bool)
          for f in range(num_frames)]


def measure_video(model: maskprop.MaskProp, video: video_reader.VideoFrames, tracks: Sequence[ytvis.Track],
                  settings: predictor.ClipSettings, result: PairIous) -> None:
  """Adds the IoUs of one video's (track, center, frame) pairs to `result`."""
  graphdef, state = nnx.split(model)
  video_hw = (video.height, video.width)
  geometry = maskprop.InputGeometry.for_video(model.config, video_hw)
  upsample = _Upsampler(geometry.mask_hw, video_hw, settings.link.mask_threshold)
  tracks = [t for t in tracks if not t.iscrowd]
  gt = [_track_masks(t, video.num_frames) for t in tracks]  # [track][frame] bool [H, W] or None
  empty = np.zeros(video_hw, bool)
  timer = predictor.Timer(sync=False)

  def features(frame):  # the frame's propagation terms, as inference computes them
    return predictor.frame_features_and_terms(graphdef, state, frame, geometry, timer).terms

  for clip in predictor.video_clips(video, video.num_frames, video_hw, settings.half_window, settings.clip_stride,
                                    features):
    center = clip.center
    on_center = [k for k in range(len(tracks)) if gt[k][center] is not None]
    result.num_center_tracks += len(on_center)
    references = clip.references()
    if not references:
      continue
    reference_terms = tuple(clip.features[f] for f in references)
    for first in range(0, len(on_center), TRACK_SLOTS):
      group = on_center[first:first + TRACK_SLOTS]
      center_masks = np.zeros((TRACK_SLOTS,) + video_hw, np.uint8)
      center_masks[:len(group)] = [gt[k][center] for k in group]
      grid = _grid_masks(jnp.asarray(center_masks), geometry, model.mask_stride)  # [S, h', w']
      probs = np.asarray(predictor.propagate(graphdef, state, clip.features[center], grid[None],
                                             reference_terms))  # [L, S, h', w']
      copy_grid = upsample(np.asarray(grid))  # [S, H, W]
      for slot, k in enumerate(group):
        for row, f in enumerate(references):
          target = gt[k][f] if gt[k][f] is not None else empty
          propagated = upsample(probs[row, slot])
          ious = np.array([mask_iou(propagated, target), mask_iou(copy_grid[slot], target),
                           mask_iou(gt[k][center], target)])
          result.add(abs(f - center), ious, gt[k][f] is not None)


def measure(model: maskprop.MaskProp, dataset: ytvis.YTVISDataset, settings: predictor.ClipSettings,
            videos: Iterable[video_reader.VideoFrames] | None = None) -> PairIous:
  """IoUs of every video of an annotated data set (or of `videos` of it)."""
  if not dataset.has_annotations:
    raise InputError(f"{dataset.path} has no ground-truth annotations to compare against")
  result = PairIous()
  for video in videos if videos is not None else video_reader.videos_from_ytvis(dataset):
    measure_video(model, video, dataset.tracks_of(video.video_id), settings, result)
  return result


def format_table(result: PairIous, title: str) -> str:
  """Mean IoU per |d| and over all pairs, for each method."""
  header = f"{'|d|':>14}  {'pairs':>6}  {'propagated':>10}  {'copy (grid)':>11}  {'copy (full res)':>15}"
  lines = [title, header]

  def row(label: str, ious: list[np.ndarray]) -> str:
    mean = np.mean(ious, axis=0) if ious else np.full(len(METHODS), np.nan)
    return f"{label:>14}  {len(ious):>6}  {mean[0]:>10.4f}  {mean[1]:>11.4f}  {mean[2]:>15.4f}"

  for distance in sorted(result.ious):
    lines.append(row(str(distance), result.ious[distance]))
  every = [iou for d in sorted(result.ious) for iou in result.ious[d]]
  present = [iou for d in sorted(result.ious) for iou, p in zip(result.ious[d], result.present[d]) if p]
  lines.append(row("all", every))
  lines.append(row("all, present", present))
  return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.inference.propagation_eval",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a train.py run directory (its latest checkpoint is used)")
  parser.add_argument("--config", help="the run's config file (default: the run's config.json)")
  parser.add_argument("--split", help="split to measure (default: config.data.val_split)")
  return parser.parse_args(argv)


@report_errors
def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  run = runs.load_run(args.workdir, runs.load_config_file(args.config) if args.config else None)
  model, config, step = run.model, run.config, run.step
  split = args.split or config.data.val_split
  if config.data.name == "synthetic":
    from_config.ensure_split(config, split)  # generated on first use, as training does
  dataset = ytvis.load_ytvis(from_config.annotation_file(config, split), from_config.images_dir(config, split))
  result = measure(model, dataset, predictor.ClipSettings.from_config(config))
  num_pairs = sum(len(v) for v in result.ious.values())
  print(format_table(result, f"{split}: {len(dataset.videos)} videos, {result.num_center_tracks} center-frame "
                             f"tracks, {num_pairs} (track, frame) pairs; checkpoint of step {step}, "
                             f"T={config.inference.half_window}; mean mask IoU"))
  sys.stdout.flush()


if __name__ == "__main__":
  main()
