"""Many-level categories embedded (--embed_levels): the schema records them in
preprocessing.json, the model reads their level ids through an nn.Embed (a narrower input than
one-hot), the decoder still scores each level, and impute, apply, resume and old workdirs work."""

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
from dlu.data import columns
from dlu.errors import UsageError
from dlu.families import DataSpec, get
from dlu.models.layers import TableEmbedding
from dlu.runtime.checkpointing import read_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CITIES = [f"city{k:02d}" for k in range(40)]


def _table(n=240, seed=0, missing=0.15):
  """A 40-level city that the number `a` predicts, a 3-level colour, a flag; gaps in a and city."""
  rng = np.random.default_rng(seed)
  k = np.arange(n) % 40
  full = pd.DataFrame(
    {
      "id": [f"r{i}" for i in range(n)],
      "a": k / 4 + rng.normal(0, 0.05, n),
      "city": np.array(CITIES, object)[k],
      "colour": np.array(["red", "green", "blue"], object)[k % 3],
      "flag": np.where(k % 2 == 0, "yes", "no").astype(object),
    }
  )
  holed = full.copy()
  for name in ("a", "city"):
    holed.loc[rng.random(n) < missing, name] = None
  return full, holed


def _config(path, **flags):
  settings = dict(
    dataset=f"csv:{path}",
    id_column="id",
    model="ae_mlp",
    widths="32",
    latent_dim=4,
    batch_size=32,
    num_steps=40,
    learning_rate=3e-3,
    evaluators=["metrics", "features"],
  )
  settings.update(flags)
  steps = settings["num_steps"]
  for name in ("eval_every", "checkpoint_every", "log_every"):
    settings.setdefault(name, steps)
  return dlu.make_config(**settings)


def _stored_column(workdir, name):
  stored = json.loads(open(os.path.join(workdir, "preprocessing.json")).read())
  return next(c for c in stored["schema"]["columns"] if c["name"] == name)


def test_the_rule_the_schema_and_its_json_and_old_files_load_one_hot():
  assert [columns.embedding_dim(n) for n in (17, 40, 100, 10_000)] == [8, 13, 16, 16]
  kinds = {"a": "numeric", "city": "categorical", "colour": "categorical"}
  full, _ = _table(n=80)
  cells = {n: pa.chunked_array([full[n].tolist()]) for n in kinds}
  schema = columns.fit_schema(kinds, cells, embed_levels=16)
  assert [c.embed_dim for c in schema.columns] == [0, 13, 0]  # colour: 3 levels, one-hot
  assert schema.embedded() == ((1, 41, 13),)
  assert columns.fit_schema(kinds, cells, embed_levels=0).embedded() == ()
  assert columns.fit_schema(kinds, cells, embed_levels=40).embedded() == ()  # 40 is not > 40
  fields = json.loads(json.dumps(schema.to_dict()))
  assert fields["columns"][1]["embed_dim"] == 13 and "embed_dim" not in fields["columns"][2]
  assert columns.Schema.from_dict(fields) == schema
  # A file written before embeddings has no embed_dim: every category one-hot.
  del fields["columns"][1]["embed_dim"]
  assert columns.Schema.from_dict(fields).embedded() == ()
  fields["columns"][0]["embed_dim"] = 4
  with pytest.raises(ValueError, match=r"column 'a': embed_dim 4: expected .* categorical"):
    columns.Schema.from_dict(fields)


def test_the_embedding_reads_level_ids_and_an_unknown_row_for_missing_or_unseen():
  # Columns: a number, a 4-level category (embedded in 3 numbers), a boolean.
  x = np.array(
    [
      [0.5, 0, 0, 1, 0, 1],  # level 2
      [0.1, 1, 0, 0, 0, 0],  # level 0
      [0.2, 0, 0, 0, 0, 1],  # missing or unseen (all zeros): the extra row, 4
    ],
    np.float32,
  )
  mask = np.ones_like(x)
  mask[2, 1:5] = 0
  layer = TableEmbedding(6, ((1, 5, 3),))
  params = layer.init(jax.random.key(0), jnp.asarray(x))
  table = params["params"]["embed_0"]["embedding"]
  assert table.shape == (5, 3) and not np.any(table[4]) and np.all(table[:4] != 0)
  out = np.asarray(layer.apply(params, jnp.asarray(x)))
  np.testing.assert_array_equal(out[:, :2], x[:, [0, 5]])
  np.testing.assert_array_equal(out[:, 2:], np.asarray(table)[[2, 0, 4]])
  masked = np.asarray(layer.apply(params, jnp.asarray(np.concatenate([x, mask], 1))))
  assert masked.shape == (3, 2 + 3 + 2)  # the embedded columns' mask is the id's unknown row
  np.testing.assert_array_equal(masked[:, 5:], mask[:, [0, 5]])


