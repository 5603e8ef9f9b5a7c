"""propagation_eval: every (track, center, frame) pair of a clip window is scored, copies against ground truth; by
object size; and the center frames' detections against the ground truth there."""

import dataclasses

import numpy as np
import pytest

from maskprop_jax import rle
from maskprop_jax.data import synthetic, video_reader
from maskprop_jax.evaluation import diagnose
from maskprop_jax.inference import predictor, propagation_eval
from maskprop_jax.linking.iou import mask_iou
from maskprop_jax.model import maskprop
from tiny_maskprop import save_tiny_run, tiny_config, tiny_model

HALF_WINDOW = 2


def expected_full_res_copies(dataset, half_window):
  """IoU of copying each center mask to its window, and the GT area on the frame, by |d| in the order measure()
  visits the pairs (video, center, track, frame), computed straight from the annotations."""
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
            by_distance.setdefault(abs(frame - center), []).append((mask_iou(masks[center], target), target.sum()))
  return by_distance


def test_every_pair_of_the_valid_split_is_measured(synthetic_valid):
  config = tiny_config(half_window=HALF_WINDOW)
  result, detections = propagation_eval.measure(tiny_model(config), synthetic_valid,
                                                predictor.ClipSettings.from_config(config))
  expected = expected_full_res_copies(synthetic_valid, HALF_WINDOW)
  assert sorted(result.ious) == sorted(expected) == [1, 2]
  for distance, ious in result.ious.items():
    ious = np.stack(ious)  # [pairs, methods]
    assert ious.shape == (len(expected[distance]), len(propagation_eval.METHODS))
    assert ((0.0 <= ious) & (ious <= 1.0)).all()
    np.testing.assert_allclose(ious[:, 2], [iou for iou, _ in expected[distance]])
    assert result.areas[distance] == [area for _, area in expected[distance]]
    assert result.present[distance] == [area > 0 for _, area in expected[distance]]
    # Objects move: a copy is often wrong, and a grid copy is coarser than the full-resolution one.
    assert ious[:, 2].mean() < 1.0 and ious[:, 1].mean() <= ious[:, 2].mean() + 0.05
  table = propagation_eval.format_table(result, "title")
  assert table.splitlines()[0] == "title" and "all, present" in table
  # Every center frame (stride 1: every frame) is detected on, and every track on it matched.
  assert detections.num_frames == sum(video.length for video in synthetic_valid.videos.values())
  assert len(detections.best_iou) == len(detections.class_ok) == len(detections.areas) == result.num_center_tracks
  assert detections.num_detections > 0 and 0 <= detections.num_unmatched <= detections.num_detections
  assert all(0.0 <= iou <= 1.0 for iou in detections.best_iou) and min(detections.areas) > 0


def test_center_detections_are_theclip_tracks_inference_makes(synthetic_valid):
  """The detections come from the predictor's own clip-track step: on the full clip they are the same tracks,
  with the center frame's masks and classes."""
  config = tiny_config(half_window=HALF_WINDOW)
  model = tiny_model(config)
  video_predictor = predictor.VideoPredictor(model, predictor.ClipSettings.from_config(config))
  video = next(iter(video_reader.videos_from_ytvis(synthetic_valid)))
  video_hw = (video.height, video.width)
  geometry = maskprop.InputGeometry.for_video(model.config, video_hw)
  timer = predictor.Timer(sync=False)
  clip = next(iter(predictor.video_clips(video, video.num_frames, video_hw, HALF_WINDOW, 1, lambda frame: (
      predictor.frame_features_and_terms(video_predictor._graphdef, video_predictor._state, frame, geometry, timer)))))
  clip = dataclasses.replace(clip, center=1)  # a center with references on both sides
  masks, labels = propagation_eval.center_detections(video_predictor, clip, geometry, timer)
  tracks = video_predictor.clip_tracks(clip, geometry, timer)
  assert len(tracks) == len(labels) > 0
  np.testing.assert_array_equal(masks, np.stack([t.masks[clip.center - clip.start] for t in tracks]))
  np.testing.assert_array_equal(labels, [np.flatnonzero(t.class_probs)[0] + 1 for t in tracks])


def test_pairs_are_grouped_by_the_area_of_the_target_mask():
  result = propagation_eval.PairIous()
  for area, iou in [(0, 0.9), (99, 0.1), (100, 0.2), (399, 0.4), (400, 0.5), (1599, 0.7), (1600, 0.8), (5000, 1.0)]:
    result.add(1 + area % 2, np.full(3, iou), area > 0, area)  # an absent track (area 0) is left out
  np.testing.assert_array_equal(diagnose.size_groups([99, 100, 399.5, 400, 1599, 1600]), [0, 1, 1, 2, 2, 3])
  rows = propagation_eval.format_size_table(result).splitlines()[2:]
  assert [row.split()[:2] for row in rows] == [["<100", "1"], ["100-400", "2"], ["400-1600", "2"], [">=1600", "2"]]
  np.testing.assert_allclose([float(row.split()[2]) for row in rows], [0.1, 0.3, 0.6, 0.9])
  assert propagation_eval.format_size_table(propagation_eval.PairIous()).splitlines()[2].split()[1:] == [
      "0", "nan", "nan", "nan"]


