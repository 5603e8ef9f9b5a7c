"""Validates a YouTube-VIS-format split and writes it as TFDS array_record files (see tfds_builder.py).

  python -m maskprop_jax.data.prepare --images DIR --annotations FILE --data-dir OUT [--name NAME] [--split S]
      [--overwrite]

Every frame is decoded once for validation first, so bad input fails before anything is written. The records are
built in a temporary folder inside OUT and moved into place only when complete; a second split of the same data
set joins the first (its files are moved in, then the split lists are rewritten). A split that is already
prepared is reused as it is; `--overwrite` prepares it again, the old records staying until the new ones are
complete. NAME is one of the known data sets (ytvis2019, ytvis2021, ovis, synthetic) or any name of a user's own
(letters, digits, `_` and `-`).

On several hosts sharing OUT, let one process prepare and the others wait for it (as train.py does).

This is the one module that knows how prepared records lie on disk: where a data set lives (`prepared_dir`), which
splits it holds (`read_metadata`, `split_info`, `is_prepared`), merging a split in, and reading records back
(`open_records`); tfds_builder.py only builds the records of a split.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import tensorflow_datasets as tfds

from maskprop_jax import files, logs
from maskprop_jax.data import tfds_builder
from maskprop_jax.data import ytvis
from maskprop_jax.errors import InputError, report_errors

METADATA_FILE = "metadata.json"  # categories and per-split video lists (TFDS writes it from info.metadata)
INFO_FILE = "dataset_info.json"  # TFDS's own description of the splits and their record files


def prepared_dir(data_dir: str | os.PathLike[str], name: str) -> Path:
  """Where `name` (a builder config) lives under a TFDS data dir once prepared (TFDS's own layout, so that
  `tfds.builder("vis_videos/<name>", data_dir=...)` finds it too)."""
  return Path(data_dir) / tfds_builder.BUILDER_NAME / name / tfds_builder.DATA_VERSION


def read_metadata(dataset_dir: str | os.PathLike[str]) -> dict[str, Any]:
  """The categories and per-split video lists of a prepared data set (its metadata.json)."""
  path = Path(dataset_dir) / METADATA_FILE
  if not path.is_file():
    raise InputError(f"{path}: not a prepared {tfds_builder.BUILDER_NAME} data set; run maskprop_jax.data.prepare")
  return files.read_json(path, f"prepared {tfds_builder.BUILDER_NAME} metadata")


def split_info(dataset_dir: str | os.PathLike[str], split: str) -> dict[str, Any]:
  """The split's entry of the metadata: video_ids, num_frames (record order) and has_annotations."""
  splits = read_metadata(dataset_dir)["splits"]
  if split not in splits:
    raise InputError(f"{dataset_dir}: no split {split!r} (prepared splits: {', '.join(sorted(splits))})")
  return splits[split]


def is_prepared(data_dir: str | os.PathLike[str], name: str, split: str) -> bool:
  dataset_dir = prepared_dir(data_dir, name)
  return (dataset_dir / METADATA_FILE).exists() and split in read_metadata(dataset_dir)["splits"]


def open_records(dataset_dir: str | os.PathLike[str], split: str) -> Any:
  """Random access (len, [i]) over the split's video records, decoded to numpy; no frame is decoded."""
  split_info(dataset_dir, split)
  return tfds.builder_from_directory(str(dataset_dir)).as_data_source(split)


def ensure_prepared(
    data_dir: str | os.PathLike[str],
    name: str,
    split: str,
    *,
    images_dir: str | os.PathLike[str] | None,
    annotation_file: str | os.PathLike[str],
) -> Path:
  """The prepared data set's folder; prepares the split first when it is not there yet.

  `name` is a builder config (ytvis2019, ytvis2021, ovis, synthetic) or a user's own data set's name (letters,
  digits, _ and -); `images_dir` defaults to the folder the YouTube-VIS layout puts beside the annotation file.
  """
  tfds_builder.check_name(name)
  if not is_prepared(data_dir, name, split):
    logging.info("preparing split %r of %s from %s into %s (once: later runs read the records)", split, name,
                 annotation_file, data_dir)
    prepare_split(data_dir, name, split, images_dir=images_dir, annotation_file=annotation_file)
  return prepared_dir(data_dir, name)


def prepare_split(
    data_dir: str | os.PathLike[str],
    name: str,
    split: str,
    *,
    images_dir: str | os.PathLike[str] | None,
    annotation_file: str | os.PathLike[str],
) -> Path:
  """Validates the split (every frame decoded) and writes it, replacing the split if it is already prepared;
  leaves nothing behind when it fails, and a split it replaces untouched until the new one is built."""
  tfds_builder.check_name(name)
  dataset = ytvis.load_ytvis(annotation_file, images_dir, check_images=True)
  data_dir = Path(data_dir)
  created_data_dir = not data_dir.exists()
  data_dir.mkdir(parents=True, exist_ok=True)
  scratch = Path(tempfile.mkdtemp(prefix=".prepare-", dir=data_dir))
  try:
    built = tfds_builder.build(scratch, name, split, dataset)
    target = prepared_dir(data_dir, name)
    if target.exists():
      _merge_split(built, target, split)
    else:
      target.parent.mkdir(parents=True, exist_ok=True)
      os.rename(built, target)
    return target
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
    if created_data_dir and not any(data_dir.iterdir()):
      data_dir.rmdir()  # A failed first preparation leaves no empty output folder behind.