def test_a_bad_flag_is_one_line(tmp_path):
  full, _ = _table(n=40)
  path = tmp_path / "t.csv"
  full.to_csv(path, index=False)
  with pytest.raises(UsageError, match=r"--embed_levels=-1: expected a whole number >= 0"):
    dlu.train_and_evaluate(_config(path, embed_levels=-1), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_ae_mlp_embeds_a_40_level_city_fills_it_and_applies_to_an_unseen_one(tmp_path):
  _, holed = _table()
  path = tmp_path / "t.csv"
  holed.to_csv(path, index=False)
  workdir = str(tmp_path / "run")
  dlu.train_and_evaluate(_config(path, impute="model", num_steps=60), workdir)
  city = _stored_column(workdir, "city")
  levels = len(city["categories"])
  assert levels > 16 and city["embed_dim"] == columns.embedding_dim(levels)
  assert "embed_dim" not in _stored_column(workdir, "colour")
  run = dlu.load_run(workdir)
  params = run.state.params
  assert params["table_input"]["embed_0"]["embedding"].shape == (levels + 1, city["embed_dim"])
  width = len(run.dataset.preprocessing.columns)  # the one-hot encoded columns
  fan_in = params["encoder"]["dense_0"]["kernel"].shape[0]
  # The network reads the other columns and their mask, and the city's embedding.
  assert fan_in == 2 * (width - levels) + city["embed_dim"] < 2 * width
  # The decoder still scores every level: the per-column evaluator reads the city's accuracy.
  rows = open(os.path.join(workdir, "columns_0000060.csv")).read()
  assert "city,categorical,accuracy," in rows
  filled = run.impute(holed)
  assert not filled["city"].isna().any() and set(filled["city"]) <= set(city["categories"])
  seen = holed["city"].notna()
  assert list(filled["city"][seen]) == list(holed["city"][seen])
  # New rows with a city first seen now: encoded as the unknown level and counted.
  new = tmp_path / "new.csv"
  new.write_text("id,a,city,colour,flag\nn1,1.0,city04,red,yes\nn2,2.0,Atlantis,blue,no\n")
  out = tmp_path / "out.csv"
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.apply",
      f"--workdir={workdir}",
      f"--input=csv:{new}",
      f"--output={out}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert "1 cell of categories not seen in training" in done.stdout and "'city' 1" in done.stdout
  lines = out.read_text().splitlines()
  assert [line.split(",")[0] for line in lines[1:]] == ["n1", "n2"]


@pytest.mark.slow
def test_an_embedded_run_resumes_bit_identically_and_idec_starts_from_it(tmp_path):
  _, holed = _table(n=120)
  path = tmp_path / "t.csv"
  holed.to_csv(path, index=False)
  cfg = _config(path, impute="model", num_steps=20, checkpoint_every=10, evaluators=[])
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  dlu.train_and_evaluate(cfg, straight)
  dlu.train_and_evaluate(cfg.replace(num_steps=10), split)
  dlu.train_and_evaluate(cfg, split)
  a, b = read_checkpoint(straight, 20), read_checkpoint(split, 20)
  assert "table_input" in a["params"]
  for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
    np.testing.assert_array_equal(x, y)
  for x, y in zip(jax.tree.leaves(a["opt_state"]), jax.tree.leaves(b["opt_state"]), strict=True):
    np.testing.assert_array_equal(x, y)
  # IDEC starts from an autoencoder run: its encoder, the embedding included (no gaps: IDEC
  # does not mask).
  full_path = tmp_path / "full.csv"
  _table(n=120)[0].to_csv(full_path, index=False)
  ae, idec = str(tmp_path / "ae"), str(tmp_path / "idec")
  dlu.train_and_evaluate(_config(full_path, num_steps=4, evaluators=[]), ae)
  cfg = _config(full_path, model="idec", init_from=ae, n_clusters=3, num_steps=4, evaluators=[])
  dlu.train_and_evaluate(cfg, idec)
  assert "embed_0" in read_checkpoint(idec, 4)["params"]["ae"]["table_input"]


@pytest.mark.slow
def test_ae_seed_and_the_vae_embed_gain_reads_one_hot_and_an_old_workdir_stays_one_hot(tmp_path):
  _, holed = _table(n=120)
  path = tmp_path / "t.csv"
  holed.to_csv(path, index=False)
  for model, extra in (
    ("ae_seed", dict(hidden_units=8)),
    ("vae", dict(widths="16", likelihood="gaussian", binarize="none")),
  ):
    workdir = str(tmp_path / model)
    cfg = _config(path, model=model, impute="model", num_steps=8, evaluators=["metrics"], **extra)
    dlu.train_and_evaluate(cfg, workdir)
    assert _stored_column(workdir, "city")["embed_dim"] == 13
    run = dlu.load_run(workdir)
    assert "embed_0" in run.state.params["table_input"]
    assert not run.impute(holed)["city"].isna().any()
  # GAIN reads categories one-hot: its table is fitted so, whatever --embed_levels says.
  workdir = str(tmp_path / "gain")
  cfg = _config(path, model="gain", gain_widths=["16"], num_steps=4, evaluators=["metrics"])
  dlu.train_and_evaluate(cfg, workdir)
  assert "embed_dim" not in _stored_column(workdir, "city")
  # A workdir written before embeddings: no embed_dim stored, no --embed_levels in flags.txt.
  # Today's default (16) resumes it as it was trained, one-hot.
  old = str(tmp_path / "old")
  cfg = _config(path, impute="model", num_steps=4, evaluators=[], embed_levels=0)
  dlu.train_and_evaluate(cfg, old)
  flags_file = os.path.join(old, "flags.txt")
  text = open(flags_file).read()
  assert "--embed_levels=0\n" in text
  open(flags_file, "w").write(text.replace("--embed_levels=0\n", ""))
  assert "embed_dim" not in _stored_column(old, "city")
  dlu.train_and_evaluate(cfg.replace(num_steps=8, embed_levels=16), old)
  params = read_checkpoint(old, 8)["params"]
  assert "table_input" not in params and "embed_dim" not in _stored_column(old, "city")


def test_a_model_that_reads_one_hot_refuses_embedded_columns_in_one_line():
  spec = DataSpec((45,), None, 100, columns=(("categorical", 0, 40),), embedded=((0, 40, 13),))
  cfg = dlu.make_config(model="gain", impute="model", dataset="csv:/x.csv")
  with pytest.raises(UsageError, match=r"--model=gain reads categories one-hot only.*--embed_lev"):
    get("gain")(cfg, spec)
