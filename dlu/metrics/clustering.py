"""Clustering and representation metrics on host arrays: ACC/NMI/ARI, k-means, GMM,
manifold maps, linear probes and a labelled 2-D scatter plot.

Labels only ever score a clustering or train a probe; nothing here feeds them to
a model. Everything is a pure function of NumPy arrays and a seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skmetrics

from dlu.errors import UsageError

CLUSTERERS = ("kmeans", "gmm")
MANIFOLDS = ("none", "umap", "tsne")
PLOTS = ("tsne", "umap", "pca", "none")

#: t-SNE's perplexity (scikit-learn's default) and UMAP's neighbours (N2D's), when rows are plenty.
TSNE_PERPLEXITY = 30.0
UMAP_NEIGHBORS = 20
#: The smallest perplexity t-SNE is run with; fewer rows than that allows get a PCA map instead.
TSNE_MIN_PERPLEXITY = 2.0


def tsne_perplexity(n: int, default: float = TSNE_PERPLEXITY) -> float:
  """t-SNE's perplexity for `n` rows: `default`, bounded by (n - 1) / 3 (t-SNE looks at the
  3 * perplexity nearest neighbours of each point, so at most the n - 1 others)."""
  return float(min(default, (n - 1) / 3))


def umap_neighbors(n: int, default: int = UMAP_NEIGHBORS) -> int:
  """UMAP's n_neighbors for `n` rows: `default`, bounded by the n - 1 other rows."""
  return int(min(default, n - 1))


def knn_neighbors(k: int, num_train: int) -> int:
  """A k-NN probe's k: `k`, bounded by the `num_train` rows it votes among."""
  return int(min(k, num_train))


def manifold_fallback(method: str, n: int, dim: int) -> str | None:
  """Why `n` rows are too few for a `dim`-dimensional `method` map (PCA is drawn instead), or
  None when they are enough."""
  if method == "tsne":
    need = int(np.ceil(3 * TSNE_MIN_PERPLEXITY + 1))
    if n < need:
      return f"{n} rows are too few for t-SNE (at least {need}, for a perplexity of 2)"
  if method == "umap" and n < dim + 3:
    # UMAP's spectral start solves for dim + 1 eigenvectors of the n x n neighbour graph.
    return f"{n} rows are too few for a {dim}-d UMAP map (at least {dim + 3})"
  return None


def probe_skip_reason(y_train: np.ndarray) -> str | None:
  """Why no probe can be fitted on train labels `y_train` (one class, or no rows), or None."""
  classes = np.unique(np.asarray(y_train))
  if len(classes) >= 2:
    return None
  if not len(classes):
    return "the train split has no rows"
  return f"every train label is one class ({classes[0]}); a probe needs at least 2"


def clustering_skip_reason(n: int, k: int, what: str = "clusters") -> str | None:
  """Why `n` rows cannot be split into `k` clusters (more clusters than rows), or None."""
  if k <= n:
    return None
  return f"{k} {what} are more than the {n} rows clustered"


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
  """Counts [clusters, classes]: row i, column j = points of class j put in cluster i."""
  y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
  if y_true.shape != y_pred.shape:
    raise ValueError(f"{y_true.shape[0]} labels for {y_pred.shape[0]} assignments")
  _, t = np.unique(y_true, return_inverse=True)
  _, p = np.unique(y_pred, return_inverse=True)
  counts = np.zeros((p.max() + 1, t.max() + 1), np.int64)
  np.add.at(counts, (p, t), 1)
  return counts


def cluster_acc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  """Accuracy under the best one-to-one map of clusters to labels (Hungarian algorithm).

  With more clusters than classes the unmatched clusters count as errors, as in DEC.
  """
  counts = confusion(y_true, y_pred)
  rows, cols = linear_sum_assignment(counts, maximize=True)
  return float(counts[rows, cols].sum() / counts.sum())


