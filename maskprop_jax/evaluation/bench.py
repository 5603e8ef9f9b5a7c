"""Times scoring a YouTube-VIS-2019-val-sized results file: our CLI against the official evaluator, side by side.

  python -m maskprop_jax.evaluation.bench [--official-path /path/to/youtubevos/cocoapi/PythonAPI]

Generates 300 videos of up to 36 frames at 720p and 480p, 40 categories, ~2 annotated objects and ~10
predictions per video (jittered copies, wrong classes, false positives), then times each evaluator as a whole
process (interpreter start, imports, JSON parsing, scoring) and prints a table. The official evaluator
(youtubevos/cocoapi `ytvos.py` + `ytvoseval.py`) runs only with --official-path; it is loaded next to the
installed pycocotools with run-time shims for what today's NumPy removed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
from pycocotools import mask as mask_api

FRAME_SHAPES = ((720, 1280), (480, 640))  # (height, width)

# Runs the official evaluator in a fresh interpreter: argv = [api_dir, ground truth, results]. Its modules are
# loaded as package `ytvis_official` so that their `import pycocotools._mask` finds the installed extension; the
# shims cover np.float, np.linspace with a float `num`, the Python 2 name `unicode`, and matplotlib (unused).
OFFICIAL_DRIVER = r"""
import contextlib, importlib.util, io, json, os, sys, types
import numpy as np
api_dir, gt_path, res_path = sys.argv[1:4]
package_dir = os.path.join(api_dir, "pycocotools")
for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.collections", "matplotlib.patches"):
  sys.modules.setdefault(name, types.ModuleType(name))
sys.modules["matplotlib.collections"].PatchCollection = object
sys.modules["matplotlib.patches"].Polygon = object
spec = importlib.util.spec_from_file_location("ytvis_official", os.path.join(package_dir, "__init__.py"),
                                              submodule_search_locations=[package_dir])
package = importlib.util.module_from_spec(spec)
sys.modules["ytvis_official"] = package
spec.loader.exec_module(package)
import ytvis_official.ytvos as ytvos, ytvis_official.ytvoseval as ytvoseval
numpy_shim = types.ModuleType("numpy_shim")
numpy_shim.__dict__.update(np.__dict__)
numpy_shim.float = float
numpy_shim.linspace = lambda start, stop, num=50, **kw: np.linspace(start, stop, int(num), **kw)
ytvoseval.np = numpy_shim
ytvos.unicode = str
with contextlib.redirect_stdout(io.StringIO()):
  gt = ytvos.YTVOS(gt_path)
  evaluator = ytvoseval.YTVOSeval(gt, gt.loadRes(res_path), "segm")
  evaluator.evaluate(); evaluator.accumulate(); evaluator.summarize()
