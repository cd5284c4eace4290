"""Missing cells native: --impute=model (a mask in, the loss on observed cells), per-type
reconstruction losses, per-column results, and run.impute / apply --impute=model."""

import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import dlu
from dlu.data import columns, tables
from dlu.errors import UsageError
from dlu.ops import tabular

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = (("numeric", 0, 1), ("categorical", 1, 4), ("boolean", 4, 5))


@pytest.mark.slow
def test_losses_are_per_type_and_only_on_observed_cells():
  x = jnp.array([[0.5, 0.0, 1.0, 0.0, 1.0], [jnp.nan, jnp.nan, jnp.nan, jnp.nan, 0.0]])
  out = jnp.array([[1.5, 0.0, 2.0, 0.0, 3.0], [9.0, 5.0, -5.0, 0.0, -2.0]])
  losses, seen = tabular.column_losses(out, x, GROUPS)
  # Row 0: squared error 1; boolean BCE of logit 3 against 1; cross-entropy of level 1.
  bce = float(jnp.log1p(jnp.exp(-3.0)))
  ce = float(-jax.nn.log_softmax(jnp.array([0.0, 2.0, 0.0]))[1])
  np.testing.assert_allclose(losses[0], [1.0, bce, ce], rtol=1e-6)
  # Row 1: the number and the category are missing: no loss, not counted.
  np.testing.assert_array_equal(seen, [[1, 1, 1], [0, 1, 0]])
  assert losses[1, 0] == 0 and losses[1, 2] == 0
  assert float(tabular.batch_loss(out, x, GROUPS)) == pytest.approx(
    float(losses.sum()) / 4, rel=1e-6
  )
  # The mask goes beside the rows, missing cells as 0; gradients stay finite.
  inp = tabular.model_input(x, masked=True)
  assert inp.shape == (2, 10) and not jnp.isnan(inp).any()
  np.testing.assert_array_equal(inp[1, 5:], [0, 0, 0, 0, 1])
  grad = jax.grad(lambda o: tabular.batch_loss(o, x, GROUPS))(out)
  assert jnp.isfinite(grad).all() and float(jnp.abs(grad[1, :4]).sum()) == 0.0
  probs = tabular.reconstruction(out, GROUPS)
  np.testing.assert_allclose(probs[:, 1:4].sum(axis=1), 1.0, rtol=1e-6)
  assert 0 < float(probs[0, 4]) < 1


