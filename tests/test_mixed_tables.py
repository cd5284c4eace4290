"""Tables as users have them: text categories, yes/no booleans, missing cells, an id column,
dates and free text, other encodings and overflowing cells, read with no hand preprocessing."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlu.data import columns, tables
from dlu.data.preprocessing import Preprocessing
from dlu.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(n=40):
  """Penguin-like rows: a string label, categories with a missing level, numbers with missing
  cells, yes/no, an id, dates and a free-text note."""
  out = []
  for i in range(n):
    out.append(
      {
        "id": f"r{i}",
        "species": ["Adelie", "Gentoo", "Chinstrap"][i % 3],
        "island": ["Biscoe", "Dream"][i % 2] if i % 7 else None,
        "bill": None if i % 5 == 0 else round(30 + 0.5 * i, 2),
        "vip": ["yes", "no"][i % 3 == 0],
        "day": f"2024-01-{i % 28 + 1:02d}",
        "note": f"seen at dawn as number {i}",
      }
    )
  return out


def _csv(path, rows, encoding="utf-8"):
  names = list(rows[0])
  lines = [",".join(names)]
  lines += [",".join("" if r[n] is None else str(r[n]) for n in names) for r in rows]
  path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
  return str(path)


def _load(path, fmt="csv", **kwargs):
  args = dict(
    fmt=fmt,
    what=f"--dataset={fmt}:{path}",
    label_column="species",
    test_fraction=0.25,
    seed=0,
    impute="mean",
    feature_scaling="standard",
    log=lambda line: None,
  )
  args.update(kwargs)
  return tables.load_table(str(path), **args)


def _message(fn, *args, **kwargs) -> str:
  with pytest.raises(UsageError) as e:
    fn(*args, **kwargs)
  assert "\n" not in str(e.value), str(e.value)
  return str(e.value)


def test_kinds_are_inferred_and_dates_and_free_text_dropped_with_a_line(tmp_path):
  path = _csv(tmp_path / "p.csv", _rows())
  said = []
  out = _load(path, overrides=columns.Overrides(id_column="id"), log=said.append)
  schema = out["preprocessing"].schema
  assert [(c.name, c.kind) for c in schema.columns] == [
    ("island", "categorical"),
    ("bill", "numeric"),
    ("vip", "boolean"),
  ]
  assert schema.dropped == ("day", "note") and schema.id_column == "id"
  assert said == [
    f"--dataset=csv:{path}: dropped 'day' (dates), 'note' (free text: 40 distinct values in 40 "
    "cells); keep one with --categorical_columns or --numeric_columns"
  ]
  assert out["num_classes"] == 3 and out["preprocessing"].classes == (
    "Adelie",
    "Chinstrap",
    "Gentoo",
  )


def test_one_hot_layout_missing_level_and_unscaled_codes(tmp_path):
  path = _csv(tmp_path / "p.csv", _rows())
  out = _load(path, overrides=columns.Overrides(id_column="id", drop=("day", "note")))
  pre = out["preprocessing"]
  assert pre.columns == ("island=Biscoe", "island=Dream", "island=(missing)", "bill", "vip")
  assert pre.schema.columns[0].categories == ("Biscoe", "Dream", None)
  x = np.concatenate([out["x_train"], out["x_test"]])
  np.testing.assert_array_equal(x[:, :3].sum(axis=1), 1.0)  # exactly one level per row
  assert set(np.unique(x[:, 4])) == {0.0, 1.0}  # yes/no as 0/1, not scaled
  np.testing.assert_array_equal(pre.offset[[0, 1, 2, 4]], 0.0)
  np.testing.assert_array_equal(pre.scale[[0, 1, 2, 4]], 1.0)
  assert pre.scale[3] > 1 and abs(out["x_train"][:, 3].mean()) < 0.2  # bill standardised
  # The missing bill cells are filled with the training mean: 0 once scaled.
  ids = [f"r{i}" for i in range(40)]
  rows = [ids.index(f"r{i}") for i in (5, 10)]
  all_rows = np.concatenate([out["train_rows"], out["test_rows"]])
  for r in rows:
    assert abs(x[list(all_rows).index(r), 3]) < 1e-6


def test_flags_override_the_inference_and_are_checked(tmp_path):
  path = _csv(tmp_path / "p.csv", _rows())
  over = columns.Overrides(categorical=("bill",), numeric=(), drop=("day", "note", "vip"))
  schema = _load(path, overrides=over)["preprocessing"].schema
  # Not named, the id column is free text, dropped like the note.
  assert [(c.name, c.kind) for c in schema.columns] == [
    ("island", "categorical"),
    ("bill", "categorical"),
  ]
  assert schema.dropped == ("day", "id", "note", "vip")
  assert "bill=(missing)" in schema.encoded_names and "bill=30.5" in schema.encoded_names
  message = _message(_load, path, overrides=columns.Overrides(categorical=("wing",)))
  assert "--categorical_columns names 'wing', which is not a column" in message
  message = _message(_load, path, overrides=columns.Overrides(drop=("species",)))
  assert "--drop_columns names 'species', the --label_column" in message
  message = _message(_load, path, overrides=columns.Overrides(drop=("bill",), id_column="bill"))
  assert "'bill' is named by both --drop_columns and --id_column" in message
  message = _message(_load, path, overrides=columns.Overrides(numeric=("island",)))
  assert message.startswith(f"--dataset=csv:{path}: column 'island' row 3 holds 'Dream', not a")


def test_json_state_round_trips_and_is_applied_unchanged(tmp_path):
  path = _csv(tmp_path / "p.csv", _rows())
  out = _load(path, overrides=columns.Overrides(id_column="id"))
  pre = out["preprocessing"]
  text = pre.to_json()
  fields = json.loads(text)
  assert fields["version"] == 2 and "pickle" not in text
  assert fields["schema"]["columns"][0] == {
    "name": "island",
    "kind": "categorical",
    "categories": ["Biscoe", "Dream", None],
  }
  again = Preprocessing.from_json(text)
  assert again.to_json() == text and again.schema == pre.schema
  # Read again with the stored state (as resume and evaluate do): the same arrays, the rows
  # reordered and a column moved changing nothing.
  rows = _rows()[::-1]
  moved = [{k: r[k] for k in ["bill", *[n for n in r if n != "bill"]]} for r in rows]
  other = _load(_csv(tmp_path / "q.csv", moved), preprocessing=again)
  order = np.argsort([int(r["id"][1:]) for r in moved])
  np.testing.assert_array_equal(
    np.concatenate([other["x_train"], other["x_test"]])[
      np.argsort(np.concatenate([other["train_rows"], other["test_rows"]]))
    ][order],
    np.concatenate([out["x_train"], out["x_test"]])[
      np.argsort(np.concatenate([out["train_rows"], out["test_rows"]]))
    ],
  )
  assert sorted(out["fingerprint"]["columns"]) == ["bill", "island", "vip"]


def test_rows_split_by_the_id_column(tmp_path):
  path = _csv(tmp_path / "p.csv", _rows())
  out = _load(path, overrides=columns.Overrides(id_column="id"))
  changed = _rows()
  for r in changed:
    r["bill"] = (r["bill"] or 0) + 1.0  # every cell but the id changed: no row moves
    r["vip"] = "yes"
  again = _load(_csv(tmp_path / "q.csv", changed), overrides=columns.Overrides(id_column="id"))
  np.testing.assert_array_equal(out["test_rows"], again["test_rows"])


def test_new_rows_with_an_unseen_category_encode_as_unknown(tmp_path):
  pre = _load(_csv(tmp_path / "p.csv", _rows()), overrides=columns.Overrides(id_column="id"))[
    "preprocessing"
  ]
  new = tmp_path / "new.csv"
  new.write_text("vip,bill,island,id,day\nno,41.5,Torgersen,n1,2025-01-01\nyes,,Dream,n2,\n")
  x, ids, unknown = tables.read_encoded(
    str(new), fmt="csv", what="--input=csv:new.csv", schema=pre.schema, label_column="species"
  )
  np.testing.assert_array_equal(x[:, :3], [[0, 0, 0], [0, 1, 0]])  # Torgersen: all zeros
  assert np.isnan(x[1, 3]) and x[:, 4].tolist() == [0.0, 1.0]
  assert ids.tolist() == ["n1", "n2"] and unknown == {"island": 1}
  new.write_text("vip,bill,island,shoe\nno,41.5,Dream,1\n")
  message = _message(
    tables.read_encoded, str(new), fmt="csv", what="--input=csv:new.csv", schema=pre.schema
  )
  assert "has columns the model was not trained on: 'shoe'" in message
  new.write_text("vip,island\nmaybe,Dream\n")
  message = _message(
    tables.read_encoded, str(new), fmt="csv", what="--input=csv:new.csv", schema=pre.schema
  )
  assert "lacks the feature columns 'bill'" in message


def test_parquet_and_json_tables_read_alike(tmp_path):
  rows = _rows()
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
  (tmp_path / "p.json").write_text(json.dumps(rows))
  over = columns.Overrides(id_column="id", drop=("day", "note"))
  by_csv = _load(_csv(tmp_path / "p.csv", rows), overrides=over)
  for fmt in ("parquet", "json"):
    other = _load(tmp_path / f"p.{fmt}", fmt=fmt, overrides=over)
    assert other["preprocessing"].columns == by_csv["preprocessing"].columns
    np.testing.assert_array_equal(other["x_train"], by_csv["x_train"])


def test_booleans_words_and_a_bad_one(tmp_path):
  text = "a,flag,y\n1,Yes,p\n2,NO,q\n3,,p\n4,y,q\n5,n,p\n"
  path = tmp_path / "b.csv"
  path.write_text(text)
  out = _load(path, label_column="y", feature_scaling="none", test_fraction=0.4)
  x = np.concatenate([out["x_train"], out["x_test"]])
  assert out["preprocessing"].schema.columns[1].kind == "boolean"
  fill = out["preprocessing"].fill[1]  # the missing cell: the training rows' share of yes
  assert sorted(x[:, 1].tolist()) == sorted([0.0, 0.0, fill, 1.0, 1.0]) and 0 <= fill <= 1
  schema = out["preprocessing"].schema
  path.write_text("a,flag\n1,yes\n2,maybe\n")
  message = _message(tables.read_encoded, str(path), fmt="csv", what="--input", schema=schema)
  assert message == (
    "--input (" + str(path) + "): column 'flag' row 3 holds 'maybe', not a boolean (true/false, "
    "yes/no, y/n, t/f or 1/0; empty for missing)"
  )


def test_utf8_with_a_byte_order_mark_is_read(tmp_path):
  rows = _rows()
  plain = _load(_csv(tmp_path / "a.csv", rows), overrides=columns.Overrides(id_column="id"))
  bom = _load(
    _csv(tmp_path / "b.csv", rows, "utf-8-sig"), overrides=columns.Overrides(id_column="id")
  )
  assert bom["preprocessing"].columns == plain["preprocessing"].columns
  np.testing.assert_array_equal(bom["x_train"], plain["x_train"])


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_other_encodings_are_one_line_naming_the_file_and_the_flag(tmp_path, encoding):
  rows = [
    {"café": float(i), "ville": ["Orléans", "Nîmes"][i % 2], "species": "ab"[i % 2]}
    for i in range(8)
  ]
  path = _csv(tmp_path / "x.csv", rows, encoding)
  message = _message(_load, path)
  assert message.startswith(f"--dataset=csv:{path}: is not UTF-8 text")
  assert "--encoding=NAME" in message
  out = _load(path, encoding=encoding)  # the flag reads it
  assert out["preprocessing"].columns == ("café", "ville=Nîmes", "ville=Orléans")


def test_latin1_cells_under_a_plain_header_name_the_column(tmp_path):
  path = tmp_path / "x.csv"
  path.write_bytes("a,town,species\n1,Orl\xe9ans,p\n2,Paris,q\n".encode("latin-1"))
  message = _message(_load, str(path))
  assert "column 'town' holds text that is not UTF-8; save it as UTF-8" in message
  assert "--encoding=NAME" in message
  message = _message(_load, str(path), encoding="klingon")
  assert message.startswith("--encoding=klingon: not a text encoding")


@pytest.mark.parametrize(
  "scaling, expected",
  [
    ("standard", "column 'b' row 4 holds 1e+300, too large to scale (the column's variance"),
    ("none", "column 'b' row 4 holds 1e+300, beyond a model input's float32 range"),
  ],
)
def test_an_overflowing_cell_is_named_by_column_and_row(tmp_path, scaling, expected):
  path = tmp_path / "o.csv"
  path.write_text(
    "a,b,species\n" + "".join(f"{i},{'1e300' if i == 2 else i},p\n" for i in range(12))
  )
  message = _message(_load, str(path), feature_scaling=scaling, test_fraction=0.1)
  assert message.startswith(f"--dataset=csv:{path}: {expected}"), message
  # Text columns beside it take the same path.
  path.write_text(
    "a,b,c,species\n"
    + "".join(f"{i},{'1e300' if i == 2 else i},{'xy'[i % 2]},p\n" for i in range(12))
  )
  assert expected in _message(_load, str(path), feature_scaling=scaling, test_fraction=0.1)
  path.write_text("a,b,species\n1,2,p\n3,1e999,q\n")
  message = _message(_load, str(path))
  assert "column 'b' row 3 holds inf, not a finite number" in message


def test_numbers_with_a_typo_stay_numbers_and_name_the_cell(tmp_path):
  path = tmp_path / "t.csv"
  path.write_text("a,age,species\n1,30,p\n2,41,q\n3,n/a,p\n4,7,q\n")
  message = _message(_load, str(path))
  assert message.endswith(
    "column 'age' row 4 holds 'n/a', not a number (use empty cells for missing values), or "
    "--categorical_columns=age to read the column as categories"
  )
  # The flag the message names reads it so (a run's own kinds are not second-guessed).
  schema = _load(path, overrides=columns.Overrides(categorical=("age",)))["preprocessing"].schema
  assert {c.name: c.kind for c in schema.columns}["age"] == "categorical"


def test_decode_gives_each_column_its_values():
  schema = columns.Schema(
    (
      columns.Column("c", "categorical", ("a", "b", None)),
      columns.Column("n", "numeric"),
      columns.Column("f", "boolean"),
    )
  )
  out = schema.decode(np.array([[0.1, 0.7, 0.2, 3.5, 0.9], [0.0, 0.1, 0.9, -1.0, 0.2]]))
  assert out["c"].tolist() == ["b", columns.MISSING] and out["n"].tolist() == [3.5, -1.0]
  assert out["f"].tolist() == [True, False]


def _run(module, *args):
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
  )


@pytest.mark.slow
def test_train_and_apply_a_mixed_table_from_the_command_line_and_a_notebook(tmp_path):
  rows = _rows(64)
  path = _csv(tmp_path / "penguins.csv", rows, "latin-1")
  workdir = tmp_path / "run"
  train = [
    f"--dataset=csv:{path}",
    "--encoding=latin-1",
    "--label_column=species",
    "--id_column=id",
    "--impute=mean",
    "--model=ae_mlp",
    "--widths=8",
    "--latent_dim=2",
    "--batch_size=16",
    "--num_steps=4",
    "--eval_every=4",
    "--checkpoint_every=4",
    "--evaluators=metrics,clustering",
    f"--workdir={workdir}",
  ]
  done = _run("experiments.train", *train)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "dropped 'day' (dates), 'note' (free text" in done.stdout
  stored = json.loads((workdir / "preprocessing.json").read_text())
  assert stored["schema"]["id_column"] == "id" and stored["classes"] == [
    "Adelie",
    "Chinstrap",
    "Gentoo",
  ]
  new = tmp_path / "new.csv"
  new.write_text("id,vip,bill,island\nn1,no,41.5,Torgersen\nn2,yes,,Dream\nn3,no,35,\n")
  out = tmp_path / "out.csv"
  done = _run("experiments.apply", f"--workdir={workdir}", f"--input=csv:{new}", f"--output={out}")
  assert done.returncode == 0, done.stderr[-2000:]
  assert (
    "1 cell of categories not seen in training, encoded as unknown (all zeros): 'island' 1"
    in done.stdout
  )
  lines = out.read_text().splitlines()
  assert lines[0].startswith("id,embedding_0,embedding_1,score")
  assert [line.split(",")[0] for line in lines[1:]] == ["n1", "n2", "n3"]
  # In a notebook: a pyarrow table with text columns in another order, encoded as the CLI does.
  from dlu.train import apply

  run = apply.load_run(str(workdir))
  table = pa.table(
    {"bill": [41.5, None, 35.0], "island": ["Torgersen", "Dream", None], "vip": ["no", "yes", "no"]}
  )
  by_cli = np.loadtxt(out, delimiter=",", skiprows=1, usecols=(1, 2))
  np.testing.assert_allclose(run.encode(table), by_cli, rtol=1e-5, atol=1e-6)
  done = _run(
    "experiments.apply",
    f"--workdir={workdir}",
    f"--input=csv:{new}",
    f"--output={tmp_path / 'again.csv'}",
    "--categorical_columns=bill",
  )
  assert done.returncode == 2 and "--categorical_columns: the run's columns" in done.stderr
  assert not (tmp_path / "again.csv").exists()


def test_clock_times_are_dropped_with_a_line_as_dates_are(tmp_path):
  rows = _rows()
  for i, r in enumerate(rows):  # as Stat2Data's Hawks holds them: blanks among the times
    r["seen"] = " " if i % 9 == 0 else f"{8 + i % 10}:{(7 * i) % 60:02d}"
  path = _csv(tmp_path / "p.csv", rows)
  said = []
  schema = _load(path, overrides=columns.Overrides(id_column="id"), log=said.append)[
    "preprocessing"
  ].schema
  assert "seen" in schema.dropped and "'seen' (times of day)" in said[0]
  kept = _load(path, overrides=columns.Overrides(id_column="id", categorical=("seen",)))
  assert "seen" in {c.name for c in kept["preprocessing"].schema.columns}
