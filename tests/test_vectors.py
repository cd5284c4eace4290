"""Tables and vectors end to end: families on a small CSV (wine), resume, evaluate, the
features evaluator, conv models refused, and a trained run applied to new rows."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dlu
from dlu import config, families
from dlu.data import fingerprints, preprocessing, tables
from dlu.errors import UsageError
from dlu.train import experiment, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wine_csv(tmp_path_factory):
  """scikit-learn's wine table (178 rows, 13 features) with a string label column."""
  from sklearn import datasets

  wine = datasets.load_wine()
  path = str(tmp_path_factory.mktemp("wine") / "wine.csv")
  names = [n.replace("/", "_") for n in wine.feature_names]
  with open(path, "w") as f:
    f.write(",".join(names + ["cultivar"]) + "\n")
    for row, label in zip(wine.data, wine.target, strict=True):
      f.write(",".join(f"{v:g}" for v in row) + f",c{label}\n")
  return path


def _cfg(csv, **overrides):
  base = dict(
    dataset=f"csv:{csv}",
    label_column="cultivar",
    batch_size=32,
    num_steps=40,
    log_every=20,
    eval_every=20,
    checkpoint_every=20,
    eval_batch_size=64,
    widths=["16"],
    latent_dim=4,
    embedding_plot="none",
  )
  return config.make_config(**{**base, **overrides})


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_conv_models_and_pixel_losses_refuse_vectors(wine_csv, tmp_path):
  for model, message in (
    (
      "ae_conv",
      "--model=ae_conv needs images \\[H, W, C\\]; the data are vectors of 13 "
      "features \\(use --model=ae_mlp\\)",
    ),
    ("conv_vae", "--model=conv_vae needs images"),
    ("dcgan", "--model=dcgan needs images"),
    ("simclr_conv", "--model=simclr_conv needs images"),
  ):
    with pytest.raises(UsageError, match=message):
      experiment.build(_cfg(wine_csv, model=model, conv_channels=["4"]), str(tmp_path))
  with pytest.raises(UsageError, match="--recon_loss=bce needs targets in \\[0, 1\\]"):
    experiment.build(_cfg(wine_csv, model="ae_mlp", recon_loss="bce"), str(tmp_path))
  with pytest.raises(UsageError, match="--model=vae on vectors needs --likelihood=gaussian"):
    experiment.build(_cfg(wine_csv, model="vae"), str(tmp_path))
  assert not os.listdir(tmp_path)  # nothing written


