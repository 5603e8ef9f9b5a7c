"""The grain training pipeline over prepared records (pipeline.py, augment.py)."""

import io
import json
from fractions import Fraction

import grain.python as grain
import numpy as np
import pytest
from PIL import Image

from maskprop_jax import rle
from maskprop_jax.data import augment
from maskprop_jax.data import pipeline
from maskprop_jax.data import prepare
from maskprop_jax.errors import InputError

IMAGE_HW = (80, 112)  # the shared synthetic frames are 64x96
SCALE_RANGE = (48, 72)
SETTINGS = dict(image_hw=IMAGE_HW, max_instances=3, num_ref_frames=2, max_ref_offset=2, scale_range=SCALE_RANGE,
                flip=True, worker_count=0)


@pytest.fixture(scope="module")
def data(synthetic_dataset_dir, tmp_path_factory):
  """(TFDS data dir, source root): the shared tiny synthetic train split, prepared."""
  data_dir = tmp_path_factory.mktemp("tfds")
  prepare.ensure_prepared(data_dir, "synthetic", "train", images_dir=synthetic_dataset_dir / "train" / "JPEGImages",
                          annotation_file=synthetic_dataset_dir / "train.json")
  return data_dir, synthetic_dataset_dir


def _iterator(data_dir, seed=0, **overrides):
  kwargs = {**SETTINGS, "global_batch_size": 2, "seed": seed, "shard_index": 0, "shard_count": 1, **overrides}
  return pipeline.make_train_iterator(data_dir, "synthetic", "train", **kwargs)


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batch_has_the_documented_format(data):
  batch = next(_iterator(data[0]))
  b, f, m, (h, w) = 2, 3, 3, IMAGE_HW
  expected = {
      "frames": ((b, f, h, w, 3), np.uint8), "frame_offsets": ((b, f), np.int32), "image_hw": ((b, 2), np.int32),
      "track_ids": ((b, m), np.int32), "classes": ((b, m), np.int32), "crowd": ((b, m), np.bool_),
      "boxes": ((b, f, m, 4), np.float32), "masks": ((b, f, m, h, w), np.uint8), "present": ((b, f, m), np.bool_),
  }
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
  assert (batch["frame_offsets"][:, 0] == 0).all() and (np.abs(batch["frame_offsets"]) <= 2).all()


def _nearest(source_size, target_size):
  """Source pixel whose [j, j + 1) holds the target pixel centre, in exact rational arithmetic."""
  return [int((Fraction(2 * i + 1, 2) * Fraction(source_size, target_size))) for i in range(target_size)]


def _examples(data_dir, seed, num_batches, batch_size):
  """(video index, center frame) of each example the loader yields, from grain's sampler and the frame counts."""
  metadata = json.loads((data_dir / "vis_videos/synthetic/1.0.0/metadata.json").read_text())
  num_frames = metadata["splits"]["train"]["num_frames"]
  pairs = [(v, t) for v, n in enumerate(num_frames) for t in range(n)]
  sampler = grain.IndexSampler(num_records=len(pairs), shard_options=grain.ShardOptions(0, 1), shuffle=True,
                               num_epochs=None, seed=seed)
  return [pairs[sampler[i].record_key] for i in range(num_batches * batch_size)]


