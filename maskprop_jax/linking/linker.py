"""Linking clip-level tracks into video-level tracks (MaskProp, Sec. 3.3), in NumPy.

Clips centred at every s-th frame of a video overlap. Clip tracks arrive in temporal order; each is compared with
the video tracks that have masks on the frames of its clip window, by the mean per-frame soft IoU over the frames
the two share (a frame where neither has the instance is no evidence and is left out). A Hungarian assignment
over those scores, kept where a score reaches `match_threshold`, extends video tracks; a clip track left unmatched
starts a new one. A clip track marked `extends_only` (a detection the detector was unsure of: an object
entering, leaving or half hidden, or nothing) is assigned second, to the video tracks the others left, and only
where its score reaches `extend_match_threshold`: it lengthens a track by its window's masks, adds no class
evidence, and is dropped where it matches none (ByteTrack's second association, on masks).

A video track's mask on a frame is the mean of the soft masks its clip tracks put on that frame, optionally
weighted by exp(-|f - c| / temporal_decay) for a clip centred at frame c: a mask the detector drew on the frame
itself counts more than one carried there over several frames. Matching reads every mask on the mask grid; the
finished frame takes each at the finest form its clip track has it in: a box-relative mask (ClipTrack.box_masks:
Mask R-CNN's on the center frame, a refined window on the others) is pasted at the video's resolution
(frames.Binarizer.compose). The masks of a frame may overlap, as in the paper; with `disjoint_masks` a pixel that
two objects' tracks set stays only in the track whose mean probability there is higher (ground truth marks the
visible parts), unless the two masks share so much that they are one object drawn twice
(frames.DUPLICATE_OVERLAP).

An object hidden for longer than a clip window leaves no overlap to link on: with `reid_max_gap` > 0, a clip
track that matched nothing may instead continue a track that has shown nothing for at most that many frames, of
the same class, whose constant-velocity path (from the first and last of its latest 4 centroids) passes within
`reid_distance` object sizes (square roots of its area) of where the clip track first appears; the nearest such
pairs win.

A video track's score is the mean probability of its class over its clips (the paper's), optionally times
  - its maskness (`mask_scoring`): the mean probability of its soft masks over the pixels they set, averaged over
    its frames, so that a track with blurred, hesitant masks ranks below one with crisp ones;
  - n / (n + `clip_prior`) for a track of n clips: the class probability's mean shrunk towards 0 as if
    `clip_prior` clips had said 0, so that a fragment seen by one or two clips ranks below a track many clips
    agree on (a duplicate or a lost stretch of another track, more often than not).
Both only reorder the tracks, which is what video AP measures.

Clips arrive in order, so once a clip starting at frame f has been added, no later clip can touch a frame before
f: those frames are finished there and then (upsampled to the video's size, thresholded, encoded to RLE) and
their soft masks are dropped, so memory is bounded by the clip window and the number of live tracks, not by the
video's length.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import optimize

from maskprop_jax.linking.frames import Binarizer, BoxMask
from maskprop_jax.linking.iou import EMPTY_UNION, intersection_union

# Finished frames with a mask whose centroids give a track's velocity for re-identification.
_PATH_LENGTH = 4


@dataclasses.dataclass(frozen=True)
class ClipTrack:
  """One instance detected on a clip's center frame and propagated over the clip's window.

  Attributes:
    start: index in the video of the first frame of `masks`.
    masks: float32 [L, h, w] soft masks (probabilities) on frames start .. start + L - 1.
    class_probs: float32 [C] class probabilities over the C foreground categories (contiguous labels 1..C map
      to indices 0..C-1).
    center: index in the video of the frame the instance was detected on (start <= center < start + L).
    box_masks: video frame index -> the frame's mask drawn on a box (frames.BoxMask), for the frames that have one
      (`masks` holds them too, on the grid, for matching); the finished frame pastes it at the video's resolution.
    extends_only: a low-score detection's track, which may lengthen a video track it matches but never starts one
      and adds no class evidence (ByteTrack's second association).
  """

  start: int
  masks: np.ndarray
  class_probs: np.ndarray
  center: int
  box_masks: dict[int, BoxMask] = dataclasses.field(default_factory=dict)
  extends_only: bool = False

  @property
  def stop(self) -> int:
    return self.start + self.masks.shape[0]


@dataclasses.dataclass
class VideoTrack:
  """A linked track over a whole video; what the results file holds for one prediction."""

  id: int
  label: int  # contiguous class 1..C
  score: float
  segmentations: list[dict | None]  # compressed RLE (str counts) per video frame, None where there is no mask
  num_clips: int


class _LiveTrack:
  """A video track still being extended: per-frame sums of soft masks on the frames not yet finished."""

  def __init__(self, track_id: int, num_frames: int, num_classes: int, temporal_decay: float):
    self.id = track_id
    self.temporal_decay = temporal_decay
    self.mask_sum: dict[int, np.ndarray] = {}  # frame -> float32 [h * w], weighted
    self.mask_count: dict[int, float] = {}  # frame -> sum of the weights
    # What a finished frame is made of where some clip track drew it on a box: the weighted box masks, and the
    # weighted sum of the grid masks of the clip tracks that did not (absent where every one did).
    self.box_parts: dict[int, list[tuple[float, BoxMask]]] = {}
    self.grid_only_sum: dict[int, np.ndarray] = {}
    self.class_prob_sum = np.zeros([num_classes], np.float64)
    self.num_clips = 0
    self.maskness_sum = 0.0  # over finished frames with a mask: mean probability of the pixels it sets
    self.masked_frames = 0
    self.path: list[tuple[int, float, float, float]] = []  # last finished frames with a mask: (frame, y, x, area)
    self.segmentations: list[dict | None] = [None] * num_frames

  @property
  def label_index(self) -> int:
    return int(np.argmax(self.class_prob_sum))

  def shows_anything_from(self, frame: int, threshold: float) -> bool:
    """Whether its mean mask reaches the threshold on some unfinished frame >= frame."""
    return any(f >= frame and (total / self.mask_count[f]).max() >= threshold for f, total in self.mask_sum.items())

  def predicted_position(self, frame: int) -> np.ndarray:
    """Centroid (y, x) at `frame` by constant velocity from its last centroids on the mask grid."""
    last = np.array(self.path[-1][1:3])
    if len(self.path) < 2:
      return last
    first = self.path[0]
    velocity = (last - np.array(first[1:3])) / (self.path[-1][0] - first[0])
    return last + velocity * (frame - self.path[-1][0])

  def add(self, clip: ClipTrack, flat_masks: np.ndarray) -> None:
    """Adds a clip track's masks and, unless it only extends, its class evidence."""
    for offset, frame in enumerate(range(clip.start, clip.stop)):
      weight = math.exp(-abs(frame - clip.center) / self.temporal_decay) if self.temporal_decay > 0 else 1.0
      if frame in self.mask_sum:
        self.mask_sum[frame] += weight * flat_masks[offset]
        self.mask_count[frame] += weight
      else:
        self.mask_sum[frame] = weight * flat_masks[offset]
        self.mask_count[frame] = weight
      box_mask = clip.box_masks.get(frame)
      if box_mask is not None:
        self.box_parts.setdefault(frame, []).append((weight, box_mask))
      elif frame in self.grid_only_sum:
        self.grid_only_sum[frame] += weight * flat_masks[offset]
      else:
        self.grid_only_sum[frame] = weight * flat_masks[offset]
    if not clip.extends_only:
      self.class_prob_sum += clip.class_probs
      self.num_clips += 1

  def mean_masks(self, start: int, stop: int, num_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean soft masks [stop - start, P] on a window and whether the track covers each frame [stop - start]."""
    means = np.zeros([stop - start, num_pixels], np.float32)
    covered = np.zeros([stop - start], bool)
    for frame, total in self.mask_sum.items():
      if start <= frame < stop:
        means[frame - start] = total / self.mask_count[frame]
        covered[frame - start] = True
    return means, covered


@dataclasses.dataclass(frozen=True)
class LinkSettings:
  """How clip tracks link into video tracks and how those are scored (the module docstring says what each does).

  The defaults are the paper's linking: mean soft IoU over shared frames, every clip weighing the same, a track
  scored by its mean class probability, no re-identification.
  """

  match_threshold: float = 0.3  # least mean soft IoU for a clip track to join a video track
  mask_threshold: float = 0.5  # a soft mask's pixel is set from this probability on
  temporal_decay: float = 0.0  # frames; a clip's mask weighs exp(-|d| / decay) d frames from its center (0: all 1)
  mask_scoring: bool = False  # a track's score times its masks' mean confidence
  clip_prior: float = 0.0  # a track's score times n / (n + clip_prior) for n clips (0: off)
  reid_max_gap: int = 0  # frames an object may stay hidden and keep its track (0: off)
  reid_distance: float = 2.0  # object sizes between its reappearance and where its motion leads
  disjoint_masks: bool = False  # a frame's pixel set by two objects' tracks stays only in the more confident
  extend_match_threshold: float = 0.5  # least mean soft IoU for an extends-only clip track to join a video track

  def __post_init__(self):
    if self.temporal_decay < 0:
      raise ValueError(f"temporal_decay must be >= 0 (0: every clip weighs the same), got {self.temporal_decay}")
    if self.clip_prior < 0:
      raise ValueError(f"clip_prior must be >= 0 (0: the plain mean), got {self.clip_prior}")
    if self.reid_max_gap < 0 or self.reid_distance <= 0:
      raise ValueError(f"re-identification needs reid_max_gap >= 0 (0: off) and reid_distance > 0, got "
                       f"{self.reid_max_gap} and {self.reid_distance}")

  @classmethod
  def from_config(cls, config) -> "LinkSettings":
    """The settings of `config.inference`; a field missing there (a run config saved before the field existed)
    keeps its default."""
    c = config.inference
    return cls(**{field.name: c[field.name] for field in dataclasses.fields(cls) if field.name in c})


class TrackLinker:
  """Streams clip tracks of one video, in temporal order, into video-level tracks.

  Usage: `add_clip(...)` for every clip, in order of clip start, then `finish()`.
  """

  def __init__(self, num_frames: int, mask_hw: tuple[int, int], video_hw: tuple[int, int], num_classes: int,
               settings: LinkSettings = LinkSettings()):
    if num_frames <= 0:
      raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    self.num_frames = num_frames
    self.mask_hw = tuple(mask_hw)
    self.video_hw = tuple(video_hw)
    self.num_classes = num_classes
    self.settings = settings
    self._binarize = Binarizer(self.mask_hw, self.video_hw, settings.mask_threshold)
    self._live: list[_LiveTrack] = []
    self._finished_before = 0  # frames < this are encoded and dropped from every live track
    self._last_start = 0

  def add_clip(self, clip_tracks: list[ClipTrack]) -> list[int]:
    """Links the tracks of one clip; returns the video track id each clip track joined or started (-1 for an
    extends-only track that matched none and was dropped)."""
    if not clip_tracks:
      return []
    start, stop = clip_tracks[0].start, clip_tracks[0].stop
    for track in clip_tracks:
      self._check(track, start, stop)
    if start < self._last_start:
      raise ValueError(f"clips must arrive in temporal order: a clip starting at frame {start} came after one "
                       f"starting at frame {self._last_start}")
    self._last_start = start
    # No later clip can start before `start`, so frames before it are final.
    self._finish_frames_before(start)

    num_pixels = self.mask_hw[0] * self.mask_hw[1]
    clip_masks = np.stack([t.masks.reshape(stop - start, num_pixels) for t in clip_tracks])  # [K, L, P]
    clip_masks = clip_masks.astype(np.float32, copy=False)
    scores = self._match_scores(clip_masks, start, stop)  # [K, V]

    joined = [-1] * len(clip_tracks)
    starters = [k for k, track in enumerate(clip_tracks) if not track.extends_only]
    self._assign(scores, starters, set(), self.settings.match_threshold, clip_tracks, clip_masks, joined)
    if self.settings.reid_max_gap > 0:
      self._reidentify(clip_tracks, clip_masks, joined, start)
    # Low-score detections second, on the video tracks the confident ones left: they lengthen a track where the
    # detector hesitates (an object entering, leaving or half hidden), and are dropped where they match none.
    extenders = [k for k, track in enumerate(clip_tracks) if track.extends_only]
    if extenders:
      self._assign(scores, extenders, set(joined), self.settings.extend_match_threshold, clip_tracks, clip_masks,
                   joined)
    for k in starters:
      if joined[k] < 0:
        live = _LiveTrack(len(self._live), self.num_frames, self.num_classes, self.settings.temporal_decay)
        live.add(clip_tracks[k], clip_masks[k])
        self._live.append(live)
        joined[k] = live.id
    return joined

  def _assign(self, scores: np.ndarray, rows: list[int], taken: set[int], threshold: float,
              clip_tracks: list[ClipTrack], clip_masks: np.ndarray, joined: list[int]) -> None:
    """Joins the clip tracks `rows` to live tracks not in `taken` by a Hungarian assignment on `scores` [K, V],
    where a pair's score reaches `threshold`."""
    cols = [v for v in range(scores.shape[1]) if self._live[v].id not in taken]
    if not rows or not cols:
      return
    sub = scores[np.ix_(rows, cols)]
    for i, j in zip(*optimize.linear_sum_assignment(sub, maximize=True)):
      if sub[i, j] >= threshold:
        k, live = rows[i], self._live[cols[j]]
        live.add(clip_tracks[k], clip_masks[k])
        joined[k] = live.id

  def _reidentify(self, clip_tracks: list[ClipTrack], clip_masks: np.ndarray, joined: list[int],
                  start: int) -> None:
    """Joins unmatched clip tracks to tracks that vanished a few frames ago where their motion leads."""
    taken = set(joined)
    threshold = self.settings.mask_threshold
    dormant = [live for live in self._live
               if live.id not in taken and live.path and not live.shows_anything_from(start, threshold)]
    pairs = []  # (distance in object sizes, clip track, live track)
    for k, track in enumerate(clip_tracks):
      if joined[k] >= 0 or track.extends_only:
        continue
      present = np.flatnonzero(clip_masks[k].max(-1) >= threshold)
      if present.size == 0:
        continue
      frame = start + int(present[0])
      ys, xs = np.divmod(np.flatnonzero(clip_masks[k, present[0]] >= threshold), self.mask_hw[1])
      position = np.array([ys.mean(), xs.mean()])
      label = int(np.argmax(track.class_probs))
      for live in dormant:
        last_frame, _, _, area = live.path[-1]
        if live.label_index != label or not 0 < frame - last_frame <= self.settings.reid_max_gap:
          continue
        distance = np.linalg.norm(position - live.predicted_position(frame)) / math.sqrt(area)
        if distance <= self.settings.reid_distance:
          pairs.append((distance, k, live))
    for _, k, live in sorted(pairs, key=lambda pair: pair[0]):
      if joined[k] < 0 and live.id not in taken:
        live.add(clip_tracks[k], clip_masks[k])
        joined[k] = live.id
        taken.add(live.id)

  def finish(self) -> list[VideoTrack]:
    """Finishes every remaining frame and returns the video tracks, by id."""
    self._finish_frames_before(self.num_frames)
    tracks = []
    for live in self._live:
      label_index = live.label_index
      class_prob = live.class_prob_sum[label_index] / max(live.num_clips, 1)
      tracks.append(VideoTrack(id=live.id, label=label_index + 1, score=self._score(live, class_prob),
                               segmentations=live.segmentations, num_clips=live.num_clips))
    return tracks

  def _score(self, live: _LiveTrack, class_prob: float) -> float:
    score = float(class_prob)
    if self.settings.mask_scoring:
      score *= live.maskness_sum / live.masked_frames if live.masked_frames else 0.0
    if self.settings.clip_prior:
      score *= live.num_clips / (live.num_clips + self.settings.clip_prior)
    return score

  def _check(self, track: ClipTrack, start: int, stop: int) -> None:
    if track.masks.ndim != 3 or tuple(track.masks.shape[1:]) != self.mask_hw:
      raise ValueError(f"clip track masks must be [L, {self.mask_hw[0]}, {self.mask_hw[1]}], "
                       f"got {track.masks.shape}")
    if (track.start, track.stop) != (start, stop):
      raise ValueError(f"the tracks of one clip must share its window: frames {start}..{stop - 1} vs "
                       f"{track.start}..{track.stop - 1}")
    if track.start < 0 or track.stop > self.num_frames:
      raise ValueError(f"clip window {track.start}..{track.stop - 1} leaves the video's frames "
                       f"0..{self.num_frames - 1}")
    if not track.start <= track.center < track.stop:
      raise ValueError(f"clip center {track.center} is outside its window {track.start}..{track.stop - 1}")
    if any(not track.start <= frame < track.stop for frame in track.box_masks):
      raise ValueError(f"box masks on frames {sorted(track.box_masks)} reach beyond the clip window "
                       f"{track.start}..{track.stop - 1}")
    if track.class_probs.shape != (self.num_classes,):
      raise ValueError(f"class_probs must be [{self.num_classes}], got {track.class_probs.shape}")

  def _match_scores(self, clip_masks: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Mean per-frame soft IoU [K, V] of clip tracks and live video tracks over the frames they share."""
    num_clip_tracks, length, num_pixels = clip_masks.shape
    scores = np.zeros([num_clip_tracks, len(self._live)], np.float32)
    candidates = [v for v, live in enumerate(self._live)
                  if any(start <= frame < stop for frame in live.mask_sum)]
    if not candidates:
      return scores
    windows = [self._live[v].mean_masks(start, stop, num_pixels) for v in candidates]
    video_masks = np.stack([w[0] for w in windows])  # [V', L, P]
    covered = np.stack([w[1] for w in windows])  # [V', L]
    # Frame by frame, as one batched matrix product: [L, K, P] x [L, V', P] -> [L, K, V'].
    inter, union = intersection_union(clip_masks.transpose(1, 0, 2), video_masks.transpose(1, 0, 2))
    inter, union = inter.transpose(1, 2, 0), union.transpose(1, 2, 0)  # [K, V', L]
    # A frame where both tracks say "absent" (no pixel reaches the mask threshold) is no evidence either way:
    # counting it would make every pair of tracks agree across an occlusion.
    clip_present = clip_masks.max(-1) >= self.settings.mask_threshold  # [K, L]
    video_present = video_masks.max(-1) >= self.settings.mask_threshold  # [V', L]
    # A frame with less union than EMPTY_UNION carries no evidence either way.
    counts = covered[None] & (clip_present[:, None] | video_present[None]) & (union > EMPTY_UNION)
    per_frame = np.where(counts, inter / np.maximum(union, EMPTY_UNION), 0.0)
    mean = per_frame.sum(-1) / np.maximum(counts.sum(-1), 1)
    scores[:, candidates] = mean
    return scores

  def _finish_frames_before(self, frame_limit: int) -> None:
    for frame in range(self._finished_before, frame_limit):
      boxed = []  # (live track, grid part, box parts, total weight): composed together, one paste per frame
      for live in self._live:
        total = live.mask_sum.pop(frame, None)
        if total is None:
          continue
        count = live.mask_count.pop(frame)
        soft = total.reshape(self.mask_hw) / count
        ys, xs = np.nonzero(soft >= self.settings.mask_threshold)
        grid_only = live.grid_only_sum.pop(frame, None)
        box_parts = live.box_parts.pop(frame, None)
        if box_parts is None and not self.settings.disjoint_masks:
          live.segmentations[frame] = self._binarize.from_pixels(soft, ys, xs)
        elif box_parts is None:
          boxed.append((live, total.reshape(self.mask_hw), [], count))
        else:
          boxed.append((live, None if grid_only is None else grid_only.reshape(self.mask_hw), box_parts, count))
        if ys.size:
          live.maskness_sum += float(soft[ys, xs].mean())
          live.masked_frames += 1
          live.path = live.path[-(_PATH_LENGTH - 1):] + [(frame, float(ys.mean()), float(xs.mean()), float(ys.size))]
      if boxed:
        for (live, *_), segmentation in zip(boxed, self._binarize.compose_many(
            [b[1:] for b in boxed], disjoint=self.settings.disjoint_masks)):
          live.segmentations[frame] = segmentation
    self._finished_before = max(self._finished_before, frame_limit)


def link_clip_tracks(clips: list[list[ClipTrack]], num_frames: int, video_hw: tuple[int, int],
                     num_classes: int, settings: LinkSettings = LinkSettings()) -> list[VideoTrack]:
  """Links the clip tracks of a whole video at once (clips in temporal order; see TrackLinker)."""
  mask_hw = next((tuple(c[0].masks.shape[1:]) for c in clips if c), tuple(video_hw))
  linker = TrackLinker(num_frames, mask_hw, video_hw, num_classes, settings)
  for clip in clips:
    linker.add_clip(clip)
  return linker.finish()
