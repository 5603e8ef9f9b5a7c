"""propagation_eval: every (track, center, frame) pair of a clip window is scored, copies against ground truth."""

import numpy as np
import pytest

from maskprop_jax import rle
from maskprop_jax.inference import predictor, propagation_eval
from maskprop_jax.linking.iou import mask_iou
from tiny_maskprop import save_tiny_run, tiny_config, tiny_model

HALF_WINDOW = 2


def expected_full_res_copies(dataset, half_window):
  """IoU of copying each center mask to its window, by |d| in the order measure() visits the pairs (video, center,
  track, frame), computed straight from the annotations."""
  by_distance = {}
  for video in dataset.videos.values():
    tracks = [[None if s is None else rle.decode(s).astype(bool) for s in track.segmentations]
              for track in dataset.tracks_of(video.id)]
    for center, start, stop in predictor.clip_windows(video.length, half_window, 1):
      for masks in tracks:
        if masks[center] is None:
          continue
        for frame in range(start, stop):
          if frame != center:
            target = masks[frame] if masks[frame] is not None else np.zeros_like(masks[center])
            by_distance.setdefault(abs(frame - center), []).append(mask_iou(masks[center], target))
  return by_distance


def test_every_pair_of_the_valid_split_is_measured(synthetic_valid):
  config = tiny_config(half_window=HALF_WINDOW)
  result = propagation_eval.measure(tiny_model(config), synthetic_valid, predictor.ClipSettings.from_config(config))
  expected = expected_full_res_copies(synthetic_valid, HALF_WINDOW)
  assert sorted(result.ious) == sorted(expected) == [1, 2]
  for distance, ious in result.ious.items():
    ious = np.stack(ious)  # [pairs, methods]
    assert ious.shape == (len(expected[distance]), len(propagation_eval.METHODS))
    assert ((0.0 <= ious) & (ious <= 1.0)).all()
    np.testing.assert_allclose(ious[:, 2], expected[distance])
    # Objects move: a copy is often wrong, and a grid copy is coarser than the full-resolution one.
    assert ious[:, 2].mean() < 1.0 and ious[:, 1].mean() <= ious[:, 2].mean() + 0.05
  table = propagation_eval.format_table(result, "title")
  assert table.splitlines()[0] == "title" and "all, present" in table


def test_command_line_prints_the_table(tmp_path, synthetic_dataset_dir, monkeypatch, capsys):
  config = tiny_config(half_window=HALF_WINDOW)
  config.data.root = str(synthetic_dataset_dir)
  save_tiny_run(tmp_path, config, tiny_model(config))
  propagation_eval.main(["--workdir", str(tmp_path)])
  out = capsys.readouterr().out
  assert "valid: 2 videos" in out and "copy (full res)" in out
  assert [line.split()[0] for line in out.splitlines()[2:]] == ["1", "2", "all", "all,"]


def test_a_run_without_checkpoints_is_refused(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    propagation_eval.main(["--workdir", str(tmp_path)])
  assert exit_info.value.code == 2
  assert "no config.json" in capsys.readouterr().err
