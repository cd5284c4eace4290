"""Series models beyond the autoencoders: the sequence VAEs (vae_conv1d, vae_seq), contrastive
views and simclr_conv1d (with its cluster head), DEC/IDEC on a series autoencoder, and
scripts/ucr_protocol.py --quick on series written here and its table of published figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlu import config, families
from dlu.errors import UsageError
from dlu.ops import views

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = families.DataSpec((13, 2), 2, 16)


def _series(n=8, t=13, c=2, seed=0):
  """Two classes (a sine and a ramp) with noise; series 0 is 4 steps shorter (NaN padding)."""
  rng = np.random.default_rng(seed)
  steps = np.linspace(0, 2 * np.pi, t)
  x = np.stack([np.sin(steps) if i % 2 else steps / np.pi - 1 for i in range(n)])
  x = np.repeat(x[..., None], c, axis=-1) + 0.1 * rng.normal(size=(n, t, c))
  x = x.astype(np.float32)
  x[0, t - 4 :] = np.nan
  return x


def _write_ts(path, n=24, t=20, seed=0):
  rng = np.random.default_rng(seed)
  steps = np.linspace(0, 2 * np.pi, t)
  lines = ["@problemName Toy", "@timeStamps false", "@classLabel true a b", "@data"]
  for i in range(n):
    base = np.sin(steps) if i % 2 else steps / np.pi - 1
    v = base + 0.1 * rng.normal(size=t)
    lines.append(",".join(f"{a:.4f}" for a in v[: t - (i % 3)]) + f":{'ab'[i % 2]}")
  path.write_text("\n".join(lines) + "\n")
  return str(path)


@pytest.mark.slow
def test_series_views_crop_scale_jitter_and_mask():
  x = jnp.asarray(_series(n=64, t=40, c=1))
  x = x.at[1, 10].set(jnp.nan)  # a missing step inside the span
  v = views.series_views(jax.random.key(0), x, min_crop=0.5)
  kept = np.isfinite(np.asarray(v))[..., 0]  # [B, T]
  for b in range(64):
    steps = np.flatnonzero(kept[b])
    observed = np.flatnonzero(np.isfinite(np.asarray(x[b, :, 0])))
    last = observed.max() + 1
    assert steps.min() >= 0 and steps.max() < last  # inside the observed span
    window = np.arange(steps.min(), steps.max() + 1)
    assert set(steps) == set(window) - set(np.flatnonzero(~np.isfinite(np.asarray(x[b, :, 0]))))
    assert len(window) >= math.ceil(0.5 * last) - 1
    np.testing.assert_array_equal(np.asarray(v)[b, steps], np.asarray(x)[b, steps])
  assert not kept[1, 10] and kept.sum(1).min() < 40  # missing stays missing; crops crop
  # Scaling multiplies each channel by one factor; jitter adds noise; masking hides steps.
  s = np.asarray(views.series_views(jax.random.key(1), x, min_crop=1.0, scaling=0.5))
  ratio = s[2] / np.asarray(x[2])
  np.testing.assert_allclose(ratio, np.broadcast_to(ratio[0], ratio.shape), rtol=1e-4)
  assert abs(ratio[0, 0] - 1) > 1e-3
  j = np.asarray(views.series_views(jax.random.key(1), x, min_crop=1.0, jitter=0.1))
  assert 0.05 < np.nanstd(j - np.asarray(x)) < 0.2
  m = np.asarray(views.series_views(jax.random.key(1), x, min_crop=1.0, time_mask=0.5))
  hidden = np.isnan(m[..., 0]) & np.isfinite(np.asarray(x)[..., 0])
  assert 0.4 < hidden.sum() / np.isfinite(np.asarray(x)[..., 0]).sum() < 0.6


@pytest.mark.parametrize("model", ["vae_conv1d", "vae_seq"])
@pytest.mark.slow
def test_vae_gaussian_on_observed_steps_elbo_and_kl(model):
  cfg = config.make_config(
    model=model, latent_dim=3, conv_channels=["4", "8"], seq_units=8, gaussian_std=0.5
  )
  families.validate(cfg)
  fam = families.get(model)(cfg, SPEC)
  state = fam.init_state(jax.random.key(0))
  x = _series()
  # log p(x | z): a Gaussian over the observed values only, whatever the decoder puts at the
  # missing steps.
  out = np.zeros_like(x)
  out2 = np.where(np.isnan(x), 100.0, 0.0).astype(np.float32)
  ll = np.asarray(fam.log_likelihood(state.params, out, x))
  np.testing.assert_allclose(ll, fam.log_likelihood(state.params, out2, x), rtol=1e-6)
  seen = np.isfinite(x)
  expected = np.sum(
    np.where(
      seen, -0.5 * np.square(np.nan_to_num(x) / 0.5) - math.log(0.5 * math.sqrt(2 * math.pi)), 0
    ),
    axis=(1, 2),
  )
  np.testing.assert_allclose(ll, expected, rtol=1e-5)
  # The step logs the ELBO, its reconstruction and KL terms; elbo = -(recon + kl).
  step = jax.jit(fam.train_step)
  state1, m = step(state, {"image": x}, jax.random.key(1))
  assert np.isfinite(float(m["loss"])) and float(m["kl"]) >= 0
  np.testing.assert_allclose(float(m["elbo"]), -(float(m["recon"]) + float(m["kl"])), rtol=1e-5)
  ev = fam.eval_metrics(state1, {"image": x}, jax.random.key(2))
  assert set(ev) == {"elbo", "recon", "kl"} and ev["kl"].shape == (8,)
  # Posterior means, reconstructions, scores per series and per step, prior samples.
  assert fam.embed(state1, x).shape == (8, 3)
  assert fam.reconstruct(state1, x).shape == (8, 13, 2)
  scores = fam.score(state1, x)
  assert scores.shape == (8,) and np.isfinite(scores).all()
  assert fam.step_scores(state1, x).shape == (8, 13)
  samples = fam.decode(state1.params, jax.random.normal(jax.random.key(3), (5, 3)))
  assert samples.shape == (5, 13, 2) and np.isfinite(samples).all()
  # --learn_variance: a learned log std per step and channel.
  cfg = cfg.replace(learn_variance=True)
  fam = families.get(model)(cfg, SPEC)
  assert fam.init_state(jax.random.key(0)).params["pixel_log_std"].shape == (13, 2)


@pytest.mark.slow
def test_simclr_conv1d_trains_and_its_cluster_head_assigns():
  cfg = config.make_config(
    model="simclr_conv1d",
    latent_dim=8,
    conv_channels=["8", "8"],
    series_kernel_size=3,
    projection_dims=["16", "8"],
    cluster_head=True,
    n_clusters=2,
    batch_size=8,
    optimizer="adam",
    learning_rate=3e-3,
  )
  families.validate(cfg)
  fam = families.get("simclr_conv1d")(cfg, SPEC)
  state = fam.init_state(jax.random.key(0))
  x = _series(n=16)
  step = jax.jit(fam.train_step)
  losses = []
  for i in range(15):
    state, m = step(state, {"image": x}, jax.random.key(1))
    losses.append(float(m["loss"]))
  assert np.isfinite(losses).all() and losses[-1] < losses[0]
  assert {"top1", "cluster_loss", "cluster_entropy"} <= set(m)
  z = np.asarray(fam.embed(state, x))
  assert z.shape == (16, 8)
  np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, rtol=1e-5)
  probs = np.asarray(fam.cluster_probs(state, x))
  assert probs.shape == (16, 2)
  np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
  # A series with no observed step still has a finite representation.
  empty = np.full((1, 13, 2), np.nan, np.float32)
  assert np.isfinite(np.asarray(fam.embed(state, empty))).all()


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(model="simclr_conv1d", view_time_mask=1.0), "--view_time_mask"),
    (dict(model="simclr_conv1d", view_jitter=-1.0), "--view_jitter"),
    (dict(model="vae_conv1d", gaussian_std=0.0), "--gaussian_std"),
    (dict(model="vae_seq", seq_units=0), "--seq_units"),
    (dict(model="vae_conv1d", objective="iwae", beta=2.0), "--objective=iwae"),
  ],
)
def test_flags_refused(overrides, message):
  with pytest.raises(UsageError, match=message):
    families.validate(config.make_config(**overrides))


@pytest.mark.parametrize("model", ["vae_conv1d", "vae_seq", "simclr_conv1d"])
def test_series_models_refuse_images(model):
  cfg = config.make_config(model=model, conv_channels=["4"], seq_units=4)
  with pytest.raises(UsageError, match="needs time series"):
    families.get(model)(cfg, families.DataSpec((8, 8, 1), None, 10))


def _train(tmp_path, name, **overrides):
  from dlu.train import loop  # noqa: PLC0415

  cfg = config.make_config(
    **{
      "batch_size": 8,
      "eval_batch_size": 16,
      "num_steps": 12,
      "log_every": 6,
      "eval_every": 12,
      "checkpoint_every": 12,
      "optimizer": "adam",
      "learning_rate": 1e-3,
      "latent_dim": 4,
      "conv_channels": ["8", "8"],
      "evaluators": ["metrics"],
      **overrides,
    }
  )
  workdir = str(tmp_path / name)
  loop.train_and_evaluate(cfg, workdir)
  return workdir


def _rows(workdir, split):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r for r in rows if r["split"] == split]


@pytest.mark.slow
def test_vae_conv1d_run_samples_series_and_plots(tmp_path):
  import dlu  # noqa: PLC0415

  path = _write_ts(tmp_path / "toy.ts")
  workdir = _train(
    tmp_path,
    "vae",
    model="vae_conv1d",
    dataset=f"series:{path}",
    evaluators=["metrics", "series_plots"],
  )
  train = _rows(workdir, "train")[-1]
  assert {"elbo", "kl", "recon", "kl_weight"} <= set(train)
  assert "elbo" in _rows(workdir, "test")[-1]
  assert any(f.startswith("series_reconstructions") for f in os.listdir(f"{workdir}/images"))
  run = dlu.load_run(workdir)
  samples, labels = run.sample(3)
  assert samples.shape == (3, 20, 1) and labels is None and np.isfinite(samples).all()
  assert run.step_scores(f"series:{path}").shape == (24, 20)
  assert run.encode(f"series:{path}").shape == (24, 4)


@pytest.mark.slow
def test_idec_on_a_series_autoencoder_and_simclr_cluster_head(tmp_path):
  import dlu  # noqa: PLC0415

  path = _write_ts(tmp_path / "toy.ts", n=32)
  dataset = f"series:{path}"
  ae = _train(tmp_path, "ae", model="ae_conv1d", dataset=dataset)
  idec = _train(
    tmp_path,
    "idec",
    model="idec",
    dataset=dataset,
    init_from=ae,
    target_update_every=4,
    n_clusters=2,
  )
  train = _rows(idec, "train")[-1]
  assert {"kl", "recon", "acc", "nmi"} <= set(train) and np.isfinite(train["recon"])
  test = _rows(idec, "test")[-1]
  assert {"mse", "confidence", "acc", "nmi"} <= set(test)
  hard, conf = dlu.load_run(idec).assign(dataset)
  assert hard.shape == (32,) and set(hard) <= {0, 1} and np.all(conf <= 1)
  # An autoencoder of vectors cannot start DEC on series.
  from dlu.families import dec  # noqa: PLC0415

  mlp = tmp_path / "mlp"
  mlp.mkdir()
  (mlp / "flags.txt").write_text("--model=ae_mlp\n--dataset=digits\n")
  with pytest.raises(UsageError, match="takes no time series"):
    dec.load_autoencoder(str(mlp), families.DataSpec((20, 1), 2, 16), None)
  cc = _train(
    tmp_path,
    "cc",
    model="simclr_conv1d",
    dataset=dataset,
    cluster_head=True,
    projection_dims=["8", "8"],
    series_kernel_size=3,
  )
  assert "cluster_entropy" in _rows(cc, "train")[-1]
  assert {"acc", "nmi", "views_agree"} <= set(_rows(cc, "test")[-1])
  hard, _ = dlu.load_run(cc).assign(dataset)
  assert hard.shape == (32,)


_UCR_TABLES = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("ucr_protocol", sys.argv[1])
ucr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ucr)
scores = {k: (0.5, 0.01) for k in ("svm", "linear", "nmi", "ri", "auroc")}
result = lambda: {"models": {"raw": dict(scores)}, "1nn": 0.5, "wall_s": 1.0}
print(json.dumps({
  "gunpoint": ucr.PUBLISHED_ACCURACY["GunPoint"],
  "published": ucr.table({"GunPoint": result(), "ArrowHead": result()}, []),
  "toy": ucr.table({"GunPoint": result(), "Toy": result()}, []),
}))
"""


