r"""Apply a trained dlu run to new data.

  python -m experiments.apply --workdir=workdirs/ae_table --input=csv:new_rows.csv \
      --output=scored.csv [--samples=16]

The state applied is the run's best checkpoint when it kept one (--keep_best_checkpoint), else
its latest (--checkpoint=best|latest|STEP). --input is any --dataset form: a table with the
training columns (matched by name, in any order; its label column optional), an npz (x: images
or vectors), or a folder of images, checked as training checks its data (one-line errors naming
the column and row; missing cells taken only where the run was trained to fill or mask them,
whose stored values apply: --impute and --feature_scaling are the run's). Per input row the output
holds the embedding (`embedding`, or `embedding_0`, ... columns in a CSV), `score` (anomaly
score: higher is less like the training data; --score_method=model|knn|cosine), and for clustering runs `cluster` and
`confidence` (the run's clustering layer, or the k-means `experiments.evaluate` fitted). With
--samples=N a GAN or VAE also writes N generated examples (per class for conditional GANs) in
the data's own units (`samples`, `sample_labels` in the npz; NAME_samples.csv, the training
columns and label values, or NAME_samples.npz beside a NAME.csv). Outputs are written
atomically, never over the input or into the workdir; a CSV's text cells that a spreadsheet
would run as formulas are quoted with a leading '.

  python -m experiments.apply --workdir=workdirs/ae_table --input=csv:rows_with_gaps.csv \
      --impute=model --output=filled.csv

writes the input table instead, every row and column as it was, its missing feature cells
filled by the model's reconstruction in the data's own units and categories (`Run.impute`).
"""

import csv
import os

import numpy as np
from absl import flags

from dlu import files
from dlu.errors import UsageError
from dlu.runtime import cli
from dlu.train import apply

flags.DEFINE_string("input", None, "The rows to apply the run to: any --dataset form.")
flags.DEFINE_string(
  "output",
  None,
  "Where the results go: PATH.npz or PATH.csv (written whole or not at all); neither the input "
  "nor a path inside the workdir.",
)
flags.DEFINE_integer(
  "samples", 0, "Also draw this many samples (GANs, VAEs; per class when conditional); 0: none."
)

flags.DEFINE_enum(
  "score_method",
  "model",
  list(apply.SCORE_METHODS),
  "The `score` column: model (the family's own anomaly score), knn (mean distance to the "
  "--score_k nearest training codes), cosine (CSI: cosine to the nearest training code times "
  "the code's norm, negated).",
)
flags.DEFINE_integer("score_k", 5, "Neighbours of --score_method=knn.")

FLAGS = flags.FLAGS

# The stored preprocessing fixes these at training; apply uses the run's own.
STORED_FLAGS = ("impute", "feature_scaling")
# So does its column schema (kinds, categories, the id column).
COLUMN_FLAGS = ("categorical_columns", "numeric_columns", "drop_columns", "id_column")
# The --input forms that name a file or a folder.
INPUT_KINDS = ("csv", "parquet", "json", "npz", "npy", "folder", "records", "series", "text")


def results(
  run: apply.Run, x: np.ndarray, *, score_method: str = "model", score_k: int = 5
) -> dict[str, np.ndarray]:
  """What the run says of each row of `x` (those of its capabilities the model has); `score`
  by `score_method` (see `Run.score`)."""
  out = {}
  family = run.family
  if family.has_embedding:
    out["embedding"] = run.encode(x)
  if score_method != "model":
    out["score"] = run.score(x, method=score_method, k=score_k)
  elif family.has_score:
    out["score"] = run.score(x)
  if run.dataset.is_text and family.has_reconstruction:  # documents decoded from their codes
    out["reconstruction"] = run.reconstruct(x)
  head = getattr(family, "assignments", None)
  if head is not None or os.path.isfile(os.path.join(run.exp.ctx.workdir, apply.KMEANS_FILE)):
    out["cluster"], out["confidence"] = run.assign(x)
  return out


def check_output(output: str, spec: str, workdir: str, *, samples: bool = False) -> None:
  """Refuses an --output (or, with `samples`, the samples file beside it) that would overwrite
  what it reads: the input itself, a path inside the input folder or the run's workdir, or a
  directory."""
  kind, _, arg = spec.strip().partition(":")
  source = os.path.realpath(os.path.expanduser(arg)) if arg and kind in INPUT_KINDS else None
  run_dir = os.path.realpath(workdir) if workdir else None
  for path in [output, *(samples_paths(output) if samples else [])]:
    real = os.path.realpath(os.path.expanduser(path))
    named = f"--output={output}" + ("" if path == output else f": {path} (the samples file)")
    if os.path.isdir(real):
      raise UsageError(f"{named} is a directory; expected a file PATH.npz|PATH.csv")
    if source is not None and real == source:
      raise UsageError(f"{named} is the input ({spec}); write the results elsewhere")
    for folder, name in ((source, f"the input folder ({spec})"), (run_dir, f"--workdir={workdir}")):
      if folder is not None and os.path.isdir(folder) and _inside(real, folder):
        raise UsageError(
          f"{named} is inside {name}, which apply only reads; write the results elsewhere"
        )