def _table(n=240, seed=0, missing=0.15):
  """Rows whose columns predict one another: b = 2a, the colour and flag follow the class."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % 3
  a = y + rng.normal(0, 0.2, n)
  rows = {
    "id": [f"r{i}" for i in range(n)],
    "a": a,
    "b": 2 * a + rng.normal(0, 0.1, n),
    "colour": np.array(["red", "green", "blue"])[y].astype(object),
    "flag": np.where(y == 1, "yes", "no").astype(object),
    "kind": np.array(["c0", "c1", "c2"])[y],
  }
  full = pd.DataFrame(rows)
  holed = full.copy()
  for name in ("a", "b", "colour", "flag"):
    hide = rng.random(n) < missing
    holed.loc[hide, name] = None
  return full, holed


def _train(tmp_path, holed, name="run", **flags):
  path = tmp_path / f"{name}.csv"
  holed.to_csv(path, index=False)
  settings = dict(
    dataset=f"csv:{path}",
    label_column="kind",
    id_column="id",
    model="ae_mlp",
    widths="32",
    latent_dim=4,
    batch_size=32,
    num_steps=300,
    eval_every=300,
    checkpoint_every=300,
    evaluators=["metrics", "features"],
    learning_rate=3e-3,
  )
  settings.update(flags)
  settings["eval_every"] = settings["checkpoint_every"] = settings["num_steps"]
  cfg = dlu.make_config(**settings)
  workdir = str(tmp_path / name)
  dlu.train_and_evaluate(cfg, workdir)
  return workdir, path


@pytest.mark.slow
def test_a_table_with_gaps_trains_masked_and_is_filled_in_its_own_terms(tmp_path):
  full, holed = _table()
  workdir, path = _train(tmp_path, holed)
  stored = json.loads(open(os.path.join(workdir, "preprocessing.json")).read())
  assert stored["impute"] == "model" and stored["schema"]["missing"] == "mask"
  colour = next(c for c in stored["schema"]["columns"] if c["name"] == "colour")
  assert colour["categories"] == ["blue", "green", "red"]  # no missing level: it is masked
  rows = list(csv.DictReader(open(os.path.join(workdir, "columns_0000300.csv"))))
  assert {(r["column"], r["metric"]) for r in rows} >= {
    ("a", "rmse"),
    ("a", "rmse_std"),
    ("colour", "accuracy"),
    ("flag", "accuracy"),
  }
  run = dlu.load_run(workdir)
  filled = run.impute(holed)
  assert isinstance(filled, pd.DataFrame) and list(filled.columns) == list(holed.columns)
  features = ["a", "b", "colour", "flag"]
  assert not filled[features].isna().any().any()
  seen = holed.notna()
  pd.testing.assert_frame_equal(filled[seen], holed[seen], check_dtype=False)
  assert set(filled["colour"]) == {"red", "green", "blue"} and set(filled["flag"]) == {"yes", "no"}
  # Better than the training mean and the most frequent level: the columns predict each other.
  hidden = holed["b"].isna()
  model_rmse = np.sqrt(np.mean((filled["b"][hidden] - full["b"][hidden]) ** 2))
  mean_rmse = np.sqrt(np.mean((holed["b"].mean() - full["b"][hidden]) ** 2))
  assert model_rmse < 0.6 * mean_rmse
  hidden = holed["colour"].isna()
  acc = np.mean(filled["colour"][hidden] == full["colour"][hidden])
  majority = np.mean(holed["colour"].mode()[0] == full["colour"][hidden])
  assert acc > majority + 0.2
  # A pyarrow table comes back as one, its text columns text.
  t = run.impute(pa.Table.from_pandas(holed, preserve_index=False))
  assert isinstance(t, pa.Table) and t.column("colour").null_count == 0
  assert columns.is_text(t.schema.field("flag").type)
  # From the command line: the whole input table, filled, and a line counting the cells.
  out = tmp_path / "filled.csv"
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.apply",
      f"--workdir={workdir}",
      f"--input=csv:{path}",
      "--impute=model",
      f"--output={out}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  cells = int(holed[features].isna().sum().sum())
  assert f"{cells} missing cells filled" in done.stdout
  back = pd.read_csv(out)
  assert list(back.columns) == list(holed.columns) and not back[features].isna().any().any()
  np.testing.assert_allclose(back["b"], filled["b"], rtol=1e-6)


@pytest.mark.slow
def test_a_vae_takes_the_gaps_too_and_a_table_without_gaps_is_unchanged(tmp_path):
  _, holed = _table(n=120)
  workdir, _ = _train(
    tmp_path, holed, model="vae", likelihood="gaussian", binarize="none", num_steps=20
  )
  run = dlu.load_run(workdir)
  assert not run.impute(holed)[["a", "colour"]].isna().any().any()
  samples, _ = run.sample(4)
  assert samples.shape == (4, len(run.dataset.preprocessing.columns))
  # A table of numbers with no missing cell: --impute=auto is none, as before the mask.
  full, _ = _table(n=120)
  numbers = full[["a", "b", "kind"]]
  workdir, _ = _train(tmp_path, numbers, name="numbers", id_column="", num_steps=4)
  stored = json.loads(open(os.path.join(workdir, "preprocessing.json")).read())
  assert stored["impute"] == "none" and "schema" not in stored


def test_models_that_cannot_mask_refuse_the_gaps_in_one_line(tmp_path):
  _, holed = _table(n=60)
  path = tmp_path / "t.csv"
  holed.to_csv(path, index=False)
  base = dict(dataset=f"csv:{path}", label_column="kind", id_column="id", batch_size=8)
  cfg = dlu.make_config(model="mlp_gan", impute="model", **base)
  with pytest.raises(UsageError, match=r"--impute=model: --model=mlp_gan cannot take missing"):
    dlu.train_and_evaluate(cfg, str(tmp_path / "gan"))
  cfg = dlu.make_config(model="mlp_gan", **base)  # auto: none, so the gap is named
  with pytest.raises(UsageError, match=r"column 'a.*has missing values \(first at row"):
    dlu.train_and_evaluate(cfg, str(tmp_path / "gan2"))
  assert not os.path.exists(tmp_path / "gan") and not os.path.exists(tmp_path / "gan2")


def test_mask_schema_encodes_missing_and_unseen_levels_as_gaps(tmp_path):
  path = tmp_path / "t.csv"
  path.write_text("c,n\nx,1\ny,\n,3\nx,4\n")
  names, cells, _ = tables.read_cells(str(path), fmt="csv", label_column=None, what="t")
  kinds, _ = columns.infer_kinds(names, cells, columns.Overrides(), "t")
  schema = columns.fit_schema(kinds, cells, missing="mask")
  assert schema.columns[0].categories == ("x", "y")
  new = {"c": pa.chunked_array([["x", None, "z"]]), "n": pa.chunked_array([[1.0, 2.0, None]])}
  x, unknown = schema.encode(new, "new")
  assert np.isnan(x[1, :2]).all() and np.isnan(x[2, :2]).all() and np.isnan(x[2, 2])
  assert unknown == {"c": 1}  # the unseen level, counted; the missing cell is not
  assert columns.Schema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema
  col = pa.chunked_array([["yes", None, "no", None]])
  assert columns.filled(col, "boolean", np.array([0, 1, 0, 0.2])).to_pylist() == [
    "yes",
    "yes",
    "no",
    "no",
  ]
  ints = pa.chunked_array([[1, None, 3]])
  assert columns.filled(ints, "numeric", np.array([0, 2.0, 0])).to_pylist() == [1, 2, 3]
