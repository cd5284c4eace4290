"""Tests for dlu.data.preparation and experiments.prepare_data: a source written as records reads
back as the same Dataset; bad images, resumes and damaged shards are reported."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from dlu import data
from dlu.data import preparation, records
from dlu.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder(root, n=12, size=(6, 5), corrupt=()):
  """n RGB PNGs of random pixels, alternating between two class sub-folders; the files of
  `corrupt` (indices in sorted file order) are damaged."""
  rng = np.random.default_rng(1)
  paths = []
  for i in range(n):
    path = root / ("a_cat" if i < n // 2 else "b_dog") / f"{i:03d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
    paths.append(path)
  for i in corrupt:
    raw = paths[i].read_bytes()
    paths[i].write_bytes(raw[: len(raw) // 2])  # truncated
  return paths


def _assert_same(a, b):
  for name in ("x_train", "x_test", "y_train", "y_test"):
    x, y = getattr(a, name), getattr(b, name)
    if x is None:
      assert y is None, name
      continue
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, name
    np.testing.assert_array_equal(x, y, err_msg=name)
  assert a.num_classes == b.num_classes


def test_folder_round_trips_exactly(tmp_path):
  _folder(tmp_path / "images")
  summary = preparation.prepare_records(
    f"folder:{tmp_path / 'images'}", str(tmp_path / "out"), num_shards=3, workers=1
  )
  assert "12 rows of 5x6x3 uint8 in 3 shard(s)" in summary
  folder, stored = data.load(f"folder:{tmp_path / 'images'}"), data.load(f"records:{tmp_path}/out")
  assert isinstance(stored.x_train, records.RecordArray)
  _assert_same(folder, stored)
  meta = records.Meta.load(str(tmp_path / "out"))
  assert meta.class_names == ["a_cat", "b_dog"] and meta.skipped == 0
  assert sorted(os.listdir(tmp_path / "out")) == [
    *[records.shard_name("all", i, 3) for i in range(3)],
    "dataset.json",
    "labels_all.npy",
  ]
  # A rerun says it is done; another dataset in OUT is refused before anything is written.
  again = preparation.prepare_records(f"folder:{tmp_path / 'images'}", str(tmp_path / "out"))
  assert "already" in again and "nothing to do" in again
  with pytest.raises(UsageError, match=r"holds the records of another dataset \(folder:"):
    preparation.prepare_records("digits", str(tmp_path / "out"))
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("mine")
  with pytest.raises(UsageError, match="is not empty and holds no records"):
    preparation.prepare_records("digits", str(tmp_path / "other"))
  with pytest.raises(UsageError, match="no such directory"):
    preparation.prepare_records(f"folder:{tmp_path / 'nope'}", str(tmp_path / "new"))
  assert not (tmp_path / "new").exists()


def test_csv_with_labels_and_a_missing_cell_round_trips_exactly(tmp_path):
  rng = np.random.default_rng(0)
  lines = ["b,label,a"]
  for i in range(40):
    b = "" if i == 7 else f"{rng.normal():.17g}"
    lines.append(f"{b},{['yes', 'no', 'maybe'][i % 3]},{rng.integers(-5, 50)}")
  (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
  preparation.prepare_records(
    f"csv:{tmp_path}/t.csv", str(tmp_path / "out"), label_column="label", workers=2
  )
  options = dict(impute="mean", test_fraction=0.25, seed=3)
  table = data.load(
    f"csv:{tmp_path}/t.csv", table_options=data.TableOptions(label_column="label", **options)
  )
  stored = data.load(f"records:{tmp_path}/out", table_options=data.TableOptions(**options))
  _assert_same(table, stored)
  assert np.asarray(stored.x_train).dtype == np.float32
  p, q = table.preprocessing, stored.preprocessing
  assert p.columns == q.columns == ("b", "a") and p.classes == q.classes == ("maybe", "no", "yes")
  assert p.label_column == q.label_column == "label"
  for name in ("fill", "offset", "scale"):
    np.testing.assert_array_equal(getattr(p, name), getattr(q, name))
  meta = records.Meta.load(str(tmp_path / "out"))
  assert meta.dtype == "float64" and np.isnan(
    np.asarray(records.open_split(str(tmp_path / "out"), meta, "all")[0][7])[0]
  )


@pytest.mark.parametrize("kind", ["images", "vectors"])
def test_npz_with_x_test_round_trips_exactly(tmp_path, kind):
  rng = np.random.default_rng(2)
  if kind == "images":
    x, x_test = (rng.integers(0, 256, (n, 4, 4), dtype=np.uint8) for n in (9, 5))
  else:
    x, x_test = rng.normal(size=(9, 3)), rng.normal(size=(5, 3))
  np.savez(tmp_path / "d.npz", x=x, y=np.arange(9) % 4, x_test=x_test, y_test=np.arange(5) % 3)
  preparation.prepare_records(f"npz:{tmp_path}/d.npz", str(tmp_path / "out"), workers=1)
  _assert_same(data.load(f"npz:{tmp_path}/d.npz"), data.load(f"records:{tmp_path}/out"))
  assert set(records.Meta.load(str(tmp_path / "out")).splits) == {"train", "test"}


def test_digits_keep_their_splits(tmp_path):
  preparation.prepare_records("digits", str(tmp_path / "out"), workers=2)
  _assert_same(data.load("digits"), data.load(f"records:{tmp_path}/out"))
  assert set(records.Meta.load(str(tmp_path / "out")).splits) == {"train", "test"}


def test_an_image_of_another_shape_is_named(tmp_path):
  paths = _folder(tmp_path / "images", n=6)
  Image.new("RGB", (6, 7)).save(paths[4])
  with pytest.raises(
    UsageError,
    match=rf"differ in size: {paths[0]} is 5x6 but {paths[4]} is 7x6 .*\(image 4 in file order\)",
  ):
    preparation.prepare_records(f"folder:{tmp_path / 'images'}", str(tmp_path / "out"), workers=1)


def test_corrupt_image_named_then_skipped_and_resumed(tmp_path):
  """A bad image stops the run naming its file and index, keeping the shards finished before
  it; --skip_bad resumes (finished shards untouched), skips and counts it."""
  paths = _folder(tmp_path / "images", corrupt=(9,))
  out, source = tmp_path / "out", f"folder:{tmp_path / 'images'}"
  with pytest.raises(UsageError, match=rf"{paths[9]}.*image 9 in file order; --skip_bad"):
    preparation.prepare_records(source, str(out), num_shards=4, workers=1)
  kept = {
    name: os.stat(out / name).st_mtime_ns
    for name in os.listdir(out)
    if name.endswith(".array_record")
  }
  assert sorted(kept) == [records.shard_name("all", i, 4) for i in range(3)]  # rows 0..8
  assert not (out / "dataset.json").exists()
  summary = preparation.prepare_records(source, str(out), workers=1, skip_bad=True)
  assert "11 rows" in summary and "skipped 1 bad image" in summary
  for name, mtime in kept.items():
    assert os.stat(out / name).st_mtime_ns == mtime, name
  assert records.Meta.load(str(out)).skipped == 1
  assert (out / "skipped.txt").read_text().startswith(f"9\t{paths[9]}\t")
  assert not [
    n for n in os.listdir(out) if n.endswith(".done") or ".tmp" in n or n == "prepare.json"
  ]
  # The same as a fresh preparation, and as the folder without the bad file.
  preparation.prepare_records(source, str(tmp_path / "fresh"), workers=1, skip_bad=True)
  resumed = data.load(f"records:{out}")
  _assert_same(resumed, data.load(f"records:{tmp_path / 'fresh'}"))
  paths[9].unlink()
  _assert_same(resumed, data.load(source))


def test_damaged_record_is_named_when_read(tmp_path):
  x = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
  records.write(str(tmp_path), {"all": (x, None)})
  path = tmp_path / records.shard_name("all", 0, 1)
  raw = bytearray(path.read_bytes())
  at = raw.find(x[13].tobytes())
  assert at > 0
  raw[at + 50] ^= 0xFF
  path.write_bytes(bytes(raw))
  stored = records.RecordArray([str(path)], (8, 8, 3), np.uint8)
  np.testing.assert_array_equal(stored[12], x[12])
  with pytest.raises(UsageError, match=r"record 13 cannot be read \(Corrupted"):
    stored[13]
  with pytest.raises(UsageError, match="record 13 cannot be read"):
    np.asarray(stored)


@pytest.mark.slow
def test_cli_in_parallel_reports_a_bad_image_in_one_line(tmp_path, capsys):
  """Two worker processes; an undecodable image is one line naming it, exit status 2, and the
  shard a worker finished before it is kept for the rerun."""
  paths = _folder(tmp_path / "images", n=10, corrupt=(6,))
  source, out = f"folder:{tmp_path / 'images'}", tmp_path / "out"
  run = subprocess.run(
    [sys.executable, "-m", "experiments.prepare_data", f"--dataset={source}", f"--out={out}"]
    + ["--workers=2"],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
    timeout=120,
  )
  assert run.returncode == 2, run.stderr
  error = run.stderr.strip().splitlines()[-1]
  assert error.startswith(f"error: --dataset={source}: cannot decode image {paths[6]} (")
  assert error.endswith("image 6 in file order; --skip_bad skips and counts such images")
  assert os.path.isfile(out / records.shard_name("all", 0, 2))  # rows 0..4, by a worker
  summary = preparation.prepare_records(source, str(out), workers=1, skip_bad=True)
  assert "9 rows of 5x6x3 uint8 in 2 shard(s)" in summary and "skipped 1" in summary
  assert "prepare: 10/10 rows (100%)" in capsys.readouterr().err
  meta = json.loads((out / "dataset.json").read_text())
  assert meta["skipped"] == 1 and meta["splits"]["all"]["num_examples"] == 9


@pytest.mark.slow
def test_synthetic_records_do_not_depend_on_the_sharding(tmp_path):
  def write(out, shards):
    run = subprocess.run(
      [sys.executable, "scripts/synthetic_records.py", f"--out={out}", "--gigabytes=0.0001"]
      + ["--image_size=8", f"--num_shards={shards}", "--workers=1"],
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return data.load(f"records:{out}")

  a, b = write(tmp_path / "a", 3), write(tmp_path / "b", 1)
  assert a.x_train.shape[1:] == (8, 8, 3) and len(a.x_train) + len(a.x_test) == 521
  assert a.num_classes == 10 and len(np.unique(a.y_train)) == 10
  _assert_same(a, b)
  pixels = np.asarray(a.x_train)
  assert 20 < pixels.std() < 80 and len(np.unique(pixels[:50], axis=0)) == 50


def _children(pid):
  with open(f"/proc/{pid}/task/{pid}/children") as f:
    return [int(p) for p in f.read().split()]


@pytest.mark.slow
def test_worker_processes_end_with_a_killed_run(tmp_path):
  """kill -9 of a run leaves no worker behind: one worker has finished its shard, the other
  waits forever on a named pipe among the images."""
  paths = _folder(tmp_path / "images", n=8)
  paths[6].unlink()
  os.mkfifo(paths[6])
  out = tmp_path / "out"
  run = subprocess.Popen(
    [sys.executable, "-m", "experiments.prepare_data", f"--dataset=folder:{tmp_path / 'images'}"]
    + [f"--out={out}", "--workers=2"],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.monotonic() + 60
    while not (out / (records.shard_name("all", 0, 2) + ".done")).exists():
      assert time.monotonic() < deadline and run.poll() is None
      time.sleep(0.02)
    workers = _children(run.pid)  # the two workers and multiprocessing's resource tracker
    assert len(workers) >= 2
  finally:
    run.kill()
    run.wait()
  deadline = time.monotonic() + 20
  while any(os.path.exists(f"/proc/{p}") for p in workers) and time.monotonic() < deadline:
    time.sleep(0.02)
  left = [p for p in workers if os.path.exists(f"/proc/{p}")]
  for p in left:
    os.kill(p, 9)
  assert not left, "worker processes outlived the run"
  assert (out / records.shard_name("all", 0, 2)).exists() and not (out / "dataset.json").exists()


def test_a_table_with_text_columns_is_refused_in_one_line_naming_the_cell(tmp_path):
  src = tmp_path / "mixed.csv"
  src.write_text("a,city,label\n1,Oslo,p\n2,,q\n")
  out = tmp_path / "rec"
  with pytest.raises(UsageError) as e:
    preparation.prepare_records(f"csv:{src}", str(out), label_column="label")
  message = str(e.value)
  assert "column 'city' row 2 holds 'Oslo'" in message and "\n" not in message
  assert "records hold tables of numbers only" in message and f"--dataset=csv:{src}" in message
  assert not out.exists()


def test_documents_are_refused_in_one_line_before_anything_is_written(tmp_path):
  src = tmp_path / "docs.txt"
  src.write_text("hello world\nsecond doc\n")
  out = tmp_path / "rec"
  with pytest.raises(UsageError, match="records of documents are not written") as e:
    preparation.prepare_records(f"text:{src}", str(out))
  assert "\n" not in str(e.value) and not out.exists()
