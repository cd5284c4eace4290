r"""dlu's text models on documents by topic: clustering (dlu's codes beside TF-IDF, LSA and NMF),
likelihood (text_vae's ELBO and IWAE bounds beside text_lm's exact bits) and one-class anomaly
detection (dlu's scores beside TF-IDF + k-NN distance), with scikit-learn's baselines.

  python scripts/text_protocol.py --out=/tmp/text_protocol   # Debian's fortunes
  python scripts/text_protocol.py --out=/tmp/text_quick --quick --fortunes=DIR
  python scripts/text_protocol.py --out=/tmp/text_lm --parts=likelihood --models=text_vae,text_lm

The corpus: a few categories of Debian's `fortunes` package (apt-get install fortunes;
/usr/share/games/fortunes/CATEGORY, entries separated by lines holding `%`), each entry one
document (its whitespace collapsed), its category the label, written once as a directory of
class subdirectories (OUT/corpus/CATEGORY/NNNN.txt) that `--dataset=text:OUT/corpus` reads.
`--fortunes=DIR` reads the category files from DIR instead (the test writes a small one).

For each seed: dlu's `--models` trained on the corpus (the labels unseen), every document
encoded with `dlu.load_run(...).encode`, and k-means (k = the categories) on the codes; beside
them TF-IDF of words + k-means, LSA (TF-IDF + TruncatedSVD to --lsa_dim, L2-normalised) +
k-means and NMF topics of the TF-IDF (each document's largest topic), all with that seed.
ACC (Hungarian matching), NMI and ARI over every document (`--parts=clustering`; text_lm has no
code and is left out of it).

`--parts=likelihood`: the same runs' test split (the same documents for every model of a seed):
text_vae's bits per token and per byte as the negative ELBO and as the IWAE bound with
K=`--iwae_samples`, its KL (nats per document) and active units, beside text_lm's exact bits
(text_ae's reconstruction bits are not a likelihood and are left out).

`--parts=oneclass`: each category's documents split once per seed into training and test
(`--oneclass_test_fraction`); for each category, each of `--oneclass_models` trained for
`--oneclass_steps` on that category's training documents alone (of which the run holds out its
own --test_fraction), and every test document scored by the run's own score (nats per token:
text_ae's reconstruction, text_vae's -ELBO at the posterior mean, text_lm's -log p(x)); beside
it TF-IDF of the category's training documents and the mean cosine distance of a test document
to its `--knn` nearest (scikit-learn's NearestNeighbors). AUROC with the other categories' test
documents as the anomalies, per category and averaged.

Prints the mean and standard deviation over the seeds as markdown tables and writes
OUT/text_protocol.json and OUT/text_protocol.md.
"""

from __future__ import annotations

import os
import re
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dlu  # noqa: E402
from dlu import config, files  # noqa: E402
from dlu.metrics import clustering  # noqa: E402
from dlu.runtime import cli  # noqa: E402
from dlu.train import loop  # noqa: E402

