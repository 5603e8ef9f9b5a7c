"""Streaming MaskProp inference over a video of any length: the one clip loop (`video_clips`) and the predictor.

Clips are centred at every s-th frame. Every frame goes through the backbone and the propagation branch's
per-frame terms once; they stay in a cache only while a clip window still needs them, and finished frames leave
the linker as RLE, so memory is bounded by the clip window (2T+1 frames), not by the video's length. Each clip
gives clip-level tracks: the center frame's detections (class, score, mask from Mask R-CNN) and their masks
propagated to every other frame of the window; the linker joins them into video-level tracks as they come.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskprop_jax import linking
from maskprop_jax.linking import iou as linking_iou
from maskprop_jax.model import maskprop, propagation, propagation_refiner, transform


@dataclasses.dataclass(frozen=True)
class ClipSettings:
  """How a video is cut into clips and which center-frame detections become clip tracks; `link` says how the
  clip tracks become video tracks."""

  half_window: int  # T: a clip spans frames c-T .. c+T
  clip_stride: int  # s: clips are centred at frames 0, s, 2s, ...
  score_thresh: float  # least detection score of a clip track that may start a video track
  duplicate_iou: float  # a center-frame detection overlapping a better one more than this is dropped
  # Box-relative masks (the center frame's, refined windows) go to linking to be pasted at the video's resolution.
  full_resolution_masks: bool = True
  # Detections scoring from this up to score_thresh give extends-only clip tracks (linking.ClipTrack): they may
  # lengthen a video track they match, never start one. At score_thresh or above: off.
  extend_score_thresh: float = 1.0
  link: linking.LinkSettings = linking.LinkSettings()

  @classmethod
  def from_config(cls, config) -> "ClipSettings":
    """The settings of `config.inference`; full_resolution_masks, missing from run configs saved before it
    existed, keeps its default there."""
    c = config.inference
    own = {field.name: c[field.name] for field in dataclasses.fields(cls)
           if field.name != "link" and (field.name in c or field.default is dataclasses.MISSING)}
    return cls(**own, link=linking.LinkSettings.from_config(config))


def clip_windows(num_frames: int, half_window: int, stride: int) -> list[tuple[int, int, int]]:
  """(center, start, stop) of every clip; windows are cut at the ends of the video."""
  if num_frames <= 0:
    raise ValueError("a video needs at least one frame")
  centers = list(range(0, num_frames, stride))
  if centers[-1] != num_frames - 1 and stride > 1:
    centers.append(num_frames - 1)  # the last frames are covered by a clip of their own
  return [(c, max(0, c - half_window), min(num_frames, c + half_window + 1)) for c in centers]


@dataclasses.dataclass(frozen=True)
class Clip:
  """A clip whose frames have all been read: `features` holds each frame's features (at least start..stop-1)."""

  center: int
  start: int
  stop: int
  features: dict[int, Any]

  def references(self) -> list[int]:
    """The frames the center frame's instances are propagated to: the window's other frames (2T of them, fewer
    where the window is cut at the video's ends; on its own frame an instance keeps Mask R-CNN's mask)."""
    return [f for f in range(self.start, self.stop) if f != self.center]


def video_clips(frames: Iterable[np.ndarray], num_frames: int, video_hw: tuple[int, int], half_window: int,
                clip_stride: int, frame_features: Callable[[np.ndarray], Any]) -> Iterator[Clip]:
  """The clips of a video whose frames arrive in order (uint8 [H, W, 3] each), each as soon as its last frame is
  read. Every frame goes through `frame_features` once; its features stay cached only while a clip window still
  needs them, so memory is bounded by the clip window, not by the video's length."""
  windows = collections.deque(clip_windows(num_frames, half_window, clip_stride))
  cache: dict[int, Any] = {}
  frames = iter(frames)
  for frame_index in range(num_frames):
    try:
      frame = next(frames)
    except StopIteration:
      raise ValueError(f"the video promised {num_frames} frames but ended after {frame_index}") from None
    if frame.shape[:2] != tuple(video_hw):
      raise ValueError(f"frame {frame_index} is {frame.shape[:2]}, the video's frames are {tuple(video_hw)}")
    cache[frame_index] = frame_features(frame)
    # Every clip whose window has now been read in full runs, in order.
    while windows and windows[0][2] - 1 <= frame_index:
      center, start, stop = windows.popleft()
      yield Clip(center, start, stop, cache)
      next_start = windows[0][1] if windows else num_frames
      for old in [f for f in cache if f < next_start]:
        del cache[old]


