"""DEC/IDEC: the step is the same on 1 and 8 devices and under pmap; the target refresh
covers the whole training split; pretrain -> DEC -> evaluate end to end on digits."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from dlu import config, data, families
from dlu.errors import UsageError
from dlu.families import DataSpec, EvalContext
from dlu.metrics import clustering
from dlu.ops import losses
from dlu.runtime import batched_eval, parallel

SPEC = DataSpec((8, 8, 1), 10, 96)
K = 4


def _family(model, mesh, x_train, y_train=None):
  cfg = config.make_config(
    model=model,
    optimizer="sgd",
    learning_rate=0.5,
    dataset="digits",
    init_from="unused",
    n_clusters=K,
    target_update_every=2,
    gamma=0.5,
  )
  ae_cfg = config.make_config(model="ae_seed", hidden_units=6, dataset="digits")
  ae = families.get("ae_seed")(ae_cfg, SPEC)
  rng = np.random.default_rng(0)
  family = families.get(model)(cfg, SPEC)
  family.set_pretrained(
    ae, ae.init_params(jax.random.key(0)), rng.normal(size=(K, 6)).astype(np.float32)
  )
  ds = data.Dataset(
    "fake",
    x_train,
    y_train,
    x_train[:16],
    None if y_train is None else y_train[:16],
    None if y_train is None else 3,
  )
  family.set_data(
    ds,
    EvalContext(
      mesh=mesh,
      batch_size=batched_eval.round_batch_size(40),
      rng=jax.random.key(2),
      workdir="",
      cfg=cfg,
    ),
  )
  return family


def _run(model, mesh, parallelism, x_train, batches):
  family = _family(model, mesh, x_train)
  state = parallel.make_init(family, mesh)[0](jax.random.key(0))
  step = parallel.make_train_step(family, mesh, parallelism=parallelism)
  if parallelism == "pmap":
    state = parallel.replicate_for_pmap(jax.device_get(state))
  for i, idx in enumerate(batches):
    state = family.before_step(state, i)
    local = {"image": x_train[idx], "index": idx.astype(np.int32)}
    batch = (
      parallel.pmap_batch(local) if parallelism == "pmap" else parallel.global_batch(mesh, local)
    )
    state, metrics = step(state, batch, jax.random.key(1))
  if parallelism == "pmap":
    state = parallel.unreplicate(state)
  return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize("model", ["dec", "idec"])
@pytest.mark.slow
def test_one_device_eight_devices_and_pmap_agree(model):
  assert jax.device_count() == 8
  rng = np.random.default_rng(0)
  x_train = rng.integers(0, 256, (SPEC.num_train, 8, 8, 1), dtype=np.uint8)
  batches = [rng.permutation(SPEC.num_train)[:32] for _ in range(3)]  # a refresh at steps 0 and 2
  one = Mesh(np.array(jax.devices()[:1]), (parallel.DATA_AXIS,))
  s1, m1 = _run(model, one, "jit", x_train, batches)
  s8, m8 = _run(model, parallel.make_mesh(), "jit", x_train, batches)
  sp, mp = _run(model, parallel.make_mesh(), "pmap", x_train, batches)
  for other in (s8, sp):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), s1.params, other.params)
    np.testing.assert_allclose(s1.extra["p"], other.extra["p"], atol=1e-6)
  for m in (m8, mp):
    np.testing.assert_allclose(m1["loss"], m["loss"], rtol=1e-5)
  assert ("recon" in m1) == (model == "idec")
  # The centroids moved, and for DEC the decoder did not (it has no gradient).
  fresh = _family(model, one, x_train)
  assert np.abs(s1.params["centroids"] - fresh.centroids).max() > 1e-4
  decoder_moved = jax.tree.map(
    lambda a, b: float(np.abs(a - b).max()),
    s1.params["ae"]["decoder"],
    dict(fresh.ae_params["decoder"]),
  )
  assert (max(jax.tree.leaves(decoder_moved)) > 0) == (model == "idec")


def test_target_refresh_covers_the_training_split():
  rng = np.random.default_rng(1)
  x_train = rng.integers(0, 256, (SPEC.num_train, 8, 8, 1), dtype=np.uint8)
  y_train = rng.integers(0, 3, SPEC.num_train).astype(np.int32)
  mesh = parallel.make_mesh()
  family = _family("dec", mesh, x_train, y_train)
  state = parallel.make_init(family, mesh)[0](jax.random.key(0))
  assert (np.asarray(state.extra["assign"]) == -1).all()
  state = family.before_step(state, 0)
  z = np.asarray(family.embed(state, x_train))
  q = np.asarray(losses.soft_assign(z, family.centroids, 1.0))
  np.testing.assert_allclose(state.extra["p"], clustering.target_distribution(q), atol=1e-5)
  np.testing.assert_array_equal(state.extra["assign"], q.argmax(1))
  assert float(state.extra["assign_changed"]) == 1.0  # from "unassigned" to assigned
  assert float(state.extra["acc"]) == pytest.approx(clustering.cluster_acc(y_train, q.argmax(1)))
  # Not a refresh step: the state is left as it is; a refresh with the same params moves nothing.
  assert family.before_step(state, 1) is state
  assert float(family.before_step(state, 2).extra["assign_changed"]) == 0.0


@pytest.mark.parametrize(
  "overrides,message",
  [
    (dict(), "--model=dec needs --init_from=WORKDIR"),
    (dict(init_from="/nonexistent"), "--init_from='/nonexistent' is not the workdir of a dlu run"),
  ],
)
def test_validation_names_the_flag(overrides, message):
  with pytest.raises(UsageError, match=message):
    families.validate(config.make_config(model="dec", **overrides))


def _train(*args):
  cmd = [sys.executable, "-m", "experiments.train", *args]
  out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, timeout=300)
  assert out.returncode == 0, out.stdout + out.stderr
  return out


@pytest.mark.slow
def test_pretrain_dec_evaluate_end_to_end(tmp_path):
  ae, dec = str(tmp_path / "ae"), str(tmp_path / "dec")
  _train("--flagfile=experiments/configs/ae_digits.flags", f"--workdir={ae}")
  _train("--flagfile=experiments/configs/dec_digits.flags", f"--workdir={dec}", f"--init_from={ae}")
  rows = [json.loads(line) for line in open(os.path.join(dec, "metrics.jsonl"))]
  train = [r for r in rows if r["split"] == "train"]
  assert {"acc", "nmi", "ari", "assign_changed", "kl"} <= set(train[-1])
  assert train[0]["assign_changed"] == 1.0 and train[-1]["assign_changed"] < 0.2
  assert {"acc", "nmi", "ari"} <= set(next(r for r in rows if r["split"] == "valid"))

  cmd = [
    sys.executable,
    "-m",
    "experiments.evaluate",
    f"--workdir={dec}",
    "--embedding_plot=pca",
    "--kmeans_inits=2",
    "--purity_clusters=40",
  ]
  out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, timeout=300)
  assert out.returncode == 0, out.stdout + out.stderr
  result = json.load(open(os.path.join(dec, "eval.json")))
  assert result["model"] == "dec" and result["num_clustered"] == 1797
  for name in ("acc", "nmi", "ari", "linear_probe_acc", "knn_probe_acc"):
    assert 0 < result[name] <= 1, name
  assert result["acc"] > 0.3 and result["linear_probe_acc"] > 0.5  # chance is 0.1
  assert result["knn_probe_acc"] > 0.5
  assert {"pixels", "pca", "kmeans_on_embeddings"} <= set(result["baselines"])
  assert {"acc", "nmi", "ari", "linear_probe_acc", "knn_probe_acc"} <= set(
    result["baselines"]["pixels"]
  )
  assert result["baselines"]["pixels"]["knn_probe_acc"] > 0.9  # 8x8 digits' neighbours agree.
  # 40 small clusters are purer than the 10 found, for the embeddings and for the pixels.
  assert result["acc"] < result["overcluster_purity"] <= 1
  pixels = result["baselines"]["pixels"]
  assert pixels["acc"] < pixels["overcluster_purity"] and pixels["overcluster_purity"] > 0.85
  assert "overcluster_purity" in result["baselines"]["pca"]
  assert result["baselines"]["pca"]["dim"] == result["embedding_dim"]
  with open(result["embedding_plot"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  evaluated = [json.loads(line) for line in open(os.path.join(dec, "metrics.jsonl"))][-1]
  assert evaluated["split"] == "evaluate" and "baselines/pixels/acc" in evaluated

  # A bad evaluation flag fails before anything is evaluated or written.
  written = {name: open(os.path.join(dec, name)).read() for name in ("eval.json", "metrics.jsonl")}
  for flag, message in (
    ("--knn_probe=-1", "--knn_probe=-1: expected a number of neighbours"),
    ("--purity_clusters=5", "--purity_clusters=5: expected more clusters than --n_clusters (10)"),
  ):
    cmd = [sys.executable, "-m", "experiments.evaluate", f"--workdir={dec}", flag]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert out.returncode == 2 and message in out.stderr, out.stderr
  assert written == {name: open(os.path.join(dec, name)).read() for name in written}
