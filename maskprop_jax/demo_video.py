"""The demo's video mode: MaskProp on a user's video, an overlay video or GIF, and the tracks as a results file.

    python -m maskprop_jax.demo --workdir RUN --video FILE.mp4|FRAMES_DIR --out OUT.mp4|OUT.gif --json OUT.json

The model is a train.py run's latest checkpoint (`--workdir`, configured by the run's config.json or `--config`),
or a converted Mask R-CNN (`--params`) with a randomly initialised propagation head (the clip settings and the
head's shape then come from `--config`, by default configs/default.py). Frames stream through
inference.VideoPredictor; the overlay draws each track's mask, box, id, class and score in a colour of its own;
the JSON is the YouTube-VIS results format with video_id 0 and the model's category ids.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, TextIO, TypeVar

import imageio.v3 as iio
import jax
import ml_collections
import numpy as np
from flax import nnx
from PIL import Image

from maskprop_jax import evaluation, inference, run_config, train_lib, visualize
from maskprop_jax.convert import params_io
from maskprop_jax.data import from_config, video_reader
from maskprop_jax.errors import InputError
from maskprop_jax.model import maskprop

OUTPUT_SUFFIXES = (".mp4", ".gif")
FOLDER_FPS = 10.0  # a folder of frames does not say its frame rate
USER_VIDEO_ID = 0  # results files need an integer video id; a user's video has none
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.py"

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  model: maskprop.MaskProp
  config: ml_collections.ConfigDict
  category_ids: list[int]  # of contiguous labels 1..C, in order
  category_names: list[str]


def model_from_run(workdir: str, config_file: str | None) -> LoadedModel:
  """The latest checkpoint of a train.py workdir; the categories of the run's data set where it can be read."""
  if not Path(workdir).is_dir():
    raise InputError(f"{workdir}: no such run directory")
  config = run_config.load_config_file(config_file) if config_file else run_config.load_run_config(workdir)
  config.model.init_from = ""  # the checkpoint holds every weight: the converted detector need not be here
  model, step = train_lib.restore_model(config, workdir)
  if step is None:
    raise InputError(f"{workdir}: no readable checkpoint in {Path(workdir) / 'checkpoints'}")
  print(f"loaded the checkpoint of step {step} from {workdir}", file=sys.stderr)
  ids, names = _dataset_categories(config, model.num_classes)
  return LoadedModel(model, config, ids, names)


def _dataset_categories(config: ml_collections.ConfigDict, num_classes: int) -> tuple[list[int], list[str]]:
  """Category ids and names of the run's data set, sorted by id (as training maps them to labels).

  A user's machine may not have the data set: then the ids are the labels 1..C and the names "class <id>".
  """
  for split in (config.data.val_split, config.data.train_split):
    path = from_config.annotation_file(config, split)
    try:
      categories = json.loads(path.read_text())["categories"]
      pairs = sorted((int(c["id"]), str(c["name"])) for c in categories)
    except (OSError, ValueError, KeyError, TypeError):
      continue
    if len(pairs) == num_classes:
      return [i for i, _ in pairs], [n for _, n in pairs]
  labels = list(range(1, num_classes + 1))
  return labels, [f"class {label}" for label in labels]


def model_from_params(params_dir: str, config_file: str | None) -> LoadedModel:
  """A converted Mask R-CNN as MaskProp's detector; the propagation head keeps its random initialisation."""
  metadata = params_io.read_metadata(params_dir)
  if config_file is None and not DEFAULT_CONFIG.is_file():
    raise InputError(f"{DEFAULT_CONFIG} not found: pass a config file with --config for the clip settings")
  config = run_config.load_config_file(config_file or DEFAULT_CONFIG)
  config.model.detector = metadata["config"]
  # One compiled initialisation with XLA's own generator: eager threefry draws compile a program per weight shape.
  key = jax.random.key(config.seed, impl="rbg")
  model = nnx.jit(lambda: maskprop.MaskProp(config.model, rngs=nnx.Rngs(key)))()
  maskprop.load_detector_params(model, params_dir)
  print(f"warning: {params_dir} is a Mask R-CNN without MaskProp's propagation head, which is randomly "
        "initialised: masks away from each clip's center frame are noise. Pass a trained run with --workdir for "
        "real propagation.", file=sys.stderr)
  return LoadedModel(model, config, list(metadata["category_ids"][1:]), list(metadata["class_names"][1:]))


