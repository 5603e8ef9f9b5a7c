"""eval.py --benchmark's per-frame baseline: torchvision's Mask R-CNN timed on the same frames, and the ratio."""

import numpy as np
import pytest

from maskprop_jax.inference import evaluate, speed
from tiny_maskprop import tiny_config, tiny_model

torch = pytest.importorskip("torch")
if not speed.torchvision_available():
  # Not importorskip: importing torchvision here, after TensorFlow, would crash (see inference/speed.py).
  pytest.skip("torchvision is not installed", allow_module_level=True)


def test_torchvision_baseline_times_every_frame_of_every_video():
  rng = np.random.default_rng(0)
  videos = [[rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(n)] for n in (2, 3)]
  seen = []

  def counted(video):
    for frame in video:
      seen.append(frame)
      yield frame

  figures = speed.torchvision_frames_per_second((counted(v) for v in videos), min_size=32,
                                                              max_size=48, num_classes=7)
  assert len(seen) == 5
  assert figures["frames_per_second"] > 0
  np.testing.assert_allclose(figures["ms_per_frame"] * figures["frames_per_second"], 1000.0, rtol=1e-9)


def test_torchvision_baseline_needs_frames():
  with pytest.raises(ValueError, match="no frames"):
    speed.torchvision_frames_per_second([[]], min_size=32, max_size=48, num_classes=7)


def test_benchmark_reports_maskprop_beside_torchvision_as_a_ratio(synthetic_dataset_dir, tmp_path):
  config = tiny_config()
  scores = evaluate.evaluate_split(
      config, tiny_model(config), tmp_path, split="valid", benchmark=True, compare_with_torchvision=True,
      annotation_file=str(synthetic_dataset_dir / "valid.json"),
      images_dir=str(synthetic_dataset_dir / "valid" / "JPEGImages"))
  reference_fps = scores["torchvision_maskrcnn_frames_per_second"]
  assert reference_fps > 0
  np.testing.assert_allclose(scores["torchvision_maskrcnn_ms_per_frame"], 1000.0 / reference_fps, rtol=1e-9)
  np.testing.assert_allclose(scores["frames_per_second_ratio_to_torchvision"],
                             scores["frames_per_second"] / reference_fps, rtol=1e-9)
