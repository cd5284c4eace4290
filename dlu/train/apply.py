"""A trained run applied to new data, from a script or a notebook (and `experiments.apply`).

    import dlu
    run = dlu.load_run("workdirs/ae_table")      # the best (else latest) checkpoint of a workdir
    z = run.encode(x)                             # [N, latent]
    x_hat = run.reconstruct(x)                    # [N, ...] in the data's own units
    s = run.score(x)                              # [N] anomaly score, higher = less like the data
    s = run.score(x, method="knn")                # [N] mean distance to the 5 nearest training codes
    clusters, confidence = run.assign(x)          # [N] each
    samples = run.sample(16)                      # GANs, VAEs
    z = dlu.load_run("workdirs/text_vae").encode(["a document", "another one"])  # text runs

`x` is in the training data's own units: for a table, raw columns [N, D] in the training column
order, a pandas DataFrame or pyarrow Table (columns matched by name; others, the label among
them, ignored) or a "csv:PATH" / "parquet:PATH" / "npz:PATH" string as `experiments.apply`
reads it (their scaling and imputation are the run's stored ones); for images, [N, H, W, C] as
uint8 0..255 or float in [0, 1]. New data is checked as training checks its data: numbers only,
finite, missing cells only where the run imputes them, pixels in range, at least one row; each
refusal is one UsageError naming the column and row (counted as training counts them: from 1,
a CSV's header being row 1). Every method runs jitted over the devices in padded batches, with
the same functions (and so the same numbers) as training's evaluations and
`experiments.evaluate`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from jax.experimental import multihost_utils

from dlu import data, files
from dlu.data import arrays, columns, preprocessing, series, tables, text
from dlu.errors import UsageError
from dlu.evaluators.clustering import KMEANS_FILE
from dlu.metrics import novelty
from dlu.ops import losses
from dlu.runtime import batched_eval, parallel
from dlu.train import experiment

#: `Run.score`'s methods (experiments.apply --score_method).
SCORE_METHODS = ("model", "knn", "cosine")


class Run:
  """A trained run: its experiment (`exp`: config, data, family, mesh) and state."""

  def __init__(self, exp: experiment.Experiment, state: Any):
    self.exp, self.state = exp, state
    self.cfg, self.family, self.dataset = exp.cfg, exp.family, exp.dataset
    self._jitted: dict[str, Any] = {}

  def __repr__(self) -> str:
    return (
      f"Run({self.cfg.model} on {self.dataset.name}, step {int(self.state.step)}, "
      f"{self.exp.ctx.workdir})"
    )

  # --- Inputs.

  def inputs(self, x: Any, *, what: str = "inputs") -> np.ndarray:
    """`x` as the model's stored inputs, checked as training checks its data. [N, ...]

    `x`: an array, a DataFrame or pyarrow Table (tables), a --dataset string ("csv:PATH", ...,
    read as `experiments.apply` reads --input), or rows on disk (`data.RowArray`: records:,
    npy:), which stay there and are read batch by batch. `what` names `x` in messages. A run
    on series takes "series:PATH", an array [N, T] or [N, T, C], or a list of [T_i, C] series
    (NaN missing), made to the run's length and scaled by its stored series.json."""
    if self.dataset.is_series:
      return self._series_inputs(x, what)
    if self.dataset.is_text:
      return self._text_inputs(x, what)
    if isinstance(x, str):
      x, what = read_inputs(x, self), f"--input={x.strip()}"
    elif _is_table(x):
      x = self._table_rows(x, what)
    shape = self.dataset.example_shape
    pre = self.dataset.preprocessing
    if isinstance(x, data.RowArray):
      if x.example_shape != shape:
        kind = "images of shape" if self.dataset.is_image else "rows of"
        raise UsageError(
          f"{what} are {x.example_shape} per example; the run was trained on {kind} {shape}"
        )
      if self.dataset.is_image and x.dtype != self.dataset.x_train.dtype:
        raise UsageError(
          f"{what} are {x.dtype} images; the run was trained on {self.dataset.x_train.dtype}"
        )
      if not len(x):
        raise UsageError(_no_rows(what))
      return x.view(transform=functools.partial(pre.transform, what=what)) if pre else x
    x = self.checked(x, what=what)
    if self.dataset.is_image:
      if x.dtype != np.uint8 and self.dataset.x_train.dtype == np.uint8:
        x = np.round(x * 255).astype(np.uint8)  # in [0, 1]: checked
      return x
    return pre.transform(x, what) if pre is not None else x.astype(np.float32)

  def checked(self, x: Any, *, what: str = "inputs", first_row: int = 1) -> np.ndarray:
    """`x` in the data's own units, refused as training refuses its data: images [N, H, W, C]
    of the training shape, uint8 or float in [0, 1] (no NaN); raw table rows [N, D] as
    float64, numbers, finite, NaN (missing) only where the run's stored preprocessing fills
    it. Rows in messages count from `first_row` (2 in a CSV, whose header is row 1)."""
    shape = self.dataset.example_shape
    x = np.asarray(x)
    if self.dataset.is_image:
      if x.ndim == len(shape) and shape[-1] == 1:
        x = x[..., None]
      if x.shape[1:] != shape:
        raise UsageError(
          f"{what} are {x.shape[1:]} per example; the run was trained on images of shape "
          f"{shape} (H, W, C)"
        )
      if not len(x):
        raise UsageError(_no_rows(what))
      # Training's own check (dtype, NaN, infinite values, floats outside [0, 1]).
      return arrays._check_images(x, what)
    if x.ndim != 2 or x.shape[1] != shape[0]:
      raise UsageError(
        f"{what} have shape {x.shape}; the run was trained on rows of {shape[0]} features"
      )
    pre = self.dataset.preprocessing
    columns = pre.columns if pre is not None else tuple(f"f{j}" for j in range(shape[0]))
    impute = pre.impute if pre is not None else "none"
    return checked_rows(x, columns, what, first_row=first_row, impute=impute)

  def _series_inputs(self, x: Any, what: str) -> np.ndarray:
    pre = self.dataset.preprocessing
    if isinstance(x, str):
      x, what = self._series_raw(x), f"--input={x.strip()}"
    elif isinstance(x, np.ndarray) or not isinstance(x, (list, tuple)):
      x = np.asarray(x)
      if x.ndim == 2:
        x = x[..., None]
      if x.ndim != 3 or x.dtype.kind not in "biuf":
        raise UsageError(
          f"{what} have shape {x.shape} and dtype {x.dtype}; expected series of numbers "
          f"[N, T] or [N, T, C] (C = {pre.channels})"
        )
    if not len(x):
      raise UsageError(_no_rows(what))
    for i, s in enumerate(x):
      if np.isinf(np.asarray(s, np.float64)).any():
        raise UsageError(f"{what}: series {i + 1} holds infinite values; expected finite or NaN")
    return pre.transform(list(x), what)

  def _series_raw(self, spec: str) -> list[np.ndarray]:
    """The series of a series:PATH file as read, [T_i, C] each."""
    kind, _, path = spec.strip().partition(":")
    what = f"--input={spec.strip()}"
    if kind != "series" or not path:
      raise UsageError(f"{what}: the run was trained on series; expected series:PATH")
    return series.read_file(os.path.expanduser(path), what, self.cfg.label_column).series

  def _text_inputs(self, x: Any, what: str) -> np.ndarray:
    """Documents (a "text:PATH" string, or a list or array of strings) as the run's token ids."""
    if isinstance(x, str):
      x, what = self._text_raw(x), f"--input={x.strip()}"
    elif isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype.kind in "OU":
      x = x.tolist()
    elif not isinstance(x, (list, tuple)):
      raise UsageError(
        f"{what}: a {type(x).__name__}; the run was trained on text: expected a list of "
        "documents (strings) or text:PATH"
      )
    if not len(x):
      raise UsageError(_no_rows(what))
    return self.dataset.preprocessing.transform(list(x), what)

  def _text_raw(self, spec: str) -> list[str]:
    """The documents of a text:PATH form as read (labels, if any, ignored)."""
    kind, _, path = spec.strip().partition(":")
    what = f"--input={spec.strip()}"
    if kind != "text" or not path:
      raise UsageError(
        f"{what}: the run was trained on text; expected text:PATH or a list of documents"
      )
    path = os.path.expanduser(path)
    column = self.cfg.text_column if path.endswith(text.TABLE_SUFFIXES) else None
    return text.read_source(path, what, text_column=column).docs

  def _table_rows(self, x: Any, what: str) -> np.ndarray:
    """A DataFrame's or pyarrow Table's training columns, by name, as raw float64 [N, D]
    (encoded by the run's column schema when it has one: categories one-hot, booleans 0/1)."""
    pre = self.dataset.preprocessing
    if self.dataset.is_image:
      raise UsageError(
        f"{what}: a {type(x).__name__} of table columns; the run was trained on images of shape "
        f"{self.dataset.example_shape}"
      )
    if pre is None:
      raise UsageError(
        f"{what}: a {type(x).__name__} of table columns; the run kept no column names to match "
        "them to: pass an array [N, D] in the training order"
      )
    table = _as_arrow(x, what)
    names = table.column_names
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
      raise UsageError(
        f"{what}: duplicate column names {preprocessing.listed(duplicates)}; names must be unique"
      )
    missing = [c for c in pre.source_columns if c not in names]
    if missing:
      raise UsageError(
        f"{what}: lacks the feature columns {preprocessing.listed(missing)} the run was trained on"
      )
    if not table.num_rows:
      raise UsageError(_no_rows(what))
    if pre.schema is not None:
      cells = {name: table.column(name) for name in pre.schema.names}
      return pre.schema.encode(cells, what, first_row=1)[0]
    out = np.empty((table.num_rows, len(pre.columns)), np.float64)
    for j, name in enumerate(pre.columns):
      # Training's reading of a column: numbers only (text, dates refused), no infinities.
      out[:, j] = columns.numbers(table.column(name), f"{what}: column {name!r}", 1)
    return out

  def _per_example(self, name: str, fn: Any, x: np.ndarray) -> np.ndarray:
    if name not in self._jitted:
      self._jitted[name] = parallel.jit_over_images(fn, self.exp.mesh)
    return batched_eval.per_example(
      self._jitted[name], self.state, x, mesh=self.exp.mesh, batch_size=self.exp.ctx.batch_size
    )

  def _to_data_units(self, x: np.ndarray) -> np.ndarray:
    """Model-space outputs in the data's own units: raw columns, or images in [0, 1]; series
    stay scaled as the model saw them (--series_scaling); token ids become text."""
    if self.dataset.is_series:
      return x
    if self.dataset.is_text:
      return np.array(self.dataset.preprocessing.decode(x), dtype=object)
    if not self.dataset.is_image:
      pre = self.dataset.preprocessing
      return pre.inverse(x) if pre is not None else x
    low = -1.0 if self.exp.spec.pixel_range == "symmetric" else 0.0
    return np.clip((x - low) / (1.0 - low), 0.0, 1.0)

  # --- What a run does with new data.

  def encode(self, x: Any) -> np.ndarray:
    """Embeddings, as `experiments.evaluate` clusters them. [N, D]"""
    if not self.family.has_embedding:
      raise UsageError(f"--model={self.cfg.model} has no embedding")
    return self._per_example("embed", self.family.embed, self.inputs(x))

  def reconstruct(self, x: Any) -> np.ndarray:
    """Reconstructions in the data's units (raw columns, images in [0, 1], or documents
    decoded greedily from their codes as text). [N, ...]"""
    if not self.family.has_reconstruction:
      raise UsageError(f"--model={self.cfg.model} does not reconstruct")
    return self._to_data_units(
      self._per_example("reconstruct", self.family.reconstruct, self.inputs(x))
    )

  def score(self, x: Any, *, method: str = "model", k: int = 5) -> np.ndarray:
    """Anomaly scores, higher: less like the data. [N]

    method="model" (the default): the family's own score: reconstruction error (autoencoders,
    DEC/IDEC), -ELBO at the posterior mean (VAEs), minus the discriminator's logit (GANs),
    ||z - c||^2 (deep SVDD). "knn": the mean distance of the code to its `k` nearest codes of
    the training split; "cosine": minus the cosine to the nearest training code times the
    code's norm (CSI's score). Both need an embedding; the training codes are encoded once
    per checkpoint step and cached in the workdir (WORKDIR/train_codes_STEP.npz)."""
    if method not in SCORE_METHODS:
      raise UsageError(f"--score_method={method!r}: expected one of {', '.join(SCORE_METHODS)}")
    if method == "model":
      if not self.family.has_score:
        raise UsageError(f"--model={self.cfg.model} has no anomaly score")
      return self._per_example("score", self.family.score, self.inputs(x))
    if not self.family.has_embedding:
      raise UsageError(
        f"--score_method={method}: --model={self.cfg.model} has no embedding to score in"
      )
    codes = self.encode(x)
    train = self.train_codes()
    if method == "knn":
      return novelty.knn_distance(train, codes, k=k)
    return novelty.csi_cosine(train, codes)

  def train_codes(self) -> np.ndarray:
    """The codes of the training split at this checkpoint [M, D], encoded once and cached
    in WORKDIR/train_codes_STEP.npz (written atomically; not kept where the workdir is
    read-only)."""
    path = os.path.join(self.exp.ctx.workdir, f"train_codes_{int(self.state.step)}.npz")
    if os.path.isfile(path):
      with np.load(path) as f:
        return f["codes"]
    codes = self._per_example("embed", self.family.embed, self.dataset.x_train)
    if jax.process_index() == 0:
      try:
        files.atomic_save(path, lambda tmp: np.savez(tmp, codes=codes), suffix=".npz")
      except OSError:  # a read-only workdir: the codes are encoded again next time
        pass
    return codes

  def step_scores(self, x: Any) -> np.ndarray:
    """Series: an anomaly score per time step, the squared reconstruction error over its
    observed channels (0 where none is). [N, T]"""
    if not hasattr(self.family, "step_scores"):
      raise UsageError(f"--model={self.cfg.model} has no per-step anomaly score")
    return self._per_example("step_scores", self.family.step_scores, self.inputs(x))

  def assign(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Clusters [N] and their confidence [N]: the run's clustering layer (DEC/IDEC, a
    contrastive cluster head), else the k-means that `experiments.evaluate` fitted on the
    embeddings (confidence: the largest Student-t soft assignment, as DEC's)."""
    x = self.inputs(x)
    head = getattr(self.family, "assignments", None)
    if head is not None:
      q, hard = head(self.state, x)
      return hard, q.max(axis=1)
    path = os.path.join(self.exp.ctx.workdir, KMEANS_FILE)
    if not os.path.isfile(path):
      raise UsageError(
        f"{self.exp.ctx.workdir} has no clustering to assign to: --model={self.cfg.model} has "
        f"no clustering layer, and {KMEANS_FILE} is written by `experiments.evaluate` (k-means "
        "on the embeddings, --manifold=none): run it first"
      )
    with np.load(path) as f:
      centroids = f["centroids"]
    z = self._per_example("embed", self.family.embed, x)
    q = np.asarray(losses.soft_assign(jnp.asarray(z), jnp.asarray(centroids)))
    return q.argmax(axis=1).astype(np.int32), q.max(axis=1)

  def impute(self, table: Any, *, rounds: int | None = None) -> Any:
    """`table` with its missing cells filled by the model's reconstruction, in the data's own
    units and categories; every other cell, column (the label, the id) and row as it was.

    `table`: a pandas DataFrame (a DataFrame comes back), a pyarrow Table, a "csv:PATH" /
    "parquet:PATH" / "json:PATH" string (a pyarrow Table comes back), or raw rows [N, D] of a
    run on numbers only (an array comes back). A run trained with --impute=model reads the
    missing cells as missing (its mask) and fills them in one pass; another starts them at its
    fill value (--impute=mean|median; the mean otherwise) and replaces them with the
    reconstruction `rounds` times (default 5). Categories are filled only where the run
    masks them (--impute=model); under a run that kept a missing level, a missing category
    gets the most likely real level."""
    return self._impute(table, rounds=rounds)[0]

  def _impute(self, table: Any, *, rounds: int | None = None, what: str = "inputs", encoding=None):
    """(impute's result, {column: cells filled})."""
    pre = self.dataset.preprocessing
    if not self.family.has_reconstruction:
      raise UsageError(f"--model={self.cfg.model} does not reconstruct, so it cannot impute")
    if pre is None or self.dataset.is_image or self.dataset.is_series:
      raise UsageError(
        f"impute fills a table's missing cells; the run was trained on {self.dataset.name}, "
        "not a table"
      )
    array_in = not isinstance(table, str) and not _is_table(table)
    pandas_in = type(table).__module__.split(".")[0] == "pandas"
    if isinstance(table, str):
      what = f"--input={table.strip()}"
      t = data.read_table_input(table, encoding=encoding)
    elif array_in:
      if pre.schema is not None:
        raise UsageError(
          f"{what}: an array; the run was trained on a table with text or boolean columns: "
          "pass a DataFrame, a pyarrow Table or csv:PATH"
        )
      rows = np.asarray(table)
      if rows.ndim != 2 or rows.shape[1] != len(pre.columns) or rows.dtype.kind not in "biuf":
        raise UsageError(
          f"{what} have shape {rows.shape} and dtype {rows.dtype}; the run was trained on rows "
          f"of {len(pre.columns)} numbers"
        )
      t = pa.table({n: rows[:, j].astype(np.float64) for j, n in enumerate(pre.columns)})
    else:
      t = _as_arrow(table, what)
    missing_cols = [c for c in pre.source_columns if c not in t.column_names]
    if missing_cols:
      raise UsageError(
        f"{what}: lacks the feature columns {preprocessing.listed(missing_cols)} the run was "
        "trained on"
      )
    if not t.num_rows:
      raise UsageError(_no_rows(what))
    first_row = 2 if what.startswith("--input=csv:") else 1
    cells = {n: t.column(n) for n in pre.source_columns}
    if pre.schema is not None:
      x_raw = pre.schema.encode(cells, what, first_row=first_row)[0]
      kinds = {c.name: c.kind for c in pre.schema.columns}
    else:
      x_raw = np.stack(
        [columns.numbers(cells[n], f"{what}: column {n!r}", first_row) for n in pre.columns], 1
      )
      kinds = dict.fromkeys(pre.columns, "numeric")
    x_raw = checked_rows(x_raw, pre.columns, what, first_row=first_row, impute="model")
    missing = {n: columns.missing_cells(cells[n]) for n in pre.source_columns}
    counts = {n: int(m.sum()) for n, m in missing.items() if m.any()}
    if not counts:
      return (table if not isinstance(table, str) else t), counts
    x = (x_raw - pre.offset) / pre.scale
    nan = np.isnan(x)
    masked = pre.impute == "model"
    if not masked:
      start = (pre.fill - pre.offset) / pre.scale if pre.fill is not None else np.zeros(x.shape[1])
      x = np.where(nan, start, x)
    rounds = 1 if masked else (5 if rounds is None else rounds)
    if rounds < 1:
      raise UsageError(f"impute: rounds must be at least 1, got {rounds}")
    for _ in range(rounds):
      x_hat = self._per_example("reconstruct", self.family.reconstruct, x.astype(np.float32))
      if not masked:
        x = np.where(nan, x_hat, x)
    raw = pre.inverse(x_hat)
    if pre.schema is not None:
      values = pre.schema.decode(raw, levels_only=True)
    else:
      values = {n: raw[:, j] for j, n in enumerate(pre.columns)}
    for name in counts:
      j = t.column_names.index(name)
      t = t.set_column(j, name, columns.filled(t.column(name), kinds[name], values[name]))
    if array_in:
      return np.stack([t.column(n).to_numpy() for n in pre.columns], 1), counts
    return (t.to_pandas() if pandas_in else t), counts

  def sample(self, n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """n generated examples in the data's units (uint8 images, or raw columns) and their
    classes: conditional GANs draw n per class (labels [n * K]), others None."""
    if n < 1:
      raise UsageError(f"--samples must be a positive number, got {n}")
    family, mesh = self.family, self.exp.mesh
    bs = self.exp.ctx.batch_size
    if self.dataset.is_text:  # text_vae: documents decoded greedily from prior draws
      if not self.cfg.model == "text_vae":
        raise UsageError(f"--model={self.cfg.model} draws no samples (text_vae does)")
      if "sample" not in self._jitted:
        self._jitted["sample"] = jax.jit(family.prior_samples, static_argnums=2)
      tokens = self._jitted["sample"](self.state, jax.random.key(seed), n)
      return self._to_data_units(np.asarray(tokens)), None
    if family.has_samples:
      per_class = getattr(family, "num_classes", None)
      total = n * per_class if per_class else n
      key = jax.random.key(seed)
      if "sample" not in self._jitted:
        repl, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
        self._jitted["sample"] = jax.jit(
          lambda s, k, start: family.samples_from_noise(s, family.sample_noise(k, start, bs)),
          in_shardings=(repl, repl, None),
          out_shardings=sharded,
        )
      out = []
      for i in range(-(-total // bs)):
        x = self._jitted["sample"](self.state, jax.random.fold_in(key, i), i * bs)
        out.append(np.asarray(multihost_utils.process_allgather(x, tiled=True)))
      x = np.concatenate(out)[:total]
      labels = (np.arange(total) % per_class).astype(np.int32) if per_class else None
      return self._stored(x, model_units=False), labels
    if hasattr(family, "decode") and hasattr(family, "mean_image"):  # VAEs: the prior
      z = jax.random.normal(jax.random.key(seed), (n, self.cfg.latent_dim))
      x = np.asarray(
        jax.jit(lambda s, z: family.mean_image(family.decode(s.params, z)))(self.state, z)
      )
      return self._stored(x, model_units=True), None
    raise UsageError(f"--model={self.cfg.model} draws no samples")

  def _stored(self, x: np.ndarray, *, model_units: bool) -> np.ndarray:
    """Generated examples as the data stores them: uint8 images, raw table columns."""
    if not self.dataset.is_image:
      return self._to_data_units(x)
    unit = self._to_data_units(x) if model_units else np.clip(x, 0.0, 1.0)
    return np.round(unit * 255).astype(np.uint8)


def load_run(workdir: str, **overrides: Any) -> Run:
  """The run trained in `workdir` (its best checkpoint if it kept one, else its latest;
  `checkpoint="latest"` or a step in `overrides` chooses another), ready for new data."""
  return Run(*experiment.restore_trained(workdir, **overrides))


@dataclasses.dataclass(frozen=True)
class TableInputs:
  """A table's rows as `read_table_inputs` reads them for a run with column kinds."""

  x: np.ndarray  # [N, D] raw encoded features, checked (NaN only where the run imputes)
  ids: np.ndarray | None  # [N] the id column's cells, when the run has one and the file holds it
  id_column: str | None
  unknown: dict[str, int]  # categorical column -> cells of a level unseen in training


def read_table_inputs(spec: str, run: Run, *, encoding: str | None = None) -> TableInputs:
  """A table's rows for a run trained on a table (`read_inputs`), with its id column's cells
  and the count of categories the training split did not have (encoded as all zeros)."""
  pre = run.dataset.preprocessing
  schema = pre.schema if pre is not None else None
  if schema is None:
    return TableInputs(read_inputs(spec, run, encoding=encoding), None, None, {})
  kind = spec.strip().partition(":")[0]
  x, ids, unknown = data.read_table_rows(
    spec, schema, label_column=run.cfg.label_column, encoding=encoding
  )
  what = f"--input={spec.strip()}"
  x = run.checked(x, what=what, first_row=2 if kind == "csv" else 1)
  return TableInputs(x, ids, schema.id_column, unknown)


def read_inputs(spec: str, run: Run, *, encoding: str | None = None) -> np.ndarray:
  """Every row of an input --dataset form (a table, an npz, an image folder), unsplit, in the
  data's own units, checked as training checks its data (`Run.checked`): a table's columns
  matched by name to the run's training columns; its label column read when it is there (new
  rows need none; it is never a feature). `encoding`: a CSV or JSON file's text encoding
  (default UTF-8)."""
  if run.dataset.is_series:  # raw series [T_i, C], made model inputs by Run.inputs
    return run._series_raw(spec)
  if run.dataset.is_text:  # documents, made token ids by Run.inputs
    return run._text_raw(spec)
  pre = run.dataset.preprocessing
  if pre is not None and pre.schema is not None:
    return read_table_inputs(spec, run, encoding=encoding).x
  kind, _, path = spec.strip().partition(":")
  label = run.cfg.label_column
  if label is not None and kind in tables.TABLE_FORMATS and path:
    names = _column_names(kind, os.path.expanduser(path))
    if names is not None and label not in names:
      label = None
  x = data.read_rows(
    spec, columns=None if pre is None else pre.columns, label_column=label, encoding=encoding
  )
  if isinstance(x, data.RowArray):
    return x
  what = f"--input={spec.strip()}" + (": x" if kind == "npz" else "")
  return run.checked(x, what=what, first_row=2 if kind == "csv" else 1)


def checked_rows(
  x: np.ndarray, columns: tuple[str, ...], what: str, *, first_row: int = 1, impute: str = "none"
) -> np.ndarray:
  """Raw table rows [N >= 1, D] as float64, refused as training refuses a table: not numbers,
  infinite, or missing (NaN) unless `impute` fills them; the first bad column, then its first
  bad row (counted from `first_row`), named."""
  if x.dtype.kind not in "biuf":
    raise UsageError(f"{what}: dtype {x.dtype}; expected numbers (int, float or bool)")
  if not len(x):
    raise UsageError(_no_rows(what))
  x = x.astype(np.float64)
  for bad, fill in ((np.isinf(x), False), (np.isnan(x), impute != "none")):
    if fill or not bad.any():
      continue
    j = int(np.flatnonzero(bad.any(axis=0))[0])
    i = int(np.flatnonzero(bad[:, j])[0])
    if np.isinf(x[i, j]):
      raise UsageError(
        f"{what}: column {columns[j]!r} row {i + first_row} holds {x[i, j]}, not a finite "
        "number (leave missing values empty, or NaN)"
      )
    raise UsageError(
      f"{what}: column {columns[j]!r} has missing values (first at row {i + first_row}); fill "
      "them: the run was trained with --impute=none"
    )
  return x


# --- helpers ---


def _as_arrow(x: Any, what: str) -> pa.Table:
  """A DataFrame (pandas, or any with the dataframe interchange protocol), a pyarrow Table or
  RecordBatch, or a dict of columns, as a pyarrow Table."""
  if isinstance(x, pa.RecordBatch):
    table = pa.Table.from_batches([x])
  elif isinstance(x, pa.Table):
    table = x
  else:
    try:
      if type(x).__module__.split(".")[0] == "pandas":
        table = pa.Table.from_pandas(x, preserve_index=False)
      else:
        table = pa.table(x)
    except (pa.ArrowException, TypeError, ValueError) as e:
      raise UsageError(
        f"{what}: cannot read the {type(x).__name__} as a table ({preprocessing.first_line(e)})"
      ) from e
  return table


def _no_rows(what: str) -> str:
  return f"{what}: has no rows; expected at least one row to apply the run to"


def _is_table(x: Any) -> bool:
  """A pyarrow Table or RecordBatch, a pandas (or polars, ...) DataFrame: named columns."""
  return isinstance(x, (pa.Table, pa.RecordBatch)) or (
    hasattr(x, "columns") and not isinstance(x, (np.ndarray, data.RowArray))
  )


def _column_names(kind: str, path: str) -> list[str] | None:
  """A table's column names, from its header or schema alone; None if they cannot be read
  (reading the whole table then says why)."""
  try:
    if kind == "parquet":
      return pq.read_schema(path).names
    if kind == "json":
      return tables.read_table(path, fmt="json", label_column=None, what=path)[0]
    with pcsv.open_csv(path) as reader:
      return reader.schema.names
  except (pa.ArrowException, OSError, ValueError):
    return None
