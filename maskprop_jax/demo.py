"""Runs a converted or trained model on a user's image or video and writes its predictions (and an overlay).

    python -m maskprop_jax.demo --params DIR --image IMG --json OUT.json [--score-thresh S] [--out OVERLAY.png]
    python -m maskprop_jax.demo --workdir RUN|--params DIR --video FILE.mp4|FRAMES_DIR --json OUT.json
        [--out OUT.mp4|OUT.gif] [--config configs/x.py] [--score-thresh S] [--fps F]

DIR is a parameter directory from `python -m maskprop_jax.convert`; RUN is a train.py workdir. For an image, the
JSON holds one entry per detection: `bbox` [x0, y0, x1, y1] in image pixels, `score`, `category_id` (COCO ids for
COCO models), `category_name` and `segmentation`, the mask (probability >= 0.5) as a compressed COCO RLE.
For a video (demo_video.py), it holds the linked tracks in the YouTube-VIS results format.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from maskprop_jax import visualize
from maskprop_jax.convert import params_io
from maskprop_jax.errors import InputError, report_input_errors
from maskprop_jax.evaluation.rle import encode_mask
from maskprop_jax.model.mask_rcnn import ImageResults, MaskRCNN, abstract_mask_rcnn, postprocess, preprocess_batch

MASK_THRESHOLD = 0.5
IMAGE_SCORE_THRESH = 0.5


def read_image(path: str) -> np.ndarray:
  """An image file -> RGB uint8 [H, W, 3]."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except FileNotFoundError as e:
    raise InputError(f"{path}: no such image file") from e
  except (UnidentifiedImageError, OSError) as e:
    raise InputError(f"{path}: not a readable image ({e})") from e


@partial(jax.jit, static_argnames="canvas_hw")
def _detect(model: MaskRCNN, images, image_hw, original_hw, canvas_hw) -> ImageResults:
  return postprocess(model(images, image_hw), image_hw, original_hw, canvas_hw)


def detect_image(model: MaskRCNN, metadata: dict[str, Any], image: np.ndarray, score_thresh: float) -> list[dict]:
  """Detections of one RGB uint8 image above `score_thresh`, best first, with full-size boolean masks."""
  cfg = metadata["config"]
  images, image_hw = preprocess_batch(cfg, [image])
  original_hw = jnp.asarray([image.shape[:2]], jnp.int32)
  results = jax.device_get(_detect(model, images, image_hw, original_hw, canvas_hw=tuple(image.shape[:2])))
  detections = []
  for i in np.flatnonzero(results.valid[0] & (results.scores[0] >= score_thresh)):
    label = int(results.labels[0, i])
    detections.append(dict(
      bbox=[float(v) for v in results.boxes[0, i]],
      score=float(results.scores[0, i]),
      category_id=int(metadata["category_ids"][label]),
      category_name=metadata["class_names"][label],
      mask=results.masks[0, i] >= MASK_THRESHOLD,
    ))
  return detections


def _write_atomically(path: str, write) -> None:
  """Writes via a temporary file in the same directory, so a failure never leaves a half-written output."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp")
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def run_image(args: argparse.Namespace, model: MaskRCNN, metadata: dict[str, Any]) -> None:
  image = read_image(args.image)
  detections = detect_image(model, metadata, image, args.score_thresh)
  record = dict(
    image=args.image, height=int(image.shape[0]), width=int(image.shape[1]),
    detections=[{k: v for k, v in d.items() if k != "mask"} | {"segmentation": encode_mask(d["mask"])}
                for d in detections],
  )

  def write_json(tmp):
    with open(tmp, "w") as f:
      json.dump(record, f)

  _write_atomically(args.json, write_json)
  if args.out:
    instances = [(i, f"{d['category_name']} {d['score']:.2f}", d["mask"]) for i, d in enumerate(detections)]
    drawn = visualize.overlay(image, instances)
    _write_atomically(args.out, lambda tmp: Image.fromarray(drawn).save(tmp, format="PNG"))
  print(f"{len(detections)} detections with score >= {args.score_thresh} -> {args.json}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.demo", description=__doc__.split("\n\n")[0])
  weights = parser.add_mutually_exclusive_group(required=True)
  weights.add_argument("--params", help="parameter directory (python -m maskprop_jax.convert)")
  weights.add_argument("--workdir", help="a train.py run directory (videos only): its latest checkpoint")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--image", help="an image file (JPEG, PNG, ...)")
  source.add_argument("--video", help="a video file (mp4, webm, ...) or a folder of frame images")
  parser.add_argument("--json", required=True, help="where to write the detections (image) or tracks (video)")
  parser.add_argument("--score-thresh", type=float, default=None,
                      help="lowest score reported (default 0.5 for an image, the config's for a video)")
  parser.add_argument("--out", help="where to write an overlay: PNG for an image, .mp4 or .gif for a video")
  parser.add_argument("--config", help="config file of the video model (default: the run's config.json, or "
                                       "configs/default.py with --params)")
  parser.add_argument("--fps", type=float, help="frame rate of the overlay video (default: the input's, or 10)")
  args = parser.parse_args(argv)
  if args.image is not None and args.params is None:
    parser.error("--image runs a Mask R-CNN parameter directory: pass --params")
  return args


@report_input_errors
def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  if args.video is not None:
    from maskprop_jax import demo_video  # noqa: PLC0415 -- the video model pulls in training and inference code

    demo_video.run_video(args)
    return
  if args.score_thresh is None:
    args.score_thresh = IMAGE_SCORE_THRESH
  model, metadata = params_io.load_params(args.params, abstract_mask_rcnn)
  run_image(args, model, metadata)


if __name__ == "__main__":
  main()
