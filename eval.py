"""Evaluates MaskProp: `python eval.py --config configs/<name>.py --workdir DIR [--images D --annotations F]`.

Runs streaming clip inference and linking over the validation split (or any YouTube-VIS-format folder), writes
DIR/results/<name>.json and .zip and, where the annotations have ground truth, DIR/results/<name>_metrics.json.
<name> is the split; for a folder given by --images/--annotations it is --split if set, else named after the
annotation file (`data/mine/valid.json` -> `mine_valid`), so that it never overwrites the split's results.
The model is the latest checkpoint in DIR, else config.model.init_from's converted weights, else random.
`--benchmark` adds frames/s, milliseconds per frame by stage and peak memory, and (where torchvision is installed)
the frames/s of torchvision's maskrcnn_resnet50_fpn run frame by frame on the same frames, with the ratio.
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

from maskprop_jax import distributed, eval_lib, train_lib
from maskprop_jax.errors import report_input_errors

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


@report_input_errors  # a bad data set or checkpoint: one paragraph on stderr, exit 2
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if bool(FLAGS.images) != bool(FLAGS.annotations):
    raise app.UsageError("--images and --annotations go together")
  distributed.initialize()
  config = FLAGS.config
  if FLAGS.annotations:
    split = FLAGS.split or eval_lib.results_name(FLAGS.annotations)
  else:
    split = FLAGS.split or config.data.val_split
  model, step = train_lib.restore_model(config, FLAGS.workdir)
  logging.info("evaluating %s", f"the checkpoint of step {step}" if step is not None else "initial weights")
  scores = eval_lib.evaluate_split(config, model, FLAGS.workdir, split=split, step=step, images_dir=FLAGS.images,
                                   annotation_file=FLAGS.annotations, benchmark=FLAGS.benchmark,
                                   num_overlays=FLAGS.overlays, compare_with_torchvision=FLAGS.benchmark)
  print(json.dumps(scores, indent=2))


if __name__ == "__main__":
  app.run(main)
