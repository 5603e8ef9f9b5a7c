"""The whole-config check: every shipped config passes, every rule names a key the default config has, and a bad
value is one line naming the key and what was expected."""

from pathlib import Path

import ml_collections
import pytest

from maskprop_jax import default_config
from maskprop_jax.errors import InputError
from maskprop_jax.training import config_checks, parallel, runs

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_file_passes_on_the_devices_it_is_written_for(path):
  config = runs.load_config_file(path)
  devices = 8 if config.train.per_device_batch_size or config.train.global_batch_size % 8 == 0 else 1
  config_checks.check_config(parallel.scale_to_devices(config, devices), devices)


def test_every_rule_checks_a_key_of_the_default_config():
  """Rules skip keys a config lacks (old run configs): a rule whose key was renamed would check nothing."""
  config = default_config.get_config()
  for path, ok, _ in config_checks.RULES:
    present, value = config_checks._lookup(config, path)
    assert present, path
    assert ok(value), (path, value)


@pytest.mark.parametrize("key, value, expected", [
    ("train.num_steps", 0, "config.train.num_steps=0: expected an integer >= 1"),
    ("train.log_every", 2.5, "config.train.log_every=2.5: expected an integer >= 1"),
    ("data.flip", "yes", "config.data.flip='yes': expected true or false"),
    ("inference.score_thresh", 1.5, "config.inference.score_thresh=1.5: expected a number >= 0 and <= 1"),
    ("optimizer.decay_steps", (500, 100), "expected increasing positive step numbers"),
    ("optimizer.frozen_patterns", ("layer1/(",), "expected a tuple of regular expressions"),
    ("model.propagation.impl", "cuda", "config.model.propagation.impl='cuda': expected one of 'auto', 'xla', "),
    ("data.scale_range", (400, 300), "config.data.scale_range=(400, 300): expected min <= max"),
    ("model.detector.backbone.depth", 34, "config.model cannot be built: ResNet depth must be one of"),
])
def test_a_bad_value_names_its_key_and_what_was_expected(key, value, expected):
  values = default_config.get_config().to_dict()  # as a config file or a run's config.json could have it
  section, name = key.rsplit(".", 1)
  node = values
  for part in section.split("."):
    node = node[part]
  node[name] = value
  config = ml_collections.ConfigDict(values)
  with pytest.raises(InputError) as error:
    config_checks.check_config(config, 1)
  assert expected in str(error.value)
