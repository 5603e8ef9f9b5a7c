"""Validates a YouTube-VIS-format split and writes it as TFDS array_record files (see tfds_builder.py).

  python -m maskprop_jax.data.prepare --images DIR --annotations FILE --data-dir OUT [--name NAME] [--split S]

Every frame is decoded once for validation first, so bad input fails before anything is written. The records are
built in a temporary folder inside OUT and moved into place only when complete; a second split of the same data
set joins the first (its files are moved in, then the split lists are rewritten). A split that is already
prepared is reused as it is: delete OUT/vis_videos/<name> to prepare it again.

On several hosts sharing OUT, let one process prepare and the others wait for it (as train.py does).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from maskprop_jax.data import tfds_builder
from maskprop_jax.data import ytvis
from maskprop_jax.errors import InputError, report_input_errors


def is_prepared(data_dir: str | os.PathLike[str], name: str, split: str) -> bool:
  metadata_file = tfds_builder.prepared_dir(data_dir, name) / "metadata.json"
  if not metadata_file.exists():
    return False
  return split in tfds_builder.read_metadata(metadata_file.parent)["splits"]


def ensure_prepared(
    data_dir: str | os.PathLike[str],
    name: str,
    split: str,
    *,
    images_dir: str | os.PathLike[str] | None,
    annotation_file: str | os.PathLike[str],
) -> Path:
  """The prepared data set's folder; prepares the split first when it is not there yet.

  `name` is one of the builder configs (ytvis2019, ytvis2021, ovis, synthetic); `images_dir` defaults to the
  folder the YouTube-VIS layout puts beside the annotation file.
  """
  if name not in tfds_builder.CONFIG_DESCRIPTIONS:
    raise InputError(f"unknown data set name {name!r}; choose one of {', '.join(tfds_builder.CONFIG_DESCRIPTIONS)}")
  if not is_prepared(data_dir, name, split):
    prepare_split(data_dir, name, split, images_dir=images_dir, annotation_file=annotation_file)
  return tfds_builder.prepared_dir(data_dir, name)


def prepare_split(
    data_dir: str | os.PathLike[str],
    name: str,
    split: str,
    *,
    images_dir: str | os.PathLike[str] | None,
    annotation_file: str | os.PathLike[str],
) -> Path:
  """Validates the split (every frame decoded) and writes it; leaves nothing behind when it fails."""
  dataset = ytvis.load_ytvis(annotation_file, images_dir, check_images=True)
  data_dir = Path(data_dir)
  created_data_dir = not data_dir.exists()
  data_dir.mkdir(parents=True, exist_ok=True)
  scratch = Path(tempfile.mkdtemp(prefix=".prepare-", dir=data_dir))
  try:
    builder = tfds_builder.VisVideos(
        config=name, data_dir=str(scratch), file_format="array_record", sources={split: dataset}
    )
    builder.download_and_prepare(download_dir=str(scratch / "downloads"))
    built = tfds_builder.prepared_dir(scratch, name)
    target = tfds_builder.prepared_dir(data_dir, name)
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


def _write_json_atomically(path: Path, value: Any) -> None:
  partial = path.with_name(path.name + ".partial")
  partial.write_text(json.dumps(value, indent=2))
  os.replace(partial, path)


def _merge_split(built: Path, target: Path, split: str) -> None:
  """Moves a freshly built split into an already prepared data set.

  The split's record files go first and the split lists last (dataset_info.json for tfds, then metadata.json,
  which `is_prepared` reads), so an interruption leaves at worst unlisted files, never a listed partial split.
  """
  new_metadata = tfds_builder.read_metadata(built)
  metadata = tfds_builder.read_metadata(target)
  if new_metadata["categories"] != metadata["categories"]:
    raise InputError(
        f"split {split!r} has other categories than the splits already prepared in {target}; "
        "prepare it under another --data-dir or --name"
    )
  prefix = f"{tfds_builder.BUILDER_NAME}-{split}."
  for record_file in built.iterdir():
    if record_file.name.startswith(prefix):
      os.replace(record_file, target / record_file.name)

  info = json.loads((target / "dataset_info.json").read_text())
  new_info = json.loads((built / "dataset_info.json").read_text())
  kept = [entry for entry in info["splits"] if entry["name"] != split]
  info["splits"] = kept + [entry for entry in new_info["splits"] if entry["name"] == split]
  _write_json_atomically(target / "dataset_info.json", info)
  metadata["splits"][split] = new_metadata["splits"][split]
  _write_json_atomically(target / "metadata.json", metadata)


@report_input_errors
def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.data.prepare", description=__doc__.split("\n")[0])
  parser.add_argument("--images", default=None, help="folder of <video>/<frame>.jpg (default: beside the annotations)")
  parser.add_argument("--annotations", required=True, help="YouTube-VIS-format annotation JSON")
  parser.add_argument("--data-dir", required=True, help="TFDS data dir to write into")
  parser.add_argument("--name", default="synthetic", choices=sorted(tfds_builder.CONFIG_DESCRIPTIONS))
  parser.add_argument("--split", default="train", help="split name, e.g. train or valid")
  args = parser.parse_args(argv)
  if is_prepared(args.data_dir, args.name, args.split):
    target = tfds_builder.prepared_dir(args.data_dir, args.name)
    print(f"{target}: split {args.split!r} is already prepared, reusing it")
    return
  target = ensure_prepared(
      args.data_dir, args.name, args.split, images_dir=args.images, annotation_file=args.annotations
  )
  info = tfds_builder.split_info(target, args.split)
  print(f"{target}: split {args.split!r} with {len(info['video_ids'])} videos, {sum(info['num_frames'])} frames")


if __name__ == "__main__":
  main()
