"""Evaluation: MaskProp inference over a split, the results files, video AP where ground truth exists, timings.

Writes `<workdir>/results/<split>.json` (the YouTube-VIS submission format), `<split>.zip` (what the servers
take) and, where the annotation file has ground truth, `<split>_metrics.json` with the 12 YouTube-VIS stats.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path
from typing import Iterable

import jax
import ml_collections

from maskprop_jax import benchmark_reference, evaluation, inference, visualize
from maskprop_jax.data import from_config, video_reader, ytvis
from maskprop_jax.errors import InputError
from maskprop_jax.model import maskprop

STAGES = ("backbone", "detection", "propagation", "linking")


def predict_videos(model: maskprop.MaskProp, config: ml_collections.ConfigDict,
                   videos: Iterable[video_reader.VideoFrames], category_ids: list[int],
                   timer: inference.Timer | None = None) -> tuple[list[evaluation.PredictedTrack], int]:
  """Video-level tracks of every video, as results entries (dataset category ids); and the frame count."""
  predictor = inference.VideoPredictor(model, inference.ClipSettings.from_config(config))
  predictions, num_frames = [], 0
  for video in videos:
    tracks = predictor(video, video.num_frames, (video.height, video.width), timer=timer)
    num_frames += video.num_frames
    for track in tracks:
      predictions.append(evaluation.PredictedTrack(video_id=video.video_id, category_id=category_ids[track.label - 1],
                                                   score=track.score, masks=track.segmentations))
  return predictions, num_frames


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
                   num_overlays: int = 0, compare_with_torchvision: bool = False) -> dict[str, float]:
  """Runs inference over a split (or any YouTube-VIS folder), writes results and returns the metrics.

  `benchmark` adds timings (after a warm-up pass over the first video); `compare_with_torchvision` adds those of
  torchvision's per-frame Mask R-CNN on the same frames, and the ratio of the two frames/s.
  """
  if annotation_file:
    dataset = ytvis.load_ytvis(annotation_file, images_dir)
    videos = list(video_reader.videos_from_ytvis(dataset))
  else:
    annotation_file = str(from_config.annotation_file(config, split))
    dataset = ytvis.load_ytvis(annotation_file)
    videos = list(from_config.eval_videos(config, split))
  if len(dataset.category_ids) != model.num_classes:
    raise InputError(f"{annotation_file} has {len(dataset.category_ids)} categories, the model predicts "
                     f"{model.num_classes}")
  model.eval()
  timer = inference.Timer(sync=benchmark)
  if benchmark:
    # Compiles the programs for the first video's frame size, so that frames/s measures inference, not XLA.
    predict_videos(model, config, videos[:1], dataset.category_ids)
  start = time.perf_counter()
  predictions, num_frames = predict_videos(model, config, videos, dataset.category_ids, timer)
  seconds = time.perf_counter() - start

  out_dir = Path(workdir) / "results"
  out_dir.mkdir(parents=True, exist_ok=True)
  evaluation.write_results(predictions, out_dir / f"{split}.json")
  evaluation.write_results(predictions, out_dir / f"{split}.zip")
  scores: dict[str, float] = {}
  if dataset.has_annotations:
    scores = evaluation.evaluate(annotation_file, str(out_dir / f"{split}.json"))
    payload = dict(scores, step=step) if step is not None else scores
    (out_dir / f"{split}_metrics.json").write_text(json.dumps(payload, indent=2))
    logging.info("%s video AP at step %s: %s", split, step, json.dumps(scores))
  if num_overlays:
    visualize.write_overlay_gifs(videos[:num_overlays], predictions, dataset, out_dir / "overlays")
  if benchmark:
    scores.update(benchmark_figures(timer, num_frames, seconds))
  if benchmark and compare_with_torchvision:
    scores.update(torchvision_comparison(config, videos, scores["frames_per_second"]))
  return scores


def torchvision_comparison(config: ml_collections.ConfigDict, videos: list[video_reader.VideoFrames],
                           frames_per_second: float) -> dict[str, float]:
  """torchvision's maskrcnn_resnet50_fpn frame by frame on the same videos, and MaskProp's frames/s over its."""
  if not benchmark_reference.torchvision_available():
    logging.warning("torchvision is not installed: no per-frame Mask R-CNN to compare the frames/s with")
    return {}
  detector = config.model.detector
  reference = benchmark_reference.torchvision_frames_per_second(
      videos, min_size=detector.input.min_size, max_size=detector.input.max_size, num_classes=detector.num_classes,
      score_thresh=detector.roi_heads.score_thresh, detections_per_img=detector.roi_heads.detections_per_img)
  return {"torchvision_maskrcnn_frames_per_second": reference["frames_per_second"],
          "torchvision_maskrcnn_ms_per_frame": reference["ms_per_frame"],
          "frames_per_second_ratio_to_torchvision": frames_per_second / reference["frames_per_second"]}


def benchmark_figures(timer: inference.Timer, num_frames: int, seconds: float) -> dict[str, float]:
  """frames/s, milliseconds per frame by stage, and peak host and device memory."""
  figures = {"frames_per_second": num_frames / seconds, "ms_per_frame": 1000 * seconds / num_frames}
  for stage in STAGES:
    figures[f"ms_per_frame/{stage}"] = 1000 * timer.seconds.get(stage, 0.0) / num_frames
  figures["peak_host_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    figures["peak_device_memory_mb"] = stats["peak_bytes_in_use"] / 2**20
  return figures