@pytest.fixture(scope="module")
def ae_run(wine_csv, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ae") / "run")
  cfg = _cfg(wine_csv, model="ae_mlp", evaluators=["metrics", "features", "clustering:40"])
  loop.train_and_evaluate(cfg.replace(num_steps=20), workdir)
  loop.train_and_evaluate(cfg, workdir)  # resumes at 20
  return workdir, cfg


@pytest.mark.slow
def test_autoencoder_on_a_table_trains_resumes_and_evaluates(ae_run, tmp_path):
  workdir, cfg = ae_run
  rows = _rows(workdir)
  evals = [r for r in rows if r["split"] == "valid"]
  assert [r["step"] for r in evals] == [20, 40]
  assert "psnr" not in evals[-1] and evals[-1]["mse"] < evals[0]["mse"]
  assert {"acc", "nmi", "ari", "feature_mse_max"} <= set(evals[-1]) and evals[-1]["acc"] > 0.4
  pre = preprocessing.Preprocessing.load(os.path.join(workdir, "preprocessing.json"))
  assert pre.scaling == "standard" and pre.label_column == "cultivar" and len(pre.columns) == 13
  assert os.path.exists(os.path.join(workdir, "feature_error_0000040.csv"))
  assert os.path.exists(os.path.join(workdir, "images", "embedding_pca_0000040.png"))
  assert not any(f.startswith("reconstructions") for f in os.listdir(f"{workdir}/images"))
  # Resumed at 20 = straight to 40.
  straight = str(tmp_path / "straight")
  loop.train_and_evaluate(cfg, straight)
  a, b = (
    np.load(os.path.join(w, "embeddings_test.npz"))["embeddings"] for w in (workdir, straight)
  )
  np.testing.assert_array_equal(a, b)


def test_dlu_load_run_applies_the_stored_scaling(ae_run, wine_csv, tmp_path):
  workdir, cfg = ae_run
  run = dlu.load_run(workdir)
  names, raw, labels = tables.read_table(wine_csv, fmt="csv", label_column="cultivar", what="t")
  digests = fingerprints.row_digests(names, raw, labels)
  _, test_rows = fingerprints.content_split(digests, cfg.test_fraction, cfg.seed, "t")
  z = run.encode(raw[test_rows])
  np.testing.assert_allclose(
    z, np.load(f"{workdir}/embeddings_test.npz")["embeddings"], rtol=1e-5, atol=1e-6
  )
  recon = run.reconstruct(raw)
  assert recon.shape == raw.shape and abs(recon.mean() - raw.mean()) < raw.std()  # raw units
  scores = run.score(raw)
  assert scores.shape == (178,) and (scores >= 0).all()
  clusters, confidence = run.assign(raw)  # the k-means the clustering evaluator saved
  assert clusters.shape == (178,) and set(clusters) <= {0, 1, 2} and (confidence <= 1).all()
  with pytest.raises(UsageError, match="trained on rows of 13 features"):
    run.encode(raw[:, :5])


@pytest.mark.slow
def test_experiments_apply_matches_by_column_name(ae_run, wine_csv, tmp_path):
  from dlu.train import apply
  from experiments.apply import results

  workdir, _ = ae_run
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.apply",
      f"--workdir={workdir}",
      f"--input=csv:{wine_csv}",
      f"--output={tmp_path / 'out.csv'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  written = np.genfromtxt(tmp_path / "out.csv", delimiter=",", names=True)
  assert len(written) == 178 and {
    "embedding_0",
    "embedding_3",
    "score",
    "cluster",
    "confidence",
  } <= set(written.dtype.names)

  header, *lines = open(wine_csv).read().splitlines()
  order = list(reversed(range(len(header.split(",")))))  # every column moved, the label first
  shuffled = tmp_path / "shuffled.csv"
  shuffled.write_text(
    "\n".join(",".join(line.split(",")[i] for i in order) for line in [header] + lines) + "\n"
  )
  run = dlu.load_run(workdir)
  out = results(run, apply.read_inputs(f"csv:{shuffled}", run))
  np.testing.assert_allclose(out["score"], written["score"], rtol=1e-5)
  np.testing.assert_allclose(out["embedding"][:, 0], written["embedding_0"], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out["cluster"], written["cluster"])
  missing = tmp_path / "missing.csv"
  missing.write_text("\n".join(",".join(line.split(",")[1:]) for line in [header] + lines) + "\n")
  with pytest.raises(UsageError, match=f"lacks the feature columns .*{header.split(',')[0]}"):
    apply.read_inputs(f"csv:{missing}", run)


@pytest.mark.parametrize(
  "model,overrides,keys",
  [
    ("vae", dict(likelihood="gaussian", binarize="none", learn_variance=True), {"elbo", "kl"}),
    ("mlp_gan", dict(gan_widths=["16"], conditional=True), {"d_real_test", "d_fake_test"}),
    ("simclr_mlp", dict(cluster_head=True, projection_dims=["8"]), {"top1", "acc"}),
  ],
)
@pytest.mark.slow
def test_vector_families_train_resume_evaluate_and_apply(
  wine_csv, tmp_path, model, overrides, keys
):
  from dlu.train import evaluate

  workdir = str(tmp_path / model)
  cfg = _cfg(wine_csv, model=model, num_steps=20, checkpoint_every=10, **overrides)
  loop.train_and_evaluate(cfg.replace(num_steps=10), workdir)
  loop.train_and_evaluate(cfg, workdir)  # resumes at 10
  rows = _rows(workdir)
  train_steps = [r["step"] for r in rows if r["split"] == "train"]
  assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 20  # none repeated
  final = [r for r in rows if r["split"] == "test"][-1]
  assert final["step"] == 20
  assert keys <= set(final) and all(np.isfinite(v) for v in final.values() if isinstance(v, float))
  evaluated = evaluate.evaluate_workdir(workdir, probe=False, baselines=False)
  assert evaluated["step"] == 20 and keys <= set(evaluated)
  assert _rows(workdir)[-1]["split"] == "evaluate"
  run = dlu.load_run(workdir)
  _, raw, _ = tables.read_table(wine_csv, fmt="csv", label_column="cultivar", what="t")
  assert run.encode(raw).shape[0] == 178
  if model != "simclr_mlp":
    samples, labels = run.sample(4)
    per_class = 3 if model == "mlp_gan" else 1  # conditional: 4 per class
    assert samples.shape == (4 * per_class, 13)
    assert (labels is None) == (model == "vae")
    assert run.score(raw).shape == (178,)
  else:
    clusters, confidence = run.assign(raw)
    assert clusters.shape == (178,) and (confidence > 0).all()


@pytest.mark.slow
def test_dec_on_a_table_resumes_evaluates_and_uses_the_autoencoders_scaling(ae_run, tmp_path):
  from dlu.train import evaluate

  ae, _ = ae_run
  workdir = str(tmp_path / "idec")
  cfg = config.config_from_flagfile(
    os.path.join(ae, "flags.txt"),
    model="idec",
    init_from=ae,
    num_steps=20,
    target_update_every=10,
    workdir=workdir,
    evaluators=["metrics"],
  )
  families.validate(cfg)
  loop.train_and_evaluate(cfg.replace(num_steps=10, checkpoint_every=10), workdir)
  loop.train_and_evaluate(cfg, workdir)  # resumes at 10
  final = [r for r in _rows(workdir) if r["split"] == "test"][-1]
  assert final["step"] == 20 and {"acc", "nmi", "mse", "confidence"} <= set(final)
  evaluated = evaluate.evaluate_workdir(workdir, probe=False, baselines=False)
  assert evaluated["step"] == 20 and {"acc", "nmi", "mse"} <= set(evaluated)
  assert evaluated["acc"] > 0.45  # every row (train and test) through the clustering layer
  stored = [open(os.path.join(w, "preprocessing.json")).read() for w in (ae, workdir)]
  assert stored[0] == stored[1]


def test_load_run_on_an_image_run(tmp_path):
  from dlu import data

  workdir = str(tmp_path / "digits")
  cfg = config.make_config(
    model="ae_seed",
    hidden_units=8,
    dataset="digits",
    batch_size=64,
    num_steps=20,
    log_every=10,
    eval_every=20,
    checkpoint_every=20,
    eval_batch_size=512,
    num_images=8,
  )
  loop.train_and_evaluate(cfg, workdir)
  run = dlu.load_run(workdir)
  ds = data.load("digits")
  np.testing.assert_allclose(
    run.encode(ds.x_test), np.load(f"{workdir}/embeddings_test.npz")["embeddings"], rtol=1e-6
  )
  recon = run.reconstruct(ds.x_test[:5, ..., 0])  # [N, H, W] is read as one channel
  assert recon.shape == (5, 8, 8, 1) and 0 <= recon.min() and recon.max() <= 1
  assert run.score(ds.x_test).shape == (297,)
  with pytest.raises(UsageError, match=r"trained on images of shape \(8, 8, 1\)"):
    run.encode(np.zeros((2, 9, 9, 1), np.uint8))
  with pytest.raises(UsageError, match="experiments.evaluate"):
    run.assign(ds.x_test)  # no clustering layer, and no k-means kept yet
  with pytest.raises(UsageError, match="draws no samples"):
    run.sample(2)
