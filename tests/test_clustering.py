"""Clustering metrics, DEC's kernel and target, probes and plots on small arrays."""

import sys

import jax.numpy as jnp
import numpy as np
import pytest

from dlu.errors import UsageError
from dlu.metrics import clustering
from dlu.ops import losses


def test_acc_is_one_for_any_relabelling_of_perfect_clusters():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 6, 200)
  for _ in range(5):
    relabel = rng.permutation(6) + 10  # other names, other order
    assert clustering.cluster_acc(y, relabel[y]) == 1.0
    s = clustering.scores(y, relabel[y])
    assert s["nmi"] == pytest.approx(1.0) and s["ari"] == pytest.approx(1.0)


def test_acc_matches_a_hand_computed_one_to_one_matching():
  # Cluster a: 4 of class 0.  b: 3 of class 0, 2 of class 1.  c: 1 of class 1, 3 of class 2.
  # One-to-one: a->0, b->1, c->2 gives 4 + 2 + 3 = 9 of 13. (Majority vote, many-to-one,
  # would map a and b both to 0 and claim 10 of 13.)
  y_true = np.array([0] * 4 + [0] * 3 + [1] * 2 + [1] + [2] * 3)
  y_pred = np.array(["a"] * 4 + ["b"] * 5 + ["c"] * 4)
  np.testing.assert_array_equal(
    clustering.confusion(y_true, y_pred), [[4, 0, 0], [3, 2, 0], [0, 1, 3]]
  )
  assert clustering.cluster_acc(y_true, y_pred) == pytest.approx(9 / 13)


def test_extra_clusters_are_errors_and_chance_is_low():
  y = np.array([0, 0, 1, 1])
  assert clustering.cluster_acc(y, np.array([0, 1, 2, 3])) == 0.5
  rng = np.random.default_rng(1)
  y = rng.integers(0, 10, 5000)
  s = clustering.scores(y, rng.integers(0, 10, 5000))
  assert s["acc"] < 0.15 and s["nmi"] < 0.02 and abs(s["ari"]) < 0.02


def test_purity_counts_each_clusters_majority_label():
  y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
  # Splitting a class over several clusters costs nothing; mixing classes in one does.
  assert clustering.purity(y, np.arange(8)) == 1.0
  assert clustering.purity(y, np.array([5, 5, 7, 3, 3, 3, 3, 3])) == 6 / 8  # 3 + 3 of 5
  assert clustering.purity(y, np.zeros(8)) == 3 / 8
  # One-to-one ACC can only be lower: two clusters of class 0 cannot both be matched.
  pred = np.array([0, 0, 1, 2, 2, 2, 2, 2])
  assert clustering.purity(y, pred) == 6 / 8 and clustering.cluster_acc(y, pred) == 5 / 8


