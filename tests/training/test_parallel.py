"""The batch scaled to the device count (parallel.scale_to_devices)."""

import numpy as np
import pytest

from maskprop_jax.training import parallel
from tiny_config import prepared_tiny_config  # noqa: F401 (fixture)


def test_scale_to_devices_grows_the_batch_with_the_chips_and_keeps_the_epochs(prepared_tiny_config):
  config = prepared_tiny_config.copy_and_resolve_references()
  assert parallel.scale_to_devices(config, 64) is config  # a fixed global batch stays as written
  config.train.update(dict(per_device_batch_size=2, reference_batch_size=16, num_steps=40_000))
  config.optimizer.update(dict(lr=0.02, warmup_steps=1_000, decay_steps=(30_000, 36_000)))
  scaled = parallel.scale_to_devices(config, 64)  # a 64-chip pod: 128 clips per step, 8 times the reference
  assert scaled.train.global_batch_size == 128 and scaled.train.num_steps == 5_000
  np.testing.assert_allclose(scaled.optimizer.lr, 0.16)
  assert scaled.optimizer.warmup_steps == 125 and tuple(scaled.optimizer.decay_steps) == (3_750, 4_500)
  assert config.train.num_steps == 40_000  # the caller's config is left alone
  half = parallel.scale_to_devices(config, 4)  # 8 clips per step: twice the steps at half the learning rate
  assert half.train.num_steps == 80_000 and half.optimizer.lr == pytest.approx(0.01)