def test_masks_equal_the_decoded_rle_under_the_clips_transform(data):
  data_dir, root = data
  annotation = json.loads((root / "train.json").read_text())
  videos = sorted(annotation["videos"], key=lambda v: v["id"])
  iterator = _iterator(data_dir, seed=5)
  batches = [next(iterator) for _ in range(4)]
  examples = _examples(data_dir, seed=5, num_batches=4, batch_size=2)
  flips = set()
  for index, (video_index, center) in enumerate(examples):
    batch, i = batches[index // 2], index % 2
    video = videos[video_index]
    rh, rw = batch["image_hw"][i]
    assert rh <= IMAGE_HW[0] and rw <= IMAGE_HW[1] and min(rh, rw) <= SCALE_RANGE[1]
    assert min(rh, rw) >= SCALE_RANGE[0] or rw == IMAGE_HW[1]  # the short side, unless the canvas is too narrow
    frame_indices = center + batch["frame_offsets"][i]
    assert ((0 <= frame_indices) & (frame_indices < len(video["file_names"]))).all()

    # The flip is read off the center frame (bilinear resizing is not bit-exact), then must hold for all masks.
    jpeg = (root / "train" / "JPEGImages" / video["file_names"][center]).read_bytes()
    expected = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB").resize((rw, rh), Image.Resampling.BILINEAR),
                          np.float32)
    got = batch["frames"][i, 0, :rh, :rw].astype(np.float32)
    errors = [np.abs(got - expected).mean(), np.abs(got - expected[:, ::-1]).mean()]
    flipped = bool(np.argmin(errors))
    flips.add(flipped)
    assert min(errors) < 2.0
    assert (batch["frames"][i, :, rh:] == 0).all() and (batch["frames"][i, :, :, rw:] == 0).all()

    rows, cols = _nearest(video["height"], rh), _nearest(video["width"], rw)
    tracks = {a["id"]: a for a in annotation["annotations"] if a["video_id"] == video["id"]}
    for slot, track_id in enumerate(batch["track_ids"][i]):
      if track_id < 0:
        assert not batch["masks"][i, :, slot].any() and batch["classes"][i, slot] == 0
        continue
      track = tracks[int(track_id)]
      assert batch["classes"][i, slot] == track["category_id"]
      for f, frame in enumerate(frame_indices):
        segmentation = track["segmentations"][frame]
        want = np.zeros(IMAGE_HW, np.uint8)
        if segmentation is not None:
          resized = rle.decode(segmentation)[np.ix_(rows, cols)]
          want[:rh, :rw] = resized[:, ::-1] if flipped else resized
        np.testing.assert_array_equal(batch["masks"][i, f, slot], want)
        assert batch["present"][i, f, slot] == want.any()
        ys, xs = np.nonzero(want)
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if want.any() else [0, 0, 0, 0]
        np.testing.assert_array_equal(batch["boxes"][i, f, slot], box)

    # Slots: tracks visible in the center frame by id, then the others by id; nothing visible left out.
    ids = [int(t) for t in batch["track_ids"][i] if t >= 0]
    center_ids = [t for t in ids if batch["present"][i, 0, ids.index(t)]]
    assert ids == sorted(center_ids) + sorted(set(ids) - set(center_ids))
    visible = {t for t, a in tracks.items() if any(a["segmentations"][fr] is not None for fr in frame_indices)}
    assert set(ids) <= visible and len(ids) == min(len(visible), 3)
  assert flips == {False, True}


def test_shards_of_two_processes_are_disjoint_and_cover_the_data(data):
  # With the scale pinned and no flip, the center frame's pixels identify the example.
  fixed = dict(scale_range=(64, 64), flip=False)
  everything = [b["frames"][0, 0].tobytes() for b in _iterator(data[0], global_batch_size=1, num_epochs=1, **fixed)]
  # Endless streams: a shard repeats its own examples only; ceil(N / 2) steps show all of the larger shard.
  steps = (len(everything) + 1) // 2
  shards = []
  for k in range(2):
    iterator = _iterator(data[0], shard_index=k, shard_count=2, **fixed)
    shards.append({next(iterator)["frames"][0, 0].tobytes() for _ in range(steps)})
  assert len(set(everything)) == len(everything)
  assert not shards[0] & shards[1]
  assert shards[0] | shards[1] == set(everything)


def test_restored_iterator_continues_with_the_same_examples(data):
  iterator = _iterator(data[0], seed=7)
  next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(3)]
  restored = _iterator(data[0], seed=7)
  restored.set_state(state)
  assert all(_same(a, b) for a, b in zip(expected, [next(restored) for _ in range(3)]))


