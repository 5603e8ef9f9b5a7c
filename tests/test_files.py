"""files.py: outputs appear whole or not at all, with the umask's permissions; JSON errors name the file."""

import os
import stat

import pytest

from maskprop_jax import files
from maskprop_jax.errors import InputError


def test_a_failed_write_leaves_neither_the_file_nor_a_partial_one(tmp_path):
  path = tmp_path / "out.json"
  path.write_text("old")

  def fails(tmp):
    tmp.write_text("half")
    raise RuntimeError("disk gone")

  with pytest.raises(RuntimeError):
    files.write_atomically(path, fails)
  assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_written_files_get_the_umask_permissions(tmp_path):
  previous = os.umask(0o022)
  try:
    files.write_json(tmp_path / "results.json", [1, 2])
  finally:
    os.umask(previous)
  assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644
  assert files.read_json(tmp_path / "results.json", "results") == [1, 2]


def test_a_missing_folder_or_a_folder_in_the_way_is_refused(tmp_path):
  with pytest.raises(InputError, match="missing/out.json: cannot write here"):
    files.write_atomically(tmp_path / "missing" / "out.json", b"x")
  (tmp_path / "taken").mkdir()
  with pytest.raises(InputError, match="taken: a folder is in the way"):
    files.write_atomically(tmp_path / "taken", "x")


def test_read_json_names_the_file_and_the_fault(tmp_path):
  with pytest.raises(InputError, match="nothing.json: annotation file not found"):
    files.read_json(tmp_path / "nothing.json", "annotation")
  (tmp_path / "broken.json").write_text('{"a": 1,\n  oops}')
  with pytest.raises(InputError, match="broken.json: malformed JSON at line 2, column 3"):
    files.read_json(tmp_path / "broken.json", "annotation")
  with pytest.raises(InputError, match="a directory, not a results file"):
    files.read_json(tmp_path, "results")


def test_config_from_json_turns_lists_back_into_tuples():
  config = files.config_from_json({"a": [1, [2, 3]], "b": {"c": [4]}})
  assert config.a == (1, (2, 3)) and config.b.c == (4,)


def test_disk_of_names_the_file_system_a_path_is_on_even_before_it_exists(tmp_path):
  disk = files.disk_of(tmp_path / "not" / "yet")
  assert tmp_path.resolve().is_relative_to(disk.mount_point)
  assert 0 <= disk.free <= disk.total
  assert str(disk).startswith(f"{disk.device} ({disk.fs_type}) mounted at {disk.mount_point}: ")


def test_sizes_read_as_people_write_them(tmp_path):
  assert [files.human_bytes(n) for n in (512, 24_100_000, 3.5e12)] == ["512 bytes", "24.1 MB", "3.5 TB"]
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "b").write_bytes(b"x" * 1000)
  (tmp_path / "c").write_bytes(b"y" * 24)
  assert files.directory_bytes(tmp_path) == 1024
  assert files.directory_bytes(tmp_path / "missing") == 0
