"""Runs a converted or trained model on a user's image or video and writes its predictions (and an overlay).

    python -m maskprop_jax.demo --params DIR --image IMG --json OUT.json [--score-thresh S] [--out OVERLAY.png]
    python -m maskprop_jax.demo --workdir RUN|--params DIR --video FILE.mp4|FRAMES_DIR --json OUT.json
        [--out OUT.mp4|OUT.gif] [--config configs/x.py] [--score-thresh S] [--min-track-length N] [--fps F]

DIR is a parameter directory from `python -m maskprop_jax.convert`; RUN is a train.py workdir. For an image, the
JSON holds one entry per detection: `bbox` [x0, y0, x1, y1] in image pixels, `score`, `category_id` (COCO ids for
COCO models), `category_name` and `segmentation`, the mask (probability >= 0.5) as a compressed COCO RLE.
For a video (video.py), it holds the linked tracks in the YouTube-VIS results format; image.py does images.
The overlay always shows exactly what the JSON holds.
"""

from __future__ import annotations

import argparse
import math

from maskprop_jax.errors import report_errors

# Here rather than in image.py and video.py so that the help states them without importing jax.
IMAGE_SCORE_THRESH = 0.5
FOLDER_FPS = 10.0  # a folder of frames does not say its frame rate
MIN_TRACK_LENGTH = 1


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.demo", description=__doc__.split("\n\n")[0])
  weights = parser.add_mutually_exclusive_group(required=True)
  weights.add_argument("--params", metavar="DIR",
                       help="parameter directory (python -m maskprop_jax.convert); this or --workdir is required, "
                            "no default")
  weights.add_argument("--workdir", metavar="RUN",
                       help="a train.py run directory (videos only): its latest checkpoint; this or --params is "
                            "required, no default")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--image", metavar="IMG",
                      help="an image file (JPEG, PNG, ...); this or --video is required, no default")
  source.add_argument("--video", metavar="FILE|DIR",
                      help="a video file (mp4, webm, ...) or a folder of frame images; this or --image is required, "
                           "no default")
  parser.add_argument("--json", required=True, metavar="OUT.json",
                      help="where to write the detections (image) or tracks (video); required, no default")
  parser.add_argument(
      "--score-thresh", type=float, default=None, metavar="S",
      help=f"lowest score reported: detections (image) or tracks (video) scoring below S are left out of the JSON "
           f"and the overlay (default: {IMAGE_SCORE_THRESH:g} for an image, none for a video). A video's clip "
           "detections are still kept from the config's inference.score_thresh on (from S where S is lower): a "
           "track's score, a mean over its clips (times the config's ranking factors), can sit below its "
           "detections' scores, and cutting clips at S would split or shorten tracks that reach S")
  parser.add_argument("--min-track-length", type=int, default=MIN_TRACK_LENGTH, metavar="N",
                      help=f"videos only: tracks with a mask on fewer than N frames are left out of the JSON and "
                           f"the overlay (default: {MIN_TRACK_LENGTH}, every track with a mask)")
  parser.add_argument("--out", metavar="FILE",
                      help="where to write an overlay: PNG for an image, .mp4 or .gif for a video (default: none)")
  parser.add_argument("--config", metavar="FILE",
                      help="config file of the video model's settings (default: the run's config.json, or the "
                           "package's defaults with --params)")
  parser.add_argument("--fps", type=float, metavar="F",
                      help=f"frame rate of the overlay video (default: the input's, or {FOLDER_FPS:g} for a folder "
                           "of frames)")
  return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.image is not None and args.params is None:
    parser.error("--image runs a Mask R-CNN parameter directory: pass --params")
  if args.score_thresh is not None and not 0.0 <= args.score_thresh <= 1.0:  # NaN fails this too
    parser.error(f"--score-thresh must be between 0 and 1 (scores are probabilities), got {args.score_thresh}")
  if args.min_track_length < 1:
    parser.error(f"--min-track-length must be at least 1, got {args.min_track_length}")
  if args.image is not None and args.min_track_length != MIN_TRACK_LENGTH:
    parser.error("--min-track-length is for videos: an image has no tracks")
  if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
    parser.error(f"--fps must be a positive number, got {args.fps}")
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
    args.score_thresh = IMAGE_SCORE_THRESH
  image.run_image(args)
