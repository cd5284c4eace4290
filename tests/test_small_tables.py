"""Small tables: every evaluator runs on a handful of test rows. t-SNE's perplexity and UMAP's
neighbours are bounded by the rows (PCA when they are too few), probes are skipped when the
train labels hold one class, k-NN's k is bounded by the train rows, and more clusters than rows
is a UsageError when --n_clusters asks for them (a skipped score otherwise)."""

import json
import os
import sys
import types

import numpy as np
import pytest

from dlu import config, data
from dlu.errors import UsageError
from dlu.evaluators import clustering as representation
from dlu.metrics import clustering
from dlu.train import evaluate, loop


def test_perplexity_and_neighbours_are_bounded_by_the_rows():
  assert clustering.tsne_perplexity(1000) == 30.0 == clustering.TSNE_PERPLEXITY
  assert clustering.tsne_perplexity(91) == 30.0
  assert clustering.tsne_perplexity(19) == 6.0
  assert clustering.umap_neighbors(1000) == 20 == clustering.UMAP_NEIGHBORS
  assert clustering.umap_neighbors(21) == 20 and clustering.umap_neighbors(8) == 7
  assert clustering.knn_neighbors(20, 1000) == 20 and clustering.knn_neighbors(20, 6) == 6
  # Too few rows for a map: t-SNE below a perplexity of 2, UMAP below dim + 3 rows.
  assert clustering.manifold_fallback("tsne", 7, 2) is None
  assert "6 rows are too few for t-SNE" in clustering.manifold_fallback("tsne", 6, 2)
  assert clustering.manifold_fallback("umap", 13, 10) is None
  assert "12 rows are too few for a 10-d UMAP" in clustering.manifold_fallback("umap", 12, 10)
  assert clustering.manifold_fallback("pca", 1, 2) is None


def test_skip_reasons_of_probes_and_clusterings():
  assert clustering.probe_skip_reason(np.array([0, 1, 0])) is None
  assert "one class (3)" in clustering.probe_skip_reason(np.array([3, 3, 3]))
  assert clustering.clustering_skip_reason(4, 4) is None
  assert clustering.clustering_skip_reason(3, 4) == "4 clusters are more than the 3 rows clustered"


def test_tsne_on_few_rows_is_bounded_or_becomes_pca():
  rng = np.random.default_rng(0)
  said = []
  x = rng.normal(size=(10, 4)).astype(np.float32)
  points = clustering.manifold(x, "tsne", dim=2, seed=0, log=said.append)
  assert points.shape == (10, 2) and np.isfinite(points).all() and not said
  # 1-d embeddings: t-SNE starts at random (a PCA start needs as many dimensions as the map).
  assert clustering.manifold(x[:, :1], "tsne", dim=2, seed=0, log=said.append).shape == (10, 2)
  points = clustering.manifold(x[:4], "tsne", dim=2, seed=0, flag="embedding_plot", log=said.append)
  np.testing.assert_allclose(points, clustering.pca(x[:4], 2, seed=0)[0], atol=1e-5)
  assert said == [
    "--embedding_plot=tsne: 4 rows are too few for t-SNE (at least 7, for a perplexity of 2); "
    "a PCA map instead"
  ]
  # A PCA map of fewer rows or columns than it has dimensions is padded with zeros.
  for shape in ((1, 5), (6, 1)):
    points = clustering.manifold(rng.normal(size=shape), "pca", dim=2, seed=0)
    assert points.shape == (shape[0], 2) and (points[:, 1] == 0).all()


def test_umap_neighbours_are_bounded_by_the_rows(monkeypatch):
  made = []

  class FakeUMAP:
    def __init__(self, **kwargs):
      made.append(kwargs)

    def fit_transform(self, x):
      return np.zeros((len(x), made[-1]["n_components"]))

  monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
  x = np.random.default_rng(0).normal(size=(30, 4))
  assert clustering.manifold(x, "umap", dim=2, seed=0).shape == (30, 2)
  assert clustering.manifold(x[:8], "umap", dim=2, seed=0).shape == (8, 2)
  assert [m["n_neighbors"] for m in made] == [20, 7]
  said = []
  assert clustering.manifold(x[:4], "umap", dim=2, seed=0, log=said.append).shape == (4, 2)
  assert len(made) == 2 and "a PCA map instead" in said[0]


