r"""Time-series representations on the UCR/UEA sets that ship offline: probes, clustering,
one-class anomaly detection, beside raw-series baselines and published figures.

  python scripts/ucr_protocol.py --out=/tmp/ucr [--models=simclr_conv1d,ae_conv1d,vae_conv1d]
  python scripts/ucr_protocol.py --out=/tmp/ucr_quick --quick      # 2 sets, 1 seed, 30 steps

The sets are read from the `.ts` files of the aeon 1.6.0 wheel (aeon/datasets/data/NAME/
NAME_TRAIN.ts, NAME_TEST.ts; their published train/test split). aeon 1.6.0 pins numpy below
2.4, so install its files only (`pip install --no-deps --target DIR aeon==1.6.0`) and pass
`--ucr_dir=DIR/aeon/datasets/data`, or let the script find an installed aeon; k-Shape comes
from tslearn (`pip install -e .[series]`).

For each set and seed, each dlu model trains on the training split's series (labels unused,
no validation split: `experiments.train`'s flags through `loop.train_and_evaluate`), and its
frozen codes (`dlu.load_run(...).encode`) are scored as the representation-learning papers
score them:
  svm       test accuracy of an RBF SVM on the training codes, C chosen by 5-fold
            cross-validation over 10^-4..10^4 (TS2Vec's protocol; no search where a class has
            fewer than 5 training series)
  linear    test accuracy of a logistic regression on standardised codes
  nmi, ri   k-means (k = the classes) on the codes of train and test together, as k-Shape's
            paper clusters the whole set: normalised mutual information, Rand index (DTCR's
            published figures cluster the test split of a model trained on the training split)
  auroc     one-class AUROC per class: the mean distance of each test code to the 5 nearest
            training codes of class c scores the other classes as anomalies; the mean over
            classes (the encoder saw every class, unlabelled; the detector sees class c only)
Beside them, on the same scaled series (missing steps 0): `raw` (the same probes, k-means and
k-NN detector on the series themselves), `1nn` (1-NN Euclidean accuracy), and k-Shape
(tslearn, Paparrizos and Gravano 2015) clustering. Series longer than --series_max_length are
resampled to it (ACSF1: 1460 -> 512 steps); a set whose test split holds a series longer than
any training one (JapaneseVowels) is resampled to its longest, since padding to the training
split's longest would cut test series. Wall time per set counts every seed and model,
training and scoring. Writes OUT/ucr.json and OUT/ucr.md (the table) with the published
figures checked against their sources (PUBLISHED_ACCURACY, PUBLISHED_CLUSTERING: T-Loss's SVM
accuracy from its authors' result files, DTCR's RI and NMI from its paper); a figure that was not
checked (TS2Vec's and TS-TCC's, from TS2Vec's appendix) or a set a paper does not report is "–",
and a published column's mean is "–" unless every set in the table has a figure. A run whose
workdir holds a finished checkpoint is not trained again: the runs under OUT/runs are scored
again as they are; the sets of an earlier OUT/ucr.json (same models, seeds and steps) stay in
the table beside new ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import warnings

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dlu  # noqa: E402
from dlu import config, data, files  # noqa: E402
from dlu.metrics import clustering, novelty  # noqa: E402
from dlu.runtime import cli  # noqa: E402
from dlu.train import loop  # noqa: E402

DATASETS = (
  "GunPoint",
  "ItalyPowerDemand",
  "ArrowHead",
  "BasicMotions",
  "JapaneseVowels",
  "OSULeaf",
  "ACSF1",
  "PickupGestureWiimoteZ",
)
SPLITS = ("TRAIN", "TEST")
flags.DEFINE_string("out", None, "Folder for the runs, ucr.json and ucr.md.")
flags.DEFINE_string(
  "ucr_dir", None, "Folder of NAME/NAME_{TRAIN,TEST}.ts; default: an installed aeon's data."
)
flags.DEFINE_list("datasets", list(DATASETS), "The sets, folders of --ucr_dir.")
flags.DEFINE_list("models", ["simclr_conv1d", "ae_conv1d"], "dlu series models to train.")
flags.DEFINE_integer("seeds", 3, "Seeds per set and model (0, 1, ...).")
flags.DEFINE_integer("steps", 300, "Training steps per run.")
flags.DEFINE_integer("series_max_length", 512, "Longer series are resampled to this many steps.")
flags.DEFINE_bool("kshape", True, "Also cluster the raw series with tslearn's k-Shape.")
flags.DEFINE_bool("quick", False, "A smoke run: the first two --datasets, one seed, 30 steps.")
FLAGS = flags.FLAGS

CONFIGS = {
  "simclr_conv1d": dict(
    conv_channels=["64", "64", "64"],
    series_kernel_size=3,
    latent_dim=128,
    projection_dims=["128", "64"],
    temperature=0.2,
    learning_rate=1e-3,
  ),
  "ae_conv1d": dict(conv_channels=["32", "64"], latent_dim=32, learning_rate=1e-3),
  "vae_conv1d": dict(
    conv_channels=["32", "64"], latent_dim=32, gaussian_std=0.3, learning_rate=1e-3
  ),
  "ae_seq": dict(seq_units=64, latent_dim=32, learning_rate=1e-3),
}

# Published SVM test accuracy on the codes as (TS2Vec, T-Loss, TS-TCC), the columns of TS2Vec's
# appendix tables (Yue et al., AAAI 2022, arXiv:2106.10466v4); None where no source was read.
# - T-Loss: its authors' result files in the repository
#   github:White-Link/UnsupervisedScalableRepresentationLearningTimeSeries at
#   f2a5c1aff2a6deca4e16f5a88df248cdc0af6502 ("Updated code for the final version of the
#   paper"): results_ucr.csv column "Ours(10)" for the UCR sets, results_uea.csv column
#   "Ours (20)" for BasicMotions and JapaneseVowels. Those are the columns whose means (0.806 over
#   its 125 UCR sets, 0.658 over the 30 UEA sets) are the T-Loss averages later comparisons quote
#   beside TS2Vec's (TimesURL, AAAI 2024, Table 1).
# - TS2Vec, TS-TCC: not checked; no copy of TS2Vec's appendix tables was found to check them
#   against, and the official repository (github:zhihanyue/ts2vec at
#   b0088e14a99706c05451316dc6db8d3da9351163) publishes no result files.
PUBLISHED_ACCURACY = {
  "GunPoint": (None, 0.980, None),
  "ItalyPowerDemand": (None, 0.954, None),
  "ArrowHead": (None, 0.766, None),
  "BasicMotions": (None, 1.000, None),
  "JapaneseVowels": (None, 0.989, None),
  "OSULeaf": (None, 0.760, None),
  "ACSF1": (None, 0.900, None),
  "PickupGestureWiimoteZ": (None, 0.740, None),
}

# DTCR (Ma et al., NeurIPS 2019, "Learning Representations for Time Series Clustering") as
# (RI, NMI): the means of 5 runs in its Table 1 (RI; "Arrow" is ArrowHead) and its supplementary
# Table 2 (NMI), read from the PDFs in github:qianlima-lab/DTCR at
# e4ecce48c0fd1fe3c017cccf1fd9203efdddbb6b. Of the protocol's sets only these three are among
# its 36. DTCR trains on the training split and clusters the test split; the protocol's k-means
# clusters train and test together.
PUBLISHED_CLUSTERING = {
  "ArrowHead": (0.6868, 0.5513),
  "GunPoint": (0.6398, 0.4200),
  "OSULeaf": (0.7739, 0.2599),
}


def default_ucr_dir() -> str:
  spec = importlib.util.find_spec("aeon")  # finds the package without importing it
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit("no --ucr_dir and no aeon installed: see the docstring")
  return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")


def split_dir(ucr_dir: str, name: str, out: str) -> str:
  """A folder holding only NAME_TRAIN.ts and NAME_TEST.ts (aeon also ships NAME_eq_*)."""
  folder = os.path.join(out, "data", name)
  os.makedirs(folder, exist_ok=True)
  for split in SPLITS:
    link = os.path.join(folder, f"{name}_{split}.ts")
    if not os.path.lexists(link):
      os.symlink(os.path.abspath(os.path.join(ucr_dir, name, f"{name}_{split}.ts")), link)
  return folder


def flat(x: np.ndarray) -> np.ndarray:
  return np.nan_to_num(x.reshape(len(x), -1), nan=0.0).astype(np.float32)


def svm_accuracy(x_train, y_train, x_test, y_test) -> float:
  """TS2Vec's SVM protocol: RBF; C by 5-fold cross-validation over 10^-4..10^4 and infinity,
  or C = infinity where the training split has under 50 series or 5 per class."""
  from sklearn.model_selection import GridSearchCV
  from sklearn.svm import SVC

  svm = SVC(C=np.inf, kernel="rbf", gamma="scale")
  if len(y_train) >= 50 and len(y_train) // len(np.unique(y_train)) >= 5:
    grid = {"C": [10.0**i for i in range(-4, 5)] + [np.inf]}
    svm = GridSearchCV(SVC(kernel="rbf", gamma="scale"), grid, cv=5, n_jobs=1)
  svm.fit(x_train, y_train)
  return float(svm.score(x_test, y_test))


def one_class_auroc(train, y_train, test, y_test) -> float:
  """Mean over classes c of the AUROC of the 5-NN distance to class c's training codes."""
  from sklearn.metrics import roc_auc_score

  aurocs = []
  for c in np.unique(y_train):
    normal = train[y_train == c]
    scores = novelty.knn_distance(normal, test, k=min(5, len(normal)))
    aurocs.append(roc_auc_score(y_test != c, scores))
  return float(np.mean(aurocs))


