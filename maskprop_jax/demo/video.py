"""The demo's video mode: MaskProp on a user's video, an overlay video or GIF, and the tracks as a results file.

    python -m maskprop_jax.demo --workdir RUN --video FILE.mp4|FRAMES_DIR --out OUT.mp4|OUT.gif --json OUT.json

The model is a train.py run's latest checkpoint (`--workdir`, configured by the run's config.json or `--config`),
or a converted Mask R-CNN (`--params`) with a randomly initialised propagation head (the clip settings and the
head's shape then come from `--config`, by default the package's maskprop_jax.default_config). Frames stream
through inference.predictor.VideoPredictor; the overlay draws each track's mask, box, id, class and score in a
colour of its own; the JSON is the YouTube-VIS results format with video_id 0 and the model's category ids.
`--score-thresh` and `--min-track-length` select the linked tracks (select_tracks); the overlay and the JSON get the
same selection.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import imageio.v3 as iio
import jax
import numpy as np
from flax import nnx

from maskprop_jax import default_config, evaluation, visualize
from maskprop_jax.convert import loading, params_io
from maskprop_jax.data import video_reader
from maskprop_jax.demo.cli import FOLDER_FPS
from maskprop_jax.inference import predictor
from maskprop_jax.model import maskprop
from maskprop_jax.progress import Progress
from maskprop_jax.training import runs

USER_VIDEO_ID = 0  # results files need an integer video id; a user's video has none


def model_from_params(params_dir: str, config_file: str | None) -> runs.Run:
  """A converted Mask R-CNN as MaskProp's detector; the propagation head keeps its random initialisation."""
  metadata = params_io.read_metadata(params_dir)
  config = runs.load_config_file(config_file) if config_file else default_config.get_config()
  config.model.detector = metadata["config"]
  # One compiled initialisation with XLA's own generator: eager threefry draws compile a program per weight shape.
  key = jax.random.key(config.seed, impl="rbg")
  model = nnx.jit(lambda: maskprop.MaskProp(config.model, rngs=nnx.Rngs(key)))()
  loading.load_detector_params(model, params_dir)
  model.eval()
  print(f"warning: {params_dir} is a Mask R-CNN without MaskProp's propagation head, which is randomly "
        "initialised: masks away from each clip's center frame are noise. Pass a trained run with --workdir for "
        "real propagation.", file=sys.stderr)
  categories = runs.Categories(list(metadata["category_ids"][1:]), list(metadata["class_names"][1:]))
  return runs.Run(model, config, step=None, categories=categories)


def model_from_run(workdir: str, config_file: str | None) -> runs.Run:
  """The latest checkpoint of a train.py run (training.runs.load_run, as eval.py loads it)."""
  run = runs.load_run(workdir, runs.load_config_file(config_file) if config_file else None)
  print(f"loaded the checkpoint of step {run.step} from {workdir}", file=sys.stderr)
  return run


def source_fps(path: str) -> float:
  """The frame rate of a video file; FOLDER_FPS for a folder of frames (or a file that does not say)."""
  if Path(path).is_dir():
    return FOLDER_FPS
  try:
    fps = float(iio.immeta(path, plugin="pyav").get("fps") or 0.0)
  except (OSError, ValueError):
    fps = 0.0
  return fps if np.isfinite(fps) and fps > 0 else FOLDER_FPS


def predict_video(run: runs.Run, video: video_reader.VideoFrames,
                  score_thresh: float | None = None) -> list[evaluation.PredictedTrack]:
  """Every track with a mask on at least one frame, as results entries; frames/s and time left on stderr.

  `score_thresh` (the tracks the caller will report) only ever lowers the config's clip detection threshold: a
  track's score can sit below its detections' (the linker's ranking multiplies the mean class probability by
  factors <= 1), and a confident track may link a few weaker clips, so cutting clips at `score_thresh` would split
  or shorten tracks that reach it. Below the config's threshold, the weaker clips are what such tracks are made of.
  """
  settings = predictor.ClipSettings.from_config(run.config)
  if score_thresh is not None and score_thresh < settings.score_thresh:
    settings = dataclasses.replace(settings, score_thresh=score_thresh)
  video_predictor = predictor.VideoPredictor(run.model, settings)
  progress = Progress(f"{video.name}: inference", video.num_frames)
  tracks = video_predictor(progress.wrap(video), video.num_frames, (video.height, video.width))
  progress.finish()
  return [evaluation.PredictedTrack(video_id=USER_VIDEO_ID, category_id=run.categories.ids[t.label - 1],
                                    score=t.score, masks=t.segmentations)
          for t in tracks if track_length(t.segmentations) > 0]


def track_length(masks: list[dict | None]) -> int:
  """Frames on which a track has a mask (the linker leaves None, never an empty RLE, where it has none)."""
  return sum(mask is not None for mask in masks)


def select_tracks(tracks: list[evaluation.PredictedTrack], score_thresh: float | None,
                  min_length: int) -> list[evaluation.PredictedTrack]:
  """The tracks reported: score >= `score_thresh` (all where None), masks on at least `min_length` frames."""
  return [t for t in tracks
          if (score_thresh is None or t.score >= score_thresh) and track_length(t.masks) >= min_length]


def left_out_note(num_left_out: int, score_thresh: float | None, min_length: int) -> str:
  """Why tracks are missing from the outputs, for the closing line; empty when none are."""
  if not num_left_out:
    return ""
  reasons = ([f"score < {score_thresh:g}"] if score_thresh is not None else []) + (
      [f"masks on < {min_length} frames"] if min_length > 1 else [])
  return f" ({num_left_out} more left out: {' or '.join(reasons)})"


def run_video(args: argparse.Namespace) -> None:
  if args.out:
    visualize.check_video_path(args.out)  # before the work, not after it
  video = video_reader.open_video(args.video)
  run = model_from_run(args.workdir, args.config) if args.workdir else model_from_params(args.params, args.config)
  linked = predict_video(run, video, args.score_thresh)
  # One selection feeds both outputs, so the overlay shows exactly the tracks (and ids, by position) of the JSON.
  predictions = select_tracks(linked, args.score_thresh, args.min_track_length)
  if args.out:
    names = dict(zip(run.categories.ids, run.categories.names))
    progress = Progress(f"{video.name}: overlay", video.num_frames)
    frames = visualize.overlay_frames(progress.wrap(video), predictions, names)
    visualize.write_video(args.out, frames, args.fps or source_fps(args.video))
    progress.finish()
  evaluation.write_results(predictions, args.json)
  written = f"{args.json} and {args.out}" if args.out else args.json
  note = left_out_note(len(linked) - len(predictions), args.score_thresh, args.min_track_length)
  print(f"{len(predictions)} tracks on {video.num_frames} frames of {video.name!r}{note} -> {written}")
