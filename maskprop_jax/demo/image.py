"""The demo's image mode: a converted Mask R-CNN on one image, its detections as JSON and an overlay PNG.

    python -m maskprop_jax.demo --params DIR --image IMG --json OUT.json [--score-thresh S] [--out OVERLAY.png]

The JSON holds one entry per detection: `bbox` [x0, y0, x1, y1] in image pixels, `score`, `category_id` (COCO ids
for COCO models), `category_name` and `segmentation`, the mask (probability >= 0.5) as a compressed COCO RLE.
`--score-thresh` (cli.IMAGE_SCORE_THRESH by default) selects the detections for both the JSON and the overlay; the
model's own roi_heads.score_thresh (its config's, 0.05 by default) has already dropped those below that.
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from maskprop_jax import files, rle, visualize
from maskprop_jax.convert import params_io
from maskprop_jax.errors import InputError
from maskprop_jax.model.mask_rcnn import ImageResults, MaskRCNN, abstract_mask_rcnn, postprocess, preprocess_batch

MASK_THRESHOLD = 0.5


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
  return postprocess(model(images, image_hw), image_hw, original_hw, canvas_hw, aligned=model.cfg.roi_heads.aligned)


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


def run_image(args: argparse.Namespace) -> None:
  model, metadata = params_io.load_params(args.params, abstract_mask_rcnn)
  image = read_image(args.image)
  detections = detect_image(model, metadata, image, args.score_thresh)
  record = dict(
    image=args.image, height=int(image.shape[0]), width=int(image.shape[1]),
    detections=[{k: v for k, v in d.items() if k != "mask"} | {"segmentation": rle.encode(d["mask"])}
                for d in detections],
  )

  files.write_json(args.json, record)
  if args.out:
    instances = [(i, f"{d['category_name']} {d['score']:.2f}", d["mask"]) for i, d in enumerate(detections)]
    drawn = visualize.overlay(image, instances)
    files.write_atomically(args.out, lambda tmp: Image.fromarray(drawn).save(tmp, format="PNG"))
  written = f"{args.json} and {args.out}" if args.out else args.json
  print(f"{len(detections)} detections with score >= {args.score_thresh:g} -> {written}")
