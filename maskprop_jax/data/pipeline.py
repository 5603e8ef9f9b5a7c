"""Training pipeline: (video, center frame) examples from the prepared records, batched with grain.

One example is a clip: the center frame, K reference frames drawn within +-T of it, and every track that shows up
in those frames, laid out in `max_instances` slots. Examples are enumerated from the metadata (one per frame of
every video), shuffled and sharded by grain's IndexSampler, and built by a RandomMapTransform whose generator
grain seeds from (seed, global example index): an example depends only on the seed and its position in the
endless shuffled stream. How examples group into batches also depends on `worker_count` (each grain worker
batches the examples it builds), so a run resumes with the worker count it was saved with (grain refuses
another). The iterator's state (grain JSON) restores a run exactly; with orbax, save and restore it as an item
`grain.checkpoint.CheckpointSave(iterator)` / `grain.checkpoint.CheckpointRestore(iterator)` of a Composite (as
training/checkpointing.py does).

Batch format (numpy, B = per-process batch, F = 1 + K, index 0 = center frame, M = max_instances):
  frames uint8 [B, F, H, W, 3], frame_offsets int32 [B, F], image_hw int32 [B, 2], track_ids int32 [B, M],
  classes int32 [B, M], crowd bool [B, M], boxes float32 [B, F, M, 4], masks uint8 [B, F, M, H, W],
  present bool [B, F, M].
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from absl import flags
import grain.python as grain
import jax
import numpy as np

from maskprop_jax import rle as rle_lib
from maskprop_jax.data import augment
from maskprop_jax.data import prepare
from maskprop_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """What a training example looks like (all fields come from the config)."""

  image_hw: tuple[int, int]
  max_instances: int
  num_ref_frames: int
  max_ref_offset: int
  scale_range: tuple[int, int]
  flip: bool


class ClipIndex:
  """Random access over (video record, center frame) pairs: example i is frame i of the concatenated videos.

  The record reader is opened lazily, so that a pickled copy sent to a grain worker opens its own.
  """

  def __init__(self, dataset_dir: str | Path, split: str):
    self._dataset_dir = str(dataset_dir)
    self._split = split
    info = prepare.split_info(dataset_dir, split)
    self._video_ids = list(info["video_ids"])
    self._starts = np.concatenate([[0], np.cumsum(info["num_frames"], dtype=np.int64)])  # [V + 1]
    self._records = None

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __repr__(self) -> str:
    # grain checks that a restored state comes from the same source by its repr: leave out where the data set
    # lies, so that a run can resume after the data moved.
    dataset = "/".join(Path(self._dataset_dir).parts[-3:])
    return f"ClipIndex({dataset}, split={self._split}, examples={len(self)})"

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_records": None}

  def __getitem__(self, index: int) -> dict[str, Any]:
    if self._records is None:
      self._records = prepare.open_records(self._dataset_dir, self._split)
    video = int(np.searchsorted(self._starts, index, side="right")) - 1
    record = self._records[video]
    if int(record["video_id"]) != self._video_ids[video]:
      raise InputError(
          f"{self._dataset_dir} ({self._split}): record {video} holds video {record['video_id']} but the metadata "
          f"says {self._video_ids[video]}; the data set is inconsistent, prepare it again"
      )
    return {"record": record, "center": int(index - self._starts[video])}


def sample_frame_indices(
    rng: np.random.Generator, num_frames: int, center: int, num_ref_frames: int, max_ref_offset: int
) -> np.ndarray:
  """[center, K reference frames in time order], int64 [1 + K].

  References come from the window of +-max_ref_offset frames around the center, cut at the video's ends; they
  are distinct while the window allows, repeated when it is too small, and the center itself for a 1-frame video.
  """
  first, last = max(0, center - max_ref_offset), min(num_frames - 1, center + max_ref_offset)
  candidates = np.array([i for i in range(first, last + 1) if i != center], np.int64)
  if num_ref_frames == 0:
    refs = np.zeros(0, np.int64)
  elif candidates.size == 0:
    refs = np.full(num_ref_frames, center, np.int64)
  else:
    refs = rng.choice(candidates, num_ref_frames, replace=candidates.size < num_ref_frames)
  return np.concatenate([[center], np.sort(refs)]).astype(np.int64)


def _frame_name(record: dict[str, Any], frame: int) -> str:
  name = record["file_names"][frame]
  return name.decode() if isinstance(name, bytes) else str(name)


def _video_label(record: dict[str, Any]) -> str:
  name = record["name"]
  return f"video {int(record['video_id'])} ({name.decode() if isinstance(name, bytes) else name})"


def _clip_masks(
    record: dict[str, Any], frame_indices: np.ndarray, geometry: augment.ClipGeometry
) -> tuple[np.ndarray, np.ndarray]:
  """Every track's transformed masks on the clip's frames: uint8 [N, F, H, W] and their non-emptiness [N, F]."""
  tracks = record["tracks"]
  num_tracks = len(tracks["id"])
  out = np.zeros((num_tracks, len(frame_indices)) + geometry.padded_hw, np.uint8)
  height, width = int(record["height"]), int(record["width"])
  where = [(n, f) for n in range(num_tracks) for f, frame in enumerate(frame_indices) if tracks["present"][n][frame]]
  if not where:
    return out, np.zeros(out.shape[:2], bool)
  counts = [tracks["rle_counts"][n][frame_indices[f]] for n, f in where]
  try:
    decoded = rle_lib.decode_many(counts, height, width)  # every mask of the clip at once
  except (ValueError, TypeError):
    for (n, f), c in zip(where, counts):  # one at a time, to name the bad one
      try:
        rle_lib.decode({"size": [height, width], "counts": c})
      except (ValueError, TypeError) as e:
        raise InputError(
            f"{_video_label(record)}, frame {_frame_name(record, frame_indices[f])}: bad mask of track "
            f"{int(tracks['id'][n])}: {e}"
        ) from e
    raise
  rows, cols = np.asarray(where).T
  out[rows, cols] = augment.apply_to_masks(decoded, geometry)
  return out, out.any(axis=(2, 3))


def order_slots(track_ids: np.ndarray, present: np.ndarray, max_instances: int) -> np.ndarray:
  """Track indices for the slots: center-frame tracks by id, then reference-only tracks by id; int64 [<= M].

  track_ids int [N]; present bool [N, F] with frame 0 the center. Tracks absent from the whole clip get no slot.
  """
  in_center = present[:, 0]
  in_refs_only = ~in_center & present.any(axis=1)
  by_id = np.argsort(track_ids, kind="stable")
  ordered = np.concatenate([by_id[in_center[by_id]], by_id[in_refs_only[by_id]]])
  return ordered[:max_instances]


def make_clip(record: dict[str, Any], center: int, rng: np.random.Generator, spec: ClipSpec) -> dict[str, np.ndarray]:
  """One training example in the batch format, without the batch axis."""
  num_frames = len(record["frames"])
  frame_indices = sample_frame_indices(rng, num_frames, center, spec.num_ref_frames, spec.max_ref_offset)
  source_hw = (int(record["height"]), int(record["width"]))
  geometry = augment.sample_geometry(rng, source_hw, tuple(spec.image_hw), tuple(spec.scale_range), spec.flip)

  frames = np.empty((len(frame_indices),) + geometry.padded_hw + (3,), np.uint8)  # [F, H, W, 3]
  for f, frame in enumerate(frame_indices):
    try:
      resized = augment.decode_resized(record["frames"][frame], geometry)
    except (OSError, ValueError, SyntaxError) as e:
      raise InputError(f"{_video_label(record)}: cannot decode frame {_frame_name(record, frame)}: {e}") from e
    frames[f] = augment.apply_to_image(resized, geometry)

  track_masks, track_present = _clip_masks(record, frame_indices, geometry)  # [N, F, H, W], [N, F]
  tracks = record["tracks"]
  track_ids = np.asarray(tracks["id"], np.int64).reshape(-1)
  slots = order_slots(track_ids, track_present, spec.max_instances)
  num, m = len(slots), spec.max_instances

  masks = np.zeros((len(frame_indices), m) + geometry.padded_hw, np.uint8)  # [F, M, H, W]
  masks[:, :num] = track_masks[slots].transpose(1, 0, 2, 3)
  present = np.zeros((len(frame_indices), m), bool)  # [F, M]
  present[:, :num] = track_present[slots].T
  boxes = np.zeros((len(frame_indices), m, 4), np.float32)  # [F, M, 4]
  boxes[:, :num] = augment.mask_boxes(masks[:, :num])

  def slot_values(values: Any, dtype: Any, fill: Any) -> np.ndarray:
    out = np.full((m,), fill, dtype)
    out[:num] = np.asarray(values, dtype).reshape(-1)[slots]
    return out

  return {
      "frames": frames,
      "frame_offsets": (frame_indices - center).astype(np.int32),
      "image_hw": np.asarray(geometry.resized_hw, np.int32),
      "track_ids": slot_values(track_ids, np.int32, -1),
      "classes": slot_values(tracks["label"], np.int32, 0),
      "crowd": slot_values(tracks["iscrowd"], bool, False),
      "boxes": boxes,
      "masks": masks,
      "present": present,
  }


class MakeClip(grain.RandomMapTransform):
  """grain transform: a ClipIndex element -> one example, with the generator grain derives for it."""

  def __init__(self, spec: ClipSpec):
    self._spec = spec

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    return make_clip(element["record"], element["center"], rng, self._spec)


def make_train_loader(
    data_dir: str | Path,
    name: str,
    split: str,
    *,
    global_batch_size: int,
    image_hw: tuple[int, int],
    max_instances: int,
    num_ref_frames: int,
    max_ref_offset: int,
    scale_range: tuple[int, int],
    flip: bool,
    seed: int,
    worker_count: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
) -> grain.DataLoader:
  """The grain DataLoader of this process's shard (jax.process_index/process_count unless given).

  Each process yields batches of global_batch_size // shard_count examples; shards are disjoint contiguous
  ranges of the examples, each shuffled anew every epoch. `num_epochs=None` repeats forever (training); with a
  finite count grain stops every shard after the same number of examples, which leaves out fewer than
  shard_count examples per epoch.
  """
  if shard_index is None or shard_count is None:
    shard_index, shard_count = jax.process_index(), jax.process_count()
  if global_batch_size % shard_count:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible by {shard_count} processes")
  dataset_dir = prepare.prepared_dir(data_dir, name)
  spec = ClipSpec(tuple(image_hw), max_instances, num_ref_frames, max_ref_offset, tuple(scale_range), flip)
  source = ClipIndex(dataset_dir, split)
  if len(source) == 0:
    raise InputError(f"{dataset_dir} ({split}): the split has no frames")
  if worker_count and not flags.FLAGS.is_parsed():
    # grain's worker processes read grain's absl flags; outside an absl app nobody parsed them: use defaults.
    flags.FLAGS.mark_as_parsed()
  shard_options = grain.ShardOptions(shard_index=shard_index, shard_count=shard_count, drop_remainder=False)
  sampler = grain.IndexSampler(
      num_records=len(source), shard_options=shard_options, shuffle=True, num_epochs=num_epochs, seed=seed
  )
  return grain.DataLoader(
      data_source=source,
      sampler=sampler,
      operations=[MakeClip(spec), grain.Batch(global_batch_size // shard_count, drop_remainder=True)],
      worker_count=worker_count,
  )


def make_train_iterator(data_dir: str | Path, name: str, split: str, **kwargs: Any) -> grain.PyGrainDatasetIterator:
  """An iterator over this process's batches; `get_state()`/`set_state()` checkpoint it (see the module doc)."""
  return iter(make_train_loader(data_dir, name, split, **kwargs))
