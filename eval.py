"""Evaluates MaskProp: `python eval.py --config configs/<name>.py --workdir DIR [--images D --annotations F]`.

Runs streaming clip inference and linking over the validation split (or any YouTube-VIS-format folder), writes
DIR/results/<name>.json and .zip and, where the annotations have ground truth, DIR/results/<name>_metrics.json.
<name> is the split; for a folder given by --images/--annotations it is --split if set, else named after the
annotation file (`data/mine/valid.json` -> `mine_valid`), so that it never overwrites the split's results.
The model is the latest checkpoint in DIR, built as the run recorded it in DIR/config.json (the settings other
than the model's come from --config); without a checkpoint, config.model.init_from's converted weights, else random.
`--benchmark` adds frames/s, milliseconds per frame by stage and peak memory, and (where torchvision is installed)
the frames/s of torchvision's maskrcnn_resnet50_fpn run frame by frame on the same frames, with the ratio.
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

from maskprop_jax.errors import parse_flags, report_errors
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
flags.DEFINE_integer("overlays", 0, "Write overlay GIFs of the first N videos.")
flags.mark_flags_as_required(["config", "workdir"])


@report_errors  # a bad data set or checkpoint: one paragraph on stderr, exit 2
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if bool(FLAGS.images) != bool(FLAGS.annotations):
    raise app.UsageError("--images and --annotations go together")
  parallel.initialize()
  config = FLAGS.config
  if FLAGS.annotations:
    split = FLAGS.split or evaluate.results_name(FLAGS.annotations)
  else:
    split = FLAGS.split or config.data.val_split
  if runs.has_checkpoint(FLAGS.workdir):
    run = runs.load_run(FLAGS.workdir, config)
    model, step, config = run.model, run.step, run.config
    logging.info("evaluating the checkpoint of step %d", step)
  else:
    model, step = state.build_model(state.with_effective_model(config), config.seed), None
    logging.info("evaluating initial weights: %s has no checkpoint", FLAGS.workdir)
  scores = evaluate.evaluate_split(config, model, FLAGS.workdir, split=split, step=step, images_dir=FLAGS.images,
                                   annotation_file=FLAGS.annotations, benchmark=FLAGS.benchmark,
                                   num_overlays=FLAGS.overlays, compare_with_torchvision=FLAGS.benchmark)
  print(json.dumps(scores, indent=2))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
