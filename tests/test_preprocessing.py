"""dlu.data.preprocessing fitted on scikit-learn gives the numbers the hand-written statistics gave.

tests/fixtures/preprocessing/ was written by the code before the move (commit 3d7d0f1): a table
with columns of very different scales (`x_complete`), the same with missing cells (`x_missing`), new
rows with and without missing cells, and a table with a constant column (`x_constant`); for each
table and every impute x feature_scaling, the preprocessing.json that fit_preprocessing saved
(NAME_IMPUTE_SCALING.json) and its float32 outputs (arrays.npz, same key): the training rows
(complete ones for impute "none"), then `x_new`, then (imputing) `x_new_missing`, stacked.
(Other checks of the fields, errors and round trip are in test_tables.py.)
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from dlu.data import preprocessing
from dlu.data.preprocessing import Preprocessing
from dlu.errors import UsageError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "preprocessing")
KEYS = sorted(os.path.basename(p)[: -len(".json")] for p in glob.glob(f"{FIXTURES}/*.json"))


@pytest.fixture(scope="module")
def arrays():
  with np.load(os.path.join(FIXTURES, "arrays.npz")) as f:
    return dict(f)


def _stored(key: str) -> tuple[str, Preprocessing]:
  path = os.path.join(FIXTURES, key + ".json")
  with open(path, encoding="utf-8") as f:
    return f.read(), Preprocessing.load(path)


def _outputs(prep: Preprocessing, key: str, arrays) -> np.ndarray:
  """What the fixture stored for `key`, recomputed with `prep`."""
  table = key.split("_")[0]
  if table == "constant":
    return prep.transform(arrays["x_constant"], "x")
  train = arrays["x_complete"] if prep.impute == "none" else arrays[f"x_{table}"]
  parts = [prep.transform(train, "x"), prep.transform(arrays["x_new"], "x")]
  if prep.impute != "none":
    parts.append(prep.transform(arrays["x_new_missing"], "x"))
  return np.concatenate(parts)


def test_fixture_covers_every_choice():
  expected = {
    f"{table}_{impute}_{scaling}"
    for table in ("complete", "missing")
    # "model" fits nothing to fill with: its statistics are "none"'s (test_impute_model_*).
    for impute in preprocessing.IMPUTE
    if impute != "model"
    for scaling in preprocessing.FEATURE_SCALINGS
  }
  assert set(KEYS) == expected | {"constant_mean_minmax"}


@pytest.mark.parametrize("key", KEYS)
def test_files_written_before_load_unchanged(key, arrays):
  text, stored = _stored(key)
  assert stored.to_json() == text  # every value read back exactly, written back the same
  out = _outputs(stored, key, arrays)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, arrays[key])


@pytest.mark.parametrize("key", KEYS)
def test_fit_gives_the_same_statistics_and_outputs(key, arrays):
  table, impute, scaling = key.split("_")
  _, stored = _stored(key)
  prep = preprocessing.fit_preprocessing(
    stored.columns,
    arrays[f"x_{table}"],
    impute=impute,
    scaling=scaling,
    label_column=stored.label_column,
    classes=stored.classes,
  )
  assert (prep.columns, prep.impute, prep.scaling) == (stored.columns, impute, scaling)
  assert (prep.label_column, prep.classes) == (stored.label_column, stored.classes)
  # Medians, minima and ranges pick or subtract data values: exact. Means and stds are sums,
  # whose order may differ in the last bits.
  if impute == "none":
    assert prep.fill is None
  elif impute == "median":
    np.testing.assert_array_equal(prep.fill, stored.fill)
  else:
    np.testing.assert_allclose(prep.fill, stored.fill, rtol=1e-12)
  if scaling == "standard":
    np.testing.assert_allclose(prep.offset, stored.offset, rtol=1e-12)
    np.testing.assert_allclose(prep.scale, stored.scale, rtol=1e-12)
  else:
    np.testing.assert_array_equal(prep.offset, stored.offset)
    np.testing.assert_array_equal(prep.scale, stored.scale)
  # float32 outputs of statistics within 1e-12: equal up to the float32 rounding of each cell
  np.testing.assert_allclose(_outputs(prep, key, arrays), arrays[key], rtol=1e-6, atol=1e-6)


def test_constant_column_under_minmax_maps_to_zero(arrays):
  _, stored = _stored("constant_mean_minmax")
  assert stored.scale[2] == 1.0 and stored.offset[2] == 7.25
  assert not arrays["constant_mean_minmax"][:, 2].any()


@pytest.mark.parametrize("impute", ["mean", "median"])
def test_transform_is_sklearns_imputer_then_standard_scaler(impute, arrays):
  from sklearn.impute import SimpleImputer
  from sklearn.preprocessing import StandardScaler

  x, new = arrays["x_missing"], arrays["x_new_missing"]
  prep = preprocessing.fit_preprocessing(["a", "b", "c", "d"], x, impute=impute, scaling="standard")
  # the scaler is fitted on the raw rows (missing cells ignored), not on the imputed ones
  scaler = StandardScaler().fit(x)
  expected = scaler.transform(SimpleImputer(strategy=impute).fit(x).transform(new))
  np.testing.assert_array_equal(prep.transform(new, "x"), expected.astype(np.float32))


def test_nearly_constant_column_is_scaled_by_its_std():
  # StandardScaler deems this column constant (its scale_ is 1); its std was the scale before
  from sklearn.preprocessing import StandardScaler

  a, b = 1e8, 1e8 + 4 * np.spacing(1e8)
  x = np.array([[a], [b], [a], [b]])
  assert StandardScaler().fit(x).scale_[0] == 1
  prep = preprocessing.fit_preprocessing(["a"], x, impute="none", scaling="standard")
  np.testing.assert_allclose(prep.scale, x.std(axis=0), rtol=1e-12)
  np.testing.assert_array_equal(prep.transform(x, "x"), [[-1], [1], [-1], [1]])


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_training_cell_is_a_usage_error(value):
  x = np.array([[1.0, 2.0], [3.0, value], [5.0, 6.0]])
  for impute, scaling in [("mean", "none"), ("none", "standard"), ("median", "minmax")]:
    with pytest.raises(UsageError) as info:
      preprocessing.fit_preprocessing(["a", "b"], x, impute=impute, scaling=scaling, what="--x")
    assert str(info.value) == (
      f"--x: column 'b' holds {value} at training row 2; expected finite numbers (NaN for "
      "missing values)"
    )
