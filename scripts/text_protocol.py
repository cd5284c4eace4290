r"""Clustering documents by topic: dlu's text codes beside TF-IDF, LSA and NMF (scikit-learn).

  python scripts/text_protocol.py --out=/tmp/text_protocol --steps=150   # Debian's fortunes
  python scripts/text_protocol.py --out=/tmp/text_quick --quick --fortunes=DIR

The corpus: a few categories of Debian's `fortunes` package (apt-get install fortunes;
/usr/share/games/fortunes/CATEGORY, entries separated by lines holding `%`), each entry one
document (its whitespace collapsed), its category the label, written once as a directory of
class subdirectories (OUT/corpus/CATEGORY/NNNN.txt) that `--dataset=text:OUT/corpus` reads.
`--fortunes=DIR` reads the category files from DIR instead (the test writes a small one).

For each seed: dlu's `--models` trained on the corpus (the labels unseen), every document
encoded with `dlu.load_run(...).encode`, and k-means (k = the categories) on the codes; beside
them TF-IDF of words + k-means, LSA (TF-IDF + TruncatedSVD to --lsa_dim, L2-normalised) +
k-means and NMF topics of the TF-IDF (each document's largest topic), all with that seed.
ACC (Hungarian matching), NMI and ARI over every document. Prints the mean and standard
deviation over the seeds as a markdown table and writes OUT/text_protocol.json and
OUT/text_protocol.md.
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
  "models", ["text_ae", "text_vae"], "dlu text models (text_ae, text_vae, text_simcse)."
)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (training and every clustering).")
flags.DEFINE_integer("steps", 1500, "Training steps per run.")
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

CONFIGS = {
  "text_ae": dict(model="text_ae"),
  "text_vae": dict(model="text_vae", kl_anneal_steps=500, free_bits=0.1),
  "text_simcse": dict(model="text_simcse", dropout=0.1, temperature=0.05),
}


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


def train_run(model: str, corpus: str, workdir: str, seed: int) -> None:
  quick = FLAGS.quick
  steps = 30 if quick else FLAGS.steps
  sizes = dict(text_dim=16, text_ff=32, text_layers=1, text_heads=2) if quick else {}
  base = dict(
    dataset=f"text:{corpus}",
    max_length=FLAGS.doc_length,
    latent_dim=FLAGS.code,
    seed=seed,
    batch_size=8 if quick else 32,
    num_steps=steps,
    optimizer="adam",
    learning_rate=1e-3,
    log_every=min(250, steps),
    eval_every=steps,
    checkpoint_every=steps,
    eval_batch_size=64,
    evaluators=["metrics"],
  )
  cfg = config.make_config(**{**base, **CONFIGS[model], **sizes, **overrides()})
  loop.train_and_evaluate(cfg, workdir)  # a finished run resumes at its last step


def table(results: dict[str, list[dict]]) -> str:
  lines = ["| method | ACC | NMI | ARI |", "|---|---|---|---|"]
  for method, runs in results.items():
    cells = []
    for key in ("acc", "nmi", "ari"):
      v = np.array([r[key] for r in runs])
      cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  cli.start(argv)
  for m in FLAGS.models:
    if m not in CONFIGS:
      raise dlu.UsageError(f"--models: {m!r} is none of {', '.join(CONFIGS)}")
  overrides()
  os.makedirs(FLAGS.out, exist_ok=True)
  corpus, docs, y = build_corpus(FLAGS.out)
  k = len(FLAGS.categories)
  print(f"corpus: {len(docs)} documents of {k} categories in {corpus}", flush=True)
  seeds = [int(s) for s in FLAGS.seeds][: 1 if FLAGS.quick else None]
  results: dict[str, list[dict]] = {}
  for seed in seeds:
    for model in FLAGS.models:
      t = time.perf_counter()
      workdir = os.path.join(FLAGS.out, f"{model}_s{seed}")
      train_run(model, corpus, workdir, seed)
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
    for name, scores in baselines(docs, y, k, seed).items():
      results.setdefault(name, []).append(scores)
      print(f"seed {seed} {name}: {scores}", flush=True)
  load = os.getloadavg()
  note = (
    f"{len(docs)} documents, {k} categories ({', '.join(sorted(FLAGS.categories))}); seeds "
    f"{seeds}; {30 if FLAGS.quick else FLAGS.steps} steps"
    f"{''.join('; ' + o for o in FLAGS.overrides)}; load average "
    f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
  )
  md = table(results) + "\n\n" + note + "\n"
  files.write_json(
    os.path.join(FLAGS.out, "text_protocol.json"),
    {
      "results": results,
      "documents": len(docs),
      "categories": sorted(FLAGS.categories),
      "seeds": seeds,
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
