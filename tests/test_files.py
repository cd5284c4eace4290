"""dlu.files: a file is replaced whole or not at all, and no temporary file stays."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dlu import files


def test_atomic_write_replaces_the_content_whole(tmp_path):
  path = str(tmp_path / "out.txt")
  with open(path, "w") as f:
    f.write("a much longer old content\n" * 10)
  with files.atomic_write(path) as f:
    f.write("new ")
    assert open(path).read().startswith("a much longer")  # unchanged until the block ends
    f.write("content é\n")
  with open(path, encoding="utf-8") as f:
    assert f.read() == "new content é\n"
  assert os.listdir(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("existing", [True, False])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, existing):
  path = str(tmp_path / "out.json")
  if existing:
    files.write_json(path, {"old": 1})
  with pytest.raises(RuntimeError, match="disk on fire"):
    with files.atomic_write(path) as f:
      f.write('{"new": ')
      raise RuntimeError("disk on fire")
  if existing:
    with open(path) as f:
      assert json.load(f) == {"old": 1}
  assert os.listdir(tmp_path) == (["out.json"] if existing else [])


def test_binary_mode(tmp_path):
  path = str(tmp_path / "out.bin")
  data = bytes(range(256)) * 3
  with files.atomic_write(path, "wb") as f:
    f.write(data)
  with open(path, "rb") as f:
    assert f.read() == data


def test_temporary_path_is_beside_the_target_and_per_process(tmp_path):
  path = str(tmp_path / "x.npz")
  tmp = files.temporary_path(path, ".npz")
  assert os.path.dirname(tmp) == str(tmp_path)
  assert tmp == f"{path}.tmp{os.getpid()}.npz"


def test_atomic_save_with_a_suffix_np_savez(tmp_path):
  path = str(tmp_path / "arrays.npz")
  seen = []

  def save(tmp):
    seen.append(tmp)
    np.savez(tmp, x=np.arange(5), y=np.eye(2))  # would append .npz to a name without it

  files.atomic_save(path, save, suffix=".npz")
  assert seen[0].endswith(".npz") and seen[0] != path
  with np.load(path) as f:
    np.testing.assert_array_equal(f["x"], np.arange(5))
    np.testing.assert_array_equal(f["y"], np.eye(2))
  assert os.listdir(tmp_path) == ["arrays.npz"]


def test_atomic_save_failure_keeps_the_old_file(tmp_path):
  path = str(tmp_path / "arrays.npz")
  np.savez(path, x=np.zeros(3))

  def half_then_fail(tmp):
    with open(tmp, "wb") as f:
      f.write(b"PK half a zip")
    raise OSError("no space left")

  with pytest.raises(OSError, match="no space left"):
    files.atomic_save(path, half_then_fail, suffix=".npz")
  with np.load(path) as f:
    np.testing.assert_array_equal(f["x"], np.zeros(3))
  assert os.listdir(tmp_path) == ["arrays.npz"]


def test_write_json_defaults_and_overrides(tmp_path):
  path = str(tmp_path / "r.json")
  files.write_json(path, {"b": 1, "a": [1, 2]})
  assert open(path).read() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}'
  files.write_json(path, {"b": 1, "a": 2}, indent=None, sort_keys=False)
  assert open(path).read() == '{"b": 1, "a": 2}'
