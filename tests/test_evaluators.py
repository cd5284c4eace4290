"""Evaluators: schedules from --evaluators, needs, one row per step, and the clustering
evaluator run during training."""

import io
import json
import os
import types

import numpy as np
import pytest

from dlu import config, data, evaluators, families
from dlu.errors import UsageError
from dlu.evaluators import registry
from dlu.families import DataSpec
from dlu.runtime.metric_writers import ConsoleWriter, JsonlWriter, MultiWriter
from dlu.train import loop


def test_schedules_parse_names_steps_and_final():
  sched = registry.parse_schedule(["metrics", "clustering:500", "likelihood", "images:final"], 100)
  assert [(e.name, every) for e, every in sched] == [
    ("metrics", 100),
    ("clustering", 500),
    ("likelihood", None),
    ("images", None),
  ]
  for spec, message in (
    (["nope"], "'nope' is not an evaluator; accepted: "),
    (["images:0"], "--evaluators=images:0: expected NAME, NAME:N"),
    (["images:soon"], "--evaluators=images:soon"),
    (["images", "images:5"], "names 'images' twice"),
  ):
    with pytest.raises(UsageError, match=message):
      registry.parse_schedule(spec, 100)


def test_every_evaluator_is_registered_once_with_known_needs():
  names = evaluators.names()
  assert {"metrics", "sample_quality", "likelihood", "images", "clustering"} <= set(names)
  assert len(names) == len(set(names))
  for name in names:
    assert evaluators.get(name).needs <= set(registry.NEEDS)
  assert evaluators.get("clustering").needs == {"embeddings", "labels"}
  # The default schedule is one every run can use.
  defaults = config.make_config().evaluators
  assert registry.parse_schedule(defaults, 10)


def test_due_steps_and_one_row_per_step(tmp_path):
  calls = []
  fake = lambda name: registry.Evaluator(
    name, lambda exp, state, inputs: calls.append((name, inputs.step)) or {name: {"x": 1.0}}
  )
  out = io.StringIO()
  writer = MultiWriter([JsonlWriter(str(tmp_path / "m.jsonl")), ConsoleWriter(stream=out)])
  exp = types.SimpleNamespace(dataset=data.load("digits"))
  evaluation = registry.Evaluation(exp, writer, [(fake("a"), 2), (fake("b"), 3), (fake("c"), None)])
  assert evaluation.boundaries() == (2, 3)
  for step in range(1, 7):
    evaluation(step, state=None, final=step == 6)
  writer.close()
  assert calls == [("a", 2), ("b", 3), ("a", 4), ("a", 6), ("b", 6), ("c", 6)]
  rows = [json.loads(line) for line in open(tmp_path / "m.jsonl")]
  assert [(r["step"], sorted(r)[:-2]) for r in rows] == [
    (2, ["a/x"]),
    (3, ["b/x"]),
    (4, ["a/x"]),
    (6, ["a/x", "b/x", "c/x"]),
  ]
  assert "test at step 6: a/x=1 b/x=1 c/x=1" in out.getvalue()


def test_needs_a_run_cannot_meet_skip_the_evaluator(capsys):
  ds = data.load("digits")
  unlabelled = data.Dataset("blobs", ds.x_train, None, ds.x_test, None, None)
  cfg = config.make_config(model="ae_seed", evaluators=["metrics", "clustering:50"])
  family = families.get("ae_seed")(cfg, DataSpec((8, 8, 1), None, len(ds.x_train)))
  exp = types.SimpleNamespace(cfg=cfg, dataset=unlabelled, family=family)
  assert [e.name for e, _ in evaluators.training_schedule(exp)] == ["metrics"]
  assert "No clustering evaluation: blobs has no labels" in capsys.readouterr().out
  assert registry.unmet_needs(evaluators.get("sample_quality"), exp)[0] == "samples"


@pytest.mark.slow
def test_clustering_evaluator_during_training(tmp_path):
  cfg = config.make_config(
    model="ae_seed",
    hidden_units=16,
    dataset="digits",
    batch_size=64,
    num_steps=40,
    log_every=20,
    eval_every=20,
    checkpoint_every=40,
    eval_batch_size=512,
    num_images=8,
    steps_per_dispatch=10,
    evaluators=["metrics", "clustering:40"],
    embedding_plot="none",
    baselines=False,
    kmeans_inits=2,
  )
  final = loop.train_and_evaluate(cfg, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  evals = [r for r in rows if r["split"] == "valid"]
  assert [r["step"] for r in evals] == [20, 40]
  assert "acc" not in evals[0] and {"mse", "psnr"} <= set(evals[0])
  assert {"mse", "acc", "nmi", "ari", "linear_probe_acc", "knn_probe_acc"} <= set(evals[1])
  assert 0.3 < evals[1]["acc"] <= 1 and final["clustering"] == "kmeans on embeddings"
  assert not os.listdir(tmp_path / "images")  # images was not among the evaluators
  # The embeddings the evaluator computed at the end are the ones written for the test split.
  emb = np.load(tmp_path / "embeddings_test.npz")
  assert emb["embeddings"].shape == (297, 16)