def test_orbax_checkpoint_manager_saves_and_restores_the_iterator(data, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  iterator = _iterator(data[0], seed=8)
  next(iterator)
  with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
    manager.save(1, args=ocp.args.Composite(data=grain.PyGrainCheckpointSave(iterator)))
    manager.wait_until_finished()
  expected = [next(iterator) for _ in range(2)]
  restored = _iterator(data[0], seed=8)
  with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
    manager.restore(1, args=ocp.args.Composite(data=grain.PyGrainCheckpointRestore(restored)))
  assert all(_same(a, b) for a, b in zip(expected, [next(restored) for _ in range(2)]))


def test_the_seed_decides_the_stream(data):
  assert _same(next(_iterator(data[0], seed=11)), next(_iterator(data[0], seed=11)))
  assert not _same(next(_iterator(data[0], seed=11)), next(_iterator(data[0], seed=12)))


def test_reference_frames_stay_in_the_window_and_the_video():
  rng = np.random.default_rng(0)
  for num_frames, center in [(10, 5), (10, 0), (10, 9), (3, 1)]:
    for _ in range(20):
      frames = pipeline.sample_frame_indices(rng, num_frames, center, num_ref_frames=2, max_ref_offset=3)
      assert frames[0] == center and list(frames[1:]) == sorted(frames[1:])
      assert ((frames >= 0) & (frames < num_frames) & (np.abs(frames - center) <= 3)).all()
      assert center not in frames[1:] and len(set(frames[1:])) == 2
  np.testing.assert_array_equal(pipeline.sample_frame_indices(rng, 1, 0, 2, 3), [0, 0, 0])
  np.testing.assert_array_equal(pipeline.sample_frame_indices(rng, 2, 1, 3, 3), [1, 0, 0, 0])


def test_slots_put_center_tracks_first_and_drop_the_rest():
  track_ids = np.array([9, 4, 7, 2, 5])
  present = np.array([[0, 1], [1, 0], [0, 0], [0, 1], [1, 1]], bool)  # [N, F], frame 0 = center
  np.testing.assert_array_equal(track_ids[pipeline.order_slots(track_ids, present, 4)], [4, 5, 2, 9])
  np.testing.assert_array_equal(track_ids[pipeline.order_slots(track_ids, present, 1)], [4])


def test_resized_size_keeps_the_aspect_ratio_inside_the_canvas():
  assert augment.resized_size((720, 1280), 360, (400, 600)) == (338, 600)
  assert augment.resized_size((720, 1280), 360, (800, 1333)) == (360, 640)


def test_a_clip_without_tracks_is_all_padding(data):
  record = dict(prepare.open_records(prepare.prepared_dir(data[0], "synthetic"), "train")[0])
  record["tracks"] = {key: [] for key in record["tracks"]}
  spec = pipeline.ClipSpec(IMAGE_HW, 3, 2, 2, SCALE_RANGE, True)
  clip = pipeline.make_clip(record, 1, np.random.default_rng(0), spec)
  assert (clip["track_ids"] == -1).all() and not clip["present"].any() and not clip["masks"].any()
  assert clip["frames"].shape == (3, *IMAGE_HW, 3) and clip["frames"].any()


@pytest.mark.parametrize("flip", [False, True])
def test_masks_of_a_clip_transform_as_each_one_alone(flip):
  rng = np.random.default_rng(3)
  masks = (rng.random((5, 30, 45)) < 0.3).astype(np.uint8)
  geometry = augment.ClipGeometry((30, 45), (40, 60), (48, 64), flip)
  rows, cols = augment.nearest_indices(30, 40), augment.nearest_indices(45, 60)
  out = augment.apply_to_masks(masks, geometry)
  assert out.shape == (5, 48, 64) and out.dtype == np.uint8 and not out[:, 40:].any() and not out[:, :, 60:].any()
  for mask, got in zip(masks, out):
    want = mask[rows[:, None], cols[None, :]]
    np.testing.assert_array_equal(got[:40, :60], want[:, ::-1] if flip else want)


def test_mask_boxes_are_the_tight_boxes_and_zero_for_empty_masks():
  masks = np.zeros((2, 3, 10, 12), np.uint8)
  masks[0, 0, 2:5, 3:9] = 1
  masks[0, 1, 9, 11] = 1  # the last pixel
  masks[1, 0, 0, :] = 1  # the first row
  masks[1, 2, 4, 6] = masks[1, 2, 7, 1] = 1  # two pixels apart
  boxes = augment.mask_boxes(masks)
  assert boxes.shape == (2, 3, 4) and boxes.dtype == np.float32
  np.testing.assert_array_equal(boxes, [[[3, 2, 9, 5], [11, 9, 12, 10], [0, 0, 0, 0]],
                                        [[0, 0, 12, 1], [0, 0, 0, 0], [1, 4, 7, 8]]])


def test_a_bad_mask_names_its_video_frame_and_track(data):
  record = dict(prepare.open_records(prepare.prepared_dir(data[0], "synthetic"), "train")[0])
  tracks = {key: list(value) for key, value in record["tracks"].items()}
  n = next(i for i, present in enumerate(tracks["present"]) if present[1])
  counts = [list(c) for c in tracks["rle_counts"]]
  counts[n][1] = b"zz"
  record["tracks"] = dict(tracks, rle_counts=counts)
  spec = pipeline.ClipSpec(IMAGE_HW, 3, 0, 2, SCALE_RANGE, True)  # the center frame alone
  with pytest.raises(InputError, match=rf"video .*frame .*: bad mask of track {int(tracks['id'][n])}: "):
    pipeline.make_clip(record, 1, np.random.default_rng(0), spec)
