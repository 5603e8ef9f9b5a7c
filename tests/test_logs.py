"""A program's log: its own INFO lines and every warning pass; the libraries' INFO chatter and their warnings about
themselves do not."""

import logging

from maskprop_jax import logs


def _record(pathname: str, level: int, msg: str) -> logging.LogRecord:
  return logging.LogRecord("absl", level, pathname, 1, msg, None, None)


def test_own_info_and_every_warning_pass_library_info_does_not():
  keep = logs._OwnInfoOnly()
  package_file = logs._PACKAGE_DIR + "/training/loop.py"
  assert keep.filter(_record(package_file, logging.INFO, "restored checkpoint at step 4"))
  assert keep.filter(_record("/repo/train.py", logging.INFO, "JAX process 0/1"))
  assert keep.filter(_record("/venv/clu/metric_writers/logging_writer.py", logging.INFO, "[6] loss=1.2"))
  assert not keep.filter(_record("/venv/orbax/checkpoint/checkpoint_manager.py", logging.INFO, "Saving step 4"))
  assert not keep.filter(_record("/venv/jax/_src/xla_bridge.py", logging.INFO, "Unable to initialize backend 'tpu'"))
  assert keep.filter(_record("/venv/orbax/checkpoint/checkpoint_manager.py", logging.WARNING, "slow save"))
  assert not keep.filter(_record("/venv/tensorflow_datasets/core/features/feature.py", logging.WARNING,
                                 "`TensorInfo.dtype` is deprecated. Please change your code"))