def test_pairs_are_grouped_by_the_shift_of_the_object():
  result = propagation_eval.PairIous()
  for shift, iou in [(np.nan, 0.0), (0.5, 0.9), (1.0, 0.7), (1.9, 0.5), (3.0, 0.4), (7.9, 0.2), (8.0, 0.1),
                     (20.0, 0.3)]:
    result.add(2, np.full(3, iou), np.isfinite(shift), 50, shift)  # absent on c or c+d (NaN): left out
  rows = propagation_eval.format_shift_table(result).splitlines()[2:]
  assert [row.split()[:2] for row in rows] == [["<1", "1"], ["1-2", "2"], ["2-4", "1"], ["4-8", "1"], [">=8", "2"]]
  np.testing.assert_allclose([float(row.split()[2]) for row in rows], [0.9, 0.6, 0.4, 0.2, 0.2])


def test_centroid_of_a_mask():
  np.testing.assert_allclose(propagation_eval.centroid(_box(2, 10, 4, 6)), [3.5, 12.5])
  assert propagation_eval.centroid(np.zeros((4, 4), bool)) is None
  assert propagation_eval.centroid(None) is None


def _box(top, left, height, width, hw=(40, 60)):
  mask = np.zeros(hw, bool)
  mask[top:top + height, left:left + width] = True
  return mask


def test_each_gt_takes_its_best_detection_of_any_class():
  gts = np.stack([_box(0, 0, 10, 10), _box(20, 20, 10, 10), _box(0, 40, 5, 5)])  # [G, H, W]
  dets = np.stack([_box(0, 0, 10, 5),  # IoU 0.5 with GT 0
                   _box(20, 20, 10, 10),  # GT 1 exactly, wrong class
                   _box(0, 0, 10, 8),  # IoU 0.8 with GT 0, right class
                   _box(30, 50, 5, 5)])  # on nothing
  best_iou, class_ok, det_matched = propagation_eval.match_detections(dets, np.array([1, 3, 1, 2]), gts,
                                                                      np.array([1, 2, 4]))
  np.testing.assert_allclose(best_iou, [0.8, 1.0, 0.0])
  np.testing.assert_array_equal(class_ok, [True, False, False])
  np.testing.assert_array_equal(det_matched, [True, True, True, False])
  best_iou, class_ok, det_matched = propagation_eval.match_detections(np.zeros((0, 40, 60), bool), np.zeros(0), gts,
                                                                      np.array([1, 2, 4]))
  assert best_iou.tolist() == [0, 0, 0] and not class_ok.any() and det_matched.shape == (0,)

  detections = propagation_eval.CenterDetections()
  detections.add(gts.sum((1, 2)), *propagation_eval.match_detections(dets, np.array([1, 3, 1, 2]), gts,
                                                                     np.array([1, 2, 4])))  # areas 100, 100, 25
  detections.add(np.zeros(0), np.zeros(0), np.zeros(0, bool), np.zeros(2, bool))  # no GT, 2 false positives
  lines = propagation_eval.format_detection_table(detections, 0.3).splitlines()
  rows = {line.split()[0]: line.split()[1:] for line in lines[2:-1]}
  assert rows["<100"] == ["1", "0.0000", "0.0000", "0.0000"]
  assert rows["100-400"] == ["2", "1.0000", "0.5000", "0.9000"]
  assert rows[">=1600"][:2] == ["0", "nan"]
  assert rows["all"] == ["3", "0.6667", "0.3333", "0.6000"]
  assert lines[-1] == "6 detections on 2 center frames (3.00 per frame); matching no GT at IoU >= 0.5: 0.5000"


def test_command_line_prints_the_tables(tmp_path, synthetic_dataset_dir, capsys):
  config = tiny_config(half_window=HALF_WINDOW)
  config.data.root = str(synthetic_dataset_dir)
  save_tiny_run(tmp_path, config, tiny_model(config))
  propagation_eval.main(["--workdir", str(tmp_path)])
  tables = capsys.readouterr().out.split("\n\n")
  assert len(tables) == 4 and "valid: 2 videos" in tables[0] and "copy (full res)" in tables[0]
  assert [line.split()[0] for line in tables[0].splitlines()[2:]] == ["1", "2", "all", "all,"]
  assert [line.split()[0] for line in tables[1].splitlines()[2:]] == ["<100", "100-400", "400-1600", ">=1600"]
  assert [line.split()[0] for line in tables[2].splitlines()[2:]] == ["<1", "1-2", "2-4", "4-8", ">=8"]
  assert [line.split()[0] for line in tables[3].splitlines()[2:-1]] == ["<100", "100-400", "400-1600", ">=1600",
                                                                        "all"]


def test_command_line_measures_a_folder_given_by_path(tmp_path, capsys):
  """--images/--annotations: any YouTube-VIS folder with ground truth, whatever the run's config's data."""
  folder = synthetic.generate_dataset(tmp_path / "mine", train_videos=0, val_videos=1, seed=3, height=64, width=96,
                                      min_frames=5, max_frames=5)
  config = tiny_config(half_window=HALF_WINDOW)
  config.data.root = str(tmp_path / "nowhere")
  (tmp_path / "run").mkdir()
  save_tiny_run(tmp_path / "run", config, tiny_model(config))
  propagation_eval.main(["--workdir", str(tmp_path / "run"), "--images", f"{folder}/valid/JPEGImages",
                         "--annotations", f"{folder}/valid.json"])
  out = capsys.readouterr().out
  assert out.startswith("mine_valid: 1 videos") and "on 5 center frames" in out


def test_images_without_annotations_are_refused(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    propagation_eval.main(["--workdir", str(tmp_path), "--images", str(tmp_path)])
  assert exit_info.value.code == 2
  assert "--images and --annotations go together" in capsys.readouterr().err


def test_a_run_without_checkpoints_is_refused(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    propagation_eval.main(["--workdir", str(tmp_path)])
  assert exit_info.value.code == 2
  assert "no config.json" in capsys.readouterr().err