def suppress_duplicates(masks: np.ndarray, max_iou: float) -> np.ndarray:
  """Indices of the masks [K, h, w] (best first) kept by greedy NMS on soft mask IoU.

  Mask R-CNN's NMS is per class, so one object detected under two classes survives it twice; two clip tracks of
  one object would then start two video tracks.
  """
  flat = masks.reshape(masks.shape[0], -1)
  iou = linking_iou.soft_iou(flat, flat)
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


class FrameFeatures(NamedTuple):
  """A frame's entry in the clip loop's cache."""

  inputs: jax.Array  # [1, H, W, 3] the normalised network input: a mask refiner reads it on clip centers
  levels: list[jax.Array]  # FPN levels [1, h, w, C]: detection on the clip center reads them
  terms: propagation.FrameTerms  # what propagation needs of the frame alone (as a center or a reference)


# The model travels as (graphdef, state): nnx.jit would walk the module graph on every call, tens of milliseconds
# each, four calls per frame, more than a small model's compute. At module level with a static graphdef, the
# compiled programs serve every predictor of the same architecture (evaluation during training makes a new one)
# and propagation_eval.
@functools.partial(jax.jit, static_argnums=(0, 3))
def frame_features(graphdef: nnx.GraphDef, state: nnx.State, frame: jax.Array,
                   geometry: maskprop.InputGeometry) -> tuple[jax.Array, list[jax.Array]]:
  """(the frame's normalised input [1, H, W, 3], its FPN levels)."""
  model = nnx.merge(graphdef, state)
  inputs = model.frame_input(frame, geometry)
  return inputs, model.detector.backbone(inputs)


@functools.partial(jax.jit, static_argnums=0)
def frame_terms(graphdef: nnx.GraphDef, state: nnx.State, levels: list[jax.Array]) -> propagation.FrameTerms:
  return nnx.merge(graphdef, state).frame_terms(levels)


@functools.partial(jax.jit, static_argnums=0)
def detect(graphdef: nnx.GraphDef, state: nnx.State, features: list[jax.Array], image_hw: jax.Array,
           inputs: jax.Array | None = None) -> maskprop.ClipDetections:
  return nnx.merge(graphdef, state).detect(features, image_hw, inputs)


@functools.partial(jax.jit, static_argnums=0)
def propagate(graphdef: nnx.GraphDef, state: nnx.State, center: propagation.FrameTerms, masks: jax.Array,
              references: tuple[propagation.FrameTerms, ...],
              reference_inputs: tuple[jax.Array, ...] | None = None
              ) -> tuple[jax.Array, propagation_refiner.Windows | None]:
  """Probabilities [L, D, h, w] of the center's masks [1, D, h, w] in L reference frames (one program per L), and
  a propagation refiner's windows (None without one); reference_inputs: their normalised inputs [1, H, W, 3] each,
  for a propagation refiner (None without one)."""
  stacked = jax.tree.map(lambda *frames: jnp.concatenate(frames), *references)
  inputs = None if reference_inputs is None else jnp.concatenate(reference_inputs)
  return nnx.merge(graphdef, state).propagate(center, masks, stacked, inputs)


