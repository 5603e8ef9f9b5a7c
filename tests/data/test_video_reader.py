"""Reading a video's frames in order from records, a YouTube-VIS folder, a frame folder and a video file."""

import numpy as np
import pytest
from PIL import Image

from maskprop_jax.data import prepare
from maskprop_jax.data import video_reader
from maskprop_jax.data import ytvis
from maskprop_jax.errors import InputError


@pytest.fixture(scope="module")
def source(synthetic_dataset_dir):
  return synthetic_dataset_dir


def _frames_on_disk(source, video):
  return [np.asarray(Image.open(source / "train" / "JPEGImages" / f).convert("RGB")) for f in video.file_names]


def test_records_and_ytvis_folder_give_the_same_frames(source, tmp_path):
  dataset = ytvis.load_ytvis(source / "train.json", source / "train" / "JPEGImages")
  prepare.ensure_prepared(tmp_path, "synthetic", "train", images_dir=dataset.image_dir,
                          annotation_file=dataset.path)
  from_records = list(video_reader.videos_from_records(tmp_path, "synthetic", "train"))
  from_folder = list(video_reader.videos_from_ytvis(dataset))
  assert [v.video_id for v in from_records] == [v.video_id for v in from_folder] == sorted(dataset.videos)
  for a, b in zip(from_records, from_folder):
    video = dataset.videos[a.video_id]
    assert (a.name, a.num_frames, a.height, a.width) == (video.name, video.length, video.height, video.width)
    assert a.frame_names == b.frame_names == video.file_names
    expected = _frames_on_disk(source, video)
    for x, y, z in zip(a, b, expected, strict=True):
      np.testing.assert_array_equal(x, z)
      np.testing.assert_array_equal(y, z)


def _write_frames(folder, count, hw=(12, 16)):
  folder.mkdir(parents=True)
  frames = [np.full(hw + (3,), 20 * i, np.uint8) for i in range(count)]
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(folder / f"f{i}.png")  # f10 after f9: natural order, not string order
  return frames


def test_frame_folder_in_natural_order(tmp_path):
  frames = _write_frames(tmp_path / "clip", 11)
  video = video_reader.open_video(tmp_path / "clip")
  assert (video.video_id, video.name, video.num_frames, video.height, video.width) == (None, "clip", 11, 12, 16)
  assert video.frame_names[-2:] == ("f9.png", "f10.png")
  for got, want in zip(video, frames, strict=True):
    np.testing.assert_array_equal(got, want)


def test_corrupt_missing_and_odd_sized_frames_are_named(tmp_path):
  _write_frames(tmp_path / "a", 3)
  (tmp_path / "a" / "f1.png").write_bytes(b"not an image")
  with pytest.raises(InputError, match="f1.png: cannot decode"):
    list(video_reader.open_video(tmp_path / "a"))
  _write_frames(tmp_path / "b", 3)
  Image.new("RGB", (5, 5)).save(tmp_path / "b" / "f2.png")
  with pytest.raises(InputError, match="frame f2.png: decoded to"):
    list(video_reader.open_video(tmp_path / "b"))
  _write_frames(tmp_path / "c", 3)
  video = video_reader.open_video(tmp_path / "c")
  (tmp_path / "c" / "f2.png").unlink()
  with pytest.raises(InputError, match="f2.png is missing"):
    list(video)


def test_empty_video_is_an_error(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(InputError, match="empty"):
    video_reader.open_video(tmp_path / "empty")
  with pytest.raises(InputError, match="not found"):
    video_reader.open_video(tmp_path / "nothing.mp4")


def test_video_file_in_order(tmp_path):
  iio = pytest.importorskip("imageio.v3")
  pytest.importorskip("av")
  # Flat colours survive lossy coding closely enough to check the order.
  levels = [30, 90, 150, 210, 120]
  path = tmp_path / "clip.mp4"
  iio.imwrite(path, np.stack([np.full((32, 48, 3), v, np.uint8) for v in levels]), plugin="pyav",
              codec="libx264", fps=5)
  video = video_reader.open_video(path)
  assert (video.name, video.num_frames, video.height, video.width) == ("clip", 5, 32, 48)
  means = [frame.mean() for frame in video]
  np.testing.assert_allclose(means, levels, atol=6)


def test_a_file_that_is_not_a_video_is_an_error(tmp_path):
  path = tmp_path / "broken.mp4"
  path.write_bytes(b"\x00" * 100)
  with pytest.raises(InputError, match="broken.mp4"):
    video_reader.open_video(path)
