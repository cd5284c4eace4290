"""Tests for dlu.data.tables (reading CSV/Parquet, labels, splits) and dlu.data.preprocessing
(train-only fitting, JSON, column matching)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlu.data import fingerprints, preprocessing, tables
from dlu.data.preprocessing import Preprocessing
from dlu.errors import UsageError


def _csv(tmp_path, text: str, name: str = "t.csv") -> str:
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def _raises(fn, *args, **kwargs) -> str:
  """The message of the UsageError that fn raises, checked to be a single line."""
  with pytest.raises(UsageError) as info:
    fn(*args, **kwargs)
  message = str(info.value)
  assert "\n" not in message, message
  return message


def _load(path, fmt="csv", label_column="y", **kwargs):
  args = dict(
    fmt=fmt,
    what=f"--dataset={fmt}:{path}",
    label_column=label_column,
    test_fraction=0.25,
    seed=0,
    impute="none",
    feature_scaling="none",
  )
  args.update(kwargs)
  return tables.load_table(path, **args)


def _random_csv(tmp_path, n=40, name="r.csv", seed=0) -> tuple[str, np.ndarray, list[str]]:
  rng = np.random.default_rng(seed)
  x = np.round(rng.normal(size=(n, 3)) * [1.0, 10.0, 100.0] + [0.0, 5.0, -50.0], 3)
  labels = rng.choice(["cat", "dog", "eel"], size=n)
  rows = ["a,b,y,c"] + [f"{r[0]!r},{r[1]!r},{lab},{r[2]!r}" for r, lab in zip(x.tolist(), labels)]
  return _csv(tmp_path, "\n".join(rows) + "\n", name), x, list(labels)


# --- read_table ---


def test_header_parsed_and_label_column_excluded(tmp_path):
  path = _csv(tmp_path, "a,y,b\n1,0,2.5\n3,1,\n5,0,6\n")
  names, x, labels = tables.read_table(path, fmt="csv", label_column="y", what="--dataset")
  assert names == ["a", "b"]
  assert x.dtype == np.float64 and x.shape == (3, 2)
  np.testing.assert_array_equal(x, [[1, 2.5], [3, np.nan], [5, 6]])
  np.testing.assert_array_equal(labels, [0, 1, 0])
  names, x, labels = tables.read_table(path, fmt="csv", label_column=None, what="--dataset")
  assert names == ["a", "y", "b"] and x.shape == (3, 3) and labels is None


def test_missing_markers_bools_and_whitespace(tmp_path):
  path = _csv(tmp_path, "a,b,c\n,true,1\nNA,false, 2\nNaN,True,3 \nnan,,4\nnull,FALSE,5\n")
  _, x, _ = tables.read_table(path, fmt="csv", label_column=None, what="--dataset")
  assert np.isnan(x[:, 0]).all()
  np.testing.assert_array_equal(x[:, 1], [1, 0, 1, np.nan, 0])
  np.testing.assert_array_equal(x[:, 2], [1, 2, 3, 4, 5])


def test_all_empty_column_reads_as_missing(tmp_path):
  path = _csv(tmp_path, "a,b\n1,\n2,\n")
  _, x, _ = tables.read_table(path, fmt="csv", label_column=None, what="--dataset")
  assert np.isnan(x[:, 1]).all() and x[:, 0].tolist() == [1, 2]


def test_numeric_labels_sorted_numerically(tmp_path):
  path = _csv(tmp_path, "a,y\n1,10\n2,2\n3,1\n4,2\n5,10\n")
  _, _, raw = tables.read_table(path, fmt="csv", label_column="y", what="--dataset")
  y, classes = tables.encode_labels(raw, "--dataset")
  assert classes == ("1", "2", "10")
  assert y.dtype == np.int32 and y.tolist() == [2, 1, 0, 1, 2]


def test_string_labels_sorted(tmp_path):
  path = _csv(tmp_path, "a,y\n1,dog\n2,cat\n3,eel\n4,cat\n")
  _, _, raw = tables.read_table(path, fmt="csv", label_column="y", what="--dataset")
  y, classes = tables.encode_labels(raw, "--dataset")
  assert classes == ("cat", "dog", "eel") and y.tolist() == [1, 0, 2, 0]


def test_encode_labels_with_given_classes():
  y, classes = tables.encode_labels(np.array([3, 1, 3]), "--dataset", classes=("1", "2", "3"))
  assert classes == ("1", "2", "3") and y.tolist() == [2, 0, 2]
  y, _ = tables.encode_labels(np.array([3.0, 1.0]), "--dataset", classes=("1", "3"))
  assert y.tolist() == [1, 0]  # integral floats match the int classes
  message = _raises(tables.encode_labels, np.array(["a", "z"], object), "--dataset", ("a", "b"))
  assert "'z'" in message and "not among the 2 classes" in message


def test_encode_labels_rejects_missing():
  assert "index 1" in _raises(tables.encode_labels, np.array([1.0, np.nan]), "--dataset")
  assert "index 0" in _raises(tables.encode_labels, np.array([None, "a"], object), "--dataset")


def test_non_numeric_cell_names_column_row_and_value(tmp_path):
  path = _csv(tmp_path, "id,age\n1,30\n2,\n3,41\n4,n/a\n5,7\n")
  what = f"--dataset=csv:{path}"
  message = _raises(tables.read_table, path, fmt="csv", label_column=None, what=what)
  assert message == (
    f"{what}: column 'age' row 5 holds 'n/a', not a number (use empty cells for missing values)"
  )


@pytest.mark.parametrize(
  "cell, shown",
  [("2024-01-01", "'2024-01-01'"), ("1_000", "'1_000'"), ("yes", "'yes'"), ("inf", "inf")],
)
def test_other_bad_cells(tmp_path, cell, shown):
  path = _csv(tmp_path, f"a,b\n1,2\n3,{cell}\n")
  message = _raises(tables.read_table, path, fmt="csv", label_column=None, what="--dataset")
  assert f"column 'b' row 3 holds {shown}" in message and path in message


def test_bad_cell_found_in_a_later_block(tmp_path):
  # Over 1 MB: pyarrow parses it in several blocks, and the bad cell lies in a late one.
  lines = ["a,b"] + [f"{i},{i % 9973}.5" for i in range(120_000)]
  lines[100_001] = "100000,oops"
  path = _csv(tmp_path, "\n".join(lines) + "\n")
  assert os.path.getsize(path) > 1 << 20
  message = _raises(tables.read_table, path, fmt="csv", label_column=None, what="--dataset")
  assert "column 'b' row 100002 holds 'oops'" in message


def test_missing_label_names_column_and_row(tmp_path):
  path = _csv(tmp_path, "a,y\n1,x\n2,y\n3,\n")
  message = _raises(tables.read_table, path, fmt="csv", label_column="y", what="--dataset")
  assert "label column 'y'" in message and "row 4" in message


def test_no_such_file_empty_file_and_header_only(tmp_path):
  read = lambda p: tables.read_table(p, fmt="csv", label_column=None, what="--dataset")
  assert "no such file" in _raises(read, str(tmp_path / "absent.csv"))
  assert "is empty" in _raises(read, _csv(tmp_path, "", "empty.csv"))
  assert "has no rows" in _raises(read, _csv(tmp_path, "a,b,c\n", "header.csv"))


def test_duplicate_column_names(tmp_path):
  path = _csv(tmp_path, "a,b,a,c,b\n1,2,3,4,5\n")
  message = _raises(tables.read_table, path, fmt="csv", label_column=None, what="--dataset")
  assert "duplicate column names 'a', 'b'" in message


def test_unnamed_column(tmp_path):
  path = _csv(tmp_path, ",a\n0,1\n1,2\n")
  message = _raises(tables.read_table, path, fmt="csv", label_column=None, what="--dataset")
  assert "column 1 has no name" in message


def test_unknown_label_column_lists_at_most_ten(tmp_path):
  header = ",".join(f"c{j}" for j in range(12))
  path = _csv(tmp_path, header + "\n" + ",".join(["1"] * 12) + "\n")
  message = _raises(tables.read_table, path, fmt="csv", label_column="label", what="--dataset")
  assert "--label_column=label" in message
  assert "'c9', ..." in message and "'c10'" not in message and "(12 in all)" in message


def test_label_is_the_only_column(tmp_path):
  path = _csv(tmp_path, "y\n1\n2\n")
  message = _raises(tables.read_table, path, fmt="csv", label_column="y", what="--dataset")
  assert "no feature columns" in message


def test_malformed_csv_is_one_line_usage_error(tmp_path):
  path = _csv(tmp_path, "a,b\n1,2\n3,4,5\n")
  message = _raises(tables.read_table, path, fmt="csv", label_column=None, what="--dataset")
  assert path in message and "Expected 2 columns" in message


def test_unknown_format(tmp_path):
  path = _csv(tmp_path, "a\n1\n")
  assert "unknown table format" in _raises(
    tables.read_table, path, fmt="tsv", label_column=None, what="--dataset"
  )


# --- Parquet ---


def test_parquet_gives_the_same_arrays_as_csv(tmp_path):
  csv_path, x, labels = _random_csv(tmp_path)
  pq_path = str(tmp_path / "r.parquet")
  pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "y": labels, "c": x[:, 2]}), pq_path)
  from_csv = tables.read_table(csv_path, fmt="csv", label_column="y", what="--dataset")
  from_pq = tables.read_table(pq_path, fmt="parquet", label_column="y", what="--dataset")
  assert from_csv[0] == from_pq[0] == ["a", "b", "c"]
  np.testing.assert_array_equal(from_csv[1], from_pq[1])
  np.testing.assert_array_equal(from_csv[2], from_pq[2])
  kwargs = dict(impute="mean", feature_scaling="standard")
  a = _load(csv_path, **kwargs)
  b = _load(pq_path, fmt="parquet", **kwargs)
  for key in ("x_train", "y_train", "x_test", "y_test"):
    np.testing.assert_array_equal(a[key], b[key])
  assert a["num_classes"] == b["num_classes"] == 3


def test_parquet_types_nulls_and_rows(tmp_path):
  path = str(tmp_path / "t.parquet")
  table = pa.table(
    {
      "i": pa.array([1, None, 3], pa.int32()),
      "f": pa.array([0.5, 1.5, None], pa.float32()),
      "b": pa.array([True, False, None]),
      "d": pa.array(["x", "y", "x"]).dictionary_encode(),
      "__index_level_0__": [7, 8, 9],
    }
  )
  metadata = {b"pandas": json.dumps({"index_columns": ["__index_level_0__"]}).encode()}
  pq.write_table(table.replace_schema_metadata(metadata), path)
  names, x, labels = tables.read_table(path, fmt="parquet", label_column="d", what="--dataset")
  assert names == ["i", "f", "b"]  # the pandas index is not a feature
  np.testing.assert_array_equal(x, [[1, 0.5, 1], [np.nan, 1.5, 0], [3, np.nan, np.nan]])
  assert labels.tolist() == ["x", "y", "x"]
  pq.write_table(pa.table({"a": [1.0, 2.0], "s": ["1", "oops"]}), path)
  message = _raises(tables.read_table, path, fmt="parquet", label_column=None, what="--dataset")
  assert "column 's' row 2 holds 'oops'" in message  # no header row: the first row is row 1


def test_unreadable_and_empty_parquet(tmp_path):
  path = _csv(tmp_path, "a,b\n1,2\n", "not.parquet")
  message = _raises(tables.read_table, path, fmt="parquet", label_column=None, what="--dataset")
  assert "cannot read it as Parquet" in message
  empty = str(tmp_path / "empty.parquet")
  pq.write_table(pa.table({"a": pa.array([], pa.float64())}), empty)
  assert "has no rows" in _raises(
    tables.read_table, empty, fmt="parquet", label_column=None, what="--dataset"
  )


# --- load_table: missing values ---


def test_missing_values_without_impute_name_column_and_first_row(tmp_path):
  path = _csv(tmp_path, "a,b,y\n1,2,0\n3,4,1\n5,,0\n7,,1\n9,10,0\n")
  message = _raises(_load, path)
  assert message == (
    f"--dataset=csv:{path}: column 'b' has missing values (first at row 4); fill them, pass "
    "--impute=mean|median, or train a model that masks them (--impute=model: ae_mlp, ae_seed, "
    "vae)"
  )


def _imputation_csv(tmp_path) -> str:
  """Column a: skewed (mean and median differ) with missing cells in both splits."""
  n = 40
  a = np.arange(n, dtype=float) ** 2
  a[[0, 5, 11, 17, 23, 29, 31, 37]] = np.nan
  rows = ["a,b,y"] + [
    f"{'' if np.isnan(u) else repr(u)},{v!r},{i % 2}"
    for i, (u, v) in enumerate(zip(a.tolist(), a[::-1].tolist()))
  ]
  return _csv(tmp_path, "\n".join(rows) + "\n"), a


@pytest.mark.parametrize("impute, stat", [("mean", np.nanmean), ("median", np.nanmedian)])
def test_imputation_is_fitted_on_the_training_rows(tmp_path, impute, stat):
  path, a = _imputation_csv(tmp_path)
  data = _load(path, impute=impute)
  train, test = data["train_rows"], data["test_rows"]
  prep = data["preprocessing"]
  expected = stat(a[train])
  assert prep.fill[0] == expected and expected != stat(a)
  assert np.isnan(a[train]).any() and np.isnan(a[test]).any()
  assert not np.isnan(data["x_train"]).any() and not np.isnan(data["x_test"]).any()
  filled = np.float32(expected)
  assert (data["x_train"][np.isnan(a[train]), 0] == filled).all()
  assert (data["x_test"][np.isnan(a[test]), 0] == filled).all()  # test cells get the train fill


def test_column_missing_on_the_whole_training_split(tmp_path):
  # The last row (the only value of b) is made the only test row by choosing the cells of a.
  for k in range(200):
    path = _csv(tmp_path, f"a,b\n{k},\n{k + 1},\n{k + 2},\n{k + 3},5\n")
    names, x, _ = tables.read_table(path, fmt="csv", label_column=None, what="t")
    _, test = fingerprints.content_split(fingerprints.row_digests(names, x), 0.25, 0, "t")
    if test.tolist() == [3]:
      break
  assert test.tolist() == [3]
  message = _raises(_load, path, label_column=None, impute="mean")
  assert "column 'b' has no values on the training split" in message


# --- load_table: scaling ---


def test_standard_scaling_uses_train_statistics(tmp_path):
  path, x, _ = _random_csv(tmp_path, n=60)
  data = _load(path, feature_scaling="standard")
  train, test = data["train_rows"], data["test_rows"]
  xt = data["x_train"]
  assert len(train) + len(test) == 60 and 5 <= len(test) <= 25
  assert xt.dtype == np.float32 and xt.shape == (len(train), 3)
  assert data["x_test"].shape == (len(test), 3)
  np.testing.assert_allclose(xt.mean(axis=0), 0, atol=1e-6)
  np.testing.assert_allclose(xt.std(axis=0), 1, atol=1e-6)
  mean, std = x[train].mean(axis=0), x[train].std(axis=0)
  np.testing.assert_allclose(data["preprocessing"].offset, mean, rtol=1e-12)
  np.testing.assert_allclose(data["x_test"], (x[test] - mean) / std, rtol=1e-5, atol=1e-6)


def test_minmax_scaling_and_constant_column(tmp_path):
  path = _csv(tmp_path, "a,k\n" + "".join(f"{v},7\n" for v in [0, 10, 2, 4, 6, 8, 20, -5]))
  data = _load(path, label_column=None, feature_scaling="minmax")
  train, test = data["train_rows"], data["test_rows"]
  a = np.array([0, 10, 2, 4, 6, 8, 20, -5], float)
  lo, hi = a[train].min(), a[train].max()
  np.testing.assert_allclose(data["x_train"][:, 0], (a[train] - lo) / (hi - lo), rtol=1e-6)
  np.testing.assert_allclose(data["x_test"][:, 0], (a[test] - lo) / (hi - lo), rtol=1e-6)
  assert data["x_train"][:, 0].min() == 0 and data["x_train"][:, 0].max() == 1
  assert (data["x_train"][:, 1] == 0).all() and data["preprocessing"].scale[1] == 1


def test_constant_column_is_an_error_under_standard_scaling(tmp_path):
  path = _csv(tmp_path, "a,k\n" + "".join(f"{v},0.1\n" for v in range(8)))
  message = _raises(_load, path, label_column=None, feature_scaling="standard")
  assert message.endswith(
    "column 'k' is constant on the training split; --feature_scaling=standard cannot scale it "
    "(drop the column or use --feature_scaling=minmax|none)"
  )


def test_no_scaling_and_bad_flag_values(tmp_path):
  path, x, _ = _random_csv(tmp_path)
  data = _load(path)
  prep = data["preprocessing"]
  assert (prep.offset == 0).all() and (prep.scale == 1).all() and prep.fill is None
  train = data["train_rows"]
  np.testing.assert_array_equal(data["x_train"], x[train].astype(np.float32))
  assert "--impute=zero" in _raises(_load, path, impute="zero")
  assert "--feature_scaling=max" in _raises(_load, path, feature_scaling="max")
  assert "--test_fraction=1" in _raises(_load, path, test_fraction=1)


def test_load_table_labels_follow_the_split(tmp_path):
  path, _, labels = _random_csv(tmp_path)
  data = _load(path)
  train, test = data["train_rows"], data["test_rows"]
  classes = data["preprocessing"].classes
  assert classes == ("cat", "dog", "eel") and data["num_classes"] == 3
  assert data["preprocessing"].label_column == "y"
  assert data["y_train"].dtype == np.int32
  assert [classes[k] for k in data["y_train"]] == [labels[i] for i in train]
  assert [classes[k] for k in data["y_test"]] == [labels[i] for i in test]
  numeric = _csv(tmp_path, "a,y\n1,3\n2,4\n3,3\n4,4\n", "numeric.csv")
  unlabelled = _load(numeric, label_column=None)
  assert unlabelled["y_train"] is None and unlabelled["num_classes"] is None
  assert unlabelled["preprocessing"].columns == ("a", "y")


# --- Preprocessing ---


def _preprocessing(**overrides) -> Preprocessing:
  fields = dict(
    columns=("a", "b", "c"),
    impute="median",
    fill=np.array([0.1 + 0.2, 1e-300, -3.0]),
    scaling="standard",
    offset=np.array([1 / 3, 2.0**60 + 1, -0.0]),
    scale=np.array([np.pi, 5e-324, 7.25]),
    label_column="y",
    classes=("cat", "dog"),
  )
  fields.update(overrides)
  return Preprocessing(**fields)


def test_preprocessing_json_round_trip_is_exact(tmp_path):
  for prep in (
    _preprocessing(),
    _preprocessing(impute="none", fill=None, label_column=None, classes=None),
  ):
    again = Preprocessing.from_json(prep.to_json())
    assert again.columns == prep.columns and again.impute == prep.impute
    assert again.scaling == prep.scaling and again.label_column == prep.label_column
    assert again.classes == prep.classes
    for field in ("fill", "offset", "scale"):
      a, b = getattr(prep, field), getattr(again, field)
      assert (a is None and b is None) or (a.tobytes() == b.tobytes() and b.dtype == np.float64)
    path = str(tmp_path / "preprocessing.json")
    prep.save(path)
    assert Preprocessing.load(path).to_json() == prep.to_json()
  assert os.listdir(tmp_path) == ["preprocessing.json"]  # no temporary file left behind


def test_preprocessing_checks_its_fields():
  assert "fill" in _raises(_preprocessing, fill=None)
  assert "impute" in _raises(_preprocessing, impute="zero")
  assert "scale" in _raises(_preprocessing, scale=[1.0, 0.0, 1.0])
  assert "distinct" in _raises(_preprocessing, columns=("a", "a", "b"))
  text = _preprocessing().to_json().replace('"columns": [', '"columns": "abc", "x": [')
  assert "columns is not a list" in _raises(Preprocessing.from_json, text)


def test_preprocessing_arrays_are_read_only():
  prep = _preprocessing()
  with pytest.raises(ValueError):
    prep.offset[0] = 1.0


def test_preprocessing_load_errors_name_the_file(tmp_path):
  absent = str(tmp_path / "absent.json")
  assert absent in _raises(Preprocessing.load, absent)
  bad = tmp_path / "bad.json"
  for text in (
    "{not json",
    "[]",
    '{"version": 1}',
    _preprocessing().to_json().replace('"median"', '"mode"'),
  ):
    bad.write_text(text)
    message = _raises(Preprocessing.load, str(bad))
    assert message.startswith(f"{bad}: ")
  fields = json.loads(_preprocessing().to_json())
  fields["scale"] = [1.0, 2.0]
  bad.write_text(json.dumps(fields))
  assert "scale has shape (2,)" in _raises(Preprocessing.load, str(bad))


def test_inverse_of_transform_is_identity():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(50, 3)) * [1.0, 1e3, 1e-3] + [5.0, -2e3, 0.0]
  for scaling in preprocessing.FEATURE_SCALINGS:
    prep = preprocessing.fit_preprocessing(["a", "b", "c"], x, impute="none", scaling=scaling)
    z = prep.transform(x, "--dataset")
    assert z.dtype == np.float32
    back = prep.inverse(z)
    assert back.dtype == np.float64
    for j in range(3):  # float32 model units: exact to about 1e-7 of each column's magnitude
      np.testing.assert_allclose(back[:, j], x[:, j], rtol=0, atol=1e-6 * np.abs(x[:, j]).max())


def test_transform_errors():
  prep = preprocessing.fit_preprocessing(
    ["a", "b"], np.array([[1.0, 2.0], [3.0, 5.0]]), impute="none", scaling="minmax"
  )
  message = _raises(
    prep.transform, np.array([[1.0, 2.0], [1.0, np.nan], [np.nan, np.nan]]), "--input"
  )
  assert message.startswith("--input: column 'a' has missing values (first at row 3)")
  assert "expected [N, 2]" in _raises(prep.transform, np.zeros((2, 3)), "--input")


# --- load_table with a given preprocessing ---


def test_given_preprocessing_with_shuffled_columns_gives_identical_arrays(tmp_path):
  path, x, labels = _random_csv(tmp_path)
  first = _load(path, impute="mean", feature_scaling="standard")
  prep = Preprocessing.from_json(first["preprocessing"].to_json())
  rows = ["c,y,a,b"] + [f"{r[2]!r},{lab},{r[0]!r},{r[1]!r}" for r, lab in zip(x.tolist(), labels)]
  shuffled = _csv(tmp_path, "\n".join(rows) + "\n", "shuffled.csv")
  again = _load(shuffled, preprocessing=prep, impute="none", feature_scaling="none")
  assert again["preprocessing"] is prep and again["num_classes"] == 3
  for key in ("x_train", "y_train", "x_test", "y_test"):
    np.testing.assert_array_equal(first[key], again[key])


def test_given_preprocessing_maps_labels_by_its_classes(tmp_path):
  path = _csv(tmp_path, "a,y\n1,dog\n2,dog\n3,dog\n4,dog\n")
  prep = _preprocessing(
    columns=("a",), fill=[0.0], offset=[0.0], scale=[1.0], classes=("cat", "dog")
  )
  data = _load(path, preprocessing=prep)
  assert (data["y_train"] == 1).all() and data["num_classes"] == 2
  eel = _csv(tmp_path, "a,y\n1,dog\n2,eel\n", "eel.csv")
  assert "'eel'" in _raises(_load, eel, preprocessing=prep)


def test_given_preprocessing_missing_or_extra_columns(tmp_path):
  path, _, _ = _random_csv(tmp_path)
  prep = _load(path)["preprocessing"]
  fewer = _csv(tmp_path, "a,y,c\n1,cat,2\n3,dog,4\n", "fewer.csv")
  message = _raises(_load, fewer, preprocessing=prep)
  assert "lacks the feature columns 'b'" in message
  more = _csv(tmp_path, "a,b,y,c,d\n1,2,cat,3,4\n5,6,dog,7,8\n", "more.csv")
  assert "not trained on: 'd'" in _raises(_load, more, preprocessing=prep)
  numeric = _csv(tmp_path, "a,b,y,c\n1,2,0,3\n5,6,1,7\n", "numeric.csv")
  unlabelled = _raises(_load, numeric, label_column=None, preprocessing=prep)
  assert "'y' was the label: pass --label_column=y" in unlabelled


def test_match_columns():
  x = np.array([[1.0, 2.0, 3.0]])
  np.testing.assert_array_equal(
    preprocessing.match_columns(["a", "b", "c"], x, ("c", "a", "b"), "w"), [[3, 1, 2]]
  )
  assert preprocessing.match_columns(["a", "b"], x[:, :2], ("a", "b"), "w") is not None
  message = _raises(
    preprocessing.match_columns, ["a", "b", "z"], x, ("a", "b", "c"), "--input=csv:/n.csv"
  )
  assert message.startswith("--input=csv:/n.csv: lacks the feature columns 'c' and has columns")
  assert "'z'" in message


# --- split_rows ---


def test_split_rows_deterministic_and_fraction_respected():
  train, test = tables.split_rows(1000, 0.1, 3, "--dataset")
  again_train, again_test = tables.split_rows(1000, 0.1, 3, "--dataset")
  np.testing.assert_array_equal(train, again_train)
  np.testing.assert_array_equal(test, again_test)
  assert len(test) == 100 and len(train) == 900
  assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1000))
  assert (np.diff(train) > 0).all() and (np.diff(test) > 0).all()
  other, _ = tables.split_rows(1000, 0.1, 4, "--dataset")
  assert not np.array_equal(train, other)
  assert len(tables.split_rows(10, 0.01, 0, "--dataset")[1]) == 1  # at least one test row
  assert len(tables.split_rows(2, 0.9, 0, "--dataset")[0]) == 1  # at least one training row
  expected_test = np.sort(np.random.default_rng(5).permutation(7)[-2:])
  np.testing.assert_array_equal(tables.split_rows(7, 0.3, 5, "--dataset")[1], expected_test)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan")])
def test_split_rows_rejects_bad_fractions(fraction):
  assert "--test_fraction" in _raises(tables.split_rows, 10, fraction, 0, "--dataset")


def test_split_rows_needs_two_rows():
  assert "at least 2" in _raises(tables.split_rows, 1, 0.5, 0, "--dataset=csv:/x.csv")


# --- vectors_from_arrays ---


def test_vectors_from_arrays():
  names, x = tables.vectors_from_arrays(np.array([[1, 2, 3], [4, 5, 6]], np.uint8), "--dataset")
  assert names == ["f0", "f1", "f2"] and x.dtype == np.float64 and x[1, 2] == 6
  _, x = tables.vectors_from_arrays(np.array([[np.nan, 1.0]]), "--dataset")
  assert np.isnan(x[0, 0])
  assert "x[1, 0] is -inf" in _raises(
    tables.vectors_from_arrays, np.array([[0.0], [-np.inf]]), "--dataset"
  )
  assert "dtype" in _raises(tables.vectors_from_arrays, np.array([["a"]]), "--dataset")
  assert "shape" in _raises(tables.vectors_from_arrays, np.zeros(3), "--dataset")
