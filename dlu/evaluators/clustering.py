"""The `clustering` evaluator: structure in a run's representation. Clustering scores
(ACC/NMI/ARI), a linear and a k-nearest-neighbour probe, optionally the purity of many small
k-means clusters, a 2-D map of the test embeddings, and the same numbers for raw pixels and
PCA beside them. experiments.evaluate runs it; training runs it with
`--evaluators=...,clustering[:N]`.

The embedding is the family's `embed` (an autoencoder's code, a VAE's encoder mean,
a GAN discriminator's penultimate features). A family with its own clustering layer
(DEC, IDEC, SimCLR with --cluster_head: `assignments(state, x)`) is scored by that layer,
and k-means on its embeddings becomes one more baseline. Labels score clusterings and fit the probes;
nothing else sees them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import flags

from dlu import data, files
from dlu.config.model_flags import num_clusters
from dlu.data import text
from dlu.errors import UsageError
from dlu.evaluators.registry import Inputs, register
from dlu.metrics import clustering
from dlu.runtime import parallel

flags.DEFINE_enum(
  "cluster_on",
  "kmeans",
  list(clustering.CLUSTERERS),
  "evaluate: how embeddings are clustered (gmm: full-covariance Gaussian mixture).",
)
flags.DEFINE_enum(
  "manifold",
  "none",
  list(clustering.MANIFOLDS),
  "evaluate: nonlinear map of the embeddings before clustering (umap as in N2D; pca when "
  "there are too few rows for it).",
)
flags.DEFINE_integer(
  "manifold_dim", 0, "evaluate: dimensions of --manifold's map; 0: --n_clusters (umap) or 2 (tsne)."
)
flags.DEFINE_enum(
  "cluster_split",
  "all",
  ["all", "train", "test"],
  "evaluate: the images clustered and scored (all: train and test together).",
)
flags.DEFINE_boolean(
  "probe",
  True,
  "evaluate: fit a linear probe (logistic regression) on train "
  "embeddings, score it on the test split; also the --knn_probe.",
)
flags.DEFINE_integer(
  "knn_probe",
  20,
  "evaluate --probe: k of a k-nearest-neighbour probe (cosine "
  "similarity to the train embeddings, majority vote) scored on the test split, at most the "
  "train rows; 0: none.",
)
flags.DEFINE_integer(
  "purity_clusters",
  0,
  "evaluate: also split the clustered features into this "
  "many k-means clusters (more than --n_clusters) and report "
  "`overcluster_purity`, the fraction of points whose cluster's most common "
  "label is their own: how class-pure the features' small regions are (a "
  "clustering into --n_clusters rarely beats it); 0: none.",
)
flags.DEFINE_boolean("baselines", True, "evaluate: the same scores for raw pixels and PCA.")
flags.DEFINE_enum(
  "embedding_plot",
  "tsne",
  list(clustering.PLOTS),
  "evaluate: 2-D map of the test embeddings saved as a PNG coloured by label (pca when the "
  "split has too few rows for tsne or umap).",
)
flags.DEFINE_integer(
  "plot_points",
  5000,
  "evaluate: test points in the embedding plot (a fixed random subset when the split is larger).",
)


def _split(cfg, train: np.ndarray, test: np.ndarray) -> np.ndarray:
  if cfg.cluster_split == "train":
    return train
  if cfg.cluster_split == "test":
    return test
  return np.concatenate([train, test])


#: k-means centroids of a run's embeddings [K, D], kept in the workdir for `dlu.train.apply`'s
#: `assign` (written when the clustering is k-means on the embeddings themselves).
KMEANS_FILE = "kmeans_centroids.npz"


def cluster_embeddings(
  z: np.ndarray,
  k: int,
  cfg,
  *,
  centroids_to: str | None = None,
  log: Callable[[str], None] = print,
) -> np.ndarray:
  """--manifold map (if any), then --cluster_on. [N] assignments. `centroids_to`: where to save
  k-means centroids when they live in the embeddings' own space (no --manifold). `log`: the
  line saying that too few rows for the --manifold got a PCA map instead."""
  dim = cfg.manifold_dim or (2 if cfg.manifold == "tsne" else k)
  mapped = clustering.manifold(z, cfg.manifold, dim=dim, seed=cfg.seed, log=log)
  if cfg.cluster_on == "kmeans" and cfg.manifold == "none" and centroids_to:
    assign, centroids = clustering.kmeans(mapped, k, seed=cfg.seed, n_init=cfg.kmeans_inits)
    if parallel.is_lead_process():
      centroids = centroids.astype(np.float32)
      files.atomic_save(centroids_to, lambda tmp: np.savez(tmp, centroids=centroids), suffix=".npz")
    return assign
  return clustering.cluster(
    mapped, k, method=cfg.cluster_on, seed=cfg.seed, n_init=cfg.kmeans_inits
  )


def pipeline_name(cfg) -> str:
  mapped = "" if cfg.manifold == "none" else f"{cfg.manifold} of "
  return f"{cfg.cluster_on} on {mapped}embeddings"


def probes(
  cfg,
  z_train: np.ndarray,
  y_train: np.ndarray,
  z_test: np.ndarray,
  y_test: np.ndarray,
  *,
  log: Callable[[str], None] = print,
) -> dict[str, float]:
  """`linear_probe_acc` and (with --knn_probe) `knn_probe_acc` of features (--probe): none, with
  a line to `log` saying why, when the train labels hold a single class; k at most the train
  rows."""
  if not cfg.probe:
    return {}
  reason = clustering.probe_skip_reason(y_train)
  if reason is not None:
    log(f"--probe: no linear_probe_acc or knn_probe_acc: {reason}")
    return {}
  out = {"linear_probe_acc": clustering.linear_probe(z_train, y_train, z_test, y_test)}
  if cfg.knn_probe:
    k = clustering.knn_neighbors(cfg.knn_probe, len(z_train))
    if k < cfg.knn_probe:
      log(f"--knn_probe={cfg.knn_probe}: the train split has {len(z_train)} rows; k={k} instead")
    out["knn_probe_acc"] = clustering.knn_probe(z_train, y_train, z_test, y_test, k=k)
  return out


def overcluster(
  cfg, x: np.ndarray, y: np.ndarray, *, log: Callable[[str], None] = print
) -> dict[str, float]:
  """`overcluster_purity` of --purity_clusters k-means clusters of `x` [N, D] (if set; none,
  with a line to `log`, when `x` has fewer rows)."""
  if not cfg.purity_clusters:
    return {}
  reason = clustering.clustering_skip_reason(len(x), cfg.purity_clusters)
  if reason is not None:
    log(f"--purity_clusters={cfg.purity_clusters}: no overcluster_purity: {reason}")
    return {}
  pred = clustering.kmeans(x, cfg.purity_clusters, seed=cfg.seed, n_init=1)[0]
  return {"overcluster_purity": clustering.purity(y, pred)}


def _too_few_rows(cfg, n: int, k: int, what: str, log: Callable[[str], None]) -> bool:
  """Whether `n` clustered rows are fewer than the `k` clusters (said to `log`: no `what`)."""
  reason = clustering.clustering_skip_reason(n, k, _clusters(cfg))
  if reason is not None:
    log(f"clustering: no {what}: {reason} (--cluster_split={cfg.cluster_split})")
  return reason is not None


def _clusters(cfg) -> str:
  return "clusters (--n_clusters)" if cfg.n_clusters else "clusters (one per class)"


def baselines(
  cfg, ds: data.Dataset, y: np.ndarray, k: int, dim: int, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
  """Pixels and PCA (at the embedding's dimension): k-means scores and probe accuracy.

  With a --manifold, also `pixels_<manifold>_<cluster_on>`: the same map and clusterer on raw
  pixels, the floor for that pipeline (UMAP alone finds much of Fashion-MNIST's structure).
  Clustering scores are left out (a line to `log` says so) when fewer rows than `k` are
  clustered, probes when the train labels hold one class.
  """
  flat = lambda x: data.normalize(x, "unit").reshape(len(x), -1).astype(np.float32)
  if ds.is_text:  # documents: TF-IDF of their token counts in the place of pixels
    x_train, x_test = text.bag_of_tokens(ds.x_train, ds.x_test, ds.preprocessing.vocab_size)
  else:
    x_train, x_test = flat(ds.x_train), flat(ds.x_test)
  if ds.is_series or not ds.is_image:
    # Raw series' missing and padded steps, and a table's missing cells (--impute=model), as 0:
    # the scaled data's mean.
    x_train, x_test = np.nan_to_num(x_train), np.nan_to_num(x_test)
  x = _split(cfg, x_train, x_test)
  score = not _too_few_rows(cfg, len(x), k, "baseline acc, nmi, ari", log)
  out: dict[str, Any] = {}
  t = time.perf_counter()
  out["pixels"] = (
    clustering.scores(y, clustering.kmeans(x, k, seed=cfg.seed, n_init=cfg.kmeans_inits)[0])
    if score
    else {}
  )
  out["pixels"].update(probes(cfg, x_train, ds.y_train, x_test, ds.y_test, log=log))
  out["pixels"].update(overcluster(cfg, x, y, log=log))
  out["pixels"]["time_s"] = time.perf_counter() - t
  if cfg.manifold != "none" and score:
    t = time.perf_counter()
    out[f"pixels_{cfg.manifold}_{cfg.cluster_on}"] = {
      **clustering.scores(y, cluster_embeddings(x, k, cfg, log=log)),
      "time_s": time.perf_counter() - t,
    }
  t = time.perf_counter()
  dim = min(dim, x.shape[1], len(x))
  x_pca, model = clustering.pca(x, dim, seed=cfg.seed)
  out["pca"] = {"dim": dim}
  if score:
    out["pca"].update(
      clustering.scores(y, clustering.kmeans(x_pca, k, seed=cfg.seed, n_init=cfg.kmeans_inits)[0])
    )
  out["pca"].update(
    probes(cfg, model.transform(x_train), ds.y_train, model.transform(x_test), ds.y_test, log=log)
  )
  out["pca"].update(overcluster(cfg, x_pca, y, log=log))
  out["pca"]["time_s"] = time.perf_counter() - t
  return out


def embedding_plot(
  cfg,
  z_test: np.ndarray,
  y_test: np.ndarray,
  path: str,
  *,
  log: Callable[[str], None] = print,
  class_names: tuple[str, ...] | None = None,
) -> str:
  """A 2-D map of (a fixed subset of) the test embeddings, coloured by label (PCA, with a line
  to `log`, when there are too few for --embedding_plot); the legend names the classes when
  `class_names` does (a table's label values)."""
  idx = np.arange(len(z_test))
  if len(idx) > cfg.plot_points:
    idx = np.sort(np.random.default_rng(cfg.seed).choice(len(idx), cfg.plot_points, replace=False))
  z, y = z_test[idx], y_test[idx]
  if z.shape[1] == 2:
    points, drawn = z, "the"
  else:
    points = clustering.manifold(
      z, cfg.embedding_plot, dim=2, seed=cfg.seed, flag="embedding_plot", log=log
    )
    fallback = clustering.manifold_fallback(cfg.embedding_plot, len(z), 2)
    drawn = f"{'pca' if fallback else cfg.embedding_plot} of"
  title = (
    f"{cfg.model} on {cfg.dataset}: {drawn} {len(idx)} test embeddings "
    f"({z.shape[1]}-d), coloured by label"
  )
  return clustering.scatter_plot(points, y, path, title=title, class_names=class_names)


def _num_clustered(cfg, ds: data.Dataset) -> int:
  """The rows --cluster_split clusters when the test split is scored (validation rows held out
  of the training split return to it then: `Dataset.scored_on`)."""
  num_train = len(ds.x_train)
  if ds.unsplit is not None and ds.valid_rows is not None:
    num_train += len(ds.valid_rows)
  return {"train": num_train, "test": len(ds.x_test), "all": num_train + len(ds.x_test)}[
    cfg.cluster_split
  ]


def check_flags(exp) -> None:
  """The evaluation flags above, before anything is computed."""
  cfg, ds = exp.cfg, exp.dataset
  if ds.y_train is None or ds.y_test is None:
    return  # Nothing is scored (the evaluator does not run).
  if cfg.probe and cfg.knn_probe < 0:
    raise UsageError(
      f"--knn_probe={cfg.knn_probe}: expected a number of neighbours (at most the train "
      "rows are used), or 0 for none"
    )
  k, num_clustered = num_clusters(cfg, ds.num_classes, ds.name), _num_clustered(cfg, ds)
  if cfg.n_clusters and cfg.n_clusters > num_clustered:
    raise UsageError(
      f"--n_clusters={cfg.n_clusters}: more clusters than the {num_clustered} rows "
      f"--cluster_split={cfg.cluster_split} clusters"
    )
  if cfg.purity_clusters:
    if not k < cfg.purity_clusters <= num_clustered:
      raise UsageError(
        f"--purity_clusters={cfg.purity_clusters}: expected more clusters than "
        f"--n_clusters ({k}) and at most the {num_clustered} images clustered, "
        "or 0 for none"
      )


@register("clustering", needs=("embeddings", "labels"), check=check_flags)
def representation_metrics(exp, state, inputs: Inputs) -> dict[str, Any]:
  """Clustering, probes, baselines and plot of the run's embeddings (see module doc)."""
  cfg, ds, family, say = exp.cfg, exp.dataset, exp.family, inputs.say
  t = time.perf_counter()
  z_train, z_test = inputs.embeddings(state, "train"), inputs.embeddings(state, "test")
  timings = {"embed": time.perf_counter() - t}
  y = _split(cfg, ds.y_train, ds.y_test)
  k = num_clusters(cfg, ds.num_classes, ds.name)
  results: dict[str, Any] = {
    "n_clusters": k,
    "cluster_split": cfg.cluster_split,
    "num_clustered": len(y),
    "embedding_dim": int(z_train.shape[1]),
  }
  base: dict[str, Any] = {}

  t = time.perf_counter()
  head = getattr(family, "assignments", None)
  few = _too_few_rows(cfg, len(y), k, f"{pipeline_name(cfg)} acc, nmi, ari", say)
  pipeline = (
    None
    if few
    else cluster_embeddings(
      _split(cfg, z_train, z_test),
      k,
      cfg,
      centroids_to=os.path.join(exp.ctx.workdir, KMEANS_FILE),
      log=say,
    )
  )
  if head is not None:
    pred = _split(cfg, *(head(state, x)[1] for x in (ds.x_train, ds.x_test)))
    results["clustering"] = f"{cfg.model} clustering layer"
    if pipeline is not None:
      base[pipeline_name(cfg).replace(" ", "_")] = clustering.scores(y, pipeline)
  else:
    pred = pipeline
    results["clustering"] = pipeline_name(cfg)
  if pred is not None:
    results.update(clustering.scores(y, pred))
  timings["cluster"] = time.perf_counter() - t

  if cfg.probe:
    t = time.perf_counter()
    results.update(probes(cfg, z_train, ds.y_train, z_test, ds.y_test, log=say))
    timings["probe"] = time.perf_counter() - t
  if cfg.purity_clusters:
    t = time.perf_counter()
    results.update(overcluster(cfg, _split(cfg, z_train, z_test), y, log=say))
    timings["purity"] = time.perf_counter() - t
  if cfg.baselines:
    t = time.perf_counter()
    base.update(baselines(cfg, ds, y, k, z_train.shape[1], log=say))
    timings["baselines"] = time.perf_counter() - t
  if base:
    results["baselines"] = base
  if cfg.embedding_plot != "none" and parallel.is_lead_process():
    t = time.perf_counter()
    os.makedirs(os.path.join(exp.ctx.workdir, "images"), exist_ok=True)
    path = os.path.join(
      exp.ctx.workdir, "images", f"embedding_{cfg.embedding_plot}_{int(state.step):07d}.png"
    )
    names = getattr(ds.preprocessing, "classes", None)  # a table's label values
    results["embedding_plot"] = embedding_plot(
      cfg, z_test, ds.y_test, path, log=say, class_names=names
    )
    timings["plot"] = time.perf_counter() - t
  results["time_s"] = {name: round(v, 2) for name, v in timings.items()}
  return results
