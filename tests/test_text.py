"""Text: the text: readers and tokenisers, the text autoencoders, and a run on documents it
writes trained, resumed, evaluated and applied."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from dlu.data import sources, text
from dlu.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPICS = {
  "cats": "the cat sat on the mat and purred at the dog",
  "markets": "stocks fell sharply as markets feared higher rates",
}


def _write_folder(path, n=12):
  for label, words in TOPICS.items():
    os.makedirs(path / label, exist_ok=True)
    for i in range(n):
      (path / label / f"{i:02d}.txt").write_text(f"{words} {i}\n", encoding="utf-8")
  return str(path)


def _options(**kw):
  return sources.TableOptions(text=text.TextOptions(**kw))


def test_folder_labels_bytes_and_truncation(tmp_path):
  ds = sources.load(
    f"text:{_write_folder(tmp_path / 'docs')}", table_options=_options(max_length=20)
  )
  assert ds.is_text and ds.x_train.dtype == np.int32 and ds.x_train.shape[1] == 20
  assert ds.num_classes == 2 and len(ds.x_train) + len(ds.x_test) == 24
  docs = ds.preprocessing.decode(ds.x_train)
  assert all(d in " ".join(TOPICS.values()) for d in docs)  # truncated prefixes of the text
  assert "22 training documents truncated to 20" in sources.describe(ds)
  full = sources.load(f"text:{tmp_path / 'docs'}", table_options=_options(max_length=0))
  assert text.truncated(full.x_train) == 0 and (full.x_train == text.PAD).any()
  # Padding and the end token: ids 0 and 2; bytes from 4.
  row = full.x_train[0]
  end = int(np.flatnonzero(row == text.EOS)[0])
  assert (row[end + 1 :] == text.PAD).all() and (row[:end] >= text.NUM_SPECIAL).all()
  assert full.preprocessing.decode(full.x_train[:1])[0].encode() == bytes((row[:end] - 4).tolist())


def test_lines_csv_and_parquet(tmp_path):
  import pyarrow as pa  # noqa: PLC0415
  import pyarrow.parquet as pq  # noqa: PLC0415

  (tmp_path / "d.txt").write_text("première ligne\nsecond document\nthird\n", encoding="utf-8")
  raw = text.read_source(str(tmp_path / "d.txt"), "d")
  assert raw.docs == ["première ligne", "second document", "third"] and raw.labels is None
  (tmp_path / "t.csv").write_text('id,body,topic\n1,"a, b",x\n2,hello,y\n', encoding="utf-8")
  raw = text.read_source(str(tmp_path / "t.csv"), "t", text_column="body", label_column="topic")
  assert raw.docs == ["a, b", "hello"] and list(raw.labels) == ["x", "y"]
  pq.write_table(
    pa.table({"body": ["one", "two", "three"], "y": [0, 1, 0]}), tmp_path / "t.parquet"
  )
  ds = sources.load(
    f"text:{tmp_path / 't.parquet'}",
    table_options=sources.TableOptions(label_column="y", text=text.TextOptions(text_column="body")),
  )
  assert ds.num_classes == 2 and len(ds.x_train) == 2


def test_sentencepiece_trained_on_train_split_saved_and_reused(tmp_path):
  words = ["alpha beta gamma", "beta gamma delta", "gamma delta alpha", "delta alpha beta"]
  (tmp_path / "d.txt").write_text("\n".join(words * 10) + "\n")
  spec = f"text:{tmp_path / 'd.txt'}"
  ds = sources.load(spec, table_options=_options(tokenizer="sentencepiece", vocab_size=40))
  pre = ds.preprocessing
  assert pre.tokenizer == "sentencepiece" and 4 < pre.vocab_size <= 40
  assert int(ds.x_train.max()) < pre.vocab_size
  assert set(pre.decode(ds.x_test)) <= set(words)  # pieces decode back to the documents
  pre.save(str(tmp_path / text.FILE_NAME))
  assert os.path.getsize(tmp_path / text.SPM_FILE) > 0
  again = text.TextPreprocessing.load(str(tmp_path / text.FILE_NAME))
  assert again == pre
  opts = sources.TableOptions(preprocessing=again)
  np.testing.assert_array_equal(sources.load(spec, table_options=opts).x_test, ds.x_test)
  with pytest.raises(UsageError, match="--vocab_size=10 sizes a SentencePiece vocabulary"):
    text.fit_preprocessing(words, vocab_size=10)


@pytest.mark.parametrize(
  "write, flags, expected",
  [
    (
      lambda p: (p / "b.txt").write_bytes(b"fine\nbad \xff byte\n"),
      {},
      "b.txt line 2 is not UTF-8",
    ),
    (lambda p: (p / "b.txt").write_text("one\n\nthree\n"), {}, "b.txt line 2 is an empty document"),
    (
      lambda p: (p / "b.csv").write_text("body,y\nhi,1\n,2\n"),
      {"text_column": "body"},
      "b.csv line 3: column 'body' is an empty document",
    ),
    (
      lambda p: (p / "b.csv").write_text("body,y\nhi,1\n"),
      {"text_column": "text"},
      "--text_column=text: .*b.csv has no such column; it has 'body', 'y'",
    ),
    (lambda p: (p / "b.csv").write_text("body\nhi\n"), {}, "a table needs --text_column"),
    (lambda p: None, {}, "missing.txt does not exist"),
  ],
)
def test_bad_input_one_line_errors(tmp_path, write, flags, expected):
  write(tmp_path)
  name = {"b.txt": "b.txt", "b.csv": "b.csv"}
  path = next((tmp_path / n for n in name if (tmp_path / n).exists()), tmp_path / "missing.txt")
  with pytest.raises(UsageError, match=expected) as e:
    sources.load(f"text:{path}", table_options=_options(**flags))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("model", ["text_ae", "text_vae"])
@pytest.mark.slow
def test_models_masked_loss_metrics_and_decoding(model):
  from dlu import config, families  # noqa: PLC0415

  cfg = config.make_config(
    model=model, latent_dim=4, text_dim=16, text_heads=2, text_ff=32, text_layers=1
  )
  pre = text.TextPreprocessing("bytes", text.BYTE_VOCAB, 16)
  fam = families.get(model)(cfg, families.DataSpec((16,), 2, 10, vocab_size=pre.vocab_size))
  state = fam.init_state(jax.random.key(0))
  x = pre.transform(["hello there", "a much longer document than that"])
  m = fam.eval_metrics(state, {"image": x}, jax.random.key(1))
  assert m["token_acc"].shape == (2,) and np.all((m["token_acc"] >= 0) & (m["token_acc"] <= 1))
  # An untrained model is near uniform over the 260 ids: about log2(260) = 8 bits a token.
  assert np.all(np.abs(np.asarray(m["bits_per_token"]) - np.log2(260)) < 2)
  assert "bits_per_byte" in m and ("kl" in m) == (model == "text_vae")
  assert fam.embed(state, x).shape == (2, 4) and fam.score(state, x).shape == (2,)
  out = np.asarray(fam.reconstruct(state, x))
  assert out.shape == (2, 16) and out.dtype == np.int32 and len(pre.decode(out)) == 2
  # Whatever lies past a document's end does not change its loss or code: padding is masked.
  loss = lambda v: fam.loss(state.params, {"image": v, "step": state.step}, jax.random.key(2))[0]
  y = x.copy()
  y[0, 12:] = 0
  np.testing.assert_allclose(fam.embed(state, x)[0], fam.embed(state, y)[0], rtol=1e-5)
  assert np.isfinite(loss(x))
  with pytest.raises(UsageError, match="needs text"):
    families.get(model)(cfg, families.DataSpec((8,), None, 10))


@pytest.mark.slow
def test_free_bits_and_kl_annealing():
  from dlu import config, families  # noqa: PLC0415

  kw = dict(model="text_vae", latent_dim=4, text_dim=16, text_heads=2, text_ff=32, text_layers=1)
  pre = text.TextPreprocessing("bytes", text.BYTE_VOCAB, 12)
  x = pre.transform(["abc", "defgh"])
  spec = families.DataSpec((12,), None, 10, vocab_size=pre.vocab_size)
  losses = {}
  for free_bits in (0.0, 5.0):
    cfg = config.make_config(**kw, free_bits=free_bits, kl_anneal_steps=100, word_dropout=0.0)
    fam = families.get("text_vae")(cfg, spec)
    params = fam.init_state(jax.random.key(0)).params
    for step in (0, 50, 100):
      batch = {"image": x, "step": np.int32(step)}
      losses[free_bits, step] = fam.loss(params, batch, jax.random.key(1))
  # At step 0 the KL weighs nothing; at 100 fully. Free bits of 5 nats per dimension count
  # 4 * 5 = 20 nats (more than the KL an initial posterior has), weighted by the ramp.
  for fb in (0.0, 5.0):
    assert float(losses[fb, 0][1]["kl_weight"]) == 0 and float(losses[fb, 100][1]["kl_weight"]) == 1
  recon = float(losses[5.0, 0][1]["recon"])
  np.testing.assert_allclose(float(losses[5.0, 100][0]), recon + 20, rtol=1e-5)
  np.testing.assert_allclose(float(losses[5.0, 50][0]), recon + 10, rtol=1e-5)
  assert float(losses[0.0, 100][0]) < float(losses[5.0, 100][0])


_SMALL = dict(latent_dim=4, text_dim=16, text_heads=2, text_ff=32, text_layers=1)


def test_language_model_is_the_decoder_without_a_code():
  from dlu import config, families  # noqa: PLC0415

  pre = text.TextPreprocessing("bytes", text.BYTE_VOCAB, 16)
  spec = families.DataSpec((16,), 2, 10, vocab_size=pre.vocab_size)
  lm = families.get("text_lm")(config.make_config(model="text_lm", **_SMALL), spec)
  vae = families.get("text_vae")(config.make_config(model="text_vae", **_SMALL), spec)
  state = lm.init_state(jax.random.key(0))
  shapes = lambda p: {k: jax.tree_util.tree_map(np.shape, v) for k, v in p.items()}
  lm_shapes, vae_shapes = shapes(state.params), shapes(vae.init_state(jax.random.key(0)).params)
  # The same decoder layers, embedding and output as the VAE's; no encoder, no code layers.
  assert set(lm_shapes) == {"embed", "positions", "decoder_0", "decoder_norm", "out"}
  assert all(lm_shapes[k] == vae_shapes[k] for k in lm_shapes)
  x = pre.transform(["hello there", "a much longer document than that"])
  m = lm.eval_metrics(state, {"image": x}, jax.random.key(1))
  assert {"token_acc", "nll", "bits_per_token", "bits_per_byte"} <= set(m)
  assert np.all(np.abs(np.asarray(m["bits_per_token"]) - np.log2(260)) < 2)
  # bits per byte: the document's nats over its bytes (not its end token).
  n_bytes, n_tokens = np.array([11, 16]), np.array([12, 16])  # the second truncated: no end
  np.testing.assert_allclose(m["bits_per_byte"], m["nll"] / n_bytes / np.log(2), rtol=1e-5)
  score = np.asarray(lm.score(state, x))
  np.testing.assert_allclose(score, m["nll"] / n_tokens, rtol=1e-5)  # nats per token
  assert not lm.has_embedding and lm.has_score and not lm.has_reconstruction
  # Causal: a token's loss does not depend on the tokens after it.
  nll = lambda v: np.asarray(lm._token_nll(state.params, v)[0])
  y = x.copy()
  y[1, 8:] = text.NUM_SPECIAL
  np.testing.assert_allclose(nll(x)[1, :8], nll(y)[1, :8], rtol=1e-5)
  with pytest.raises(UsageError, match="needs text"):
    families.get("text_lm")(config.make_config(model="text_lm"), families.DataSpec((8,), None, 10))


@pytest.mark.slow
def test_iwae_bound_is_the_elbo_at_one_sample_and_tighter_with_more():
  from dlu import config, families  # noqa: PLC0415

  pre = text.TextPreprocessing("bytes", text.BYTE_VOCAB, 16)
  spec = families.DataSpec((16,), 2, 10, vocab_size=pre.vocab_size)
  cfg = config.make_config(model="text_vae", kl_anneal_steps=0, iwae_chunk=64, **_SMALL)
  vae = families.get("text_vae")(cfg, spec)
  state = vae.init_state(jax.random.key(0))
  x = pre.transform(["the cat sat", "a dog ran off", "the cat ran", "dogs sat"])
  step = jax.jit(vae.train_step)
  for i in range(20):  # a little trained: a posterior that is not the prior
    state, _ = step(state, {"image": x}, jax.random.key(i))
  keys = jax.random.split(jax.random.key(7), 200)
  elbo = jax.jit(jax.vmap(lambda k: vae.eval_metrics(state, {"image": x}, k)))(keys)
  elbo = -np.asarray(elbo["recon"] + elbo["kl"])  # [200, B] one-sample ELBO estimates
  iwae = lambda k, n: vae.iwae_bound(state, x, k, n)
  one = np.asarray(jax.jit(jax.vmap(lambda k: iwae(k, 1)))(keys))
  # K=1: an estimate of the same ELBO (the KL sampled instead of in closed form).
  spread = np.std(one - elbo.mean(0), axis=0) / np.sqrt(len(keys))
  assert np.all(np.abs(one.mean(0) - elbo.mean(0)) < 4 * spread + 1e-3)
  # K=50: a tighter bound on log p(x) than the ELBO, for every document.
  many = np.asarray(jax.jit(lambda k: iwae(k, 50))(jax.random.key(3)))
  assert np.all(many > elbo.mean(0))
  assert np.all(many >= one.mean(0))


def _run(module, *args, timeout=240):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


_TINY = [
  "--text_dim=16",
  "--text_heads=2",
  "--text_ff=32",
  "--text_layers=1",
  "--latent_dim=4",
  "--max_length=48",
  "--batch_size=8",
  "--eval_batch_size=16",
]


@pytest.mark.slow
def test_vae_run_trains_evaluates_and_applies_as_text(tmp_path):
  docs = _write_folder(tmp_path / "docs", n=16)
  workdir = str(tmp_path / "wd")
  out = _run(
    "experiments.train",
    "--flagfile=experiments/configs/text_vae_text.flags",
    f"--dataset=text:{docs}",
    "--tokenizer=sentencepiece",
    "--vocab_size=40",
    *_TINY,
    "--num_steps=20",
    "--eval_every=10",
    "--checkpoint_every=10",
    "--log_every=10",
    "--kl_anneal_steps=10",
    "--num_images=4",
    f"--workdir={workdir}",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Text: " in out.stdout and "SentencePiece pieces" in out.stdout
  assert os.path.isfile(os.path.join(workdir, text.SPM_FILE))
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  test = [r for r in rows if r["split"] == "test"][-1]
  assert {"token_acc", "bits_per_token", "kl", "active_units", "acc", "nmi"} <= set(test)
  assert "baselines/pixels/nmi" in test  # TF-IDF of the tokens beside the codes
  # The IWAE bound (K=50 in the config) after the last step: no looser than the ELBO.
  assert test["iwae_samples"] == 50 and test["bits_per_token_iwae"] <= test["bits_per_token"]
  samples = open(os.path.join(workdir, "text", "samples_0000020.txt")).read().splitlines()
  assert 1 <= len(samples) <= 4  # --num_images of the split scored (few rows here)
  assert os.path.isfile(os.path.join(workdir, "text", "reconstructions_0000020.txt"))
  events = [f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]
  tb = b"".join(open(os.path.join(workdir, f), "rb").read() for f in events)
  assert all(f"text/{n}".encode() in tb for n in ("samples", "reconstructions", "interpolations"))
  out = _run("experiments.evaluate", f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  evaluated = json.load(open(os.path.join(workdir, "eval.json")))
  assert {"nmi", "acc", "kl", "active_units", "bits_per_token", "nll_iwae"} <= set(evaluated)
  out = _run(
    "experiments.apply",
    f"--workdir={workdir}",
    f"--input=text:{docs}",
    f"--output={tmp_path / 'out.csv'}",
    "--samples=3",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  header = open(tmp_path / "out.csv").readline()
  assert "embedding_3" in header and "reconstruction" in header and "cluster" in header
  assert len(open(tmp_path / "out_samples.csv").read().splitlines()) == 4
  import dlu  # noqa: PLC0415

  r = dlu.load_run(workdir)
  codes = r.encode([TOPICS["cats"], "something new entirely"])
  assert codes.shape == (2, 4) and np.isfinite(codes).all()
  assert r.encode(f"text:{docs}").shape == (32, 4)
  assert all(isinstance(s, str) for s in r.reconstruct(["the cat"]))
  samples, labels = r.sample(2)
  assert len(samples) == 2 and labels is None
  with pytest.raises(UsageError, match="document 2 is empty"):
    r.encode(["fine", " "])


@pytest.mark.slow
def test_language_model_run_trains_evaluates_and_scores(tmp_path):
  docs = _write_folder(tmp_path / "docs", n=8)
  workdir = str(tmp_path / "wd")
  out = _run(
    "experiments.train",
    "--flagfile=experiments/configs/text_lm_text.flags",
    f"--dataset=text:{docs}",
    *_TINY,
    "--num_steps=30",
    "--eval_every=30",
    "--checkpoint_every=30",
    "--log_every=10",
    f"--workdir={workdir}",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [r for r in rows if r["split"] == "train"]
  assert train[-1]["loss"] < train[0]["loss"]
  test = [r for r in rows if r["split"] == "test"][-1]
  assert {"token_acc", "nll", "bits_per_token", "bits_per_byte"} <= set(test)
  assert test["bits_per_byte"] < np.log2(260)  # better than uniform over the ids
  out = _run("experiments.evaluate", f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "bits_per_byte" in json.load(open(os.path.join(workdir, "eval.json")))
  import dlu  # noqa: PLC0415

  r = dlu.load_run(workdir)
  scores = r.score([TOPICS["cats"] + " 1", "zqxj vvkw 9999 ##"])
  assert scores.shape == (2,) and scores[0] < scores[1]  # the seen topic is less surprising
  with pytest.raises(UsageError, match="--model=text_lm has no embedding"):
    r.encode(["a document"])


@pytest.mark.slow
def test_text_run_resumes_bit_identically(tmp_path):
  docs = _write_folder(tmp_path / "docs", n=8)
  common = [
    "--model=text_ae",
    f"--dataset=text:{docs}",
    *_TINY,
    "--eval_every=10",
    "--checkpoint_every=5",
    "--log_every=5",
    "--evaluators=metrics",
  ]

  def train(workdir, steps):
    out = _run("experiments.train", *common, f"--num_steps={steps}", f"--workdir={workdir}")
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout

  def last_train_row(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    row = [r for r in rows if r["split"] == "train" and r["step"] == 10][-1]
    return {k: row[k] for k in ("loss", "token_acc", "grad_norm", "param_norm")}

  train(tmp_path / "a", 10)
  train(tmp_path / "b", 5)
  assert "from step 5" in train(tmp_path / "b", 10)  # resumed, not retrained
  assert last_train_row(tmp_path / "a") == last_train_row(tmp_path / "b")


def test_other_models_refuse_text_and_text_models_refuse_images(tmp_path):
  from dlu import config  # noqa: PLC0415
  from dlu.train import experiment  # noqa: PLC0415

  docs = _write_folder(tmp_path / "docs", n=4)
  cfg = config.make_config(model="ae_mlp", dataset=f"text:{docs}", batch_size=4)
  with pytest.raises(UsageError, match="--model=ae_mlp does not take text.*text_ae"):
    experiment.build(cfg, str(tmp_path / "wd"))
  cfg = config.make_config(model="text_ae", dataset="digits", batch_size=4)
  with pytest.raises(UsageError, match="--model=text_ae takes text"):
    experiment.build(cfg, str(tmp_path / "wd"))
  assert not os.path.exists(tmp_path / "wd")


@pytest.mark.slow
def test_text_protocol_quick_on_a_small_fortunes_folder(tmp_path):
  fortunes = tmp_path / "fortunes"
  fortunes.mkdir()
  for name, words in TOPICS.items():
    entries = [f"{words}\n  number {i} of them" for i in range(24)]  # one-class: 16 to train
    (fortunes / name).write_text("\n%\n".join(entries) + "\n%\n")
  out = tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(
    [
      sys.executable,
      "scripts/text_protocol.py",
      f"--out={out}",
      f"--fortunes={fortunes}",
      "--categories=cats,markets",
      "--models=text_ae,text_vae,text_lm",
      "--oneclass_models=text_lm",
      "--iwae_samples=4",
      "--quick",
      "--lsa_dim=5",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.load(open(out / "text_protocol.json"))
  assert result["documents"] == 48 and result["categories"] == ["cats", "markets"]
  methods = set(result["results"])  # text_lm has no code to cluster
  assert methods == {
    "dlu text_ae + kmeans",
    "dlu text_vae + kmeans",
    "tfidf+kmeans",
    "lsa+kmeans",
    "nmf",
  }
  assert result["results"]["tfidf+kmeans"][0]["acc"] == 1.0  # two disjoint vocabularies
  assert sorted(os.listdir(out / "corpus" / "cats"))[:2] == ["0000.txt", "0001.txt"]
  # The VAE's ELBO and IWAE bounds beside the language model's bits, on one test split.
  lik = result["likelihood"]
  assert set(lik) == {"dlu text_vae (ELBO)", "dlu text_vae (IWAE, K=4)", "dlu text_lm"}
  elbo, iwae = lik["dlu text_vae (ELBO)"][0], lik["dlu text_vae (IWAE, K=4)"][0]
  assert {"bits_per_byte", "kl", "active_units"} <= set(elbo)
  assert np.isfinite(iwae["bits_per_byte"]) and iwae["bits_per_byte"] < elbo["bits_per_byte"] + 0.5
  assert 0 < lik["dlu text_lm"][0]["bits_per_byte"] < np.log2(260)
  # One-class AUROC per category, dlu's score beside TF-IDF + k-NN distance.
  auc = result["oneclass"]
  assert set(auc) == {"dlu text_lm", "tfidf+knn"}
  assert set(auc["tfidf+knn"][0]) == {"cats", "markets", "mean"}
  assert auc["tfidf+knn"][0]["mean"] == 1.0  # the other category shares no word
  assert all(0 <= v <= 1 for v in auc["dlu text_lm"][0].values())
  md = open(out / "text_protocol.md").read()
  assert "| lsa+kmeans |" in md and "| dlu text_lm |" in md and "| tfidf+knn |" in md
