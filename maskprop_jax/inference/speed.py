"""Speed figures of `eval.py --benchmark`: frames/s, ms per frame by stage, peak memory, and the per-frame
baseline, torchvision's maskrcnn_resnet50_fpn run frame by frame.

A per-frame detector has to do this much work on every frame anyway; MaskProp's frames/s divided by this one's
says what the clip-level tracks cost on top (or save, since MaskProp runs the backbone once per frame and the
detection heads once per clip center). The detector has random weights and the input size of the config
(min_size / max_size of config.model.detector.input) and post-processing (score threshold, detections per image),
runs on the same decoded frames and on the same machine (torch's CPU or its first GPU, whichever jax uses), and
is timed after one warm-up frame.
"""

from __future__ import annotations

import importlib.util
import logging
import resource
import sys
import time
from typing import Iterable

import jax
import ml_collections
import numpy as np

from maskprop_jax.data import video_reader
from maskprop_jax.inference.predictor import Timer

STAGES = ("backbone", "detection", "propagation", "linking")  # what Timer is charged with, in order


def torchvision_available() -> bool:
  return importlib.util.find_spec("torchvision") is not None


def _import_maskrcnn_resnet50_fpn():
  # torchvision imports torch._dynamo, which imports triton where it is installed, and triton's native library
  # crashes the process when TensorFlow (loaded by clu and by reading the records) came first. Eager inference
  # uses no triton: hide it while torchvision loads.
  hide_triton = "triton" not in sys.modules
  if hide_triton:
    sys.modules["triton"] = None  # `import triton` now raises ImportError, which torch takes as "not installed"
  try:
    from torchvision.models.detection import maskrcnn_resnet50_fpn
  finally:
    if hide_triton:
      del sys.modules["triton"]
  return maskrcnn_resnet50_fpn


def torchvision_frames_per_second(videos: Iterable[Iterable[np.ndarray]], *, min_size: int, max_size: int,
                                  num_classes: int, score_thresh: float = 0.05,
                                  detections_per_img: int = 100) -> dict[str, float]:
  """frames/s and ms per frame of torchvision's Mask R-CNN R50-FPN over every frame of `videos` (uint8 HWC).

  score_thresh and detections_per_img are those of the box predictor's post-processing: with random weights no
  class scores 0.05, so a benchmark sets 0 for both detectors to run the mask head on full sets of detections.
  """
  import torch  # imported here: torch is only needed for this comparison

  maskrcnn_resnet50_fpn = _import_maskrcnn_resnet50_fpn()
  device = torch.device("cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu")
  torch.manual_seed(0)
  detector = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size,
                                   max_size=max_size, box_score_thresh=score_thresh,
                                   box_detections_per_img=detections_per_img).eval().to(device)

  def detect(frame: np.ndarray) -> None:
    image = torch.tensor(frame, device=device).permute(2, 0, 1).float().div_(255.0)  # [3, H, W] in 0..1
    detector([image])
    if device.type == "cuda":
      torch.cuda.synchronize()

  frames = (frame for video in videos for frame in video)
  with torch.inference_mode():
    first = next(frames, None)
    if first is None:
      raise ValueError("no frames to time torchvision's Mask R-CNN on")
    detect(first)  # warm-up: first-call allocations and kernel choices stay out of the timing
    start = time.perf_counter()
    detect(first)
    num_frames = 1
    for frame in frames:  # decoding is timed too, as it is for MaskProp
      detect(frame)
      num_frames += 1
    seconds = time.perf_counter() - start
  return {"frames_per_second": num_frames / seconds, "ms_per_frame": 1000 * seconds / num_frames}


def torchvision_comparison(config: ml_collections.ConfigDict, videos: list[video_reader.VideoFrames],
                           frames_per_second: float) -> dict[str, float]:
  """torchvision's maskrcnn_resnet50_fpn frame by frame on the same videos, and MaskProp's frames/s over its."""
  if not torchvision_available():
    logging.warning("torchvision is not installed: no per-frame Mask R-CNN to compare the frames/s with")
    return {}
  detector = config.model.detector
  reference = torchvision_frames_per_second(
      videos, min_size=detector.input.min_size, max_size=detector.input.max_size, num_classes=detector.num_classes,
      score_thresh=detector.roi_heads.score_thresh, detections_per_img=detector.roi_heads.detections_per_img)
  return {"torchvision_maskrcnn_frames_per_second": reference["frames_per_second"],
          "torchvision_maskrcnn_ms_per_frame": reference["ms_per_frame"],
          "frames_per_second_ratio_to_torchvision": frames_per_second / reference["frames_per_second"]}


def benchmark_figures(timer: Timer, num_frames: int, seconds: float) -> dict[str, float]:
  """frames/s, milliseconds per frame by stage, and peak host and device memory."""
  figures = {"frames_per_second": num_frames / seconds, "ms_per_frame": 1000 * seconds / num_frames}
  for stage in STAGES:
    figures[f"ms_per_frame/{stage}"] = 1000 * timer.seconds.get(stage, 0.0) / num_frames
  figures["peak_host_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    figures["peak_device_memory_mb"] = stats["peak_bytes_in_use"] / 2**20
  return figures
