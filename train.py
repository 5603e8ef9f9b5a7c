"""Trains MaskProp: `python train.py --config configs/<name>.py --workdir DIR [--config.key=value ...]`.

Rerunning the same command continues from the latest checkpoint in DIR (after a preemption, a crash or a full
disk too). On several hosts, run it on every host; TPU pods and SLURM are detected, elsewhere pass
--coordinator_address, --num_processes and --process_id.

Exit codes: 0 trained (and evaluated); 2 stopped by an error it explains in one paragraph (a config key, the
data, the weights folder, a checkpoint that cannot be written, a loss that is not finite), the checkpoints before
it intact; 143 stopped by SIGTERM (a preemption notice) after writing a checkpoint, so that a scheduler requeues
the job: rerun the same command to continue.
"""

import json

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from maskprop_jax import logs
from maskprop_jax.errors import EXIT_PREEMPTED, parse_flags, report_errors
from maskprop_jax.inference import evaluate
from maskprop_jax.training import loop, parallel

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration (a configs/*.py file).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard summaries and results.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs off TPU/SLURM.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.mark_flags_as_required(["config", "workdir"])


@report_errors  # a bad config, data set or weights folder, a failed save, a diverged loss: one paragraph, exit 2
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logs.configure(FLAGS.verbosity)
  parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
  try:
    scores = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir, evaluate.evaluate_run)
  except loop.Preempted as e:
    logging.warning("%s (exit code %d)", e, EXIT_PREEMPTED)
    raise SystemExit(EXIT_PREEMPTED) from None
  if scores and jax.process_index() == 0:
    print(json.dumps(scores, indent=2))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
