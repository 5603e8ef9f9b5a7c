"""YouTube-VIS results files: reading and validating them against the ground truth, and writing them.

A results file is a JSON list of `{"video_id", "category_id", "score", "segmentations"}` with one compressed RLE
(or null) per frame of the video. The YouTube-VIS servers take it zipped as `results.json` at the zip root.
Reading is stricter than the official evaluator, which silently drops predictions of categories absent from the
ground truth and stops on an assertion for unknown videos: both are errors here that name the prediction.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import zipfile
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from maskprop_jax import files
from maskprop_jax import rle as rle_lib
from maskprop_jax.errors import InputError
from maskprop_jax.evaluation import ytvis_json
from maskprop_jax.evaluation.ground_truth import GroundTruth
from maskprop_jax.evaluation.tracks import Track, average_area, frame_areas
from maskprop_jax.evaluation.ytvis_json import Video

RESULTS_NAME_IN_ZIP = "results.json"

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PredictedTrack:
  """A video-level prediction to write: per-frame binary masks ([H, W] bool/0-1), RLEs, or None."""

  video_id: int
  category_id: int
  score: float
  masks: Sequence[np.ndarray | dict[str, Any] | None]


def load_results(results: str | os.PathLike | list[Any], ground_truth: GroundTruth) -> list[Track]:
  """A results path or parsed list -> predicted Tracks, checked against the ground truth's videos and categories.

  An empty list is valid (it scores zeros).
  """
  if isinstance(results, list):
    source, entries = "<results>", results
  else:
    source, entries = os.fspath(results), files.read_json(results, "results")
  if not isinstance(entries, list):
    raise InputError(f"{source}: a results file must be a JSON list of predictions")
  _check_video_ids(entries, ground_truth, source)
  parsed = []
  for i, entry in enumerate(entries):
    video = ground_truth.videos[entry["video_id"]]
    where = f"{source}: prediction {i} (video {video.id}, {video.name})"
    category_id, score = entry.get("category_id"), entry.get("score")
    if category_id not in ground_truth.categories:
      raise InputError(f"{where} has category {category_id!r}, which is not in {ground_truth.source}")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
      raise InputError(f"{where} has score {score!r}; scores must be finite numbers")
    segmentations = ytvis_json.per_frame_list(entry, "segmentations", video, where, required=True)
    rles = rle_lib.track_to_compressed(segmentations, video.height, video.width, _frames_of(where, video))
    parsed.append((video.id, category_id, float(score), rles))
  _warn_about_duplicates(parsed, ground_truth, source)
  tracks = []
  for i, ((video_id, category_id, score, rles), areas) in enumerate(
      zip(parsed, frame_areas([p[3] for p in parsed]))):
    tracks.append(Track(id=i + 1, video_id=video_id, category_id=category_id, rles=rles, areas=areas,
                        avg_area=average_area(areas.tolist()), score=score))
  return tracks


def _warn_about_duplicates(parsed: list[tuple[int, int, float, list[Any]]], ground_truth: GroundTruth,
                           source: str) -> None:
  """One warning for predictions that repeat an earlier one's video, category and masks (whatever their score):
  usually a writer that emitted a track twice. They are kept and scored as the official evaluator scores them, each
  copy on its own, so the stats do not change; the warning only says why they may be lower than expected."""
  first_of: dict[tuple[Any, ...], int] = {}
  duplicates = []
  for i, (video_id, category_id, _, rles) in enumerate(parsed):
    # Compared as compressed RLE, so that the same masks written in another form (polygons, raw counts) match too.
    key = (video_id, category_id, *(None if r is None else r["counts"] for r in rles))
    if key in first_of:
      duplicates.append((i, first_of[key]))
    else:
      first_of[key] = i
  if duplicates:
    i, first = duplicates[0]
    label = ground_truth.videos[parsed[i][0]].label
    logger.warning("%s: %d prediction(s) repeat an earlier one (same video, category and masks), e.g. "
                   "prediction %d repeats prediction %d of %s; each copy is scored as a prediction of its own",
                   source, len(duplicates), i, first, label)


def _frames_of(where: str, video: Video) -> Callable[[int], str]:
  """Names a frame of a prediction in messages."""
  return lambda index: f"{where}, {video.frame_label(index)}"


def _check_video_ids(entries: list[Any], ground_truth: GroundTruth, source: str) -> None:
  """All unknown video ids are reported at once: a results file for the wrong split has many."""
  unknown = []
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict):
      raise InputError(f"{source}: prediction {i} is not a JSON object")
    video_id = entry.get("video_id")
    if video_id not in ground_truth.videos and video_id not in unknown:
      unknown.append(video_id)
  if unknown:
    shown = ", ".join(repr(v) for v in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
    raise InputError(f"{source}: predictions refer to video ids not in {ground_truth.source}: {shown} "
                     f"(is the results file for another split?)")


def results_entries(tracks: Iterable[PredictedTrack | Mapping[str, Any]],
                    videos: Mapping[int, Video] | None = None) -> list[dict[str, Any]]:
  """Tracks -> the JSON-ready submission list. Masks become compressed RLE; frames with no mask or an empty mask
  become null (both score the same). With `videos`, frame counts and sizes are checked against them."""
  entries = []
  for i, track in enumerate(tracks):
    fields = _track_fields(track, i)
    video = videos.get(fields["video_id"]) if videos is not None else None
    where = f"track {i} (video {fields['video_id']})"
    if videos is not None and video is None:
      raise InputError(f"{where}: the video id is not in the data set")
    if video is not None and len(fields["masks"]) != video.length:
      raise InputError(f"{where} has {len(fields['masks'])} frames, the video has {video.length}")
    segmentations = [_frame_rle(m, video, f"{where}, frame {f}") for f, m in enumerate(fields["masks"])]
    entries.append({"video_id": fields["video_id"], "category_id": fields["category_id"],
                    "score": fields["score"], "segmentations": segmentations})
  return entries


def write_results(tracks: Iterable[PredictedTrack | Mapping[str, Any]], path: str | os.PathLike,
                  videos: Mapping[int, Video] | None = None) -> None:
  """Writes the submission JSON, or, for a path ending in .zip, the zip the YouTube-VIS servers expect."""
  payload = json.dumps(results_entries(tracks, videos), separators=(",", ":")).encode("ascii")
  path = os.fspath(path)
  if path.endswith(".zip"):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
      archive.writestr(RESULTS_NAME_IN_ZIP, payload)
    payload = buffer.getvalue()
  files.write_atomically(path, payload)


def _field(track: PredictedTrack | Mapping[str, Any], key: str) -> Any:
  return track.get(key) if isinstance(track, Mapping) else getattr(track, key, None)


def _track_fields(track: PredictedTrack | Mapping[str, Any], index: int) -> dict[str, Any]:
  masks = _field(track, "masks")
  if masks is None:
    masks = _field(track, "segmentations")
  video_id, category_id, score = (_field(track, key) for key in ("video_id", "category_id", "score"))
  where = f"track {index} (video {video_id!r})"
  if masks is None or isinstance(masks, (str, bytes, Mapping)) or getattr(masks, "ndim", 3) != 3:
    raise InputError(f"{where} needs 'masks' (or 'segmentations'): one mask, RLE or None per frame")
  if not isinstance(video_id, (int, np.integer)) or not isinstance(category_id, (int, np.integer)):
    raise InputError(f"{where}: 'video_id' and 'category_id' must be integers")
  if isinstance(score, bool) or not isinstance(score, (int, float, np.floating)) or not math.isfinite(score):
    raise InputError(f"{where} has score {score!r}; scores must be finite numbers")
  return {"video_id": int(video_id), "category_id": int(category_id), "score": float(score), "masks": list(masks)}


def _frame_rle(mask: np.ndarray | Mapping[str, Any] | None, video: Video | None,
               where: str) -> dict[str, Any] | None:
  if mask is None:
    return None
  if isinstance(mask, Mapping):
    if video is not None:
      return rle_lib.to_compressed(dict(mask), video.height, video.width, where)
    size = mask.get("size")
    if not isinstance(size, (list, tuple)) or len(size) != 2:
      raise InputError(f"{where}: an RLE needs a 'size' of [height, width]")
    return rle_lib.to_compressed(dict(mask), int(size[0]), int(size[1]), where)
  mask = np.asarray(mask)
  if mask.ndim != 2 or not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
    raise InputError(f"{where}: a mask must be a [H, W] bool or 0/1 integer array, got {mask.dtype} "
                     f"{mask.shape} (threshold soft masks first)")
  if video is not None and mask.shape != (video.height, video.width):
    raise InputError(f"{where}: mask shape {mask.shape} does not match the video's {video.height}x{video.width}")
  if mask.dtype != bool and mask.size and (mask.min() < 0 or mask.max() > 1):
    raise InputError(f"{where}: mask values must be 0 or 1, found {mask.min()}..{mask.max()}")
  if not mask.any():
    return None
  return rle_lib.encode(mask)
