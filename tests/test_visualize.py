"""maskprop_jax/visualize.py: captions on filled labels that scale with the frame, stay inside it and clear of each
other, colours stable per track id, and overlay videos as MP4 where pyav can write one (GIF otherwise)."""

import sys
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest

from maskprop_jax import rle, visualize

GREY = 128


def _frame(height: int, width: int) -> np.ndarray:
  return np.full((height, width, 3), GREY, np.uint8)


def _mask(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
  x0, y0, x1, y1 = box  # inclusive, as the overlay's boxes
  mask = np.zeros((height, width), bool)
  mask[y0:y1 + 1, x0:x1 + 1] = True
  return mask


def _dark_rows(drawn: np.ndarray) -> np.ndarray:
  """Rows holding dark text (grey frame, bright track colours: only black text is this dark)."""
  return np.flatnonzero((drawn < 64).all(-1).any(-1))


def test_the_caption_sits_on_a_filled_label_in_the_track_colour():
  track_id, box = 3, (100, 100, 200, 180)
  drawn = visualize.overlay(_frame(240, 320), [(track_id, "3 person 0.90", _mask(240, 320, box))])
  label = drawn[box[1] - 8:box[1], box[0]:box[0] + 30]  # just above the box, where the caption goes
  assert (label == visualize.track_colour(track_id)).all(-1).mean() > 0.5
  assert (drawn == visualize.text_colour(visualize.track_colour(track_id))).all(-1).any()


def test_captions_of_overlapping_tracks_do_not_overprint_each_other():
  h, w = 240, 320
  a = (0, "0 person 0.99", _mask(h, w, (60, 80, 200, 180)))
  b = (1, "1 person 0.98", _mask(h, w, (66, 84, 206, 186)))  # its caption's first spot overlaps a's
  alone, both = visualize.overlay(_frame(h, w), [a]), visualize.overlay(_frame(h, w), [a, b])
  ys, xs = np.nonzero((alone[:80] != GREY).any(-1))  # a's caption: what a draws above its box
  assert ys.size
  region = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
  np.testing.assert_array_equal(both[region], alone[region])
  colour_b = visualize.track_colour(1)
  only_b = visualize.overlay(_frame(h, w), [b])
  assert (both == colour_b).all(-1).sum() >= 0.9 * (only_b == colour_b).all(-1).sum()  # b's caption is drawn too


def test_a_caption_at_the_frames_top_right_corner_stays_whole_inside_the_frame():
  h, w, track_id, caption = 240, 320, 7, "7 earless_seal 0.88"  # a long caption on a bright colour: black text
  middle = visualize.overlay(_frame(h, w), [(track_id, caption, _mask(h, w, (120, 100, 160, 130)))])
  corner = visualize.overlay(_frame(h, w), [(track_id, caption, _mask(h, w, (w - 40, 0, w - 1, 30)))])
  text = (middle == 0).all(-1).sum()
  assert text > 0 and visualize.text_colour(visualize.track_colour(track_id)) == (0, 0, 0)
  assert (corner == 0).all(-1).sum() == text  # every glyph pixel is there: none cut off by an edge


def test_the_caption_font_grows_with_the_frame():
  heights = []
  for h, w in ((240, 320), (720, 1280)):
    drawn = visualize.overlay(_frame(h, w), [(0, "0 person 0.99", _mask(h, w, (w // 3, h // 3, w // 2, h // 2)))])
    rows = _dark_rows(drawn)
    heights.append(rows.max() - rows.min() + 1)
  assert heights[1] > 1.4 * heights[0]


def test_a_track_keeps_its_colour_on_every_frame():
  h, w = 120, 160
  boxes = [[(20, 40, 60, 80), (90, 30, 130, 70)], [(30, 50, 70, 90), (80, 20, 120, 60)]]  # per frame, per track
  tracks = [SimpleNamespace(category_id=1, score=0.9, masks=[rle.encode(_mask(h, w, frame_boxes[t]).astype(np.uint8))
                                                             for frame_boxes in boxes]) for t in range(2)]
  drawn = list(visualize.overlay_frames([_frame(h, w)] * 2, tracks, {1: "cat"}))
  assert visualize.track_colour(0) != visualize.track_colour(1)
  for frame, frame_boxes in zip(drawn, boxes):
    for track_id, (x0, y0, _, _) in enumerate(frame_boxes):
      assert tuple(frame[y0 - 1, x0]) == visualize.track_colour(track_id)  # the label's corner, above the box


class _Video(list):
  video_id, name = 5, "clip"

  @property
  def num_frames(self):
    return len(self)


def _write(tmp_path, **kwargs):
  h, w = 32, 48
  video = _Video([_frame(h, w) + 40 * i for i in range(3)])  # distinct: a GIF merges repeated frames
  masks = [rle.encode(_mask(h, w, (5, 10, 20, 25)).astype(np.uint8))] * 3
  predictions = [SimpleNamespace(video_id=5, category_id=1, score=0.9, masks=masks)]
  dataset = SimpleNamespace(categories={1: SimpleNamespace(id=1, name="cat")})
  return visualize.write_overlay_videos([video], predictions, dataset, tmp_path, **kwargs)


def test_overlay_videos_are_mp4_where_pyav_writes_them(tmp_path):
  pytest.importorskip("av")
  assert visualize.preferred_video_suffix() == ".mp4"
  (path,) = _write(tmp_path)
  assert path == tmp_path / "clip.mp4"
  assert iio.imread(path, plugin="pyav").shape == (3, 32, 48, 3)


def test_overlay_videos_are_gifs_without_pyav(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
  assert visualize.preferred_video_suffix() == ".gif"
  (path,) = _write(tmp_path)
  assert path == tmp_path / "clip.gif"
  assert iio.imread(path, index=None).shape[:3] == (3, 32, 48)


def test_middle_frame_overlays_draw_each_videos_middle_frame_for_tensorboard():
  h, w = 32, 48
  frames = [np.full((h, w, 3), 10 * i, np.uint8) for i in range(5)]
  dataset = SimpleNamespace(categories={1: SimpleNamespace(id=1, name="cat")})
  images = visualize.middle_frame_overlays([_Video(frames)], [], dataset)
  assert list(images) == ["clip"] and images["clip"].shape == (1, h, w, 3) and images["clip"].dtype == np.uint8
  np.testing.assert_array_equal(images["clip"][0], frames[2])  # no tracks: the frame itself