def representation_scores(train, y_train, test, y_test, k: int, seed: int) -> dict[str, float]:
  from sklearn.metrics import rand_score

  both, y = np.concatenate([train, test]), np.concatenate([y_train, y_test])
  assign = clustering.kmeans(both, k, seed=seed)[0]
  return {
    "svm": svm_accuracy(train, y_train, test, y_test),
    "linear": clustering.linear_probe(train, y_train, test, y_test, max_iter=1000),
    "nmi": float(clustering.scores(y, assign)["nmi"]),
    "ri": float(rand_score(y, assign)),
    "auroc": one_class_auroc(train, y_train, test, y_test),
  }


def kshape_scores(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> dict[str, float]:
  from sklearn.metrics import normalized_mutual_info_score, rand_score
  from tslearn.clustering import KShape

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    assign = KShape(n_clusters=k, n_init=1, max_iter=50, random_state=seed).fit_predict(
      np.nan_to_num(x, nan=0.0)
    )
  return {"nmi": float(normalized_mutual_info_score(y, assign)), "ri": float(rand_score(y, assign))}


def train_codes(
  model: str, folder: str, workdir: str, seed: int, length: int, steps: int, n_train: int
):
  """Trains `model` on the set's training split (`n_train` series); the codes of both splits."""
  cfg = config.make_config(
    model=model,
    dataset=f"series:{folder}",
    series_length=length,
    validation_fraction=0.0,
    seed=seed,
    batch_size=min(64 if model == "simclr_conv1d" else 32, n_train),
    optimizer="adam",
    num_steps=steps,
    log_every=steps,
    eval_every=steps,
    checkpoint_every=steps,
    eval_batch_size=256,
    evaluators=["metrics"],
    **CONFIGS[model],
  )
  loop.train_and_evaluate(cfg, workdir)
  run = dlu.load_run(workdir)
  name = os.path.basename(folder)
  return tuple(run.encode(f"series:{folder}/{name}_{s}.ts") for s in SPLITS)


def mean_std(values: list[float]) -> tuple[float, float]:
  return float(np.mean(values)), float(np.std(values))


def evaluate_set(name: str, folder: str, out: str, models, seeds: int, steps: int) -> dict:
  start = time.perf_counter()
  lengths = {split: [len(s) for s in _read(folder, name, split).series] for split in SPLITS}
  longest = max(max(v) for v in lengths.values())
  length = 0  # padded to the training split's longest, the steps after a series' end masked
  if longest > FLAGS.series_max_length:
    length = FLAGS.series_max_length
  elif max(lengths["TEST"]) > max(lengths["TRAIN"]):  # the padding would cut test series
    length = longest
  ds = data.load(f"series:{folder}", table_options=data.TableOptions(series_length=length))
  k = ds.num_classes
  raw_train, raw_test = flat(ds.x_train), flat(ds.x_test)
  y_both = np.concatenate([ds.y_train, ds.y_test])
  from sklearn.neighbors import KNeighborsClassifier

  one_nn = KNeighborsClassifier(n_neighbors=1).fit(raw_train, ds.y_train)
  result = {
    "n_train": len(ds.x_train),
    "n_test": len(ds.x_test),
    "shape": list(ds.x_train.shape[1:]),
    "classes": k,
    "1nn": float(one_nn.score(raw_test, ds.y_test)),
    "models": {},
  }
  per_seed = {m: [] for m in ("raw", *models)}
  kshape = []
  for seed in range(seeds):
    per_seed["raw"].append(
      representation_scores(raw_train, ds.y_train, raw_test, ds.y_test, k, seed)
    )
    if FLAGS.kshape:
      kshape.append(kshape_scores(np.concatenate([ds.x_train, ds.x_test]), y_both, k, seed))
    for model in models:
      workdir = os.path.join(out, "runs", f"{name}_{model}_{seed}")
      train, test = train_codes(model, folder, workdir, seed, length, steps, len(ds.x_train))
      per_seed[model].append(representation_scores(train, ds.y_train, test, ds.y_test, k, seed))
  for m, rows in per_seed.items():
    result["models"][m] = {key: mean_std([r[key] for r in rows]) for key in rows[0]}
  if kshape:
    result["kshape"] = {key: mean_std([r[key] for r in kshape]) for key in kshape[0]}
  result["wall_s"] = time.perf_counter() - start
  return result


def _read(folder: str, name: str, split: str):
  from dlu.data import series

  return series.read_file(os.path.join(folder, f"{name}_{split}.ts"), f"{name}_{split}")


UNVERIFIED = "–"  # a published figure that is absent or was not checked against its source


def _published(value, digits: int = 3) -> str:
  return UNVERIFIED if value is None else f"{value:.{digits}f}"


def _published_mean(results: dict, published: dict, column: int) -> float | None:
  """A published column's mean over the table's sets, or None unless every set has a figure."""
  values = [(published.get(name) or (None,) * (column + 1))[column] for name in results]
  return None if any(v is None for v in values) else float(np.mean(values))


def table(results: dict, models) -> str:
  """Markdown: SVM accuracy beside the published anchors, then clustering and anomalies."""
  cols = ["raw", *models]
  acc = [
    "| set | " + " | ".join(f"{m} svm" for m in cols) + " | 1-NN raw | TS2Vec | T-Loss | TS-TCC |",
    "|---" * (len(cols) + 5) + "|",
  ]
  clu = [
    "| set | "
    + " | ".join(f"{m} NMI / RI" for m in cols)
    + " | k-Shape NMI / RI | DTCR NMI / RI | "
    + " | ".join(f"{m} AUROC" for m in cols)
    + " | wall s |",
    "|---" * (2 * len(cols) + 4) + "|",
  ]
  fmt = lambda v: f"{v[0]:.3f} ± {v[1]:.3f}"
  dtcr = lambda ri, nmi: f"{_published(nmi, 4)} / {_published(ri, 4)}"
  for name, r in results.items():
    pub = PUBLISHED_ACCURACY.get(name, (None, None, None))
    acc.append(
      f"| {name} | "
      + " | ".join(fmt(r["models"][m]["svm"]) for m in cols)
      + f" | {r['1nn']:.3f} | "
      + " | ".join(_published(a) for a in pub)
      + " |"
    )
    ks = r.get("kshape")
    clu.append(
      f"| {name} | "
      + " | ".join(f"{r['models'][m]['nmi'][0]:.3f} / {r['models'][m]['ri'][0]:.3f}" for m in cols)
      + (f" | {ks['nmi'][0]:.3f} / {ks['ri'][0]:.3f}" if ks else " | ")
      + f" | {dtcr(*PUBLISHED_CLUSTERING.get(name, (None, None)))} | "
      + " | ".join(fmt(r["models"][m]["auroc"]) for m in cols)
      + f" | {r['wall_s']:.0f} |"
    )
  means = lambda key, m: np.mean([r["models"][m][key][0] for r in results.values()])
  acc.append(
    "| **mean** | "
    + " | ".join(f"**{means('svm', m):.3f}**" for m in cols)
    + f" | {np.mean([r['1nn'] for r in results.values()]):.3f} | "
    + " | ".join(_published(_published_mean(results, PUBLISHED_ACCURACY, i)) for i in range(3))
    + " |"
  )
  ks_mean = [r["kshape"] for r in results.values() if "kshape" in r]
  clu.append(
    "| **mean** | "
    + " | ".join(f"**{means('nmi', m):.3f}** / {means('ri', m):.3f}" for m in cols)
    + (
      f" | {np.mean([k['nmi'][0] for k in ks_mean]):.3f} / "
      f"{np.mean([k['ri'][0] for k in ks_mean]):.3f}"
      if ks_mean
      else " | "
    )
    + f" | {dtcr(*(_published_mean(results, PUBLISHED_CLUSTERING, i) for i in range(2)))} | "
    + " | ".join(f"**{means('auroc', m):.3f}**" for m in cols)
    + f" | {sum(r['wall_s'] for r in results.values()):.0f} |"
  )
  return "\n".join(acc) + "\n\n" + "\n".join(clu) + "\n"


def main(argv):
  cli.start(argv)
  if not FLAGS.out:
    raise SystemExit("--out is required")
  names = FLAGS.datasets[:2] if FLAGS.quick else FLAGS.datasets
  seeds, steps = (1, 30) if FLAGS.quick else (FLAGS.seeds, FLAGS.steps)
  ucr_dir = FLAGS.ucr_dir or default_ucr_dir()
  os.makedirs(FLAGS.out, exist_ok=True)
  results, report = {}, {}
  previous = os.path.join(FLAGS.out, "ucr.json")
  if os.path.isfile(previous):  # sets scored before with the same models, seeds and steps stay
    with open(previous) as f:
      before = json.load(f)
    if (before["models"], before["seeds"], before["steps"]) == (FLAGS.models, seeds, steps):
      results = {n: r for n, r in before["datasets"].items() if n not in names}
  for name in names:
    folder = split_dir(ucr_dir, name, FLAGS.out)
    results[name] = evaluate_set(name, folder, FLAGS.out, FLAGS.models, seeds, steps)
    print(f"{name}: {json.dumps(results[name]['models'])}", flush=True)
    load = os.getloadavg()
    report = {
      "datasets": results,
      "models": FLAGS.models,
      "seeds": seeds,
      "steps": steps,
      "configs": {m: CONFIGS[m] for m in FLAGS.models},
      "load_average": load,
      "published_accuracy": {"columns": ["TS2Vec", "T-Loss", "TS-TCC"], **PUBLISHED_ACCURACY},
      "published_clustering": {"columns": ["DTCR RI", "DTCR NMI"], **PUBLISHED_CLUSTERING},
    }
    files.write_json(os.path.join(FLAGS.out, "ucr.json"), report)  # after every set
  md = table(results, FLAGS.models)
  with files.atomic_write(os.path.join(FLAGS.out, "ucr.md")) as f:
    f.write(md)
  print(md)
  print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
  app.run(main)