def _inside(path: str, folder: str) -> bool:
  return os.path.commonpath([path, folder]) == folder


def samples_paths(output: str) -> list[str]:
  """The files --samples may write beside a CSV --output (an npz --output holds them)."""
  if os.path.splitext(output)[1].lower() != ".csv":
    return []
  base = os.path.splitext(output)[0] + "_samples"
  return [base + ".npz", base + ".csv"]


def imputing() -> bool:
  """--impute=model given here: write the input table with its missing cells filled."""
  return FLAGS["impute"].present and FLAGS.impute == "model"


def check_stored_flags(run: apply.Run) -> None:
  """--impute and --feature_scaling are the run's, kept in its preprocessing.json: apply uses
  those; another value given here is refused, not ignored (--impute=model asks for the
  filled table instead, `write_filled`)."""
  pre = run.dataset.preprocessing
  for name in COLUMN_FLAGS:
    if FLAGS[name].present:
      raise UsageError(
        f"--{name}: the run's columns (their kinds, categories and id) were fixed at training "
        "and kept in its preprocessing.json, which apply uses as training did; drop --"
        f"{name}"
      )
  for name in STORED_FLAGS:
    if not FLAGS[name].present or (name == "impute" and imputing()):
      continue
    if pre is None:
      raise UsageError(
        f"--{name}={FLAGS[name].value}: the run was trained on images; --{name} applies to tables"
      )
    stored = pre.impute if name == "impute" else pre.scaling
    if FLAGS[name].value != stored:
      raise UsageError(
        f"--{name}={FLAGS[name].value}: the run was trained with --{name}={stored}, kept in its "
        f"preprocessing.json, which apply uses as training did; drop --{name}"
      )


safe_cell = files.safe_cell


