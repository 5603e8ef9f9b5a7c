"""Streaming MaskProp inference over a video of any length.

Clips are centred at every s-th frame. Every frame goes through the backbone once; its features stay in a cache
only while a clip window still needs them, and finished frames leave the linker as RLE, so memory is bounded by
the clip window (2T+1 frames), not by the video's length. Each clip gives clip-level tracks: the center frame's
detections (class, score, mask from Mask R-CNN) and their masks propagated to every frame of the window; the
linker joins them into video-level tracks as they come.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskprop_jax import linking
from maskprop_jax.model import maskprop


@dataclasses.dataclass(frozen=True)
class ClipSettings:
  half_window: int  # T: a clip spans frames c-T .. c+T
  clip_stride: int  # s: clips are centred at frames 0, s, 2s, ...
  score_thresh: float
  match_threshold: float
  mask_threshold: float
  duplicate_iou: float  # a center-frame detection overlapping a better one more than this is dropped
  temporal_decay: float  # frames; a clip's mask weighs exp(-|d| / decay) at distance d from its center (0: all 1)
  # Fields added later: run configs saved before them (workdir/config.json) lack them, and get the defaults.
  mask_scoring: bool = False  # a track's score times its masks' mean confidence (linking.TrackLinker)
  clip_prior: float = 0.0  # a track's score times n / (n + clip_prior) for n clips (0: off)
  reid_max_gap: int = 0  # frames an object may stay hidden and keep its track (0: off)
  reid_distance: float = 2.0  # object sizes between its reappearance and where its motion leads

  @classmethod
  def from_config(cls, config) -> "ClipSettings":
    c = config.inference
    return cls(**{field.name: c[field.name] for field in dataclasses.fields(cls) if field.name in c})


def clip_windows(num_frames: int, half_window: int, stride: int) -> list[tuple[int, int, int]]:
  """(center, start, stop) of every clip; windows are cut at the ends of the video."""
  if num_frames <= 0:
    raise ValueError("a video needs at least one frame")
  centers = list(range(0, num_frames, stride))
  if centers[-1] != num_frames - 1 and stride > 1:
    centers.append(num_frames - 1)  # the last frames are covered by a clip of their own
  return [(c, max(0, c - half_window), min(num_frames, c + half_window + 1)) for c in centers]


def suppress_duplicates(masks: np.ndarray, max_iou: float) -> np.ndarray:
  """Indices of the masks [K, h, w] (best first) kept by greedy NMS on soft mask IoU.

  Mask R-CNN's NMS is per class, so one object detected under two classes survives it twice; two clip tracks of
  one object would then start two video tracks.
  """
  flat = masks.reshape(masks.shape[0], -1)
  inter = flat @ flat.T
  area = flat.sum(1)
  iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-6)
  kept: list[int] = []
  for i in range(flat.shape[0]):
    if all(iou[i, j] <= max_iou for j in kept):
      kept.append(i)
  return np.asarray(kept, np.int64)


class Timer:
  """Wall time per stage; `sync` waits for the device so that asynchronous dispatch is charged correctly."""

  def __init__(self, sync: bool):
    self.sync = sync
    self.seconds = collections.defaultdict(float)

  def time(self, stage: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    if self.sync:
      out = jax.block_until_ready(out)
    self.seconds[stage] += time.perf_counter() - start
    return out


# The model travels as (graphdef, state): nnx.jit would walk the module graph on every call, tens of milliseconds
# each, three calls per frame, more than a small model's compute. At module level with a static graphdef, the
# compiled programs serve every predictor of the same architecture (evaluation during training makes a new one).
@functools.partial(jax.jit, static_argnums=(0, 3))
def _frame_features(graphdef: nnx.GraphDef, state: nnx.State, frame: jax.Array,
                    geometry: maskprop.InputGeometry) -> list[jax.Array]:
  return nnx.merge(graphdef, state).frame_features(frame, geometry)


@functools.partial(jax.jit, static_argnums=0)
def _detect(graphdef: nnx.GraphDef, state: nnx.State, features: list[jax.Array],
            image_hw: jax.Array) -> maskprop.ClipDetections:
  return nnx.merge(graphdef, state).detect(features, image_hw)


@functools.partial(jax.jit, static_argnums=0)
def _propagate(graphdef: nnx.GraphDef, state: nnx.State, center: jax.Array, masks: jax.Array,
               references: jax.Array) -> jax.Array:
  return nnx.merge(graphdef, state).propagate(center, masks, references)


class VideoPredictor:
  """Runs a MaskProp model over videos; one compiled program per input canvas size.

  The predictor keeps the weights the model has when it is made: make a new one after changing them.
  """

  def __init__(self, model: maskprop.MaskProp, settings: ClipSettings):
    self.model = model
    self.settings = settings
    self._graphdef, self._state = nnx.split(model)

  def __call__(self, frames: Iterable[np.ndarray], num_frames: int, video_hw: tuple[int, int], *,
               timer: Timer | None = None) -> list[linking.VideoTrack]:
    """Video-level tracks of one video whose frames arrive in order (uint8 [H, W, 3] each)."""
    timer = timer or Timer(sync=False)
    model, s = self.model, self.settings
    geometry = maskprop.InputGeometry.for_video(model.config, video_hw)
    linker = linking.TrackLinker(num_frames, geometry.mask_hw, tuple(video_hw), model.num_classes,
                                 match_threshold=s.match_threshold, mask_threshold=s.mask_threshold,
                                 temporal_decay=s.temporal_decay, mask_scoring=s.mask_scoring,
                                 clip_prior=s.clip_prior, reid_max_gap=s.reid_max_gap,
                                 reid_distance=s.reid_distance)
    windows = collections.deque(clip_windows(num_frames, s.half_window, s.clip_stride))
    cache: dict[int, list[jax.Array]] = {}  # frame -> FPN features [1, h, w, C] per level
    frames = iter(frames)
    for frame_index in range(num_frames):
      try:
        frame = next(frames)
      except StopIteration:
        raise ValueError(f"the video promised {num_frames} frames but ended after {frame_index}") from None
      if frame.shape[:2] != tuple(video_hw):
        raise ValueError(f"frame {frame_index} is {frame.shape[:2]}, the video's frames are {tuple(video_hw)}")
      cache[frame_index] = timer.time("backbone", _frame_features, self._graphdef, self._state, frame, geometry)
      # Every clip whose window has now been read in full runs, in order.
      while windows and windows[0][2] - 1 <= frame_index:
        center, start, stop = windows.popleft()
        tracks = self._clip_tracks(cache, center, start, stop, geometry, timer)
        timer.time("linking", linker.add_clip, tracks)
        next_start = windows[0][1] if windows else num_frames
        for old in [f for f in cache if f < next_start]:
          del cache[old]
    return timer.time("linking", linker.finish)

  def _clip_tracks(self, cache, center, start, stop, geometry, timer) -> list[linking.ClipTrack]:
    model, s = self.model, self.settings
    hw = jnp.asarray([geometry.resized_hw], jnp.int32)
    detections = timer.time("detection", _detect, self._graphdef, self._state, cache[center], hw)
    keep = np.flatnonzero(np.asarray(detections.valid[0]) & (np.asarray(detections.scores[0]) >= s.score_thresh))
    if keep.size == 0:
      return []
    center_masks = np.asarray(detections.masks[0])  # [D, h, w] on the mask grid
    keep = keep[suppress_duplicates(center_masks[keep], s.duplicate_iou)]
    level = model.propagation_level
    # Pad the window to its full length so that one program serves every clip, the video's ends included.
    frames_in_window = [min(max(f, start), stop - 1) for f in range(center - s.half_window,
                                                                     center + s.half_window + 1)]
    refs = jnp.concatenate([cache[f][level] for f in frames_in_window])  # [2T+1, h, w, C]
    # Only the kept detections are propagated, in slots padded to a power of two: propagation costs as many
    # slots as it is given, and a handful of programs (1, 2, 4, ... D slots) serve every clip.
    num_slots = min(center_masks.shape[0], 1 << (keep.size - 1).bit_length())
    slot_masks = np.zeros((num_slots,) + center_masks.shape[1:], np.float32)
    slot_masks[:keep.size] = center_masks[keep]
    probs = timer.time("propagation", _propagate, self._graphdef, self._state, cache[center][level],
                       slot_masks[None], refs)  # [2T+1, slots, h, w]
    offset = start - (center - s.half_window)
    probs = np.array(probs[offset:offset + stop - start, :keep.size])  # [L, K, h, w]
    # On its own frame an instance keeps the mask Mask R-CNN gave it, as in the paper.
    probs[center - start] = center_masks[keep]
    mask_h, mask_w = geometry.mask_hw
    probs = probs[:, :, :mask_h, :mask_w]  # the part of the canvas the image covers
    class_probs = np.asarray(detections.class_probs[0])
    return [linking.ClipTrack(start=start, masks=probs[:, k], class_probs=class_probs[d], center=center)
            for k, d in enumerate(keep)]