@pytest.mark.slow
def test_ucr_protocol_table_prints_unchecked_published_figures_as_a_dash():
  # In a process of its own: the script defines absl flags (--out) that the suite's other
  # entry points define too.
  path = os.path.join(REPO, "scripts", "ucr_protocol.py")
  proc = subprocess.run(
    [sys.executable, "-c", _UCR_TABLES, path], capture_output=True, text=True, cwd=REPO
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  rows = lambda md, name: [line for line in md.splitlines() if line.startswith(f"| {name} |")]
  md = out["published"]
  acc, clu = rows(md, "GunPoint")
  # TS2Vec's and TS-TCC's GunPoint figures are unchecked (None); T-Loss's and DTCR's are printed.
  assert tuple(out["gunpoint"]) == (None, 0.980, None)
  assert acc.endswith("| 0.500 | – | 0.980 | – |")
  assert "| 0.4200 / 0.6398 |" in clu
  mean_acc, mean_clu = rows(md, "**mean**")
  assert mean_acc.endswith("| – | 0.873 | – |")  # T-Loss: (0.980 + 0.766) / 2
  assert "| 0.4857 / 0.6633 |" in mean_clu  # DTCR NMI / RI over GunPoint and ArrowHead
  # A set no paper reports: dashes, and no published mean over a part of the table.
  md = out["toy"]
  assert rows(md, "Toy")[0].endswith("| – | – | – |") and "| – / – |" in rows(md, "Toy")[1]
  mean_acc, mean_clu = rows(md, "**mean**")
  assert mean_acc.endswith("| – | – | – |") and "| – / – |" in mean_clu
  lines = md.splitlines()
  for i, line in enumerate(lines):
    if line.startswith("| set |"):  # each table's header, separator and rows have equal cells
      assert {row.count("|") for row in lines[i : i + 5]} == {line.count("|")}


@pytest.mark.slow
def test_ucr_protocol_quick(tmp_path):
  for split, seed in (("TRAIN", 0), ("TEST", 1)):
    (tmp_path / "ucr" / "Toy").mkdir(parents=True, exist_ok=True)
    _write_ts(tmp_path / "ucr" / "Toy" / f"Toy_{split}.ts", n=16, seed=seed)
  out = tmp_path / "out"
  proc = subprocess.run(
    [
      sys.executable,
      "scripts/ucr_protocol.py",
      f"--out={out}",
      f"--ucr_dir={tmp_path / 'ucr'}",
      "--datasets=Toy",
      "--models=simclr_conv1d",
      "--quick",
      "--nokshape",
    ],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.load(open(out / "ucr.json"))
  toy = report["datasets"]["Toy"]
  assert toy["n_train"] == 16 and toy["n_test"] == 16 and toy["classes"] == 2
  for m in ("raw", "simclr_conv1d"):
    scores = toy["models"][m]
    assert set(scores) == {"svm", "linear", "nmi", "ri", "auroc"}
    assert all(0 <= v[0] <= 1 for v in scores.values())
  assert toy["models"]["raw"]["svm"][0] > 0.9  # a sine and a ramp: the raw series separate them
  assert report["seeds"] == 1 and report["steps"] == 30 and len(report["load_average"]) == 3
  md = (out / "ucr.md").read_text()
  assert "| Toy |" in md and "TS2Vec" in md and "simclr_conv1d svm" in md
  assert "DTCR NMI / RI" in md and "| – | – | – |" in md  # Toy: no published figures
  assert report["published_accuracy"]["GunPoint"] == [None, 0.98, None]
  assert report["published_clustering"]["GunPoint"] == [0.6398, 0.42]