def write_csv(path: str, columns: dict[str, np.ndarray]) -> None:
  """One column per 1-D array (NAME_0, NAME_1, ... per column of a 2-D one); numbers as %.7g,
  strings (the header, text values) made safe for spreadsheets (`safe_cell`) and CSV-quoted."""
  names, values = [], []
  for name, v in columns.items():
    v = np.asarray(v)
    if v.ndim == 1:
      names.append(name)
      values.append(v[:, None])
    else:
      v = v.reshape(len(v), -1)
      names += [f"{name}_{i}" for i in range(v.shape[1])]
      values.append(v)
  text = any(v.dtype.kind in "OUS" for v in values)
  with files.atomic_write(path, newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow([safe_cell(n) for n in names])
    if not values:
      return
    if not text:
      np.savetxt(f, np.concatenate([v.astype(np.float64) for v in values], axis=1), "%.7g", ",")
      return
    cells = [
      [safe_cell(str(c)) for c in v] if v.dtype.kind in "OUS" else [f"{c:.7g}" for c in v]
      for v in (col for block in values for col in block.T)
    ]
    writer.writerows(zip(*cells, strict=True))


def write_table_csv(path: str, table) -> None:
  """A pyarrow Table as CSV: every column, cells as the table holds them (numbers in full,
  missing cells empty), text made safe for spreadsheets (`safe_cell`); written atomically."""
  names = table.column_names
  cells = [
    ["" if v is None or (isinstance(v, float) and v != v) else safe_cell(str(v)) for v in col]
    for col in (table.column(n).to_pylist() for n in names)
  ]
  with files.atomic_write(path, newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow([safe_cell(n) for n in names])
    writer.writerows(zip(*cells, strict=True))


def write_filled(run: apply.Run, encoding: str | None) -> None:
  """--impute=model: the input table with its missing cells filled by the run's model."""
  if os.path.splitext(FLAGS.output)[1].lower() != ".csv":
    raise UsageError(
      f"--output={FLAGS.output}: --impute=model writes the input table filled: expected PATH.csv"
    )
  if FLAGS.samples:
    raise UsageError("--impute=model writes the filled table; draw --samples in another run")
  if not _is_table(run):
    raise UsageError(
      f"--impute=model fills a table's missing cells; the run was trained on {run.dataset.name}"
    )
  table, counts = run._impute(FLAGS.input, encoding=encoding)
  write_table_csv(FLAGS.output, table)
  total = sum(counts.values())
  each = ", ".join(f"{name!r} {n}" for name, n in counts.items()) or "none was missing"
  print(
    f"{table.num_rows} rows of {FLAGS.input} through {run}: {total} missing cells filled "
    f"({each}) -> {FLAGS.output}",
    flush=True,
  )


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  files.atomic_save(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def sample_columns(
  run: apply.Run, samples: np.ndarray, labels: np.ndarray | None
) -> dict[str, np.ndarray]:
  """Generated table rows as the training table's columns; a conditional GAN's classes in a
  column of their own, never over a feature: the training label column's name (else "label",
  else label_1, ...), holding the training label values."""
  pre = run.dataset.preprocessing
  if pre is None:
    cols = {"": samples}
  elif pre.schema is not None:  # numbers, booleans and the most likely category of each column
    cols = pre.schema.decode(samples)
  else:
    cols = {n: samples[:, i] for i, n in enumerate(pre.columns)}
  if labels is not None:
    name = (pre.label_column if pre is not None else None) or "label"
    k = 0
    while name in cols:
      k += 1
      name = f"label_{k}"
    classes = pre.classes if pre is not None else None
    cols[name] = np.array(classes, dtype=object)[labels] if classes else labels
  return cols


def main(argv):
  del argv
  if not FLAGS.input or not FLAGS.output:
    raise UsageError(
      "--input=SPEC (any --dataset form) and --output=PATH.npz|PATH.csv are both needed"
    )
  if os.path.isdir(os.path.expanduser(FLAGS.output)):
    raise UsageError(f"--output={FLAGS.output} is a directory; expected a file PATH.npz|PATH.csv")
  fmt = os.path.splitext(FLAGS.output)[1].lower()
  if fmt not in (".npz", ".csv"):
    raise UsageError(f"--output={FLAGS.output}: expected a path ending in .npz or .csv")
  out_dir = os.path.dirname(os.path.abspath(FLAGS.output))
  if not os.path.isdir(out_dir):
    raise UsageError(f"--output={FLAGS.output}: the folder {out_dir} does not exist")
  check_output(FLAGS.output, FLAGS.input, FLAGS.workdir, samples=bool(FLAGS.samples))
  run = apply.load_run(FLAGS.workdir, checkpoint=FLAGS.checkpoint)
  check_stored_flags(run)
  encoding = FLAGS.encoding if FLAGS["encoding"].present else None
  if imputing():
    write_filled(run, encoding)
    return
  table = apply.read_table_inputs(FLAGS.input, run, encoding=encoding) if _is_table(run) else None
  x = table.x if table is not None else apply.read_inputs(FLAGS.input, run, encoding=encoding)
  out = results(run, x, score_method=FLAGS.score_method, score_k=FLAGS.score_k)
  if table is not None and table.ids is not None:  # the id first, as the input names its rows
    out = {table.id_column: _id_values(table.ids, fmt), **out}
  samples = run.sample(FLAGS.samples) if FLAGS.samples else None
  if fmt == ".npz":
    if samples is not None:
      out["samples"] = samples[0]
      if samples[1] is not None:
        out["sample_labels"] = samples[1]
    write_npz(FLAGS.output, {k: v.astype(str) if v.dtype == object else v for k, v in out.items()})
  else:
    write_csv(FLAGS.output, out)
    if samples is not None:
      npz_path, csv_path = samples_paths(FLAGS.output)
      if run.dataset.is_text:
        write_csv(csv_path, {"text": samples[0]})
      elif run.dataset.is_image:
        write_npz(
          npz_path,
          {
            "samples": samples[0],
            **({"sample_labels": samples[1]} if samples[1] is not None else {}),
          },
        )
      else:
        write_csv(csv_path, sample_columns(run, *samples))
  note = ""
  if table is not None and table.unknown:
    count = sum(table.unknown.values())
    each = ", ".join(f"{name!r} {n}" for name, n in table.unknown.items())
    note = (
      f"; {count} cell{'s' if count > 1 else ''} of categories not seen in training, encoded as "
      f"unknown (all zeros): {each}"
    )
  print(
    f"{len(x)} rows of {FLAGS.input} through {run}: {', '.join(out)} -> {FLAGS.output}{note}",
    flush=True,
  )


def _is_table(run: apply.Run) -> bool:
  pre = run.dataset.preprocessing
  ds = run.dataset
  return not ds.is_image and not ds.is_series and not ds.is_text and pre is not None


def _id_values(ids: np.ndarray, fmt: str) -> np.ndarray:
  """Ids as the input wrote them: text in a CSV (an integer id stays whole); in an npz, numbers
  when they all are, else text (an npz holds no Python objects)."""
  text = ["" if v is None else str(v) for v in ids.tolist()]
  if fmt == ".csv":
    return np.array(text, dtype=object)
  if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ids.tolist()):
    return np.array(ids.tolist(), np.float64)
  return np.array(text, dtype=str)


if __name__ == "__main__":
  cli.run(main)
