"""`python -m maskprop_jax.evaluation`: one JSON object of stats, clean errors, and no jax / TensorFlow."""

import json
import stat
import subprocess
import sys

import pytest
from ytvis_random_cases import random_case

from maskprop_jax.evaluation import STAT_NAMES, evaluate


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  directory = tmp_path_factory.mktemp("cli")
  gt, results = random_case(5, num_videos=4)
  (directory / "gt.json").write_text(json.dumps(gt))
  (directory / "results.json").write_text(json.dumps(results))
  return directory, gt, results


def _run(*args):
  return subprocess.run([sys.executable, "-m", "maskprop_jax.evaluation", *map(str, args)],
                        capture_output=True, text=True, timeout=120)


def test_prints_the_12_stats_and_writes_outputs(files):
  directory, gt, results = files
  run = _run("--annotations", directory / "gt.json", "--results", directory / "results.json", "--per-category",
             "--output", directory / "metrics.json", "--zip", directory / "submission.zip")
  assert run.returncode == 0, run.stderr
  stats = json.loads(run.stdout)
  assert list(stats)[:12] == list(STAT_NAMES)
  assert stats == evaluate(gt, results, per_category=True)
  assert json.loads((directory / "metrics.json").read_text()) == stats
  assert (directory / "submission.zip").stat().st_size > 0


def test_bad_results_exit_non_zero_with_one_paragraph(files):
  directory, _, results = files
  bad = [dict(results[0], video_id=987654)]
  (directory / "bad.json").write_text(json.dumps(bad))
  run = _run("--annotations", directory / "gt.json", "--results", directory / "bad.json")
  assert run.returncode == 2
  assert "987654" in run.stderr and "Traceback" not in run.stderr
  assert run.stdout == ""


def test_imports_neither_jax_nor_tensorflow():
  code = ("import sys, maskprop_jax.evaluation.__main__, maskprop_jax.evaluation.bench; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'tensorflow', 'flax', 'torch')))")
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  assert run.stdout.strip() == "[]"


def test_unwritable_output_is_reported(files):
  directory, _, _ = files
  run = _run("--annotations", directory / "gt.json", "--results", directory / "results.json",
             "--output", directory / "missing" / "metrics.json")
  assert run.returncode == 2
  assert "missing/metrics.json: cannot write here" in run.stderr and "Traceback" not in run.stderr


def test_an_output_folder_is_refused_before_scoring(files):
  directory, _, _ = files
  (directory / "out").mkdir(exist_ok=True)
  (directory / "unreadable.json").write_text("[")
  # The results are malformed too: the output is checked first, so a mistyped --output costs no scoring time.
  for flag in ("--output", "--zip"):
    run = _run("--annotations", directory / "gt.json", "--results", directory / "unreadable.json",
               flag, directory / "out")
    assert run.returncode == 2 and run.stdout == ""
    assert f"{flag} {directory / 'out'}: that is a folder; give a file name, e.g. " in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
  run = _run("--annotations", directory / "gt.json", "--results", directory / "results.json",
             "--zip", directory / "submission.json")
  assert run.returncode == 2 and "--zip" in run.stderr and "must end in .zip" in run.stderr
  assert not (directory / "submission.json").exists() and sorted(p.name for p in (directory / "out").iterdir()) == []


def test_duplicate_predictions_are_one_warning_on_stderr(files):
  directory, gt, results = files
  duplicated = results + [results[0], results[0], results[3]]
  (directory / "duplicated.json").write_text(json.dumps(duplicated))
  run = _run("--annotations", directory / "gt.json", "--results", directory / "duplicated.json")
  assert run.returncode == 0, run.stderr
  assert json.loads(run.stdout) == evaluate(gt, duplicated)  # the copies are scored, not dropped
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("warning: ")
  assert "3 prediction(s) repeat an earlier one" in lines[0] and f"video {results[0]['video_id']}" in lines[0]


def test_outputs_get_the_umask_permissions(files, tmp_path):
  directory, _, _ = files
  run = subprocess.run([sys.executable, "-m", "maskprop_jax.evaluation", "--annotations", directory / "gt.json",
                        "--results", directory / "results.json", "--output", tmp_path / "metrics.json",
                        "--zip", tmp_path / "submission.zip"], capture_output=True, text=True, timeout=120,
                       umask=0o022)
  assert run.returncode == 0, run.stderr
  assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
      "metrics.json": 0o644, "submission.zip": 0o644}
