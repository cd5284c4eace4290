"""text_simcse (SimCSE on text_ae's encoder): its views, its loss, a run on documents it writes
trained, resumed bit-identically, evaluated, applied and loaded; and text_ae's masked-token
denoising (--token_mask_rate)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from dlu import config, families
from dlu.data import text
from dlu.errors import UsageError
from dlu.families import text_contrastive

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPICS = {
  "cats": ["the cat sat on the mat", "a kitten purred at the dog", "cats chase mice at night"],
  "markets": ["stocks fell as rates rose", "markets feared higher rates", "bond yields climbed"],
}
TINY = dict(latent_dim=8, text_dim=16, text_heads=2, text_ff=32, text_layers=1)


def _write_folder(path, n=8):
  for label, docs in TOPICS.items():
    os.makedirs(path / label, exist_ok=True)
    for i in range(n):
      (path / label / f"{i:02d}.txt").write_text(f"{docs[i % 3]} {i}\n", encoding="utf-8")
  return str(path)


def _family(**kw):
  cfg = config.make_config(model="text_simcse", **{**TINY, "dropout": 0.1, **kw})
  families.validate(cfg)
  spec = families.DataSpec((24,), 2, 10, vocab_size=text.BYTE_VOCAB)
  return families.get("text_simcse")(cfg, spec)


def test_views_are_spans_with_tokens_deleted_in_order():
  pre = text.TextPreprocessing("bytes", text.BYTE_VOCAB, 24)
  x = pre.transform(["the cat sat on the mat", "stocks fell", "a"])
  n = (x != text.PAD).sum(axis=1)
  same = text_contrastive.text_views(jax.random.key(0), x, crop=1.0, token_drop=0.0)
  np.testing.assert_array_equal(same, x)
  for seed in range(5):
    v = np.asarray(text_contrastive.text_views(jax.random.key(seed), x, crop=0.5, token_drop=0.3))
    assert v.shape == x.shape
    for row, view, count in zip(x, v, n):
      kept = view[view != text.PAD]
      assert 1 <= len(kept) <= count and (view[len(kept) :] == text.PAD).all()
      it = iter(row[:count].tolist())  # an order-keeping subsequence of the document
      assert all(t in it for t in kept.tolist())
    spans = np.asarray(text_contrastive.text_views(jax.random.key(seed), x, crop=0.5, token_drop=0))
    for row, view, count in zip(x, spans, n):
      kept = view[view != text.PAD].tolist()
      assert len(kept) >= np.ceil(count / 2)
      starts = [i for i in range(count) if row[i : i + len(kept)].tolist() == kept]
      assert starts  # one contiguous span


@pytest.mark.slow
def test_positives_score_above_negatives_and_loss_falls():
  fam = _family(
    text_view_crop=0.6,
    text_view_token_drop=0.1,
    temperature=0.1,
    batch_size=6,
    optimizer="adam",
    learning_rate=3e-3,
  )
  pre = text.TextPreprocessing("bytes", text.BYTE_VOCAB, 24)
  x = pre.transform([d for docs in TOPICS.values() for d in docs])
  state = fam.init_state(jax.random.key(0))
  step = jax.jit(fam.train_step)
  first = None
  for i in range(40):
    state, m = step(state, {"image": x}, jax.random.key(1))
    first = first if first is not None else m
  assert float(m["loss"]) < 0.5 * float(first["loss"])
  assert float(m["top1"]) > 0.9  # each view finds its partner among the 11 other views
  # The code is deterministic, L2-normalised and blind to what lies past a document's end.
  z = np.asarray(fam.embed(state, x))
  np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, rtol=1e-5)
  np.testing.assert_allclose(fam.embed(state, x), z, rtol=1e-6)
  m = fam.eval_metrics(state, {"image": x}, jax.random.key(2))
  assert m["loss"].shape == (6,) and np.all(np.isfinite(m["loss"]))


@pytest.mark.slow
def test_cluster_head():
  fam = _family(cluster_head=True, n_clusters=3)
  pre = text.TextPreprocessing("bytes", text.BYTE_VOCAB, 24)
  x = pre.transform(["the cat", "a dog", "stocks fell", "rates rose"])
  state = fam.init_state(jax.random.key(0))
  probs = np.asarray(fam.cluster_probs(state, x))
  assert probs.shape == (4, 3)
  np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
  _, metrics = fam.loss(state.params, {"image": x}, jax.random.key(1))
  assert {"top1", "cluster_loss", "cluster_entropy"} <= set(metrics)


@pytest.mark.parametrize(
  "flags, expected",
  [
    ({"text_view_crop": 0.0}, r"--text_view_crop=0.0: expected a fraction of the document"),
    ({"text_view_crop": 1.5}, r"--text_view_crop=1.5: expected"),
    ({"text_view_token_drop": 1.0}, r"--text_view_token_drop=1.0: expected a fraction in \[0, 1\)"),
    (
      {"dropout": 0.0, "text_view_crop": 1.0, "text_view_token_drop": 0.0},
      "the two views of a document would be the same",
    ),
    ({"temperature": 0.0}, "--temperature"),
    ({"text_heads": 3}, "--text_heads=3 must divide --text_dim=16"),
    ({"batch_size": 1}, "--batch_size >= 2"),
  ],
)
def test_bad_flags_refused_in_one_line(flags, expected):
  with pytest.raises(UsageError, match=expected) as e:
    _family(**flags)
  assert "\n" not in str(e.value)


@pytest.mark.slow
def test_token_mask_rate_masks_the_encoders_inputs_only():
  cfg = config.make_config(model="text_ae", **TINY, token_mask_rate=0.5, word_dropout=0.0)
  families.validate(cfg)
  fam = families.get("text_ae")(cfg, families.DataSpec((24,), 2, 10, vocab_size=text.BYTE_VOCAB))
  pre = text.TextPreprocessing("bytes", text.BYTE_VOCAB, 24)
  x = pre.transform(["the cat sat on the mat", "stocks fell sharply today"])
  masked = np.asarray(fam._masked(x, jax.random.key(0)))
  content = x >= text.NUM_SPECIAL
  hidden = masked != x
  assert (masked[hidden] == text.UNK).all() and not hidden[~content].any()  # end, padding kept
  assert 0.3 < hidden.sum() / content.sum() < 0.7
  state = fam.init_state(jax.random.key(0))
  batch = {"image": x, "step": state.step}
  plain = families.get("text_ae")(cfg.replace(token_mask_rate=0.0), fam.spec)
  loss = lambda f: float(f.loss(state.params, batch, jax.random.key(3))[0])
  assert loss(fam) != loss(plain)  # the code is read from the masked document
  # Evaluation reads the whole document.
  ev = lambda f: np.asarray(f.eval_metrics(state, {"image": x}, jax.random.key(4))["token_acc"])
  np.testing.assert_array_equal(ev(fam), ev(plain))
  with pytest.raises(UsageError, match=r"--token_mask_rate=1.0: expected a fraction in \[0, 1\)"):
    families.validate(cfg.replace(token_mask_rate=1.0))


def _train(docs, workdir, steps, **kw):
  from dlu.train import loop  # noqa: PLC0415

  cfg = config.make_config(
    model="text_simcse",
    dataset=f"text:{docs}",
    max_length=32,
    batch_size=8,
    eval_batch_size=16,
    num_steps=steps,
    log_every=5,
    eval_every=10,
    checkpoint_every=5,
    optimizer="adam",
    learning_rate=1e-3,
    dropout=0.1,
    text_view_crop=0.7,
    text_view_token_drop=0.1,
    evaluators=["metrics", "clustering"],
    **{**TINY, **kw},
  )
  return loop.train_and_evaluate(cfg, str(workdir))


def _row(workdir, step):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  row = [r for r in rows if r["split"] == "train" and r["step"] == step][-1]
  return {k: row[k] for k in ("loss", "top1", "grad_norm", "param_norm")}


@pytest.mark.slow
def test_run_resumes_bit_identically_evaluates_applies_and_encodes(tmp_path):
  import dlu  # noqa: PLC0415

  docs = _write_folder(tmp_path / "docs")
  a, b = tmp_path / "a", tmp_path / "b"
  final = _train(docs, a, 10)
  assert {"loss", "top1", "acc", "nmi"} <= set(final)  # the clustering evaluator's scores
  _train(docs, b, 5)
  _train(docs, b, 10)
  assert _row(a, 10) == _row(b, 10)
  run = dlu.load_run(str(a))
  codes = run.encode(["the cat sat on the mat", "markets fell"])
  assert codes.shape == (2, 8)
  np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1, rtol=1e-5)
  assert run.encode(f"text:{docs}").shape == (16, 8)
  with pytest.raises(UsageError, match="has no anomaly score"):
    run.score(["the cat"])
  assert run.score(["the cat", "bond yields"], method="knn").shape == (2,)
  out = tmp_path / "codes.csv"
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.apply",
      f"--workdir={a}",
      f"--input=text:{docs}",
      f"--output={out}",
      "--score_method=cosine",
    ],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  rows = list(csv.DictReader(open(out)))
  assert len(rows) == 16 and "embedding_7" in rows[0] and "score" in rows[0]
  assert "reconstruction" not in rows[0]