class Progress:
  """Counts frames as a consumer pulls them and shows frames/s on one stderr line (rewritten on a terminal).

  `finish()` writes the final line: a consumer that stops at the last frame never resumes the generator.
  """

  def __init__(self, label: str, total: int, stream: TextIO | None = None, interval_s: float = 0.5):
    self.label, self.total, self.interval_s = label, total, interval_s
    self.stream = stream or sys.stderr
    self.live = self.stream.isatty()
    self.count = 0
    self.start = self.last = time.perf_counter()

  def wrap(self, items: Iterable[T]) -> Iterator[T]:
    self.start = self.last = time.perf_counter()
    for item in items:
      self.count += 1
      yield item  # resumed: the consumer is done with this frame and asks for the next one
      now = time.perf_counter()
      if self.live and now - self.last >= self.interval_s:
        self.stream.write(f"\r{self._line(now)}")
        self.stream.flush()
        self.last = now

  def finish(self) -> None:
    self.stream.write(("\r" if self.live else "") + self._line(time.perf_counter()) + "\n")

  def _line(self, now: float) -> str:
    return f"{self.label}: {self.count}/{self.total} frames, {self.count / max(now - self.start, 1e-9):.1f} frames/s"


def source_fps(path: str) -> float:
  """The frame rate of a video file; FOLDER_FPS for a folder of frames (or a file that does not say)."""
  if Path(path).is_dir():
    return FOLDER_FPS
  try:
    fps = float(iio.immeta(path, plugin="pyav").get("fps") or 0.0)
  except (OSError, ValueError):
    fps = 0.0
  return fps if np.isfinite(fps) and fps > 0 else FOLDER_FPS


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


def check_overlay_path(path: str | Path) -> str:
  """The overlay's suffix, which picks its format; InputError for one that is not written."""
  suffix = Path(path).suffix.lower()
  if suffix not in OUTPUT_SUFFIXES:
    raise InputError(f"{path}: the overlay must be one of {', '.join(OUTPUT_SUFFIXES)}")
  return suffix


def write_video(path: str, frames: Iterable[np.ndarray], fps: float) -> None:
  """Writes an MP4 (H.264) or a GIF, by `path`'s suffix, whole or not at all."""
  path = Path(path)
  suffix = check_overlay_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.stem}.partial{suffix}")  # the writers pick the format by suffix
  try:
    (_write_gif if suffix == ".gif" else _write_mp4)(tmp, frames, fps)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def predict_video(loaded: LoadedModel, video: video_reader.VideoFrames,
                  score_thresh: float | None = None) -> list[evaluation.PredictedTrack]:
  """Tracks with a mask on at least one frame, as results entries; frames/s on stderr while it runs."""
  settings = inference.ClipSettings.from_config(loaded.config)
  if score_thresh is not None:
    settings = dataclasses.replace(settings, score_thresh=score_thresh)
  predictor = inference.VideoPredictor(loaded.model, settings)
  progress = Progress(f"{video.name}: inference", video.num_frames)
  tracks = predictor(progress.wrap(video), video.num_frames, (video.height, video.width))
  progress.finish()
  return [evaluation.PredictedTrack(video_id=USER_VIDEO_ID, category_id=loaded.category_ids[t.label - 1],
                                    score=t.score, masks=t.segmentations)
          for t in tracks if any(s is not None for s in t.segmentations)]


def run_video(args: argparse.Namespace) -> None:
  if args.out:
    check_overlay_path(args.out)  # before the work, not after it
  video = video_reader.open_video(args.video)
  loaded = model_from_run(args.workdir, args.config) if args.workdir else model_from_params(args.params, args.config)
  loaded.model.eval()
  predictions = predict_video(loaded, video, args.score_thresh)
  if args.out:
    names = dict(zip(loaded.category_ids, loaded.category_names))
    progress = Progress(f"{video.name}: overlay", video.num_frames)
    frames = visualize.overlay_frames(progress.wrap(video), predictions, names)
    write_video(args.out, frames, args.fps or source_fps(args.video))
    progress.finish()
  evaluation.write_results(predictions, args.json)
  written = f"{args.json} and {args.out}" if args.out else args.json
  print(f"{len(predictions)} tracks on {video.num_frames} frames of {video.name!r} -> {written}")