def purity(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  """Fraction of points whose cluster's most common label is their own (many clusters may
  share a label, so it only grows as clusters split)."""
  counts = confusion(y_true, y_pred)
  return float(counts.max(axis=1).sum() / counts.sum())


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
  """`acc`, `nmi` (arithmetic normalisation) and `ari` of a clustering."""
  return {
    "acc": cluster_acc(y_true, y_pred),
    "nmi": float(skmetrics.normalized_mutual_info_score(y_true, y_pred)),
    "ari": float(skmetrics.adjusted_rand_score(y_true, y_pred)),
  }


def kmeans(x: np.ndarray, k: int, *, seed: int, n_init: int = 10) -> tuple[np.ndarray, np.ndarray]:
  """Assignments [N] and centroids [k, D] of the best of `n_init` k-means++ runs."""
  from sklearn.cluster import KMeans

  km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(np.asarray(x, np.float32))
  return km.labels_.astype(np.int32), km.cluster_centers_.astype(np.float32)


def gmm(
  x: np.ndarray, k: int, *, seed: int, n_init: int = 1, covariance_type: str = "full"
) -> np.ndarray:
  """Assignments [N] of a Gaussian mixture (full covariance by default, as in N2D)."""
  from sklearn.mixture import GaussianMixture

  model = GaussianMixture(k, covariance_type=covariance_type, n_init=n_init, random_state=seed)
  return model.fit_predict(np.asarray(x, np.float64)).astype(np.int32)


def cluster(
  x: np.ndarray, k: int, *, method: str = "kmeans", seed: int = 0, n_init: int = 10
) -> np.ndarray:
  if method == "kmeans":
    return kmeans(x, k, seed=seed, n_init=n_init)[0]
  if method == "gmm":
    return gmm(x, k, seed=seed)
  raise UsageError(f"--cluster_on must be one of {', '.join(CLUSTERERS)}; got {method!r}")


def _umap(flag: str):
  try:
    import umap  # noqa: PLC0415  (optional: pip install -e '.[cluster]')
  except ImportError:
    raise UsageError(
      f"--{flag}=umap needs umap-learn: pip install -e '.[cluster]' (or pip install umap-learn)"
    ) from None
  return umap


def manifold(
  x: np.ndarray,
  method: str,
  *,
  dim: int,
  seed: int,
  flag: str = "manifold",
  log: Callable[[str], None] | None = print,
) -> np.ndarray:
  """A `dim`-dimensional nonlinear map of `x` [N, D] -> [N, dim] that keeps local structure.

  UMAP uses N2D's settings (20 neighbours, min_dist 0), which favour tight clusters; t-SNE
  scikit-learn's (perplexity 30). On few rows both are bounded by them (`umap_neighbors`,
  `tsne_perplexity`), and too few for either (`manifold_fallback`) get a PCA map instead, with a
  line to `log` saying so. A PCA map has at most min(N, D) components (none for one row); zero
  columns pad it to `dim`.
  """
  x = np.asarray(x, np.float32)
  if method == "none":
    return x
  if method not in MANIFOLDS + PLOTS:
    raise UsageError(f"--{flag} must be one of {', '.join(MANIFOLDS)}; got {method!r}")
  if method == "tsne" and dim > 3:
    raise UsageError(f"--{flag}=tsne maps to at most 3 dimensions; got {dim}")
  if method == "umap":
    umap = _umap(flag)
  reason = manifold_fallback(method, len(x), dim)
  if reason is not None:
    if log is not None:
      log(f"--{flag}={method}: {reason}; a PCA map instead")
    method = "pca"
  if method == "umap":
    reducer = umap.UMAP(
      n_components=dim,
      n_neighbors=umap_neighbors(len(x)),
      min_dist=0.0,
      metric="euclidean",
      random_state=seed,
    )
    return reducer.fit_transform(x).astype(np.float32)
  if method == "tsne":
    from sklearn.manifold import TSNE

    # PCA starts the map where it can (D >= dim), as scikit-learn does by default.
    init = "pca" if dim <= x.shape[1] else "random"
    tsne = TSNE(dim, perplexity=tsne_perplexity(len(x)), init=init, random_state=seed)
    return tsne.fit_transform(x).astype(np.float32)
  components = min(dim, *x.shape) if len(x) > 1 else 0  # one row has no variance to map
  mapped = pca(x, components, seed=seed)[0] if components else np.zeros((len(x), 0), np.float32)
  return np.pad(mapped, ((0, 0), (0, dim - components)))


def pca(
  x: np.ndarray, dim: int, *, seed: int = 0, fit_on: np.ndarray | None = None
) -> tuple[np.ndarray, object]:
  """`x` projected on the top `dim` principal components (of `fit_on`, default `x`)."""
  from sklearn.decomposition import PCA

  model = PCA(dim, random_state=seed).fit(np.asarray(x if fit_on is None else fit_on, np.float32))
  return model.transform(np.asarray(x, np.float32)).astype(np.float32), model


def linear_probe(
  x_train: np.ndarray,
  y_train: np.ndarray,
  x_test: np.ndarray,
  y_test: np.ndarray,
  *,
  max_iter: int = 200,
) -> float:
  """Test accuracy of a logistic regression on standardised train features."""
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    probe.fit(np.asarray(x_train, np.float32), y_train)
  return float(probe.score(np.asarray(x_test, np.float32), y_test))


def knn_probe(
  x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, k: int = 20
) -> float:
  """Test accuracy of a k-nearest-neighbour classifier on the train features (cosine
  similarity, majority vote of the `k` nearest): how well labels agree with each point's
  neighbourhood, which is what clustering the features can use. `k` is bounded by the train
  rows (`knn_neighbors`)."""
  from sklearn.neighbors import KNeighborsClassifier

  k = knn_neighbors(k, len(x_train))
  probe = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
  probe.fit(np.asarray(x_train, np.float32), y_train)
  return float(probe.score(np.asarray(x_test, np.float32), y_test))


def scatter_plot(
  points: np.ndarray,
  labels: np.ndarray | None,
  path: str,
  *,
  title: str = "",
  class_names: tuple[str, ...] | None = None,
) -> str:
  """A PNG scatter of 2-D `points` [N, 2] coloured by label (named by `class_names`, indexed
  by the label, when given)."""
  from matplotlib.figure import Figure  # noqa: PLC0415  (plotting only)
  from matplotlib.lines import Line2D  # noqa: PLC0415

  # A Figure of its own, not pyplot's: the caller's backend (a notebook's) is left as it is.
  fig = Figure(figsize=(7, 6), dpi=110)
  ax = fig.subplots()
  colours = None if labels is None else np.asarray(labels)
  colour = {} if colours is None else {"c": colours, "cmap": "tab10"}  # no labels: one colour
  sc = ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.7, linewidths=0, **colour)
  if colours is not None:
    classes = np.unique(colours)
    handles = [Line2D([], [], ls="", marker="o", color=sc.cmap(sc.norm(c))) for c in classes]
    ax.legend(
      handles,
      [str(class_names[c]) if class_names else str(c) for c in classes],
      title="label",
      loc="center left",
      bbox_to_anchor=(1.0, 0.5),
      frameon=False,
      markerscale=1.2,
    )
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  return path


def target_distribution(q: np.ndarray) -> np.ndarray:
  """DEC's sharpened target: p_ij ∝ q_ij^2 / f_j with f_j = sum_i q_ij; rows sum to 1."""
  weight = q**2 / q.sum(0)
  return (weight / weight.sum(1, keepdims=True)).astype(np.float32)
