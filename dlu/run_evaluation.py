"""Evaluate a trained run from its workdir: the same metrics as training's evals, the
family's final metrics (likelihood bounds, sample quality) and any registered evaluators
(clustering, probes), written to eval.json, metrics.jsonl and TensorBoard."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from dlu import checkpointing, parallel
from dlu import flags as dlu_flags
from dlu.errors import UsageError
from dlu.logging_utils import MetricWriter, to_python
from dlu.train_loop import Evaluator, Experiment, build, restore_or_init, write_embeddings

#: Functions (experiment, state) -> {name: value} run by every evaluation of a workdir.
EVALUATORS: list[Callable[[Experiment, Any], dict[str, Any]]] = []
#: Functions (experiment) that raise UsageError for flags an evaluator cannot use, run
#: before any evaluation.
CHECKS: list[Callable[[Experiment], None]] = []


def register_evaluator(fn: Callable[[Experiment, Any], dict[str, Any]], *,
                       check: Callable[[Experiment], None] | None = None):
  EVALUATORS.append(fn)
  if check is not None:
    CHECKS.append(check)
  return fn


def _scalars(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
  """The numbers of a nested dict, named by their path (`baselines/pixels/acc`)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_scalars(v, f"{prefix}{k}/"))
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      out[prefix + k] = v
  return out


def evaluate_workdir(workdir: str, **overrides: Any) -> dict[str, Any]:
  """Restores the latest checkpoint of `workdir` and evaluates it; returns what eval.json holds."""
  flagfile = os.path.join(workdir or "", "flags.txt")
  if not workdir or not os.path.isdir(workdir):
    raise UsageError(f"--workdir={workdir!r} is not a directory: expected the workdir of a dlu run")
  cfg = dlu_flags.config_from_flagfile(flagfile, **overrides)
  exp = build(cfg, workdir)
  for check in CHECKS:
    check(exp)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.keep_checkpoints)
  writer = MetricWriter(workdir, enabled=parallel.is_lead_process())
  try:
    if ckpt.latest_step() is None:
      raise UsageError(f"{workdir}/checkpoints holds no checkpoint: train the run first")
    state, _ = restore_or_init(exp, ckpt)
    step = int(state.step)
    results: dict[str, Any] = dict(Evaluator(exp, writer)(step, state, final=True,
                                                          split="evaluate"))
    write_embeddings(exp, state, os.path.join(workdir, "embeddings_test.npz"))
    for fn in EVALUATORS:
      extra = fn(exp, state)
      writer.write_scalars(step, "evaluate", _scalars(extra))
      results.update(extra)
    results = {"step": step, "model": cfg.model, "dataset": cfg.dataset,
               **{k: to_python(v) if not isinstance(v, dict) else v for k, v in results.items()}}
    if parallel.is_lead_process():
      path = os.path.join(workdir, "eval.json")
      with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
      os.replace(path + ".tmp", path)
    return results
  finally:
    ckpt.close()
    writer.close()


# Registers the clustering, probe and embedding-plot evaluator (and its flags).
from dlu import cluster_eval  # noqa: E402,F401
