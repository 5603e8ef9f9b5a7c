"""Evaluation of a split: results and submission files, the 12 video AP stats, timings and overlays; the config's
split prepared (a synthetic one generated) before anything reads it."""

import json
import zipfile

import imageio.v3 as iio
import pytest

from maskprop_jax import evaluation, visualize
from maskprop_jax.inference import evaluate, speed
from maskprop_jax.errors import InputError
from tiny_maskprop import tiny_config, tiny_model


@pytest.fixture(scope="module")
def valid_files(synthetic_dataset_dir):
  return dict(annotation_file=str(synthetic_dataset_dir / "valid.json"),
              images_dir=str(synthetic_dataset_dir / "valid" / "JPEGImages"))


def test_evaluate_split_writes_results_metrics_timings_and_overlays(valid_files, synthetic_valid, tmp_path):
  config = tiny_config()
  scores = evaluate.evaluate_split(config, tiny_model(config), tmp_path, split="valid", step=7, benchmark=True,
                                   num_overlays=1, **valid_files)
  results_dir = tmp_path / "results"
  ground_truth = evaluation.load_ground_truth(valid_files["annotation_file"])
  predicted = evaluation.load_results(results_dir / "valid.json", ground_truth)  # validates every entry
  assert predicted, "the random model with confident masks predicts tracks"
  assert {t.video_id for t in predicted} <= set(synthetic_valid.videos)
  with zipfile.ZipFile(results_dir / "valid.zip") as archive:
    assert json.loads(archive.read("results.json")) == json.loads((results_dir / "valid.json").read_text())

  metrics = json.loads((results_dir / "valid_metrics.json").read_text())
  assert metrics.pop("step") == 7
  assert sorted(metrics) == sorted(evaluation.STAT_NAMES)
  assert all(v == -1 or 0.0 <= v <= 1.0 for v in metrics.values())
  assert {k: scores[k] for k in metrics} == metrics

  assert scores["frames_per_second"] > 0 and scores["peak_host_memory_mb"] > 0
  stage_ms = [scores[f"ms_per_frame/{stage}"] for stage in speed.STAGES]
  assert all(ms > 0 for ms in stage_ms) and sum(stage_ms) <= scores["ms_per_frame"] * 1.01

  first = synthetic_valid.videos[min(synthetic_valid.videos)]
  overlay_path = results_dir / "overlays" / f"{first.name}{visualize.preferred_video_suffix()}"
  overlay = iio.imread(overlay_path, index=None, plugin="pyav" if overlay_path.suffix == ".mp4" else None)
  assert overlay.shape[:3] == (first.length, first.height, first.width)
  assert len(list((results_dir / "overlays").iterdir())) == 1


def test_results_of_a_folder_given_by_path_are_named_after_its_annotation_file(tmp_path):
  assert evaluate.results_name(tmp_path / "mine" / "valid.json") == "mine_valid"
  assert evaluate.results_name("data/synthetic/train.json") == "synthetic_train"


def test_a_model_with_another_number_of_classes_is_refused(valid_files, tmp_path):
  config = tiny_config(num_classes=3)
  with pytest.raises(InputError, match="has 6 categories, the model predicts 3"):
    evaluate.evaluate_split(config, tiny_model(config), tmp_path, split="valid", **valid_files)
  assert not (tmp_path / "results").exists()


def test_a_synthetic_split_missing_on_this_machine_is_generated_before_it_is_read(tmp_path):
  """A run copied to a fresh clone: before, "valid.json: annotation file not found" after restoring the model."""
  config = tiny_config()
  config.data.update(dict(name="synthetic", root=str(tmp_path / "data"), tfds_dir=str(tmp_path / "tfds")))
  config.data.synthetic.update(dict(train_videos=1, val_videos=1, height=64, width=96, max_frames=8))
  evaluate.check_data(config, "valid")
  assert (tmp_path / "data" / "valid.json").is_file()
  scores = evaluate.evaluate_split(config, tiny_model(config), tmp_path / "run", split="valid", num_images=1)
  assert "AP" in scores
  (image,) = [v for k, v in scores.items() if k.startswith("overlay/")]  # the TensorBoard picture
  assert image.ndim == 4 and image.shape[0] == 1 and image.dtype.name == "uint8"
