"""Time series: the series: readers, masks, scaling, the sequence autoencoders, and a run on a
written .ts file trained, evaluated and applied."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from dlu.data import series, sources
from dlu.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_ts(path, n=12, unequal=True, missing=True, bad_line=None):
  rng = np.random.default_rng(0)
  lines = ["# toy", "@problemName Toy", "@timeStamps false", "@classLabel true a b", "@data"]
  for i in range(n):
    t = 10 + (i % 4 if unequal else 0)
    a = [f"{v:.3f}" for v in rng.normal(size=t) + i % 2]
    b = [f"{v:.3f}" for v in rng.normal(size=t)]
    if missing and i == 1:
      a[2] = "?"
    lines.append(f"{','.join(a)}:{','.join(b)}:{'ab'[i % 2]}")
  if bad_line is not None:
    lines.insert(bad_line, "1,2,x:3,4,5:a")
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_ts_multivariate_unequal_lengths_padded_with_mask(tmp_path):
  raw = series.read_ts(_write_ts(tmp_path / "t.ts"), "t")
  assert [s.shape for s in raw.series[:4]] == [(10, 2), (11, 2), (12, 2), (13, 2)]
  assert list(raw.labels[:3]) == ["a", "b", "a"] and np.isnan(raw.series[1][2, 0])
  opts = sources.TableOptions(series_scaling="none")
  ds = sources.load(f"series:{tmp_path / 't.ts'}", table_options=opts)
  assert ds.is_series and ds.x_train.shape[1:] == (13, 2) and ds.x_train.dtype == np.float32
  assert ds.num_classes == 2 and len(ds.x_train) + len(ds.x_test) == 12
  x = np.concatenate([ds.x_train, ds.x_test])
  lengths = series.observed(x).any(axis=2).sum(axis=1)  # padding is masked
  assert sorted(lengths.tolist()) == sorted([10 + i % 4 for i in range(12)])
  assert np.isnan(x).sum() == sum(13 - (10 + i % 4) for i in range(12)) * 2 + 1
  assert "padded (masked) to 13 steps" in sources.describe(ds)


def test_resampled_length_and_scalings(tmp_path):
  path = f"series:{_write_ts(tmp_path / 't.ts', missing=False)}"
  ds = sources.load(path, table_options=sources.TableOptions(series_length=8))
  assert ds.x_train.shape[1:] == (8, 2) and not np.isnan(ds.x_train).any()
  np.testing.assert_allclose(ds.x_train.mean(axis=1), 0, atol=1e-5)  # znorm per series, channel
  np.testing.assert_allclose(ds.x_train.std(axis=1), 1, atol=1e-4)
  assert "resampled to 8 steps" in sources.describe(ds)
  glob_ = sources.load(path, table_options=sources.TableOptions(series_scaling="global"))
  np.testing.assert_allclose(np.nanmean(glob_.x_train, axis=(0, 1)), 0, atol=1e-5)
  # Stored and read back, the preprocessing transforms as it did.
  pre = glob_.preprocessing
  pre.save(str(tmp_path / series.FILE_NAME))
  again = series.SeriesPreprocessing.load(str(tmp_path / series.FILE_NAME))
  assert again == pre
  opts = sources.TableOptions(preprocessing=again, series_scaling="none")
  np.testing.assert_array_equal(sources.load(path, table_options=opts).x_test, glob_.x_test)
  s = np.linspace(0, 1, 5)[:, None]
  np.testing.assert_allclose(series.resample(s, 9)[:, 0], np.linspace(0, 1, 9))


def test_tsv_label_first_and_csv_label_column(tmp_path):
  (tmp_path / "u.tsv").write_text("1\t0.1\t0.2\t0.3\n2\t1.0\t2.0\tNaN\n1\t3\t4\t5\n")
  raw = series.read_file(str(tmp_path / "u.tsv"), "u")
  assert list(raw.labels) == ["1", "2", "1"] and [len(s) for s in raw.series] == [3, 2, 3]
  (tmp_path / "u.csv").write_text("a,b,c,cls\n1,2,3,x\n4,5,6,y\n")
  raw = series.read_file(str(tmp_path / "u.csv"), "u", label_column="cls")
  assert list(raw.labels) == ["x", "y"] and raw.series[1][:, 0].tolist() == [4, 5, 6]
  (tmp_path / "n.csv").write_text("1,2,3\n4,5,\n")
  raw = series.read_file(str(tmp_path / "n.csv"), "n", label_column="none")
  assert raw.labels is None and [s.shape for s in raw.series] == [(3, 1), (2, 1)]


def test_npz_and_train_test_directory(tmp_path):
  x = np.random.default_rng(0).normal(size=(6, 9, 3))
  x[0, 5:] = np.nan  # a shorter series
  np.savez(tmp_path / "Toy_TRAIN.npz", x=x, y=np.array([0, 1, 0, 1, 0, 1]))
  np.savez(tmp_path / "Toy_TEST.npz", x=x[:4], y=np.array([1, 0, 1, 0]))
  ds = sources.load(f"series:{tmp_path}")
  assert ds.x_train.shape == (6, 9, 3) and ds.x_test.shape == (4, 9, 3)
  assert ds.y_test.tolist() == [1, 0, 1, 0] and np.isnan(ds.x_train[0, 5:]).all()
  # UCR ships a split in several forms: other suffixes are passed over; two NAMEs are refused.
  (tmp_path / "Toy_TRAIN.arff").write_text("@relation toy\n")
  assert sources.load(f"series:{tmp_path}").x_train.shape == (6, 9, 3)
  np.savez(tmp_path / "Other_TEST.npz", x=x[:2])
  with pytest.raises(UsageError, match="holds 2 \\*_TEST files \\(Other_TEST.npz, Toy_TEST.npz\\)"):
    sources.load(f"series:{tmp_path}")


@pytest.mark.parametrize(
  "write, expected",
  [
    (
      lambda p: _write_ts(p / "b.ts", bad_line=7),
      "b.ts line 8, channel 1: value 3 is 'x'; expected a number",
    ),
    (
      lambda p: (p / "b.ts").write_text("@data\n1,2:3,4\n1,2\n") and str(p / "b.ts"),
      "line 3: 1 channels; expected 2",
    ),
    (
      lambda p: (p / "b.ts").write_text("@problemName x\n1,2\n") and str(p / "b.ts"),
      "line 2: '1,2' comes before @data",
    ),
    (
      lambda p: (p / "b.tsv").write_text("1\t2\t3\n1\tinf\t3\n") and str(p / "b.tsv"),
      "b.tsv line 2: value 1 is infinite",
    ),
    (lambda p: str(p / "missing.ts"), "missing.ts does not exist"),
  ],
)
def test_bad_files_one_line_errors(tmp_path, write, expected):
  path = write(tmp_path)
  with pytest.raises(UsageError, match=expected) as e:
    sources.load(f"series:{path}")
  assert "\n" not in str(e.value)


def test_longer_series_refused_when_padded(tmp_path):
  pre = series.fit_preprocessing([np.zeros((5, 1))], 1)
  with pytest.raises(UsageError, match="series 1 has 7 steps; the run pads to 5"):
    pre.transform([np.arange(7.0)])


@pytest.mark.parametrize("model", ["ae_conv1d", "ae_seq"])
@pytest.mark.slow
def test_models_shapes_and_masked_loss(model):
  from dlu import config, families  # noqa: PLC0415

  cfg = config.make_config(model=model, latent_dim=4, conv_channels=["4", "8"], seq_units=8)
  spec = families.DataSpec((13, 2), 2, 10)
  fam = families.get(model)(cfg, spec)
  state = fam.init_state(jax.random.key(0))
  x = np.random.default_rng(0).normal(size=(3, 13, 2)).astype(np.float32)
  x[0, 9:] = np.nan
  assert fam.reconstruct(state, x).shape == (3, 13, 2)
  assert fam.embed(state, x).shape == (3, 4)
  scores = fam.score(state, x)
  assert scores.shape == (3,) and np.isfinite(scores).all()
  assert fam.step_scores(state, x).shape == (3, 13)
  # What the padded steps hold does not change the loss: they are masked.
  loss = lambda v: fam.loss(state.params, {"image": v}, jax.random.key(1))[0]
  y = x.copy()
  y[0, 9:] = np.nan
  np.testing.assert_allclose(loss(x), loss(y))
  with pytest.raises(UsageError, match="needs time series"):
    families.get(model)(cfg, families.DataSpec((8, 8, 1), None, 10))


@pytest.mark.slow
def test_train_evaluate_and_load_run_on_series(tmp_path):
  path = _write_ts(tmp_path / "toy.ts", n=40)
  workdir = str(tmp_path / "wd")
  flags = [
    "--flagfile=experiments/configs/ae_conv1d_series.flags",
    f"--dataset=series:{path}",
    "--series_length=16",
    "--batch_size=8",
    "--num_steps=20",
    "--eval_every=10",
    "--checkpoint_every=10",
    "--log_every=10",
    "--latent_dim=4",
    "--conv_channels=8,8",
    "--eval_batch_size=16",
    f"--workdir={workdir}",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda m, *a: subprocess.run(
    [sys.executable, "-m", m, *a], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )
  out = run("experiments.train", *flags)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "resampled to 16 steps, znorm scaling" in out.stdout
  images = os.listdir(os.path.join(workdir, "images"))
  assert "series_reconstructions_0000020.png" in images, images
  stored = json.load(open(os.path.join(workdir, series.FILE_NAME)))
  assert stored["length"] == 16 and stored["scaling"] == "znorm" and stored["channels"] == 2
  out = run("experiments.evaluate", f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "mse" in open(os.path.join(workdir, "eval.json")).read()
  out = run(
    "experiments.apply",
    f"--workdir={workdir}",
    f"--input=series:{path}",
    f"--output={tmp_path / 'out.csv'}",
  )
  assert out.returncode == 0, out.stderr[-2000:]
  header = open(tmp_path / "out.csv").readline()
  assert "embedding_3" in header and "score" in header
  import dlu  # noqa: PLC0415

  r = dlu.load_run(workdir)
  assert r.encode(f"series:{path}").shape == (40, 4)
  ragged = [np.random.default_rng(1).normal(size=(t, 2)) for t in (5, 30)]
  assert r.score(ragged).shape == (2,) and r.reconstruct(ragged).shape == (2, 16, 2)
  steps = r.step_scores(ragged)
  assert steps.shape == (2, 16) and np.all(steps >= 0)
  np.testing.assert_allclose(steps.mean(axis=1), r.score(ragged), rtol=1e-4)


@pytest.mark.slow
def test_series_run_resumes_bit_identically(tmp_path):
  path = _write_ts(tmp_path / "toy.ts", n=24)
  common = [
    "--model=ae_conv1d",
    f"--dataset=series:{path}",
    "--batch_size=8",
    "--eval_every=10",
    "--checkpoint_every=5",
    "--log_every=5",
    "--latent_dim=4",
    "--conv_channels=4",
    "--evaluators=metrics",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")

  def train(workdir, steps):
    out = subprocess.run(
      [
        sys.executable,
        "-m",
        "experiments.train",
        *common,
        f"--num_steps={steps}",
        f"--workdir={workdir}",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout

  def last_train_row(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    row = [r for r in rows if r["split"] == "train" and r["step"] == 10][-1]
    return {k: row[k] for k in ("loss", "grad_norm", "param_norm")}

  train(tmp_path / "a", 10)
  train(tmp_path / "b", 5)
  assert "from step 5" in train(tmp_path / "b", 10)  # resumed, not retrained
  assert last_train_row(tmp_path / "a") == last_train_row(tmp_path / "b")


def test_series_plot_draws_a_grid():
  from dlu.evaluators import series_plots  # noqa: PLC0415

  x = np.random.default_rng(0).normal(size=(5, 12, 2))
  x[0, 8:] = np.nan
  image = series_plots.draw(x, x * 0.5, "t")
  assert image.ndim == 3 and image.shape[2] == 3 and 0 <= image.min() < image.max() <= 1


def test_other_models_refuse_series(tmp_path):
  from dlu import config  # noqa: PLC0415
  from dlu.train import experiment  # noqa: PLC0415

  path = _write_ts(tmp_path / "t.ts")
  cfg = config.make_config(model="ae_mlp", dataset=f"series:{path}", batch_size=4)
  with pytest.raises(UsageError, match="--model=ae_mlp does not take time series.*ae_conv1d"):
    experiment.build(cfg, str(tmp_path / "wd"))
  assert not os.path.exists(tmp_path / "wd")


@pytest.mark.parametrize("model", ["ae_conv1d", "ae_seq"])
@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_outputs(model):
  from dlu import config, families  # noqa: PLC0415

  cfg = config.make_config(
    model=model, compute_dtype="bfloat16", latent_dim=4, conv_channels=["4"], seq_units=8
  )
  fam = families.get(model)(cfg, families.DataSpec((9, 2), None, 10))
  state = fam.init_state(jax.random.key(0))
  x = np.random.default_rng(0).normal(size=(2, 9, 2)).astype(np.float32)
  x[1, 6:] = np.nan
  assert {p.dtype for p in jax.tree.leaves(state.params)} == {np.dtype(np.float32)}
  assert fam.reconstruct(state, x).dtype == np.float32
  assert np.isfinite(fam.loss(state.params, {"image": x}, jax.random.key(1))[0])


def test_prepared_records_read_as_the_series_they_came_from(tmp_path):
  from dlu.data import preparation  # noqa: PLC0415

  path = _write_ts(tmp_path / "toy.ts", n=40)  # unequal lengths and a missing step
  x = np.random.default_rng(0).normal(size=(6, 9, 3))
  x[0, 5:] = np.nan
  split = tmp_path / "split"
  split.mkdir()
  np.savez(split / "Toy_TRAIN.npz", x=x, y=np.array(["u", "v", "u", "v", "u", "v"]))
  np.savez(split / "Toy_TEST.npz", x=x[:4, :7], y=np.array(["v", "u", "v", "u"]))
  for source in (f"series:{path}", f"series:{split}"):
    out = str(tmp_path / f"rec_{os.path.basename(source)}")
    summary = preparation.prepare_records(source, out)
    assert "float64" in summary and f"--dataset=records:{out}" in summary
    for opts in (
      sources.TableOptions(),
      sources.TableOptions(series_length=16, series_scaling="global"),
    ):
      want = sources.load(source, table_options=opts)
      got = sources.load(f"records:{out}", table_options=opts)
      assert got.is_series and got.preprocessing == want.preprocessing
      assert got.x_train.shape == want.x_train.shape and got.x_train.dtype == np.float32
      np.testing.assert_array_equal(np.asarray(got.x_train), want.x_train)  # NaN where masked
      np.testing.assert_array_equal(np.asarray(got.x_test), want.x_test)
      np.testing.assert_array_equal(got.y_train, want.y_train)
      np.testing.assert_array_equal(got.y_test, want.y_test)
  # The same source again: nothing to do; a changed file: refused, the records kept.
  out = str(tmp_path / "rec_toy.ts")
  assert "already" in preparation.prepare_records(f"series:{path}", out)
  _write_ts(tmp_path / "toy.ts", n=44)
  with pytest.raises(UsageError, match="prepared from other contents"):
    preparation.prepare_records(f"series:{path}", out)
  assert len(sources.load(f"records:{out}").x_train) == 36


@pytest.mark.slow
def test_a_run_on_prepared_series_records_trains_as_on_the_file(tmp_path):
  path = _write_ts(tmp_path / "toy.ts", n=24)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda m, *a: subprocess.run(
    [sys.executable, "-m", m, *a], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )
  out = run("experiments.prepare_data", f"--dataset=series:{path}", f"--out={tmp_path / 'rec'}")
  assert out.returncode == 0, out.stderr[-2000:]
  common = [
    "--model=ae_conv1d",
    "--batch_size=8",
    "--num_steps=10",
    "--log_every=5",
    "--eval_every=10",
    "--checkpoint_every=10",
    "--latent_dim=4",
    "--conv_channels=4",
    "--evaluators=metrics",
  ]
  rows = {}
  for name, dataset in (("file", f"series:{path}"), ("records", f"records:{tmp_path / 'rec'}")):
    workdir = str(tmp_path / name)
    out = run("experiments.train", *common, f"--dataset={dataset}", f"--workdir={workdir}")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    rows[name] = [{k: r.get(k) for k in ("step", "split", "loss", "mse")} for r in metrics]
  assert rows["records"] == rows["file"] and len(rows["file"]) >= 3
  assert all(r["loss"] is not None for r in rows["file"] if r["split"] == "train")
  # A run trained on records applies to the series file, with nothing but its workdir.
  out = run(
    "experiments.apply",
    f"--workdir={tmp_path / 'records'}",
    f"--input=series:{path}",
    f"--output={tmp_path / 'codes.csv'}",
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert len(open(tmp_path / "codes.csv").read().splitlines()) == 25