FORTUNES = "/usr/share/games/fortunes"
flags.DEFINE_string("out", None, "Folder for the corpus, the runs and the results.")
flags.DEFINE_string("fortunes", FORTUNES, "Folder of fortune category files.")
flags.DEFINE_list("categories", ["food", "law", "sports", "startrek"], "Fortune categories.")
flags.DEFINE_list(
  "models",
  ["text_ae", "text_vae", "text_lm"],
  "dlu text models of the clustering and likelihood parts (text_ae, text_vae, text_lm, "
  "text_simcse).",
)
flags.DEFINE_list(
  "parts",
  ["clustering", "likelihood", "oneclass"],
  "What to run: clustering, likelihood, oneclass.",
)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (training, every clustering and split).")
flags.DEFINE_integer("steps", 150, "Training steps per run of the clustering and likelihood parts.")
flags.DEFINE_list(
  "oneclass_models", ["text_vae", "text_lm"], "dlu text models of the one-class part."
)
flags.DEFINE_integer("oneclass_steps", 100, "Training steps per one-class run.")
flags.DEFINE_float(
  "oneclass_test_fraction", 0.3, "One-class part: each category's share of test documents."
)
flags.DEFINE_integer("knn", 5, "One-class part: neighbours of the TF-IDF + k-NN distance.")
flags.DEFINE_integer("doc_length", 128, "The runs' --max_length: tokens (bytes) per document.")
flags.DEFINE_integer("max_bytes", 400, "Entries longer than this are left out of the corpus.")
flags.DEFINE_integer("code", 32, "Code size of the dlu models.")
flags.DEFINE_integer("lsa_dim", 100, "Components of the LSA baseline.")
flags.DEFINE_list(
  "overrides",
  [],
  "Run flags for every dlu model, NAME=VALUE (e.g. tokenizer=sentencepiece,vocab_size=2000), "
  "over the models' own settings.",
)
flags.DEFINE_bool(
  "l2_codes",
  False,
  "Also k-means on the L2-normalised codes (text_simcse's codes are L2-normalised already).",
)
flags.DEFINE_bool("quick", False, "A smoke run: one seed, 30 steps, tiny models.")
FLAGS = flags.FLAGS
FLAGS.set_default("iwae_samples", 50)  # dlu's flag: K of text_vae's IWAE bound here

CONFIGS = {
  "text_ae": dict(model="text_ae"),
  "text_vae": dict(model="text_vae", kl_anneal_steps=500, free_bits=0.1),
  # The views (--text_view_crop 0.5, --text_view_token_drop 0.2: the defaults), temperature and
  # learning rate: the best of the seed-0 comparison in docs/text.md.
  "text_simcse": dict(model="text_simcse", dropout=0.1, temperature=0.1, learning_rate=3e-3),
  "text_lm": dict(model="text_lm"),
}
PARTS = ("clustering", "likelihood", "oneclass")
#: The likelihood table's columns: (heading, metric) of a run's final test metrics.
LIKELIHOOD_COLUMNS = (
  ("bits/token", "bits_per_token"),
  ("bits/byte", "bits_per_byte"),
  ("KL (nats)", "kl"),
  ("active units", "active_units"),
)


def read_fortunes(path: str) -> list[str]:
  """The entries of a fortune file (lines holding `%` between them), whitespace collapsed."""
  with open(path, encoding="utf-8", errors="replace") as f:
    entries = re.split(r"^%\s*$", f.read(), flags=re.MULTILINE)
  return [" ".join(e.split()) for e in entries if e.strip()]


def build_corpus(out: str) -> tuple[str, list[str], np.ndarray]:
  """OUT/corpus/CATEGORY/NNNN.txt (written once); (its path, the documents, their labels)."""
  root = os.path.join(out, "corpus")
  docs, labels = [], []
  for k, category in enumerate(sorted(FLAGS.categories)):
    path = os.path.join(FLAGS.fortunes, category)
    if not os.path.isfile(path):
      raise dlu.UsageError(
        f"--categories: {path} does not exist; install Debian's fortunes package or set "
        "--fortunes=DIR"
      )
    entries = [e for e in read_fortunes(path) if len(e.encode()) <= FLAGS.max_bytes]
    os.makedirs(os.path.join(root, category), exist_ok=True)
    for i, e in enumerate(entries):
      name = os.path.join(root, category, f"{i:04d}.txt")
      if not os.path.exists(name):
        with files.atomic_write(name) as f:
          f.write(e + "\n")
    docs += entries
    labels += [k] * len(entries)
  return root, docs, np.asarray(labels)