def _merge_split(built: Path, target: Path, split: str) -> None:
  """Moves a freshly built split into an already prepared data set, in place of the split's old records if any.

  The split lists (metadata.json, which `is_prepared` reads, and dataset_info.json for tfds) never name a split
  whose files are not all in place: a split being replaced is unlisted first, then its files are swapped, and the
  lists name it again last. An interruption leaves at worst an unlisted split (prepared again by the next run),
  never a listed partial one.
  """
  new_metadata = read_metadata(built)
  metadata = read_metadata(target)
  others = [s for s in metadata["splits"] if s != split]
  if others and new_metadata["categories"] != metadata["categories"]:
    raise InputError(
        f"split {split!r} has other categories than the splits already prepared in {target} "
        f"({', '.join(others)}); prepare it under another --data-dir or --name"
    )
  info = files.read_json(target / INFO_FILE, "TFDS dataset info")
  new_info = files.read_json(built / INFO_FILE, "TFDS dataset info")
  if split in metadata["splits"]:
    del metadata["splits"][split]
    files.write_json(target / METADATA_FILE, metadata, indent=2)
    info["splits"] = [entry for entry in info["splits"] if entry["name"] != split]
    files.write_json(target / INFO_FILE, info, indent=2)

  prefix = f"{tfds_builder.BUILDER_NAME}-{split}."
  for old_file in target.iterdir():  # the replaced split's records, or unlisted ones an interruption left
    if old_file.name.startswith(prefix):
      old_file.unlink()
  for record_file in built.iterdir():
    if record_file.name.startswith(prefix):
      os.replace(record_file, target / record_file.name)

  info["splits"] = info["splits"] + [entry for entry in new_info["splits"] if entry["name"] == split]
  files.write_json(target / INFO_FILE, info, indent=2)
  metadata["categories"] = new_metadata["categories"]  # the same unless the split replaced was the only one
  metadata["splits"][split] = new_metadata["splits"][split]
  files.write_json(target / METADATA_FILE, metadata, indent=2)


def _check_sources(annotations: str, images: str | None) -> None:
  """The files named on the command line must exist even when the split is already prepared and they would not
  be read: a mistyped path is then the user's mistake to hear about, not a silent reuse of old records."""
  if not Path(annotations).is_file():
    what = "a folder, not a file" if Path(annotations).is_dir() else "no such file"
    raise InputError(f"--annotations {annotations}: {what}")
  if images is not None and not Path(images).is_dir():
    raise InputError(f"--images {images}: no such folder")


@report_errors
def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.data.prepare", description=__doc__.split("\n")[0])
  parser.add_argument("--images", default=None,
                      help="folder of <video>/<frame>.jpg (default: the one beside the annotations)")
  parser.add_argument("--annotations", required=True, help="YouTube-VIS-format annotation JSON")
  parser.add_argument("--data-dir", required=True, help="TFDS data dir to write into")
  parser.add_argument("--name", default="synthetic",
                      help=f"data set name: {', '.join(tfds_builder.CONFIG_DESCRIPTIONS)} or your own (letters, "
                           "digits, _ and -) (default: %(default)s)")
  parser.add_argument("--split", default="train", help="split name, e.g. train or valid (default: %(default)s)")
  parser.add_argument("--overwrite", action="store_true",
                      help="prepare the split again if it is already prepared; its old records stay until the new "
                           "ones are complete (default: reuse a prepared split)")
  args = parser.parse_args(argv)
  logs.configure()
  tfds_builder.check_name(args.name)
  _check_sources(args.annotations, args.images)
  if args.overwrite:
    target = prepare_split(args.data_dir, args.name, args.split, images_dir=args.images,
                           annotation_file=args.annotations)
  elif is_prepared(args.data_dir, args.name, args.split):
    target = prepared_dir(args.data_dir, args.name)
    print(f"{target}: split {args.split!r} is already prepared, reusing it (--overwrite prepares it again)")
    return
  else:
    target = ensure_prepared(
        args.data_dir, args.name, args.split, images_dir=args.images, annotation_file=args.annotations
    )
  info = split_info(target, args.split)
  print(f"{target}: split {args.split!r} with {len(info['video_ids'])} videos, {sum(info['num_frames'])} frames")


if __name__ == "__main__":
  main()
