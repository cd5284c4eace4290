"""Evaluate a trained run from its workdir: every evaluator (`dlu.evaluators`: the family's
metrics and end-of-run bounds, image grids, clustering and probes of its embeddings), into
eval.json, one `evaluate` row of metrics.jsonl, TensorBoard, and embeddings_test.npz."""

from __future__ import annotations

import os
from typing import Any

from dlu import evaluators, files
from dlu.runtime import metric_writers, parallel
from dlu.runtime.metric_writers import to_python
from dlu.train import experiment, workspace


def evaluate_workdir(workdir: str, **overrides: Any) -> dict[str, Any]:
  """Restores the checkpoint of `workdir` that --checkpoint chooses (best, else latest) and
  evaluates it on the test split; returns what eval.json holds.

  `overrides` replace flags the run recorded (e.g. eval_batch_size, cluster_on). Every
  check of them runs before anything is written.
  """
  exp, state = experiment.restore_trained(workdir, **overrides)
  workspace.check_data_fingerprint(workdir, exp.dataset)  # its test rows are the run's
  workspace.check_workdir(workdir)  # Where the results go: metrics.jsonl, images/.
  schedule = evaluators.full_schedule(exp)
  lead = parallel.is_lead_process()
  writer = metric_writers.create_default_writer(workdir, lead=lead, console=False)
  try:
    step = int(state.step)
    evaluation = evaluators.Evaluation(exp, writer, schedule)
    results = evaluation(step, state, final=True, split="evaluate")
    experiment.write_test_embeddings(exp, state, evaluation.inputs.cached_embeddings("test", step))
    results = {
      "step": step,
      "model": exp.cfg.model,
      "dataset": exp.cfg.dataset,
      **{k: v if isinstance(v, dict) else to_python(v) for k, v in results.items()},
    }
    if lead:
      files.write_json(os.path.join(workdir, "eval.json"), results)
    return results
  finally:
    writer.close()
