"""The demo's video mode: a trained run or converted weights on an mp4 or a folder of frames, and bad input."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from maskprop_jax import rle
from maskprop_jax.convert import params_io
from maskprop_jax.demo import cli as demo
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


def test_run_on_an_mp4_writes_results_and_an_overlay_video(run_dir, mp4_path, synthetic_valid, tmp_path, capsys):
  demo.main(["--workdir", str(run_dir), "--video", str(mp4_path), "--out", str(tmp_path / "out.mp4"),
             "--json", str(tmp_path / "tracks.json")])
  captured = capsys.readouterr()
  assert "squares: inference: 7/7 frames," in captured.err and "frames/s" in captured.err
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