def baselines(docs: list[str], y: np.ndarray, k: int, seed: int) -> dict[str, dict]:
  from sklearn.decomposition import NMF, TruncatedSVD  # noqa: PLC0415
  from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: PLC0415
  from sklearn.preprocessing import normalize  # noqa: PLC0415

  tfidf = TfidfVectorizer(stop_words="english", sublinear_tf=True, min_df=2).fit_transform(docs)
  out = {}
  out["tfidf+kmeans"] = clustering.scores(y, _kmeans(tfidf, k, seed))
  dim = min(FLAGS.lsa_dim, tfidf.shape[1] - 1, len(docs) - 1)
  lsa = normalize(TruncatedSVD(dim, random_state=seed).fit_transform(tfidf))
  out["lsa+kmeans"] = clustering.scores(y, _kmeans(lsa, k, seed))
  topics = NMF(k, init="nndsvda", random_state=seed, max_iter=400).fit_transform(tfidf)
  out["nmf"] = clustering.scores(y, topics.argmax(axis=1))
  return out


def _kmeans(x, k: int, seed: int) -> np.ndarray:
  from sklearn.cluster import KMeans  # noqa: PLC0415

  return KMeans(k, n_init=10, random_state=seed).fit_predict(x)


def overrides() -> dict[str, str]:
  """--overrides as {flag: value}, each a flag of the runs."""
  out = {}
  for item in FLAGS.overrides:
    name, eq, value = item.partition("=")
    if not eq or name not in vars(config.make_config()):
      raise dlu.UsageError(f"--overrides: {item!r} is not NAME=VALUE naming a run flag")
    out[name] = value
  return out