def test_probes_skip_one_class_and_bound_k():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(12, 3)).astype(np.float32)
  cfg = config.make_config(knn_probe=20)
  said = []
  out = representation.probes(
    cfg, x[:8], np.zeros(8, int), x[8:], np.zeros(4, int), log=said.append
  )
  assert out == {}
  assert said == [
    "--probe: no linear_probe_acc or knn_probe_acc: every train label is one class (0); a probe "
    "needs at least 2"
  ]
  said.clear()
  y = np.arange(12) % 2
  out = representation.probes(cfg, x[:8], y[:8], x[8:], y[8:], log=said.append)
  assert set(out) == {"linear_probe_acc", "knn_probe_acc"}
  assert said == ["--knn_probe=20: the train split has 8 rows; k=8 instead"]


def test_baselines_skip_clustering_scores_with_more_clusters_than_rows():
  rng = np.random.default_rng(0)
  ds = data.Dataset(
    "tiny", rng.normal(size=(20, 3)), np.arange(20) % 5, rng.normal(size=(3, 3)), np.arange(3), 5
  )
  cfg = config.make_config(cluster_split="test", knn_probe=3, kmeans_inits=1)
  said = []
  out = representation.baselines(cfg, ds, ds.y_test, 5, dim=2, log=said.append)
  assert "acc" not in out["pixels"] and "linear_probe_acc" in out["pixels"]
  assert "acc" not in out["pca"] and out["pca"]["dim"] == 2
  assert said == [
    "clustering: no baseline acc, nmi, ari: 5 clusters (one per class) are more than the 3 rows "
    "clustered (--cluster_split=test)"
  ]


def _table(tmp_path, n: int, classes: int) -> str:
  rng = np.random.default_rng(0)
  y = np.arange(n) % classes
  x = rng.normal(size=(n, 5)) + 3 * y[:, None]
  path = str(tmp_path / "small.csv")
  np.savetxt(
    path, np.column_stack([x, y]), delimiter=",", fmt="%g", header="a,b,c,d,e,y", comments=""
  )
  return path


def _config(path: str, **overrides):
  return config.make_config(
    **{
      "model": "ae_mlp",
      "dataset": f"csv:{path}",
      "label_column": "y",
      "widths": ["8"],
      "latent_dim": 3,
      "batch_size": 8,
      "num_steps": 20,
      "log_every": 10,
      "eval_every": 10,
      "checkpoint_every": 10,
      "evaluators": ["metrics", "clustering", "features"],
      "kmeans_inits": 1,
      **overrides,
    }
  )


@pytest.mark.slow
def test_a_40_row_table_trains_and_evaluates_with_tsne(tmp_path, capsys):
  workdir = str(tmp_path / "w")
  cfg = _config(_table(tmp_path, 40, 3), embedding_plot="tsne", manifold="tsne")
  final = loop.train_and_evaluate(cfg, workdir)
  assert {"acc", "linear_probe_acc", "knn_probe_acc", "feature_mse_max"} <= set(final)
  out = capsys.readouterr().out
  assert "--embedding_plot=tsne: 4 rows are too few for t-SNE" in out  # the 4 test rows
  result = evaluate.evaluate_workdir(workdir)
  assert {"acc", "nmi", "ari", "linear_probe_acc", "knn_probe_acc"} <= set(result)
  assert result["clustering"] == "kmeans on tsne of embeddings" and result["num_clustered"] == 40
  assert os.path.exists(result["embedding_plot"])
  assert os.path.exists(os.path.join(workdir, "eval.json"))


@pytest.mark.slow
def test_a_one_class_label_column_skips_the_probes(tmp_path, capsys):
  workdir = str(tmp_path / "w")
  loop.train_and_evaluate(_config(_table(tmp_path, 40, 1)), workdir)
  result = evaluate.evaluate_workdir(workdir)
  assert "linear_probe_acc" not in result and "knn_probe_acc" not in result
  assert "linear_probe_acc" not in result["baselines"]["pixels"]
  assert result["n_clusters"] == 1 and "acc" in result
  out = capsys.readouterr().out
  assert "--probe: no linear_probe_acc or knn_probe_acc: every train label is one class (0)" in out
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["split"] for r in rows if "mse" in r][-1] == "evaluate"


def test_more_clusters_than_rows_by_flag_fails_before_training(tmp_path):
  workdir = tmp_path / "w"
  cfg = _config(_table(tmp_path, 40, 3), cluster_split="test", n_clusters=6)
  with pytest.raises(UsageError, match=r"--n_clusters=6: more clusters than the \d rows"):
    loop.train_and_evaluate(cfg, str(workdir))
  assert not (workdir / "checkpoints").exists()