def frame_features_and_terms(graphdef: nnx.GraphDef, state: nnx.State, frame: np.ndarray,
                             geometry: maskprop.InputGeometry, timer: Timer) -> FrameFeatures:
  """A frame's cache entry; the per-frame propagation terms are charged to propagation."""
  inputs, levels = timer.time("backbone", frame_features, graphdef, state, frame, geometry)
  return FrameFeatures(inputs, levels, timer.time("propagation", frame_terms, graphdef, state, levels))


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
    linker = linking.TrackLinker(num_frames, geometry.mask_hw, tuple(video_hw), model.num_classes, s.link)

    def features(frame):
      return frame_features_and_terms(self._graphdef, self._state, frame, geometry, timer)

    for clip in video_clips(frames, num_frames, video_hw, s.half_window, s.clip_stride, features):
      tracks = self.clip_tracks(clip, geometry, timer)
      timer.time("linking", linker.add_clip, tracks)
    return timer.time("linking", linker.finish)

  def clip_tracks(self, clip: Clip, geometry: maskprop.InputGeometry, timer: Timer) -> list[linking.ClipTrack]:
    """The clip tracks of one clip: its center frame's detections (score threshold, duplicate suppression) with
    their masks propagated to the window's other frames."""
    s = self.settings
    hw = jnp.asarray([geometry.resized_hw], jnp.int32)
    center = clip.features[clip.center]
    detections = timer.time("detection", detect, self._graphdef, self._state, center.levels, hw,
                            center.inputs if self.model.detector.roi_heads.refines_masks else None)
    scores = np.asarray(detections.scores[0])
    keep = np.flatnonzero(np.asarray(detections.valid[0]) & (scores >= min(s.score_thresh, s.extend_score_thresh)))
    if keep.size == 0:
      return []
    center_masks = np.asarray(detections.masks[0])  # [D, h, w] on the mask grid
    # Best first, so a confident detection wins over a hesitant one of the same object.
    keep = keep[suppress_duplicates(center_masks[keep], s.duplicate_iou)]
    # Only the kept detections are propagated, in slots padded to a power of two: propagation costs as many
    # slots as it is given, and a handful of programs (1, 2, 4, ... D slots) serve every clip.
    num_slots = min(center_masks.shape[0], 1 << (keep.size - 1).bit_length())
    slot_masks = np.zeros((num_slots,) + center_masks.shape[1:], np.float32)
    slot_masks[:keep.size] = center_masks[keep]
    # On its own frame an instance keeps the mask Mask R-CNN gave it, as in the paper: it is propagated to the
    # window's other frames only (no padding frames either: one program per number of references, T+1 at most).
    probs = np.empty((clip.stop - clip.start, keep.size) + center_masks.shape[1:], np.float32)  # [L, K, h, w]
    probs[clip.center - clip.start] = center_masks[keep]
    references = clip.references()
    windows = None
    if references:
      inputs = tuple(clip.features[f].inputs for f in references) if self.model.refines_propagation else None
      propagated, windows = timer.time("propagation", propagate, self._graphdef, self._state, center.terms,
                                       slot_masks[None], tuple(clip.features[f].terms for f in references), inputs)
      probs[np.asarray(references) - clip.start] = np.asarray(propagated)[:, :keep.size]
    mask_h, mask_w = geometry.mask_hw
    probs = probs[:, :, :mask_h, :mask_w]  # the part of the canvas the image covers
    box_masks = [{} for _ in keep]
    if s.full_resolution_masks:
      self._add_box_masks(box_masks, clip.center, np.asarray(detections.box_masks[0])[keep],
                          np.asarray(detections.boxes[0])[keep], geometry,
                          bool(self.model.config.detector.roi_heads.aligned))
      if windows is not None:
        windows = jax.tree.map(lambda x: np.asarray(x)[:, :keep.size], windows)
        for row, frame in enumerate(references):
          self._add_box_masks(box_masks, frame, windows.probs[row], windows.boxes[row], geometry, aligned=True,
                              valid=windows.valid[row])
    class_probs = np.asarray(detections.class_probs[0])
    return [linking.ClipTrack(start=clip.start, masks=probs[:, k], class_probs=class_probs[d], center=clip.center,
                              box_masks=box_masks[k], extends_only=bool(scores[d] < s.score_thresh))
            for k, d in enumerate(keep)]

  @staticmethod
  def _add_box_masks(box_masks: list[dict[int, linking.BoxMask]], frame: int, probs: np.ndarray,
                     boxes: np.ndarray, geometry: maskprop.InputGeometry, aligned: bool,
                     valid: np.ndarray | None = None) -> None:
    """Adds to each kept instance's box masks its mask on `frame`: probs [K, M, M] on boxes [K, 4] in pixels of
    the network's input, scaled to the video's pixels as torchvision's postprocess scales a detection's box."""
    video_boxes = transform.resize_boxes(boxes, geometry.resized_hw, geometry.video_hw, xp=np)
    for k in range(probs.shape[0]):
      if valid is None or valid[k]:
        box_masks[k][frame] = linking.BoxMask(probs[k], video_boxes[k], aligned)