print(json.dumps([float(s) for s in evaluator.stats]))
"""


def _polygon(center: np.ndarray, angles: np.ndarray, radii: np.ndarray) -> list[float]:
  return np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], 1).ravel().tolist()


def _object(rng: np.random.Generator, height: int, width: int, length: int) -> list[list[float]]:
  """Per-frame polygons of one object moving and deforming a little; sizes from small to large."""
  radius = float(rng.choice([rng.uniform(8, 60), rng.uniform(80, 140), rng.uniform(160, 260)], p=[.5, .3, .2]))
  radius = min(radius, height / 2)
  start = rng.uniform([0, 0], [width, height])
  velocity = rng.normal(0, radius / 15, 2)
  angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
  radii = radius * rng.uniform(0.7, 1.0, 12)
  return [_polygon(start + f * velocity, angles, radii * rng.uniform(0.95, 1.05, 12)) for f in range(length)]


def _rles(polys: list[list[float]], present: np.ndarray, height: int, width: int) -> list[dict | None]:
  out = []
  for poly, on in zip(polys, present):
    if on:
      counts = mask_api.frPyObjects([poly], height, width)[0]["counts"].decode("ascii")
      out.append({"size": [height, width], "counts": counts})
    else:
      out.append(None)
  return out


def _span(rng: np.random.Generator, length: int) -> np.ndarray:
  """Frames an object is visible in: it may appear late and leave early."""
  first, last = sorted(rng.integers(0, length, 2))
  frames = np.arange(length)
  return (frames >= min(first, length // 3)) & (frames <= max(last, 2 * length // 3))


def make_dataset(seed: int = 0, num_videos: int = 300, num_categories: int = 40, max_frames: int = 36,
                 predictions_per_video: int = 10) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """(ground truth, results) of the benchmark's size."""
  rng = np.random.default_rng(seed)
  categories = [{"id": c, "name": f"category_{c}", "supercategory": "object"} for c in range(1, num_categories + 1)]
  videos, annotations, results = [], [], []
  for video_id in range(1, num_videos + 1):
    height, width = FRAME_SHAPES[rng.integers(len(FRAME_SHAPES))]
    length = int(rng.integers(max_frames // 2, max_frames + 1))
    videos.append({"id": video_id, "height": height, "width": width, "length": length,
                   "file_names": [f"video_{video_id:04d}/{f:05d}.jpg" for f in range(length)]})
    video_predictions = []
    for _ in range(int(rng.integers(1, 4))):
      polys, present = _object(rng, height, width, length), _span(rng, length)
      category = int(rng.integers(1, num_categories + 1))
      rles = _rles(polys, present, height, width)
      areas = [int(mask_api.area(r)) if r is not None else None for r in rles]
      annotations.append({"id": len(annotations) + 1, "video_id": video_id, "category_id": category,
                          "iscrowd": 0, "segmentations": rles, "areas": areas})
      for label in (category, category, int(rng.integers(1, num_categories + 1))):  # a duplicate, a wrong class
        shift = rng.normal(0, 4, 2)
        jittered = [(np.asarray(p).reshape(-1, 2) + shift).ravel().tolist() for p in polys]
        video_predictions.append((label, _rles(jittered, present & (rng.random(length) > 0.05), height, width)))
    while len(video_predictions) < predictions_per_video:  # false positives
      polys = _object(rng, height, width, length)
      video_predictions.append((int(rng.integers(1, num_categories + 1)),
                                _rles(polys, _span(rng, length), height, width)))
    for label, rles in video_predictions:
      results.append({"video_id": video_id, "category_id": label, "score": round(float(rng.random()), 4),
                      "segmentations": rles})
  return {"videos": videos, "categories": categories, "annotations": annotations}, results


def _timed(command: list[str]) -> tuple[float, list[float]]:
  """Wall-clock seconds of a whole process, and the 12 stats it printed (as the last line)."""
  start = time.perf_counter()
  run = subprocess.run(command, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if run.returncode != 0:
    raise RuntimeError(f"{' '.join(command[:3])} failed:\n{run.stderr[-2000:]}")
  stats = json.loads(run.stdout.strip().splitlines()[-1])
  return seconds, list(stats.values()) if isinstance(stats, dict) else stats


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.evaluation.bench", description=__doc__.split("\n")[0])
  parser.add_argument("--official-path", help="youtubevos/cocoapi PythonAPI directory (holds pycocotools/) "
                                              "(default: time our evaluator only)")
  parser.add_argument("--workdir", help="where to write the generated files (default: a temporary directory)")
  parser.add_argument("--videos", type=int, default=300, help="videos in the generated split (default: %(default)s)")
  parser.add_argument("--repeats", type=int, default=1,
                      help="runs per evaluator; the fastest is reported (default: %(default)s)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the generated data (default: %(default)s)")
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    workdir = args.workdir or tmp
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    gt, results = make_dataset(args.seed, num_videos=args.videos)
    gt_path, results_path = os.path.join(workdir, "gt.json"), os.path.join(workdir, "results.json")
    with open(gt_path, "w") as f:
      json.dump(gt, f)
    with open(results_path, "w") as f:
      json.dump(results, f)
    num_frames = sum(v["length"] for v in gt["videos"])
    print(f"input: {len(gt['videos'])} videos, {num_frames} frames, {len(gt['annotations'])} tracks, "
          f"{len(results)} predictions, results file {os.path.getsize(results_path) / 2**20:.0f} MiB "
          f"(generated in {time.perf_counter() - start:.1f} s)")

    evaluators = {"maskprop_jax.evaluation (CLI)": [sys.executable, "-m", "maskprop_jax.evaluation",
                                                    "--annotations", gt_path, "--results", results_path]}
    if args.official_path:
      evaluators["official youtubevos/cocoapi"] = [sys.executable, "-c", OFFICIAL_DRIVER, args.official_path,
                                                   gt_path, results_path]
    runs = {name: [] for name in evaluators}
    for _ in range(args.repeats):  # alternate, so that load from elsewhere on the machine hits both alike
      for name, command in evaluators.items():
        runs[name].append(_timed(command))
    rows = {name: (min(seconds for seconds, _ in r), r[0][1]) for name, r in runs.items()}

  print(f"\n| {'evaluator':<30} | {'whole process (s)':>17} | {'AP':>6} | {'AP50':>6} | {'AP75':>6} | {'AR100':>6} |")
  print(f"|{'-' * 32}|{'-' * 19}|{'-' * 8}|{'-' * 8}|{'-' * 8}|{'-' * 8}|")
  for name, (seconds, stats) in rows.items():
    print(f"| {name:<30} | {seconds:>17.2f} | {stats[0]:>6.4f} | {stats[1]:>6.4f} | {stats[2]:>6.4f} | "
          f"{stats[8]:>6.4f} |")
  if len(rows) == 2:
    ours, official = (np.array(stats) for _, stats in rows.values())
    print(f"\nlargest difference over the 12 stats: {np.abs(ours - official).max():.3g}")


if __name__ == "__main__":
  main()
