"""Throughput of the training pipeline: clips per second on the synthetic set and on a YouTube-VIS-like set.

  python -m maskprop_jax.data.bench [--batches 16] [--batch-size 4] [--workers 0 2]

Both data sets are made up in a temporary folder and prepared as TFDS records first. The YouTube-VIS-like one
has 1280x720 JPEG frames (the size of most YouTube-VIS videos) with a few moving elliptical tracks; clips are
resized to a short side of 320-400 pixels on a 448x800 canvas, the synthetic ones to 96-128 on 160x224. The
first batch of each worker (its start-up) is not timed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from maskprop_jax import rle
from maskprop_jax.data import prepare
from maskprop_jax.data import synthetic

YTVIS_LIKE_HW = (720, 1280)
CLIP_SETTINGS = {
    "synthetic": dict(image_hw=(160, 224), scale_range=(96, 128)),
    "ytvis2019": dict(image_hw=(448, 800), scale_range=(320, 400)),
}


def _ellipse(height: int, width: int, centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
  ys, xs = np.ogrid[:height, :width]
  return (((ys - centre[0]) / radii[0]) ** 2 + ((xs - centre[1]) / radii[1]) ** 2 <= 1).astype(np.uint8)


def write_ytvis_like(root: Path, num_videos: int, num_frames: int, seed: int) -> Path:
  """YouTube-VIS-format split at 1280x720: textured frames (realistic JPEG sizes) and 3 moving ellipses each."""
  rng = np.random.default_rng(seed)
  height, width = YTVIS_LIKE_HW
  videos, annotations = [], []
  for v in range(num_videos):
    name = f"video{v:03d}"
    (root / "JPEGImages" / name).mkdir(parents=True)
    background = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    background = np.asarray(Image.fromarray(background).resize((width, height), Image.Resampling.BICUBIC))
    starts = rng.uniform([100, 100], [height - 100, width - 100], (3, 2))
    velocities = rng.uniform(-20, 20, (3, 2))
    radii = rng.uniform(30, 120, (3, 2))
    segmentations: list[list[dict[str, Any]]] = [[] for _ in range(3)]
    file_names = []
    for t in range(num_frames):
      frame = background.copy()
      for k in range(3):
        mask = _ellipse(height, width, tuple(starts[k] + t * velocities[k]), tuple(radii[k]))
        frame[mask.astype(bool)] = 60 * (k + 1)
        segmentations[k].append(rle.encode(mask))
      noise = rng.integers(-12, 13, frame.shape)
      frame = np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)
      file_names.append(f"{name}/{5 * t:05d}.jpg")
      Image.fromarray(frame).save(root / "JPEGImages" / file_names[-1], quality=90)
    videos.append({"id": v + 1, "height": height, "width": width, "length": num_frames, "file_names": file_names})
    for k in range(3):
      annotations.append({"id": 3 * v + k + 1, "video_id": v + 1, "category_id": k + 1, "iscrowd": 0,
                          "segmentations": segmentations[k]})
  categories = [{"id": k + 1, "name": f"ellipse{k}"} for k in range(3)]
  annotation_file = root / "train.json"
  annotation_file.write_text(json.dumps({"videos": videos, "categories": categories, "annotations": annotations}))
  return annotation_file


def clips_per_second(data_dir: Path, name: str, *, workers: int, batches: int, batch_size: int) -> float:
  from maskprop_jax.data import pipeline  # noqa: PLC0415 (it loads grain and jax, which `--help` does without)

  iterator = pipeline.make_train_iterator(
      data_dir, name, "train", global_batch_size=batch_size, max_instances=8, num_ref_frames=2, max_ref_offset=6,
      flip=True, seed=0, worker_count=workers, shard_index=0, shard_count=1, **CLIP_SETTINGS[name]
  )
  for _ in range(max(1, workers)):  # every worker's first batch carries its start-up
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch_size / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.data.bench", description=__doc__.split("\n")[0])
  parser.add_argument("--batches", type=int, default=16, help="timed batches per run (default: %(default)s)")
  parser.add_argument("--batch-size", type=int, default=4, help="clips per batch (default: %(default)s)")
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                      help="worker process counts to time, one run each (default: 0 2)")
  parser.add_argument("--videos", type=int, default=4, help="videos per data set (default: %(default)s)")
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory(prefix="maskprop-data-bench-") as scratch:
    scratch = Path(scratch)
    synthetic_root = Path(synthetic.generate_dataset(scratch / "synthetic", args.videos, 0, seed=0))
    prepare.ensure_prepared(scratch / "tfds", "synthetic", "train", images_dir=synthetic_root / "train" / "JPEGImages",
                            annotation_file=synthetic_root / "train.json")
    ytvis_file = write_ytvis_like(scratch / "ytvis_like", args.videos, num_frames=12, seed=0)
    prepare.ensure_prepared(scratch / "tfds", "ytvis2019", "train", images_dir=ytvis_file.parent / "JPEGImages",
                            annotation_file=ytvis_file)

    rows = []
    for name, label in (("synthetic", "synthetic 192x128"), ("ytvis2019", "YouTube-VIS-like 1280x720")):
      for workers in args.workers:
        rate = clips_per_second(scratch / "tfds", name, workers=workers, batches=args.batches,
                                batch_size=args.batch_size)
        rows.append((label, f"{CLIP_SETTINGS[name]['image_hw'][1]}x{CLIP_SETTINGS[name]['image_hw'][0]}",
                     workers, rate))

  print(f"\ntraining pipeline, batch {args.batch_size}, clips of 3 frames (center + 2 references), "
        f"{args.batches} timed batches")
  print(f"{'data set':<28}{'canvas':>10}{'workers':>9}{'clips/s':>10}{'ms/clip':>10}")
  for label, canvas, workers, rate in rows:
    print(f"{label:<28}{canvas:>10}{workers:>9}{rate:>10.1f}{1000 / rate:>10.1f}")


if __name__ == "__main__":
  main()
