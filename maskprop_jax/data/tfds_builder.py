"""TFDS builder that stores a YouTube-VIS-format data set as array_record files, one record per video.

Records keep everything in its compact form: frames as the original encoded image bytes and masks as compressed
RLE counts strings, so a record of a 36-frame 720p video weighs what its JPEGs weigh and the training pipeline
decodes only the few frames and masks a clip needs.

Record layout (one per video, records ordered by video id):
  video_id     int64
  name         text            the video's folder name
  height/width int32           original frame size (the size of every RLE of the video)
  file_names   [F] text        as in the annotation file ("<video>/<frame>.jpg")
  frames       [F] bytes       encoded image files, byte for byte
  tracks       [N] of
    id, category_id, label     int64 (label = contiguous 1..num_classes, categories sorted by id)
    iscrowd                    bool
    rle_counts [F] text        compressed RLE counts, "" where `present` is False
    present    [F] bool        the track has a non-empty mask in that frame

The builder only builds: `build` writes one split into a TFDS data dir and says where. Where prepared records live,
which splits they hold, merging splits and reading them back belong to prepare.py. The data set's metadata.json
(written by TFDS from `info.metadata`) holds the categories and, per split, the video ids and frame counts in
record order, so a pipeline can enumerate (video, frame) pairs without reading any record.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from maskprop_jax.data import ytvis
from maskprop_jax.errors import InputError

BUILDER_NAME = "vis_videos"
DATA_VERSION = "1.0.0"
CONFIG_DESCRIPTIONS = {
    "ytvis2019": "YouTube-VIS 2019 (40 categories).",
    "ytvis2021": "YouTube-VIS 2021 (40 categories).",
    "ovis": "OVIS, occluded video instance segmentation (25 categories).",
    "synthetic": "The project's synthetic YouTube-VIS-format data set (maskprop_jax.data.synthetic).",
}
# Any other name is a user's own YouTube-VIS-format data set. Names become folder names under the data dir and TFDS
# config names, hence the narrow alphabet (no path separators, dots or spaces).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


def check_name(name: str) -> str:
  """`name` if it can name a prepared data set; InputError otherwise."""
  if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
    raise InputError(f"data set name {name!r}: use letters, digits, '_' and '-' only, e.g. "
                     f"{', '.join(CONFIG_DESCRIPTIONS)} or my_videos")
  return name


class VisVideos(tfds.core.GeneratorBasedBuilder):
  """YouTube-VIS-format videos; each split comes from a loaded annotation file with its image_dir (nothing is
  downloaded). prepare.open_records reads a prepared copy back, no sources needed."""

  VERSION = tfds.core.Version(DATA_VERSION)
  RELEASE_NOTES = {DATA_VERSION: "One record per video: encoded frames and RLE tracks."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=d) for n, d in CONFIG_DESCRIPTIONS.items()]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds finds a builder's file through `importlib_resources`, which it does not install on Python >= 3.9.
    return epath.Path(__file__)

  # tfds would announce the scratch folder prepare.py builds in and then moves away; prepare.py reports the real
  # location instead.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def __init__(self, *, sources: Mapping[str, ytvis.YTVISDataset] | None = None, **kwargs: Any):
    self._sources = dict(sources or {})
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.builder_config.description,
        features=tfds.features.FeaturesDict({
            "video_id": np.int64,
            "name": text,
            "height": np.int32,
            "width": np.int32,
            "file_names": tfds.features.Sequence(text),
            # Raw bytes, not tfds.features.Image: an Image feature would decode every frame on every read.
            "frames": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
            "tracks": tfds.features.Sequence({
                "id": np.int64,
                "category_id": np.int64,
                "label": np.int64,
                "iscrowd": np.bool_,
                "rle_counts": tfds.features.Sequence(text),
                "present": tfds.features.Sequence(np.bool_),
            }),
        }),
        metadata=tfds.core.MetadataDict(),
        # Records stay in video-id order, which is what the metadata's per-split lists describe.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[Any]]:
    del dl_manager  # Nothing to download: the sources are local folders.
    if not self._sources:
      raise InputError(f"{BUILDER_NAME}/{self.builder_config.name}: no split sources given to prepare from")
    self.info.metadata["categories"] = category_metadata(next(iter(self._sources.values())))
    self.info.metadata["splits"] = {split: split_metadata(dataset) for split, dataset in self._sources.items()}
    return {split: self._generate_examples(dataset) for split, dataset in self._sources.items()}

  def _generate_examples(self, dataset: ytvis.YTVISDataset) -> Iterator[tuple[int, dict[str, Any]]]:
    if dataset.image_dir is None:
      raise InputError(f"{dataset.path}: no image directory given and none found beside the annotation file")
    labels = {cid: dataset.label_of(cid) for cid in dataset.category_ids}
    for key, video_id in enumerate(sorted(dataset.videos)):
      video = dataset.videos[video_id]
      yield key, video_example(video, dataset.tracks_of(video_id), labels, Path(dataset.image_dir))


def read_frame_bytes(path: Path, video: ytvis.Video) -> bytes:
  try:
    return path.read_bytes()
  except OSError as e:
    raise InputError(f"video {video.id} ({video.name!r}): cannot read frame {path}: {e}") from e


def video_example(
    video: ytvis.Video, tracks: list[ytvis.Track], labels: Mapping[int, int], images_dir: Path
) -> dict[str, Any]:
  """The record of one video."""
  return {
      "video_id": video.id,
      "name": video.name,
      "height": video.height,
      "width": video.width,
      "file_names": list(video.file_names),
      "frames": [read_frame_bytes(Path(images_dir) / f, video) for f in video.file_names],
      "tracks": [
          {
              "id": track.id,
              "category_id": track.category_id,
              "label": labels[track.category_id],
              "iscrowd": bool(track.iscrowd),
              "rle_counts": [seg["counts"] if seg is not None else "" for seg in track.segmentations],
              "present": [seg is not None for seg in track.segmentations],
          }
          for track in tracks
      ],
  }


def category_metadata(dataset: ytvis.YTVISDataset) -> list[dict[str, Any]]:
  """[{id, name, label}] in label order (label = index + 1 over the sorted category ids)."""
  return [
      {"id": cid, "name": dataset.categories[cid].name, "label": dataset.label_of(cid)}
      for cid in dataset.category_ids
  ]


def split_metadata(dataset: ytvis.YTVISDataset) -> dict[str, Any]:
  """Video ids and frame counts in record order; whether the split carries ground truth."""
  video_ids = sorted(dataset.videos)
  return {
      "video_ids": video_ids,
      "num_frames": [len(dataset.videos[v].file_names) for v in video_ids],
      "has_annotations": dataset.has_annotations,
  }


def _builder_class(name: str) -> type[VisVideos]:
  """VisVideos, or for a user's own data set a copy with a config of that name: a custom config passed to the
  builder would work too, but TFDS warns about every one ("Using custom data configuration")."""
  if name in CONFIG_DESCRIPTIONS:
    return VisVideos
  config_name = check_name(name)

  class UserVisVideos(VisVideos, skip_registration=True):  # not registered: VisVideos holds the builder's name
    name = BUILDER_NAME
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config_name,
                                               description=f"A YouTube-VIS-format data set: {config_name}.")]

  return UserVisVideos


def build(data_dir: str | Path, name: str, split: str, dataset: ytvis.YTVISDataset) -> Path:
  """Writes `split` of the data set `name` (a known builder config, or any name `check_name` accepts) as
  array_record files under the TFDS data dir `data_dir`; returns the folder TFDS wrote (its records,
  dataset_info.json and metadata.json)."""
  builder = _builder_class(name)(config=name, data_dir=str(data_dir), file_format="array_record",
                                 sources={split: dataset})
  builder.download_and_prepare(download_dir=str(Path(data_dir) / "downloads"))
  return Path(builder.data_dir)
