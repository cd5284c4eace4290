"""Evaluators by name: what a run measures, what each needs, and when training runs it.

An evaluator is a function `(exp, state, inputs) -> {name: value}` registered under a name
with what it needs of the run (`images` or `vectors`: the kind of data; `embeddings`,
`reconstructions`, `samples`: the family's `embed`, `reconstruct`, `samples_from_noise`;
`labels`: labels on both splits) and its default schedule. Values may nest: eval.json keeps them as they are,
metrics.jsonl and TensorBoard get the numbers flattened as `a/b/c`.

Training runs the evaluators named by `--evaluators` (`training_schedule`), each `name` at its default schedule,
`name:N` every N steps, `name:final` only after the last step (and every one of them after
the last step); their results at one step form one row named after the split they score:
`valid` (the rows --validation_fraction holds out of the training split; `test` for a run
without them). After the last step the test split is scored once (a `test` row; evaluators
scheduled only then, like `likelihood`, score it alone), and the
`metrics` evaluator's numbers on train, valid and test form a `generalisation` row.
Evaluators read the split they score as `exp.dataset.x_test` (`Dataset.scored_on`).
`experiments.evaluate` runs every registered evaluator whose needs the run meets
(`full_schedule`), once, on the test split, into one `evaluate` row and eval.json. `exp` is a `dlu.train.experiment.Experiment` (cfg, dataset, family, mesh, ctx).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from absl import flags

from dlu.errors import UsageError
from dlu.runtime import batched_eval, parallel
from dlu.runtime.metric_writers import MetricWriter, to_python

flags.DEFINE_list(
  "evaluators",
  ["metrics", "sample_quality", "likelihood", "images", "features"],
  "Evaluators run during training: NAME (its default schedule: likelihood at the "
  "end, the others every --eval_every), NAME:N (every N steps) or NAME:final; all "
  "of them also after the last step. Those a run cannot feed (samples of a model "
  "that draws none, scores without labels) are skipped. experiments.evaluate "
  "runs every evaluator. See dlu.evaluators.names().",
)

#: What an evaluator may need of a run.
NEEDS = (
  "images",
  "vectors",
  "series",
  "text",
  "embeddings",
  "reconstructions",
  "samples",
  "labels",
)
#: A default schedule: every --eval_every steps.
EVAL_EVERY = "eval_every"
#: A schedule: only after the last step.
FINAL = "final"


@dataclasses.dataclass(frozen=True)
class Evaluator:
  name: str
  fn: Callable[[Any, Any, Inputs], Mapping[str, Any]]
  needs: frozenset[str] = frozenset()
  every: str = EVAL_EVERY  # the default schedule: EVAL_EVERY or FINAL
  check: Callable[[Any], None] | None = None  # flags it reads, checked before anything runs


_REGISTRY: dict[str, Evaluator] = {}


def register(
  name: str,
  *,
  needs: tuple[str, ...] = (),
  every: str = EVAL_EVERY,
  check: Callable[[Any], None] | None = None,
):
  """Decorator: registers `fn(exp, state, inputs)` as the evaluator `name`."""
  unknown = set(needs) - set(NEEDS)
  if unknown or every not in (EVAL_EVERY, FINAL) or name in _REGISTRY:
    raise ValueError(f"evaluator {name!r}: bad registration (needs {needs}, every {every!r})")

  def add(fn):
    _REGISTRY[name] = Evaluator(name, fn, frozenset(needs), every, check)
    return fn

  return add


def names() -> list[str]:
  return list(_REGISTRY)


def get(name: str) -> Evaluator:
  if name not in _REGISTRY:
    raise UsageError(f"--evaluators: {name!r} is not an evaluator; accepted: {', '.join(names())}")
  return _REGISTRY[name]


def unmet_needs(evaluator: Evaluator, exp: Any) -> tuple[str, str] | None:
  """(what is missing, why) when `exp` cannot give `evaluator` what it needs, else None."""
  family, ds = exp.family, exp.dataset
  if "images" in evaluator.needs and not ds.is_image:
    return "images", f"{ds.name} holds vectors, not images"
  if "vectors" in evaluator.needs and (ds.x_train.ndim != 2 or ds.is_text):
    kind = "images" if ds.is_image else "text" if ds.is_text else "series"
    return "vectors", f"{ds.name} holds {kind}"
  if "series" in evaluator.needs and not ds.is_series:
    return "series", f"{ds.name} holds no series"
  if "text" in evaluator.needs and not ds.is_text:
    return "text", f"{ds.name} holds no text"
  if "embeddings" in evaluator.needs and not family.has_embedding:
    return "embeddings", f"--model={exp.cfg.model} has no embedding"
  if "reconstructions" in evaluator.needs and not family.has_reconstruction:
    return "reconstructions", f"--model={exp.cfg.model} does not reconstruct"
  if "samples" in evaluator.needs and not family.has_samples:
    return "samples", f"--model={exp.cfg.model} draws no samples"
  if "labels" in evaluator.needs and (ds.y_train is None or ds.y_test is None):
    return "labels", f"{ds.name} has no labels to score it with"
  return None


def _runnable(evaluator: Evaluator, exp: Any, log: Callable[[str], None]) -> bool:
  """Whether `evaluator` can run on `exp`. A model or data kind without the capability skips
  it quietly; data without labels is said once."""
  unmet = unmet_needs(evaluator, exp)
  if unmet is None:
    return True
  if unmet[0] == "labels" and parallel.is_lead_process():
    log(f"No {evaluator.name} evaluation: {unmet[1]}")
  return False


def parse_schedule(specs: list[str], eval_every: int) -> list[tuple[Evaluator, int | None]]:
  """--evaluators as (evaluator, every N steps or None for only after the last step)."""
  schedule, seen = [], set()
  for spec in specs:
    name, _, when = str(spec).strip().partition(":")
    evaluator = get(name)
    if name in seen:
      raise UsageError(f"--evaluators names {name!r} twice")
    seen.add(name)
    if not when:
      every = eval_every if evaluator.every == EVAL_EVERY else None
    elif when == FINAL:
      every = None
    else:
      try:
        every = int(when)
      except ValueError:
        every = 0
      if every < 1:
        raise UsageError(
          f"--evaluators={spec}: expected NAME, NAME:N with N a positive number "
          f"of steps, or NAME:{FINAL}"
        )
    schedule.append((evaluator, every))
  return schedule


class Inputs:
  """What evaluators at one step share: compiled functions (kept for the run) and the
  embeddings of each split (computed once per step, for whichever evaluator asks first).

  `split` is the data split being scored (`valid`, `test` or `train`): evaluators read it as
  `exp.dataset.x_test` of the `exp` they are given, and key what they keep of it by `split`.
  """

  def __init__(self, exp: Any, writer: MetricWriter):
    self.exp, self.writer = exp, writer
    self.step: int = 0
    self.split: str = "test"
    self._compiled: dict[str, Any] = {}
    self._embeddings: dict[str, np.ndarray] = {}
    self._said: set[str] = set()

  def start(self, step: int, exp: Any = None, split: str = "test") -> None:
    self.step, self.split = step, split
    if exp is not None:
      self.exp = exp
    self._embeddings.clear()

  def compiled(self, key: str, build: Callable[[], Any]) -> Any:
    if key not in self._compiled:
      self._compiled[key] = build()
    return self._compiled[key]

  def embeddings(self, state: Any, split: str) -> np.ndarray:
    """The family's embeddings of every row of the `train` or `test` split (the split being
    scored). [N, D]"""
    if split not in self._embeddings:
      exp = self.exp
      embed = self.compiled("embed", lambda: parallel.make_embed(exp.family, exp.mesh))
      x = exp.dataset.x_train if split == "train" else exp.dataset.x_test
      self._embeddings[split] = batched_eval.embed_split(
        embed, state, x, mesh=exp.mesh, batch_size=exp.ctx.batch_size
      )
    return self._embeddings[split]

  def cached_embeddings(self, split: str, step: int) -> np.ndarray | None:
    """The `split` embeddings computed at `step`, if an evaluator asked for them (`test`:
    those of the real test split only)."""
    if step != self.step or (split == "test" and self.split != "test"):
      return None
    return self._embeddings.get(split)

  def say(self, message: str) -> None:
    """Prints `message` on the lead process, once per run: what an evaluator skipped or
    changed (a split too small for it) and why."""
    if message not in self._said:
      self._said.add(message)
      if parallel.is_lead_process():
        print(message, flush=True)

  def save_images(self, grids: Mapping[str, np.ndarray]) -> list[str]:
    return self.writer.write_images(self.step, grids)

  def save_texts(self, texts: Mapping[str, str]) -> None:
    """Named blocks of text at this step, to TensorBoard's text tab."""
    self.writer.write_texts(self.step, texts)