def train_run(
  model: str,
  corpus: str,
  workdir: str,
  seed: int,
  steps: int | None = None,
  iwae: bool = True,
  documents: int | None = None,
) -> dict:
  """The run's final test metrics (a finished run is reported, not retrained); text_vae's with
  the IWAE bound unless `iwae` is False. `documents`: how many the corpus holds (a batch is
  at most half of them)."""
  quick = FLAGS.quick
  steps = 30 if quick else steps or FLAGS.steps
  sizes = dict(text_dim=16, text_ff=32, text_layers=1, text_heads=2) if quick else {}
  base = dict(
    dataset=f"text:{corpus}",
    max_length=FLAGS.doc_length,
    latent_dim=FLAGS.code,
    seed=seed,
    batch_size=min(8 if quick else 32, max(1, (documents or 64) // 2)),
    num_steps=steps,
    optimizer="adam",
    learning_rate=1e-3,
    log_every=min(250, steps),
    eval_every=steps,
    checkpoint_every=steps,
    eval_batch_size=64,
    evaluators=["metrics", "likelihood"] if iwae and model == "text_vae" else ["metrics"],
    iwae_samples=FLAGS.iwae_samples,
    iwae_chunk=256,
  )
  cfg = config.make_config(**{**base, **CONFIGS[model], **sizes, **overrides()})
  return loop.train_and_evaluate(cfg, workdir)


def likelihood_rows(model: str, metrics: dict) -> dict[str, dict]:
  """The likelihood table's rows of one run: text_vae's ELBO and IWAE bounds, text_lm's bits."""
  pick = lambda suffix: {
    key: metrics[key + suffix] for _, key in LIKELIHOOD_COLUMNS if key + suffix in metrics
  }
  if model == "text_vae":
    elbo = {**pick(""), "kl": metrics["kl"], "active_units": metrics["active_units"]}
    return {
      "dlu text_vae (ELBO)": elbo,
      f"dlu text_vae (IWAE, K={FLAGS.iwae_samples})": pick("_iwae"),
    }
  if model == "text_lm":
    return {"dlu text_lm": pick("")}
  return {}


def oneclass_split(docs: list[str], y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Boolean masks (train, test) of the documents, each category split by --oneclass_test_fraction."""
  rng = np.random.default_rng(seed)
  test = np.zeros(len(docs), bool)
  for k in np.unique(y):
    idx = rng.permutation(np.flatnonzero(y == k))
    test[idx[: max(1, round(FLAGS.oneclass_test_fraction * len(idx)))]] = True
  return ~test, test


def tfidf_knn_scores(train: list[str], test: list[str]) -> np.ndarray:
  """Mean cosine distance of each test document's TF-IDF to its --knn nearest training ones."""
  from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: PLC0415
  from sklearn.neighbors import NearestNeighbors  # noqa: PLC0415

  vec = TfidfVectorizer(sublinear_tf=True).fit(train)
  nn = NearestNeighbors(n_neighbors=min(FLAGS.knn, len(train)), metric="cosine")
  dist, _ = nn.fit(vec.transform(train)).kneighbors(vec.transform(test))
  return dist.mean(axis=1)


def oneclass(docs, y, categories, seed) -> dict[str, dict[str, float]]:
  """{method: {category: AUROC, "mean": ...}} of one seed."""
  from sklearn.metrics import roc_auc_score  # noqa: PLC0415

  train, test = oneclass_split(docs, y, seed)
  test_docs = [d for d, t in zip(docs, test, strict=True) if t]
  out: dict[str, dict[str, float]] = {}
  for k, category in enumerate(categories):
    normal = [d for d, t, c in zip(docs, train, y, strict=True) if t and c == k]
    anomalous = (y[test] != k).astype(int)
    path = os.path.join(FLAGS.out, "oneclass", f"s{seed}", category, "docs.txt")
    if not os.path.exists(path):
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with files.atomic_write(path) as f:
        f.write("\n".join(normal) + "\n")
    for model in FLAGS.oneclass_models:
      workdir = os.path.join(os.path.dirname(path), model)
      train_run(model, path, workdir, seed, FLAGS.oneclass_steps, False, len(normal))
      scores = dlu.load_run(workdir).score(test_docs)
      auc = float(roc_auc_score(anomalous, scores))
      out.setdefault(f"dlu {model}", {})[category] = auc
      print(f"seed {seed} one-class {category} {model}: AUROC {auc:.3f}", flush=True)
    auc = float(roc_auc_score(anomalous, tfidf_knn_scores(normal, test_docs)))
    out.setdefault("tfidf+knn", {})[category] = auc
    print(f"seed {seed} one-class {category} tfidf+knn: AUROC {auc:.3f}", flush=True)
  for per in out.values():
    per["mean"] = float(np.mean([per[c] for c in categories]))
  return out


def table(results: dict[str, list[dict]], columns=(("ACC", "acc"), ("NMI", "nmi"), ("ARI", "ari"))):
  """Mean ± standard deviation over the seeds, a row a method (– where a method lacks one)."""
  lines = ["| method | " + " | ".join(h for h, _ in columns) + " |"]
  lines.append("|---" * (len(columns) + 1) + "|")
  for method, runs in results.items():
    cells = []
    for _, key in columns:
      v = np.array([r[key] for r in runs if key in r], dtype=float)
      cells.append(f"{v.mean():.3f} ± {v.std():.3f}" if len(v) else "–")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  cli.start(argv)
  for name, chosen, known in (
    ("models", FLAGS.models, CONFIGS),
    ("oneclass_models", FLAGS.oneclass_models, CONFIGS),
    ("parts", FLAGS.parts, PARTS),
  ):
    for m in chosen:
      if m not in known:
        raise dlu.UsageError(f"--{name}: {m!r} is none of {', '.join(known)}")
  if not 0 < FLAGS.oneclass_test_fraction < 1:
    raise dlu.UsageError(
      f"--oneclass_test_fraction={FLAGS.oneclass_test_fraction}: expected a fraction in (0, 1)"
    )
  if FLAGS.knn < 1:
    raise dlu.UsageError(f"--knn={FLAGS.knn}: expected at least 1 neighbour")
  if "text_simcse" in FLAGS.oneclass_models:
    raise dlu.UsageError("--oneclass_models: text_simcse has no score of its own")
  overrides()
  os.makedirs(FLAGS.out, exist_ok=True)
  corpus, docs, y = build_corpus(FLAGS.out)
  categories = sorted(FLAGS.categories)
  k = len(categories)
  print(f"corpus: {len(docs)} documents of {k} categories in {corpus}", flush=True)
  seeds = [int(s) for s in FLAGS.seeds][: 1 if FLAGS.quick else None]
  parts = set(FLAGS.parts)
  results: dict[str, list[dict]] = {}
  likelihood: dict[str, list[dict]] = {}
  per_class: dict[str, list[dict]] = {}
  for seed in seeds:
    for model in FLAGS.models if parts & {"clustering", "likelihood"} else ():
      if model == "text_lm" and "likelihood" not in parts:
        continue
      t = time.perf_counter()
      workdir = os.path.join(FLAGS.out, f"{model}_s{seed}")
      final = train_run(model, corpus, workdir, seed)
      if "likelihood" in parts:
        for name, row in likelihood_rows(model, final).items():
          likelihood.setdefault(name, []).append(row)
          print(f"seed {seed} {name}: {row}", flush=True)
      if "clustering" not in parts or model == "text_lm":  # no code to cluster
        continue
      run = dlu.load_run(workdir)
      codes = run.encode(docs)
      scores = clustering.scores(y, _kmeans(codes, k, seed))
      scores["time_s"] = time.perf_counter() - t
      results.setdefault(f"dlu {model} + kmeans", []).append(scores)
      print(f"seed {seed} {model}: {scores}", flush=True)
      if FLAGS.l2_codes:
        unit = codes / np.maximum(np.linalg.norm(codes, axis=1, keepdims=True), 1e-12)
        scores = clustering.scores(y, _kmeans(unit, k, seed))
        results.setdefault(f"dlu {model} + l2 kmeans", []).append(scores)
        print(f"seed {seed} {model} (L2-normalised codes): {scores}", flush=True)
    if "clustering" in parts:
      for name, scores in baselines(docs, y, k, seed).items():
        results.setdefault(name, []).append(scores)
        print(f"seed {seed} {name}: {scores}", flush=True)
    if "oneclass" in parts:
      for name, aucs in oneclass(docs, y, categories, seed).items():
        per_class.setdefault(name, []).append(aucs)
  load = os.getloadavg()
  steps = 30 if FLAGS.quick else FLAGS.steps
  oneclass_steps = 30 if FLAGS.quick else FLAGS.oneclass_steps
  note = (
    f"{len(docs)} documents, {k} categories ({', '.join(categories)}); seeds "
    f"{seeds}; {steps} steps ({oneclass_steps} per one-class run); IWAE K={FLAGS.iwae_samples}"
    f"{''.join('; ' + o for o in FLAGS.overrides)}; load average "
    f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
  )
  sections = []
  if results:
    sections.append("Clustering:\n\n" + table(results))
  if likelihood:
    sections.append("Test-split likelihood:\n\n" + table(likelihood, LIKELIHOOD_COLUMNS))
  if per_class:
    columns = tuple((c, c) for c in categories) + (("mean", "mean"),)
    sections.append(
      "One-class AUROC (a category normal, the others anomalies):\n\n" + table(per_class, columns)
    )
  md = "\n\n".join(sections) + "\n\n" + note + "\n"
  files.write_json(
    os.path.join(FLAGS.out, "text_protocol.json"),
    {
      "results": results,
      "likelihood": likelihood,
      "oneclass": per_class,
      "documents": len(docs),
      "categories": categories,
      "seeds": seeds,
      "steps": steps,
      "oneclass_steps": oneclass_steps,
      "iwae_samples": FLAGS.iwae_samples,
      "overrides": list(FLAGS.overrides),
      "load_average": list(load),
    },
  )
  with files.atomic_write(os.path.join(FLAGS.out, "text_protocol.md")) as f:
    f.write(md)
  print("\n" + md)


if __name__ == "__main__":
  flags.mark_flag_as_required("out")
  app.run(main)
