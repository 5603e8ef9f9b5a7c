"""Scores a YouTube-VIS results file and prints the 12 stats as one JSON object.

  python -m maskprop_jax.evaluation --annotations valid.json --results results.json [--per-category]
      [--output metrics.json] [--zip submission.zip]

`--zip` also packs the (validated) results as the zip the YouTube-VIS servers expect.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from maskprop_jax import files
from maskprop_jax.errors import InputError, report_errors
from maskprop_jax.evaluation import evaluate_tracks, load_ground_truth, load_results, write_results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.evaluation", description=__doc__.split("\n")[0])
  parser.add_argument("--annotations", required=True, help="YouTube-VIS ground-truth JSON")
  parser.add_argument("--results", required=True, help="results JSON: a list of video-level predictions")
  parser.add_argument("--per-category", action="store_true", help="add per-category AP (default: off)")
  parser.add_argument("--output", help="also write the stats to this JSON file (default: only print them)")
  parser.add_argument("--zip", help="also write the results as this submission zip, results.json inside "
                                    "(default: no zip)")
  return parser.parse_args(argv)


def _check_output(flag: str, path: str | None, example: str) -> None:
  """Refuses an output path that cannot be written before the scoring, which takes minutes on a large split, so
  that a mistyped path costs nothing. A folder is refused rather than written into: a file name the user did not
  choose would be found by nobody."""
  if path is None:
    return
  if Path(path).is_dir():
    raise InputError(f"{flag} {path}: that is a folder; give a file name, e.g. {Path(path) / example}")
  if not Path(path).parent.is_dir():
    raise InputError(f"{flag} {path}: cannot write here (no folder {Path(path).parent})")


@report_errors
def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  # Warnings about the input (duplicate predictions) reach the user as one line each; nothing else logs here.
  logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
  _check_output("--output", args.output, "metrics.json")
  _check_output("--zip", args.zip, "submission.zip")
  if args.zip is not None and not args.zip.endswith(".zip"):
    # write_results picks the format by suffix: any other name would get plain JSON under a zip flag.
    raise InputError(f"--zip {args.zip}: the name must end in .zip")
  ground_truth = load_ground_truth(args.annotations)
  predictions = load_results(args.results, ground_truth)
  stats = evaluate_tracks(ground_truth, predictions, per_category=args.per_category)
  text = json.dumps(stats)
  if args.output:
    files.write_atomically(args.output, text + "\n")
  if args.zip:
    write_results([{"video_id": t.video_id, "category_id": t.category_id, "score": t.score,
                    "segmentations": t.rles} for t in predictions], args.zip, ground_truth.videos)
  print(text)


if __name__ == "__main__":
  main(sys.argv[1:])