def flat_scalars(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  """The numbers of a nested dict, named by their path (`baselines/pixels/acc`)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flat_scalars(v, f"{prefix}{k}/"))
    else:
      v = to_python(v) if isinstance(v, (np.ndarray, np.generic)) else v
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        out[prefix + k] = v
  return out


def training_schedule(
  exp: Any, *, log: Callable[[str], None] = print
) -> list[tuple[Evaluator, int | None]]:
  """--evaluators as (evaluator, every N steps or None for the end only), less those the run
  cannot feed, their flags checked (UsageError naming the flag)."""
  schedule = []
  for evaluator, every in parse_schedule(list(exp.cfg.evaluators), exp.cfg.eval_every):
    if _runnable(evaluator, exp, log):
      if evaluator.check is not None:
        evaluator.check(exp)
      schedule.append((evaluator, every))
  return schedule


def full_schedule(
  exp: Any, *, log: Callable[[str], None] = print
) -> list[tuple[Evaluator, int | None]]:
  """Every registered evaluator the run can feed, once, its flags checked (experiments.evaluate)."""
  schedule = []
  for evaluator in _REGISTRY.values():
    if _runnable(evaluator, exp, log):
      if evaluator.check is not None:
        evaluator.check(exp)
      schedule.append((evaluator, None))
  return schedule


class Evaluation:
  """Runs a schedule of evaluators (`training_schedule` or `full_schedule`, built before
  anything is written) on a run's state; their results at a step form one row.

  `on`: the data split scored by default: `valid` during training when the run has one
  (`test` otherwise, and for experiments.evaluate).
  """

  def __init__(
    self,
    exp: Any,
    writer: MetricWriter,
    schedule: list[tuple[Evaluator, int | None]],
    *,
    on: str = "test",
  ):
    self.exp, self.writer, self.schedule, self.on = exp, writer, schedule, on
    self.inputs = Inputs(exp, writer)

  def boundaries(self) -> tuple[int, ...]:
    """The step intervals evaluation happens at (multi-step dispatches stop there)."""
    return tuple(sorted({every for _, every in self.schedule if every}))

  def due(self, step: int, final: bool, on: str = "test") -> list[Evaluator]:
    """The evaluators to run at `step`: all of them after the last step, except that those
    scheduled only then (`likelihood`) score the test split alone, not the validation split."""
    if on == "valid":
      return [e for e, every in self.schedule if every and (final or step % every == 0)]
    return [e for e, every in self.schedule if final or (every and step % every == 0)]

  def __call__(
    self,
    step: int,
    state: Any,
    *,
    final: bool = False,
    split: str | None = None,
    on: str | None = None,
  ) -> dict[str, Any]:
    """Runs the evaluators due at `step` (all of them when `final`) on the data split `on`
    (default `self.on`); writes their numbers as one row named `split` (default: `on`) and
    returns their results merged (nested values kept)."""
    on = on or self.on
    due = self.due(step, final, on)
    if not due:
      return {}
    results = self._run(step, state, due, on)
    self.writer.write_scalars(step, split or on, flat_scalars(results))
    self.writer.flush()
    return results

  def _run(self, step: int, state: Any, due: list[Evaluator], on: str) -> dict[str, Any]:
    exp = self.exp
    if exp.dataset.x_valid is not None:
      exp = dataclasses.replace(exp, dataset=exp.dataset.scored_on(on))
    self.inputs.start(step, exp, on)
    results: dict[str, Any] = {}
    for evaluator in due:
      results.update(evaluator.fn(exp, state, self.inputs))
    return results

  def final_scores(
    self, step: int, state: Any, valid: Mapping[str, Any], extra: Mapping[str, Any] = ()
  ) -> dict[str, Any]:
    """After the last step of a run with a validation split: every evaluator on the test
    split (a `test` row), then one `generalisation` row with the `metrics` evaluator's numbers
    on the training split (scored here), the validation split (`valid`, the last validation
    results) and the test split, as `train/mse`, `valid/mse`, `test/mse` (the run's
    generalisation gap), and `extra`. Returns the test results."""
    metrics = [e for e, _ in self.schedule if e.name == "metrics"]
    train = self._run(step, state, metrics, "train") if metrics else {}
    test = self(step, state, final=True, on="test")
    names = set(flat_scalars(train))
    row = dict(extra)
    for split, results in (("train", train), ("valid", valid), ("test", test)):
      row.update({f"{split}/{k}": v for k, v in flat_scalars(results).items() if k in names})
    self.writer.write_scalars(step, "generalisation", row)
    self.writer.flush()
    return test
