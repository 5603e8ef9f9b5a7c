"""Evaluating a model on a split: inference over its videos, the results files, video AP where ground truth exists.

Writes `<workdir>/results/<split>.json` (the YouTube-VIS submission format), `<split>.zip` (what the servers
take) and, where the annotation file has ground truth, `<split>_metrics.json` with the 12 YouTube-VIS stats.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from maskprop_jax import evaluation, files, visualize
from maskprop_jax.data import from_config, video_reader, ytvis
from maskprop_jax.errors import InputError
from maskprop_jax.inference import predictor, speed
from maskprop_jax.model import maskprop
from maskprop_jax.progress import Progress

def predict_videos(model: maskprop.MaskProp, config: ml_collections.ConfigDict,
                   videos: Sequence[video_reader.VideoFrames], category_ids: list[int],
                   timer: predictor.Timer | None = None, label: str | None = None
                   ) -> tuple[list[evaluation.PredictedTrack], int]:
  """Video-level tracks of every video, as results entries (dataset category ids); and the frame count. With a
  `label`, a progress line (video i/N, frames/s, time left) on stderr."""
  video_predictor = predictor.VideoPredictor(model, predictor.ClipSettings.from_config(config))
  meter = Progress(label, sum(video.num_frames for video in videos)) if label else None
  predictions, num_frames = [], 0
  for index, video in enumerate(videos):
    frames = video
    if meter is not None:
      meter.note = f"video {index + 1}/{len(videos)}"
      frames = meter.wrap(video)
    tracks = video_predictor(frames, video.num_frames, (video.height, video.width), timer=timer)
    num_frames += video.num_frames
    for track in tracks:
      predictions.append(evaluation.PredictedTrack(video_id=video.video_id, category_id=category_ids[track.label - 1],
                                                   score=track.score, masks=track.segmentations))
  if meter is not None:
    meter.finish()
  return predictions, num_frames


def check_data(config: ml_collections.ConfigDict, split: str, *, images_dir: str | None = None,
               annotation_file: str | None = None) -> None:
  """Checks the data an evaluation reads, preparing the config's split the first time (the synthetic set is
  generated): InputError naming the file, and what to run, when something is missing."""
  if annotation_file:
    ytvis.load_ytvis(annotation_file, images_dir)  # validates the file and that its frames are there
    return
  from_config.ensure_split(config, split)


def results_name(annotation_file: str | Path) -> str:
  """The name of the results files of a folder evaluated by path: its annotation file's folder and stem.

  `data/mine/valid.json` -> `mine_valid`: the folder's name keeps it apart from the config's own split (whose
  results are `valid.json`), the stem apart from another annotation file of the same folder.
  """
  path = Path(annotation_file).resolve()
  return f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem


def evaluate_split(config: ml_collections.ConfigDict, model: maskprop.MaskProp, workdir: str | Path, *,
                   split: str, step: int | None = None, images_dir: str | None = None,
                   annotation_file: str | None = None, benchmark: bool = False,
                   num_overlays: int = 0, compare_with_torchvision: bool = False,
                   num_images: int = 0) -> dict[str, Any]:
  """Runs inference over a split (or any YouTube-VIS folder), writes results and returns the metrics.

  `num_overlays` writes overlay videos of the first videos; `num_images` returns, under "overlay/<video>", the
  middle frame of each of the first videos with its tracks drawn (uint8 [1, H, W, 3]: TensorBoard images).
  `benchmark` adds timings (after a warm-up pass over the first video); `compare_with_torchvision` adds those of
  torchvision's per-frame Mask R-CNN on the same frames, and the ratio of the two frames/s.
  """
  if annotation_file:
    dataset = ytvis.load_ytvis(annotation_file, images_dir)
    videos = list(video_reader.videos_from_ytvis(dataset))
  else:
    videos = list(from_config.eval_videos(config, split))  # prepares the split first (generates a synthetic one)
    annotation_file = str(from_config.annotation_file(config, split))
    dataset = ytvis.load_ytvis(annotation_file)
  if len(dataset.category_ids) != model.num_classes:
    raise InputError(f"{annotation_file} has {len(dataset.category_ids)} categories, the model predicts "
                     f"{model.num_classes}")
  model.eval()
  timer = predictor.Timer(sync=benchmark)
  if benchmark:
    # Compiles the programs for the first video's frame size, so that frames/s measures inference, not XLA.
    predict_videos(model, config, videos[:1], dataset.category_ids)
  start = time.perf_counter()
  predictions, num_frames = predict_videos(model, config, videos, dataset.category_ids, timer,
                                           label=f"{split}: inference")
  seconds = time.perf_counter() - start

  out_dir = Path(workdir) / "results"
  out_dir.mkdir(parents=True, exist_ok=True)
  evaluation.write_results(predictions, out_dir / f"{split}.json")
  evaluation.write_results(predictions, out_dir / f"{split}.zip")
  scores: dict[str, float] = {}
  if dataset.has_annotations:
    scores = evaluation.evaluate(annotation_file, str(out_dir / f"{split}.json"))
    payload = dict(scores, step=step) if step is not None else scores
    files.write_json(out_dir / f"{split}_metrics.json", payload, indent=2)
    logging.info("%s video AP at step %s: %s", split, step, json.dumps(scores))
  if num_overlays:
    written = visualize.write_overlay_videos(videos[:num_overlays], predictions, dataset, out_dir / "overlays")
    logging.info("overlays of %d videos in %s", len(written), out_dir / "overlays")
  if num_images:
    images = visualize.middle_frame_overlays(videos[:num_images], predictions, dataset)
    scores.update({f"overlay/{name}": image for name, image in images.items()})
  if benchmark:
    scores.update(speed.benchmark_figures(timer, num_frames, seconds))
  if benchmark and compare_with_torchvision:
    scores.update(speed.torchvision_comparison(config, videos, scores["frames_per_second"]))
  return scores


TENSORBOARD_IMAGES = 3  # videos whose middle frame a training run's evaluations draw in TensorBoard


def evaluate_run(config: ml_collections.ConfigDict, model: maskprop.MaskProp, workdir: str | Path, *, step: int,
                 num_overlays: int = 0) -> dict[str, Any]:
  """A training run's evaluation (what train.py hands the training loop): the config's validation split, its
  metrics and the overlaid middle frames of its first videos."""
  return evaluate_split(config, model, workdir, split=config.data.val_split, step=step, num_overlays=num_overlays,
                        num_images=TENSORBOARD_IMAGES)
