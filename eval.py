"""Evaluates MaskProp: `python eval.py --config configs/<name>.py --workdir DIR [--images D --annotations F]`.

Runs streaming clip inference and linking over the validation split (or any YouTube-VIS-format folder), writes
DIR/results/<name>.json and .zip and, where the annotations have ground truth, DIR/results/<name>_metrics.json.
<name> is the split; for a folder given by --images/--annotations it is --split if set, else named after the
annotation file (`data/mine/valid.json` -> `mine_valid`), so that it never overwrites the split's results.
The data is checked (and, the first time, prepared) before the model is loaded. The model is the latest
checkpoint in DIR, built as the run recorded it in DIR/config.json (the settings other than the model's come from
--config). A DIR without a checkpoint is an error, unless `--initial_weights` asks to score the config's initial
weights (config.model.init_from's converted weights, else random) or `--benchmark` measures speed (which needs no
trained weights).
`--benchmark` adds frames/s, milliseconds per frame by stage and peak memory, and (where torchvision is installed)
the frames/s of torchvision's maskrcnn_resnet50_fpn run frame by frame on the same frames, with the ratio.
"""

import json
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from maskprop_jax import logs
from maskprop_jax.errors import InputError, parse_flags, report_errors
from maskprop_jax.inference import evaluate
from maskprop_jax.training import parallel, runs, state

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Configuration (a configs/*.py file).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints are read from it, results written to it).")
flags.DEFINE_string("split", None, "Split to evaluate (default: config.data.val_split); with --annotations, the "
                    "name of the results files.")
flags.DEFINE_string("images", None, "A YouTube-VIS-format JPEGImages folder to evaluate instead of the split.")
flags.DEFINE_string("annotations", None, "Its annotation file (with or without ground truth).")
flags.DEFINE_bool("benchmark", False, "Report frames/s, ms per frame by stage and peak memory, beside "
                  "torchvision's per-frame Mask R-CNN.")
flags.DEFINE_integer("overlays", 0, "Write overlay videos of the first N videos.")
flags.DEFINE_bool("initial_weights", False, "Without a checkpoint in --workdir, score the config's initial weights "
                  "(config.model.init_from's converted weights, else random) instead of stopping with an error.")
flags.mark_flags_as_required(["config", "workdir"])


@report_errors  # a bad data set or checkpoint: one paragraph on stderr, exit 2
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if bool(FLAGS.images) != bool(FLAGS.annotations):
    raise app.UsageError("--images and --annotations go together")
  logs.configure(FLAGS.verbosity)
  parallel.initialize()
  config = FLAGS.config
  if FLAGS.annotations:
    split = FLAGS.split or evaluate.results_name(FLAGS.annotations)
  else:
    split = FLAGS.split or config.data.val_split
  trained = runs.has_checkpoint(FLAGS.workdir)
  if not (trained or FLAGS.initial_weights or FLAGS.benchmark):
    raise InputError(f"{FLAGS.workdir}: no checkpoint in {Path(FLAGS.workdir) / 'checkpoints'}; train one with "
                     "`python train.py --config ... --workdir ...`, or pass --initial_weights to score the config's "
                     "initial weights (--benchmark measures speed without trained weights)")
  # The data before the model: a missing file is found in seconds, not after restoring a checkpoint.
  evaluate.check_data(config, split, images_dir=FLAGS.images, annotation_file=FLAGS.annotations)
  if trained:
    run = runs.load_run(FLAGS.workdir, config)
    model, step, config = run.model, run.step, run.config
    logging.info("evaluating the checkpoint of step %d of %s", step, FLAGS.workdir)
  else:
    model, step = state.build_model(state.with_effective_model(config), config.seed), None
    weights = config.model.init_from or "random weights"
    logging.warning("%s has no checkpoint: evaluating the config's initial weights (%s)", FLAGS.workdir, weights)
  scores = evaluate.evaluate_split(config, model, FLAGS.workdir, split=split, step=step, images_dir=FLAGS.images,
                                   annotation_file=FLAGS.annotations, benchmark=FLAGS.benchmark,
                                   num_overlays=FLAGS.overlays, compare_with_torchvision=FLAGS.benchmark)
  print(json.dumps(scores, indent=2))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
