"""Scores a YouTube-VIS results file and prints the 12 stats as one JSON object.

  python -m maskprop_jax.evaluation --annotations valid.json --results results.json [--per-category]
      [--output metrics.json] [--zip submission.zip]

`--zip` also packs the (validated) results as the zip the YouTube-VIS servers expect.
"""

from __future__ import annotations

import argparse
import json
import sys

from maskprop_jax import files
from maskprop_jax.errors import report_errors
from maskprop_jax.evaluation import evaluate_tracks, load_ground_truth, load_results, write_results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.evaluation", description=__doc__.split("\n")[0])
  parser.add_argument("--annotations", required=True, help="YouTube-VIS ground-truth JSON")
  parser.add_argument("--results", required=True, help="results JSON: a list of video-level predictions")
  parser.add_argument("--per-category", action="store_true", help="add per-category AP")
  parser.add_argument("--output", help="also write the stats to this JSON file")
  parser.add_argument("--zip", help="also write the results as a submission zip (results.json inside)")
  return parser.parse_args(argv)


@report_errors
def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
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