def test_soft_assignment_and_target_distribution():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(64, 5)).astype(np.float32)
  mu = rng.normal(size=(4, 5)).astype(np.float32)
  for alpha in (1.0, 3.0):
    q = np.asarray(losses.soft_assign(jnp.asarray(z), jnp.asarray(mu), alpha))
    d2 = ((z[:, None, :] - mu[None]) ** 2).sum(-1)  # The Student-t kernel, written plainly.
    reference = (1.0 + d2 / alpha) ** (-(alpha + 1.0) / 2.0)
    np.testing.assert_allclose(q, reference / reference.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
  p = clustering.target_distribution(q)
  weight = q.astype(np.float64) ** 2 / q.sum(0)
  np.testing.assert_allclose(p, weight / weight.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
  assert (p >= 0).all()
  # Sharper: every row's largest probability grows, its entropy falls, its argmax stays
  # (up to the cluster-frequency weighting, which cannot flip a clear winner here).
  entropy = lambda a: -(a * np.log(a)).sum(1)
  assert (p.max(1) >= q.max(1) - 1e-6).mean() > 0.9
  assert entropy(p).mean() < entropy(q).mean()
  # KL(p || q) >= 0, and 0 when q already is the target.
  kl = np.asarray(losses.kl_divergence(jnp.asarray(p), jnp.asarray(q)))
  assert (kl > 0).all()
  np.testing.assert_allclose(losses.kl_divergence(jnp.asarray(p), jnp.asarray(p)), 0, atol=1e-6)


def test_linear_probe_and_pixels_kmeans_on_separable_data(tmp_path):
  rng = np.random.default_rng(0)
  centres = rng.normal(scale=6.0, size=(3, 8))
  y = rng.integers(0, 3, 300)
  x = (centres[y] + rng.normal(size=(300, 8))).astype(np.float32)
  assert clustering.linear_probe(x[:200], y[:200], x[200:], y[200:]) > 0.95
  assert clustering.knn_probe(x[:200], y[:200], x[200:], y[200:], k=5) > 0.95
  labels, centroids = clustering.kmeans(x, 3, seed=0, n_init=2)
  assert centroids.shape == (3, 8) and clustering.cluster_acc(y, labels) > 0.95
  assert clustering.cluster_acc(y, clustering.gmm(x, 3, seed=0)) > 0.95
  path = clustering.scatter_plot(clustering.pca(x, 2)[0], y, str(tmp_path / "map.png"), title="t")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_knn_probe_votes_by_cosine_similarity():
  # Labels follow the direction of the points, not their length: cosine neighbours get them
  # all right, whatever the scale; a majority of k=3 outvotes one mislabelled neighbour.
  angles = np.linspace(0, np.pi / 2, 40)
  x_train = np.stack([np.cos(angles), np.sin(angles)], 1) * np.linspace(0.1, 10, 40)[:, None]
  y_train = (angles > np.pi / 4).astype(int)
  x_test = np.array([[1.0, 0.1], [0.1, 1.0], [100.0, 1.0], [0.01, 0.2]])
  y_test = np.array([0, 1, 0, 1])
  assert clustering.knn_probe(x_train, y_train, x_test, y_test, k=1) == 1.0
  y_noisy = y_train.copy()
  y_noisy[0] = 1  # The nearest neighbour of [100, 1] now has the wrong label.
  assert clustering.knn_probe(x_train, y_noisy, x_test[2:3], y_test[2:3], k=1) == 0.0
  assert clustering.knn_probe(x_train, y_noisy, x_test[2:3], y_test[2:3], k=3) == 1.0


def test_umap_without_the_package_is_a_usage_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "umap", None)  # makes `import umap` fail either way
  with pytest.raises(UsageError, match=r"--manifold=umap needs umap-learn"):
    clustering.manifold(np.zeros((10, 3)), "umap", dim=2, seed=0)
  with pytest.raises(UsageError, match="--manifold must be one of"):
    clustering.manifold(np.zeros((10, 3)), "isomap", dim=2, seed=0)


@pytest.mark.slow
def test_a_manifold_pipeline_gets_the_same_pipeline_on_pixels_as_a_baseline():
  from dlu import config, data
  from dlu.evaluators import clustering as representation

  ds = data.load("digits")
  cfg = config.make_config(
    dataset="digits",
    cluster_split="test",
    manifold="tsne",
    cluster_on="gmm",
    probe=False,
    kmeans_inits=2,
  )
  out = representation.baselines(cfg, ds, ds.y_test, 10, dim=4)
  assert {"pixels", "pca", "pixels_tsne_gmm"} <= set(out)
  # A real clustering (chance is ~0.1), about as good as k-means on the pixels (0.71 vs 0.66).
  assert out["pixels_tsne_gmm"]["acc"] > max(0.6, out["pixels"]["acc"] - 0.05)
  plain = representation.baselines(cfg.replace(manifold="none"), ds, ds.y_test, 10, dim=4)
  assert set(plain) == {"pixels", "pca"}
