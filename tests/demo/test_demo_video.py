"""The demo's video mode: a trained run or converted weights on an mp4 or a folder of frames, and bad input."""

import functools
import json
import re

import imageio.v3 as iio
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from maskprop_jax import rle, visualize
from maskprop_jax.convert import params_io
from maskprop_jax.demo import cli as demo
from maskprop_jax.demo import video as demo_video
from maskprop_jax.progress import Progress
from tiny_maskprop import save_tiny_run, tiny_config, tiny_model

NUM_FRAMES = 7
FRAME_HW = (31, 45)  # odd: the H.264 writer has to pad


def square_frames(num_frames=NUM_FRAMES, hw=FRAME_HW):
  frames = np.full((num_frames,) + hw + (3,), 30, np.uint8)
  for index in range(num_frames):
    frames[index, 8:20, 2 + 2 * index:14 + 2 * index] = (220, 60, 40)
  return frames


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, synthetic_dataset_dir):
  """A train.py-like workdir: config.json and one checkpoint of the tiny model."""
  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config()  # the synthetic set's 6 categories, whose names the demo shows
  config.data.root = str(synthetic_dataset_dir)
  save_tiny_run(workdir, config, tiny_model(config))
  return workdir


@pytest.fixture(scope="module")
def mp4_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("videos") / "squares.mp4"
  with iio.imopen(path, "w", plugin="pyav") as out:
    out.init_video_stream("mpeg4", fps=12)  # any size, unlike H.264
    for frame in square_frames():
      out.write_frame(frame)
  return path


def test_run_on_an_mp4_writes_results_and_an_overlay_video(run_dir, mp4_path, synthetic_valid, tmp_path, capsys,
                                                            monkeypatch):
  # Off a terminal a progress line is logged every 30 s: every frame here, to see the time left of both passes.
  monkeypatch.setattr(demo_video, "Progress", functools.partial(Progress, log_every_s=0.0))
  demo.main(["--workdir", str(run_dir), "--video", str(mp4_path), "--out", str(tmp_path / "out.mp4"),
             "--json", str(tmp_path / "tracks.json")])
  captured = capsys.readouterr()
  assert "squares: inference: 7/7 frames," in captured.err and "frames/s" in captured.err
  for stage in ("inference", "overlay"):
    assert re.search(rf"squares: {stage}: [1-6]/7 frames, [0-9.]+ frames/s, .+ left", captured.err), stage
  entries = json.loads((tmp_path / "tracks.json").read_text())
  assert entries, "the checkpoint's confident masks give tracks"
  for entry in entries:
    assert set(entry) == {"video_id", "category_id", "score", "segmentations"}
    assert entry["video_id"] == 0 and entry["category_id"] in synthetic_valid.categories
    assert len(entry["segmentations"]) == NUM_FRAMES
    assert any(mask is not None and rle.decode(mask).shape == FRAME_HW for mask in entry["segmentations"])
  overlay = iio.imread(tmp_path / "out.mp4", plugin="pyav")
  assert overlay.shape == (NUM_FRAMES, 32, 46, 3)  # padded to even sides
  assert iio.immeta(tmp_path / "out.mp4", plugin="pyav")["fps"] == pytest.approx(12)
  assert f"{len(entries)} tracks on 7 frames" in captured.out


@pytest.fixture(scope="module")
def ranked_config(tmp_path_factory, synthetic_dataset_dir):
  """A config file for run_dir that ranks tracks as configs/synthetic.py does: class probability x mask confidence
  x n / (n + 1) for n clips. Track scores then sit below the scores of the detections they link (the reported
  situation: a clip threshold of S let tracks below S through). Masks stay on the mask grid
  (full_resolution_masks off): there this random model's tracks fade out on some frames, which
  test_min_track_length_leaves_out_short_tracks needs (pasted at the video's size, every frame keeps a mask)."""
  path = tmp_path_factory.mktemp("configs") / "ranked.py"
  path.write_text("from tiny_maskprop import tiny_config\n\n\ndef get_config():\n  config = tiny_config()\n"
                  f"  config.data.root = {str(synthetic_dataset_dir)!r}\n"
                  "  config.inference.update(dict(mask_scoring=True, clip_prior=1.0, full_resolution_masks=False))\n"
                  "  return config\n")
  return path


@pytest.fixture(scope="module")
def ranked_tracks(run_dir, mp4_path, ranked_config, tmp_path_factory):
  """Every track of run_dir on the mp4 under ranked_config (no --score-thresh, no --min-track-length)."""
  path = tmp_path_factory.mktemp("ranked") / "tracks.json"
  demo.main(["--workdir", str(run_dir), "--config", str(ranked_config), "--video", str(mp4_path),
             "--json", str(path)])
  return json.loads(path.read_text())


@pytest.fixture
def overlaid(monkeypatch):
  """The tracks the demo hands to the overlay, as (category_id, score, frames with a mask)."""
  seen = []
  overlay_frames = visualize.overlay_frames

  def spy(frames, tracks, names):
    seen.extend((t.category_id, t.score, [m is not None for m in t.masks]) for t in tracks)
    return overlay_frames(frames, tracks, names)

  monkeypatch.setattr(visualize, "overlay_frames", spy)
  return seen


