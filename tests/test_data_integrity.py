"""Data a run can trust: a table's split fixed by its rows' content (reordered or appended rows
keep their split) and checked on resume and evaluate by the table's fingerprint; prepared records
compared with their source's content and their labels checksummed."""

import json
import os
import types

import numpy as np
import pytest
from PIL import Image

from dlu import config, data
from dlu.data import fingerprints, preparation, records, subsets, tables
from dlu.errors import UsageError
from dlu.train import evaluate, experiment, loop, workspace


def _raises(fn, *args, **kwargs) -> str:
  with pytest.raises(UsageError) as info:
    fn(*args, **kwargs)
  message = str(info.value)
  assert "\n" not in message, message
  return message


def _rows(n: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  x = np.round(rng.normal(size=(n, 3)), 4)
  return [f"{a!r},{b!r},{c!r},{'ab'[i % 2]}" for i, (a, b, c) in enumerate(x.tolist())]


def _write(path, rows: list[str], header: str = "a,b,c,y") -> str:
  path.write_text("\n".join([header, *rows]) + "\n")
  return str(path)


def _splits(path: str, **options) -> dict[str, str]:
  """Each row's split (train, valid or test) by its text."""
  opts = data.TableOptions(label_column="y", test_fraction=0.2, seed=3, **options)
  ds = data.hold_out_validation(data.load(f"csv:{path}", table_options=opts), 0.2, seed=3)
  with open(path) as f:
    lines = f.read().splitlines()[1:]
  out = tables.load_table(
    path,
    fmt="csv",
    what="t",
    label_column="y",
    test_fraction=0.2,
    seed=3,
    impute="none",
    feature_scaling="standard",
  )
  test = set(out["test_rows"].tolist())
  train = out["train_rows"]
  valid = set(train[ds.valid_rows].tolist())
  assert len(ds.x_test) == len(test) and len(ds.x_valid) == len(valid)
  return {
    line: "test" if i in test else "valid" if i in valid else "train"
    for i, line in enumerate(lines)
  }


def test_reordered_or_appended_rows_keep_their_split(tmp_path):
  rows = _rows(200)
  before = _splits(_write(tmp_path / "a.csv", rows))
  assert set(before.values()) == {"train", "valid", "test"}
  shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
  assert _splits(_write(tmp_path / "b.csv", shuffled)) == before
  grown = _splits(_write(tmp_path / "c.csv", rows + _rows(50, seed=9)))
  assert {line: grown[line] for line in before} == before
  # Columns in another order: the same cells, the same splits.
  swapped = [",".join(r.split(",")[i] for i in (2, 0, 1, 3)) for r in rows]
  again = _splits(_write(tmp_path / "d.csv", swapped, header="c,a,b,y"))
  assert [again[s] for s in swapped] == [before[r] for r in rows]


def test_the_split_depends_on_the_seed_and_holds_about_the_fraction():
  digests = fingerprints.row_digests(["a"], np.arange(2000.0)[:, None])
  train, test = fingerprints.content_split(digests, 0.1, 0, "t")
  assert 150 < len(test) < 250 and len(train) + len(test) == 2000
  assert not np.array_equal(test, fingerprints.content_split(digests, 0.1, 1, "t")[1])
  # Tiny tables keep a test row and a training row.
  for n in (2, 3, 5):
    train, test = fingerprints.content_split(digests[:n], 0.01, 0, "t")
    assert len(test) >= 1 and len(train) >= 1
    train, test = fingerprints.content_split(digests[:n], 0.99, 0, "t")
    assert len(test) >= 1 and len(train) >= 1
  assert "at least 2" in _raises(fingerprints.content_split, digests[:1], 0.5, 0, "t")


def test_the_fingerprint_ignores_row_order_and_sees_cells_rows_and_columns():
  x = np.random.default_rng(0).normal(size=(30, 2))
  fp = fingerprints.table_fingerprint(["a", "b"], fingerprints.row_digests(["a", "b"], x), None)
  again = fingerprints.row_digests(["a", "b"], x[::-1])
  assert fingerprints.table_fingerprint(["a", "b"], again, None) == fp
  changed = x.copy()
  changed[4, 1] += 1e-9
  for names, cells in ((["a", "b"], changed), (["a", "c"], x), (["a", "b"], x[:-1])):
    digests = fingerprints.row_digests(names, cells)
    assert fingerprints.table_fingerprint(names, digests, None) != fp


def test_the_refusal_says_what_changed(tmp_path, capsys):
  def table(fingerprint, rows, columns):
    fp = {"fingerprint": fingerprint, "rows": rows, "columns": columns}
    return types.SimpleNamespace(name="csv:/d/t.csv", fingerprint=fp)

  workdir = str(tmp_path)
  (tmp_path / workspace.PREPROCESSING_FILE).write_text("{}")
  workspace.check_data_fingerprint(workdir, table("f", 5, ["a"]))  # none recorded: a warning
  assert "records no fingerprint of its table" in capsys.readouterr().out
  workspace.save_data_fingerprint(workdir, table("f", 5, ["a", "b"]), replace=True)
  workspace.check_data_fingerprint(workdir, table("f", 5, ["a", "b"]))
  message = _raises(workspace.check_data_fingerprint, workdir, table("g", 7, ["a", "c", "d"]))
  assert message.startswith("--dataset=csv:/d/t.csv: the table differs from the one")
  assert "(columns 'c', 'd' added; column 'b' removed; 5 rows then, 7 now)" in message
  (tmp_path / workspace.DATA_FINGERPRINT_FILE).write_text("[1]")
  assert "unreadable" in _raises(workspace.check_data_fingerprint, workdir, table("f", 5, ["a"]))


def _config(path: str, **overrides):
  return config.make_config(
    model="ae_mlp",
    dataset=f"csv:{path}",
    label_column="y",
    widths=["8"],
    latent_dim=2,
    batch_size=8,
    num_steps=overrides.pop("num_steps", 10),
    log_every=10,
    eval_every=10,
    checkpoint_every=10,
    evaluators=["metrics"],
    **overrides,
  )


@pytest.mark.slow
def test_resume_and_evaluate_refuse_a_changed_table(tmp_path):
  rows = _rows(60)
  path = _write(tmp_path / "t.csv", rows)
  workdir = str(tmp_path / "w")
  loop.train_and_evaluate(_config(path), workdir)
  stored = json.load(open(os.path.join(workdir, workspace.DATA_FINGERPRINT_FILE)))
  assert stored["rows"] == 60 and stored["columns"] == ["a", "b", "c"]
  # Reordered rows: the same table, evaluated as trained.
  _write(tmp_path / "t.csv", rows[::-1])
  evaluate.evaluate_workdir(workdir)
  before = {f: os.path.getmtime(os.path.join(workdir, f)) for f in os.listdir(workdir)}
  _write(tmp_path / "t.csv", rows + _rows(3, seed=5))
  message = _raises(loop.train_and_evaluate, _config(path, num_steps=20), workdir)
  assert path in message and "60 rows then, 63 now" in message and "--allow_flag_changes" in message
  message = _raises(evaluate.evaluate_workdir, workdir)
  assert path in message and "another --workdir" in message
  changed = rows[:-1] + ["9.0,9.0,9.0,a"]
  _write(tmp_path / "t.csv", changed)
  assert "cells changed in its 60 rows" in _raises(evaluate.evaluate_workdir, workdir)
  after = {f: os.path.getmtime(os.path.join(workdir, f)) for f in os.listdir(workdir)}
  assert after == before
  # Continued on the changed table on purpose: its fingerprint is the run's from then on.
  loop.train_and_evaluate(_config(path, num_steps=20, allow_flag_changes=True), workdir)
  now = json.load(open(os.path.join(workdir, workspace.DATA_FINGERPRINT_FILE)))
  assert now["rows"] == 60 and now["fingerprint"] != stored["fingerprint"]
  assert evaluate.evaluate_workdir(workdir)["step"] == 20


# --- experiments.prepare_data: the source's content, and checksummed labels ---


def _images(root, n=6) -> list:
  rng = np.random.default_rng(0)
  paths = []
  for i in range(n):
    path = root / ("a" if i % 2 else "b") / f"{i}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(path)
    paths.append(path)
  return paths


def _tree(root) -> dict:
  return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prepare_data_compares_the_source_content_not_its_name(tmp_path):
  paths = _images(tmp_path / "img")
  source, out = f"folder:{tmp_path / 'img'}", str(tmp_path / "out")
  preparation.prepare_records(source, out, workers=1)
  assert "already" in preparation.prepare_records(source, out, workers=1)
  before = _tree(tmp_path / "out")
  kept, st = paths[0].read_bytes(), paths[0].stat()
  paths[0].unlink()
  message = _raises(preparation.prepare_records, source, out, workers=1)
  assert "prepared from other contents (6 files then, 5 now)" in message and out in message
  paths[0].write_bytes(kept)
  os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
  assert "already" in preparation.prepare_records(source, out, workers=1)
  paths[1].write_bytes(paths[1].read_bytes() + b"\0")
  assert "files changed in size or modification time" in _raises(
    preparation.prepare_records, source, out, workers=1
  )
  assert _tree(tmp_path / "out") == before  # never overwritten
  table = tmp_path / "t.csv"
  _write(table, _rows(10))
  preparation.prepare_records(f"csv:{table}", str(tmp_path / "rows"), label_column="y")
  _write(table, _rows(11))
  message = _raises(
    preparation.prepare_records, f"csv:{table}", str(tmp_path / "rows"), label_column="y"
  )
  assert "other contents (the file changed in size or modification time)" in message


def test_a_flipped_bit_in_the_labels_is_caught(tmp_path):
  _images(tmp_path / "img")
  out = tmp_path / "out"
  preparation.prepare_records(f"folder:{tmp_path / 'img'}", str(out), workers=1)
  meta = records.Meta.load(str(out))
  assert meta.splits["all"]["labels_sha256"] and meta.fingerprint and meta.source_files == 6
  stored = data.load(f"records:{out}")
  assert sorted(np.concatenate([stored.y_train, stored.y_test]).tolist()) == [0, 0, 0, 1, 1, 1]
  labels = out / "labels_all.npy"
  raw = bytearray(labels.read_bytes())
  raw[-1] ^= 0x01  # the last label: 0 <-> 1
  labels.write_bytes(bytes(raw))
  message = _raises(data.load, f"records:{out}")
  assert str(labels) in message and "checksum mismatch" in message


# --- --class_balance ---


@pytest.mark.parametrize("ratio", ["inf", "nan", "0", "-2", "-inf"])
def test_class_balance_refuses_non_finite_or_non_positive_ratios(ratio):
  message = _raises(subsets.parse_class_balance, f"longtail:{ratio}", 3)
  assert message.startswith(f"--class_balance=longtail:{ratio}: the ratio") and "finite" in message
  assert subsets.parse_class_balance("longtail:1e300", 3) == ("longtail", 1e300)


@pytest.mark.slow
def test_training_prints_the_class_counts_it_made(tmp_path, capsys):
  path = _write(tmp_path / "t.csv", _rows(80))
  cfg = _config(path, class_balance="longtail:3", validation_fraction=0.0)
  loop.train_and_evaluate(cfg, str(tmp_path / "w"))
  exp = experiment.build(cfg, str(tmp_path / "w"))
  counts = np.bincount(exp.dataset.y_train, minlength=2)
  assert counts[1] == counts[0] // 3 and counts[1] >= 1
  line = f"--class_balance=longtail:3: {counts.sum()} training examples, per class 0: "
  assert f"{line}{counts[0]}, 1: {counts[1]}" in capsys.readouterr().out


# --- image folders: a file reached twice ---


def test_a_symlinked_image_counts_once_and_two_labels_are_refused(tmp_path):
  paths = _images(tmp_path / "img")  # 3 in a/, 3 in b/
  (tmp_path / "img" / "a" / "again.png").symlink_to(paths[1])  # paths[1] is in a/
  (tmp_path / "img" / "a" / "z_link.png").symlink_to(tmp_path / "img" / "a" / "again.png")
  ds = data.load(f"folder:{tmp_path / 'img'}")
  assert len(ds.x_train) + len(ds.x_test) == 6
  assert sorted(np.concatenate([ds.y_train, ds.y_test]).tolist()) == [0, 0, 0, 1, 1, 1]
  link = tmp_path / "img" / "b" / "1_copy.png"
  link.symlink_to(paths[1])
  message = _raises(data.load, f"folder:{tmp_path / 'img'}")
  assert str(link) in message and "same file under two classes ('a' and 'b')" in message
  assert str(paths[1]) in message  # its first path in sorted order
  out = str(tmp_path / "o")
  assert "two classes" in _raises(preparation.prepare_records, f"folder:{tmp_path / 'img'}", out)
  assert not os.path.exists(out)


@pytest.mark.parametrize("labels", [("0", "1"), ("cat", "dog"), ("1.5", "2.5")])
def test_records_of_a_table_split_as_the_table(tmp_path, labels):
  rng = np.random.default_rng(0)
  lines = [
    f"{a!r},{b!r},{labels[i % 2]}" for i, (a, b) in enumerate(rng.normal(size=(40, 2)).tolist())
  ]
  path = _write(tmp_path / "t.csv", lines, header="a,b,y")
  preparation.prepare_records(f"csv:{path}", str(tmp_path / "out"), label_column="y")
  opts = data.TableOptions(label_column="y")
  table = data.load(f"csv:{path}", table_options=opts)
  stored = data.load(f"records:{tmp_path / 'out'}", table_options=data.TableOptions())
  np.testing.assert_array_equal(np.asarray(stored.x_test), table.x_test)
  np.testing.assert_array_equal(stored.y_test, table.y_test)
  np.testing.assert_array_equal(stored.row_digests, table.row_digests)
  assert stored.fingerprint == table.fingerprint
