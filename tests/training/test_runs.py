"""A run's config: configs/*.py loaded by path from anywhere, and config.json written and read back exactly."""

from pathlib import Path

import pytest

from maskprop_jax.training import runs
from maskprop_jax.errors import InputError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_a_config_file_loads_from_another_working_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # configs/synthetic.py imports configs.default
  config = runs.load_config_file(CONFIGS / "synthetic.py")
  assert config.data.name == "synthetic" and config.model.detector.num_classes == 7


def test_config_json_round_trip_restores_tuples(tmp_path):
  config = runs.load_config_file(CONFIGS / "synthetic.py")
  runs.save_run_config(config, tmp_path)
  loaded = runs.load_run_config(tmp_path)
  assert loaded.to_dict() == config.to_dict()
  assert loaded.model.detector.anchors.sizes == ((16,), (32,), (64,), (128,), (256,))
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_bad_config_files_and_runs_raise_input_errors(tmp_path):
  with pytest.raises(InputError, match="missing.py: config file not found"):
    runs.load_config_file(tmp_path / "missing.py")
  (tmp_path / "empty.py").write_text("x = 1\n")
  with pytest.raises(InputError, match="must define get_config"):
    runs.load_config_file(tmp_path / "empty.py")
  (tmp_path / "broken.py").write_text("def get_config(:\n")
  with pytest.raises(InputError, match="not a valid Python config file"):
    runs.load_config_file(tmp_path / "broken.py")
  with pytest.raises(InputError, match="no config.json"):
    runs.load_run_config(tmp_path)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(InputError, match="unreadable run config"):
    runs.load_run_config(tmp_path)
