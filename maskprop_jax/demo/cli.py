"""Runs a converted or trained model on a user's image or video and writes its predictions (and an overlay).

    python -m maskprop_jax.demo --params DIR --image IMG --json OUT.json [--score-thresh S] [--out OVERLAY.png]
    python -m maskprop_jax.demo --workdir RUN|--params DIR --video FILE.mp4|FRAMES_DIR --json OUT.json
        [--out OUT.mp4|OUT.gif] [--config configs/x.py] [--score-thresh S] [--fps F]

DIR is a parameter directory from `python -m maskprop_jax.convert`; RUN is a train.py workdir. For an image, the
JSON holds one entry per detection: `bbox` [x0, y0, x1, y1] in image pixels, `score`, `category_id` (COCO ids for
COCO models), `category_name` and `segmentation`, the mask (probability >= 0.5) as a compressed COCO RLE.
For a video (video.py), it holds the linked tracks in the YouTube-VIS results format; image.py does images.
"""

from __future__ import annotations

import argparse

from maskprop_jax.errors import report_errors


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
  parser.add_argument("--config", help="config file of the video model's settings (default: the run's "
                                       "config.json, or the package's defaults with --params)")
  parser.add_argument("--fps", type=float, help="frame rate of the overlay video (default: the input's, or 10)")
  args = parser.parse_args(argv)
  if args.image is not None and args.params is None:
    parser.error("--image runs a Mask R-CNN parameter directory: pass --params")
  return args


@report_errors
def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  if args.video is not None:
    from maskprop_jax.demo import video  # noqa: PLC0415 -- the video model pulls in training and inference code

    video.run_video(args)
    return
  from maskprop_jax.demo import image  # noqa: PLC0415 -- an image needs neither orbax's manager nor inference

  if args.score_thresh is None:
    args.score_thresh = image.IMAGE_SCORE_THRESH
  image.run_image(args)