def summary(entries):
  return [(e["category_id"], e["score"], [m is not None for m in e["segmentations"]]) for e in entries]


def track_length(entry):
  return sum(mask is not None for mask in entry["segmentations"])


def test_score_thresh_reports_only_the_tracks_that_reach_it(run_dir, mp4_path, ranked_config, ranked_tracks,
                                                            overlaid, tmp_path, capsys):
  scores = sorted(entry["score"] for entry in ranked_tracks)
  assert scores[0] < scores[-1], "the test needs tracks on both sides of the threshold"
  thresh = (scores[0] + scores[-1]) / 2
  assert thresh > 0, "above the config's clip threshold (0), which --score-thresh must not raise"
  demo.main(["--workdir", str(run_dir), "--config", str(ranked_config), "--video", str(mp4_path),
             "--json", str(tmp_path / "tracks.json"), "--out", str(tmp_path / "out.gif"),
             "--score-thresh", str(thresh)])
  entries = json.loads((tmp_path / "tracks.json").read_text())
  assert entries and all(entry["score"] >= thresh for entry in entries)
  # Clips are still cut at the config's threshold, so the tracks that reach `thresh` are linked as they were.
  assert entries == [entry for entry in ranked_tracks if entry["score"] >= thresh]
  assert overlaid == summary(entries)
  left_out = len(ranked_tracks) - len(entries)
  summary_line = f"{len(entries)} tracks on 7 frames of 'squares' ({left_out} more left out: score < {thresh:g})"
  assert summary_line in capsys.readouterr().out


def test_min_track_length_leaves_out_short_tracks(run_dir, mp4_path, ranked_config, ranked_tracks, overlaid,
                                                  tmp_path):
  lengths = sorted(track_length(entry) for entry in ranked_tracks)
  assert lengths[0] < lengths[-1], "the test needs tracks shorter than others"
  demo.main(["--workdir", str(run_dir), "--config", str(ranked_config), "--video", str(mp4_path),
             "--json", str(tmp_path / "tracks.json"), "--out", str(tmp_path / "out.gif"),
             "--min-track-length", str(lengths[-1])])
  entries = json.loads((tmp_path / "tracks.json").read_text())
  assert entries == [entry for entry in ranked_tracks if track_length(entry) >= lengths[-1]]
  assert overlaid == summary(entries)


def test_converted_weights_on_a_folder_of_frames_write_a_gif(tmp_path, capsys):
  config = tiny_config()
  params_dir = tmp_path / "params"
  params_io.save_params(params_dir, nnx.to_pure_dict(nnx.state(tiny_model(config).detector)),
                        config.model.detector, category_ids=[0, 7, 9, 11, 12, 14, 15],
                        class_names=["__background__", "cat", "dog", "owl", "ant", "bee", "fly"])
  config_file = tmp_path / "tiny.py"
  config_file.write_text("from tiny_maskprop import tiny_config\n\n\ndef get_config():\n  return tiny_config()\n")
  frames_dir = tmp_path / "frames"
  frames_dir.mkdir()
  for index, frame in enumerate(square_frames(5)):
    Image.fromarray(frame).save(frames_dir / f"img{index}.png")
  demo.main(["--params", str(params_dir), "--config", str(config_file), "--video", str(frames_dir),
             "--out", str(tmp_path / "out.gif"), "--json", str(tmp_path / "tracks.json"), "--score-thresh", "0.2"])
  err = capsys.readouterr().err
  assert "propagation head" in err and "randomly initialised" in err
  for entry in json.loads((tmp_path / "tracks.json").read_text()):
    assert entry["category_id"] in (7, 9, 11, 12, 14, 15) and entry["score"] >= 0.2
    assert len(entry["segmentations"]) == 5
  gif = iio.imread(tmp_path / "out.gif", index=None)
  assert gif.shape[:3] == (5,) + FRAME_HW


@pytest.mark.parametrize("make_input, message", [
    (lambda d: d / "missing.mp4", "missing.mp4: video file not found"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "the video is empty"),
    (lambda d: (d / "junk.mp4").write_bytes(b"not a video at all" * 50) and d / "junk.mp4", "cannot read as a video"),
])
def test_bad_videos_exit_with_one_paragraph_and_write_nothing(run_dir, tmp_path, capsys, make_input, message):
  video = make_input(tmp_path)
  with pytest.raises(SystemExit) as exit_info:
    demo.main(["--workdir", str(run_dir), "--video", str(video), "--out", str(tmp_path / "out.gif"),
               "--json", str(tmp_path / "tracks.json")])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
  assert not (tmp_path / "tracks.json").exists() and not (tmp_path / "out.gif").exists()


def test_a_workdir_without_checkpoints_or_a_bad_overlay_name_is_refused(mp4_path, tmp_path, capsys):
  empty_run = tmp_path / "run"
  empty_run.mkdir()
  with pytest.raises(SystemExit):
    demo.main(["--workdir", str(empty_run), "--video", str(mp4_path), "--json", str(tmp_path / "t.json")])
  assert "no config.json" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    demo.main(["--workdir", str(empty_run), "--video", str(mp4_path), "--json", str(tmp_path / "t.json"),
               "--out", str(tmp_path / "out.avi")])
  assert "out.avi: the overlay must be one of .mp4, .gif" in capsys.readouterr().err
