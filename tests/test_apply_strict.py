"""A trained run applied to new data is as strict as training: the label optional, bad cells and
pixels refused naming the column and row, empty inputs, outputs over the inputs or the workdir,
--impute, spreadsheet formulas, samples over a feature, tables matched by name."""

import os
import re
import subprocess
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dlu
from dlu import data
from dlu.data import preprocessing
from dlu.errors import UsageError
from dlu.train import apply
from experiments import apply as cli_apply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ("a", "b", "c")


def _fake_run(
  *, impute="none", image_dtype=None, label_column="y", classes=("p", "q"), columns=COLUMNS
):
  """A Run whose inputs are checked without a trained state: a table of `columns` (raw = model
  units; `impute` fills with 10, 20, 30), or 4x4x1 images of `image_dtype`."""
  if image_dtype is not None:
    x = np.zeros((2, 4, 4, 1), image_dtype)
    ds = data.Dataset("img", x, None, x, None, None)
    cfg = types.SimpleNamespace(model="ae_seed", label_column=None)
  else:
    pre = preprocessing.Preprocessing(
      columns=columns,
      impute=impute,
      fill=None if impute == "none" else [10.0, 20.0, 30.0],
      scaling="none",
      offset=np.zeros(3),
      scale=np.ones(3),
      label_column=label_column,
      classes=classes,
    )
    x = np.zeros((2, 3), np.float32)
    ds = data.Dataset("t", x, None, x, None, None, preprocessing=pre)
    cfg = types.SimpleNamespace(model="ae_mlp", label_column=label_column)
  return apply.Run(types.SimpleNamespace(cfg=cfg, family=None, dataset=ds), state=None)


class _ArrowStream:
  """A DataFrame of another library: named columns, readable through the Arrow C stream."""

  def __init__(self, table):
    self._table = table
    self.columns = table.column_names

  def __arrow_c_stream__(self, requested_schema=None):
    return self._table.__arrow_c_stream__(requested_schema)


def test_tables_are_matched_by_name_and_strings_read_as_the_cli_reads(tmp_path):
  run = _fake_run()
  rows = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  shuffled = pa.table({"y": ["p", "q"], "c": [3.0, 6.0], "extra": ["u", "v"], "a": [1, 4]})
  shuffled = shuffled.append_column("b", pa.array([2.0, 5.0]))
  np.testing.assert_array_equal(run.inputs(shuffled), rows)
  np.testing.assert_array_equal(run.inputs(shuffled.to_batches()[0]), rows)
  np.testing.assert_array_equal(run.inputs(_ArrowStream(shuffled)), rows)
  np.testing.assert_array_equal(run.inputs(rows), rows)  # arrays: the training order
  with pytest.raises(UsageError, match=r"^inputs: lacks the feature columns 'b' the run"):
    run.inputs(shuffled.drop_columns(["b"]))
  with pytest.raises(UsageError, match=r"^inputs: column 'c' row 2 holds 'x', not a number"):
    run.inputs(pa.table({"a": [1.0, 4.0], "b": [2.0, 5.0], "c": ["3", "x"]}))
  with pytest.raises(UsageError, match=r"^inputs: has no rows"):
    run.inputs(shuffled.slice(0, 0))
  # "csv:PATH" and "parquet:PATH" as the CLI reads them, the label column optional.
  path = tmp_path / "new.csv"
  path.write_text("c,b,a\n3,2,1\n6,5,4\n")
  np.testing.assert_array_equal(run.inputs(f"csv:{path}"), rows)
  pq.write_table(shuffled.drop_columns(["extra"]), tmp_path / "new.parquet")
  np.testing.assert_array_equal(run.inputs(f"parquet:{tmp_path / 'new.parquet'}"), rows)
  path.write_text("c,b,a,y\n3,2,1,p\n6,,4,q\n")
  with pytest.raises(UsageError, match=r"column 'b' has missing values \(first at row 3\)"):
    run.inputs(f"csv:{path}")  # the header is row 1, as training counts


def test_pandas_dataframes_are_matched_by_name():
  pandas = pytest.importorskip("pandas")
  run, rows = _fake_run(), np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  frame = pandas.DataFrame({"c": [3.0, 6.0], "y": ["p", "q"], "b": [2.0, 5.0], "a": [1.0, 4.0]})
  np.testing.assert_array_equal(run.inputs(frame), rows)


def test_bad_cells_are_refused_naming_the_column_and_row_and_imputed_ones_filled():
  run = _fake_run()
  with pytest.raises(UsageError, match=r"^inputs: column 'b' row 2 holds inf, not a finite"):
    run.inputs(np.array([[1.0, 2.0, 3.0], [1.0, np.inf, -np.inf]]))
  with pytest.raises(UsageError, match=r"^inputs: column 'c' has missing values \(first at row 3"):
    run.inputs(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, np.nan]]))
  with pytest.raises(UsageError, match=r"^inputs: dtype <U1; expected numbers"):
    run.inputs(np.array([["1", "2", "3"]]))
  with pytest.raises(UsageError, match=r"^inputs: has no rows"):
    run.inputs(np.zeros((0, 3)))
  with pytest.raises(UsageError, match=r"trained on rows of 3 features"):
    run.inputs(np.zeros(3))
  filled = _fake_run(impute="mean").inputs(np.array([[np.nan, 2.0, np.nan]]))
  np.testing.assert_array_equal(filled, [[10.0, 2.0, 30.0]])  # the stored fill values
  with pytest.raises(UsageError, match="column 'a' row 1 holds inf"):
    _fake_run(impute="mean").inputs(np.array([[np.inf, 2.0, 3.0]]))


def test_pixels_are_checked_as_training_checks_them():
  run = _fake_run(image_dtype=np.uint8)
  ones = np.ones((2, 4, 4), np.float32)
  np.testing.assert_array_equal(run.inputs(ones * 0.5), np.full((2, 4, 4, 1), 128, np.uint8))
  nan = ones.copy()
  nan[1, 2, 3] = np.nan
  with pytest.raises(UsageError, match=r"^inputs holds NaN \(1 of them, the first at index \(1,"):
    run.inputs(nan)
  for scale in (255, 3):
    with pytest.raises(UsageError, match=r"^inputs is float with values outside \[0, 1\]"):
      run.inputs(ones * scale)
  with pytest.raises(UsageError, match=r"^inputs has dtype int64; expected uint8"):
    run.inputs(np.ones((2, 4, 4, 1), np.int64))
  with pytest.raises(UsageError, match=r"^inputs: has no rows"):
    run.inputs(np.zeros((0, 4, 4, 1), np.uint8))
  with pytest.raises(UsageError, match="trained on images of shape"):
    run.inputs(pa.table({"a": [1.0]}))
  floats = _fake_run(image_dtype=np.float32)
  assert floats.inputs(ones).dtype == np.float32
  with pytest.raises(UsageError, match="outside"):
    floats.inputs(ones * 2)


def test_written_csvs_neutralise_formulas_but_keep_numbers(tmp_path):
  path = str(tmp_path / "out.csv")
  cli_apply.write_csv(
    path,
    {
      "=HYPERLINK(1)": np.array([-1.5, 2.0]),
      "a,b": np.array([[-3.0, 4.0], [5.0, 6.0]]),
      "label": np.array(["@SUM(A1)", "-2"], dtype=object),
    },
  )
  lines = open(path).read().splitlines()
  assert lines == [
    '\'=HYPERLINK(1),"a,b_0","a,b_1",label',
    "-1.5,-3,4,'@SUM(A1)",
    "2,5,6,-2",
  ]
  assert [cli_apply.safe_cell(c) for c in ("+1+1", "\tx", "\rx", "-x", "ok", -1.5)] == [
    "'+1+1",
    "'\tx",
    "'\rx",
    "'-x",
    "ok",
    -1.5,
  ]
  cli_apply.write_csv(path, {"score": np.array([-0.25])})  # numbers only: the fast path
  assert open(path).read() == "score\n-0.25\n"
  assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_samples_never_overwrite_a_feature():
  labels = np.array([0, 1, 0])
  samples = np.arange(9.0).reshape(3, 3)
  run = _fake_run(columns=("label", "b", "c"))  # a feature named "label"
  cols = cli_apply.sample_columns(run, samples, labels)
  assert list(cols) == ["label", "b", "c", "y"]
  np.testing.assert_array_equal(cols["label"], samples[:, 0])
  assert list(cols["y"]) == ["p", "q", "p"]  # the training label values
  unnamed = _fake_run(label_column=None, classes=None, columns=("label", "label_1", "c"))
  cols = cli_apply.sample_columns(unnamed, samples, labels)
  assert list(cols) == ["label", "label_1", "c", "label_2"]
  np.testing.assert_array_equal(cols["label_2"], labels)
  assert list(cli_apply.sample_columns(run, samples, None)) == ["label", "b", "c"]


def test_outputs_over_the_inputs_the_workdir_or_a_directory_are_refused(tmp_path):
  workdir, table = tmp_path / "run", tmp_path / "new.csv"
  workdir.mkdir()
  table.write_text("a\n1\n")
  (tmp_path / "folder").mkdir()
  spec = f"csv:{table}"
  cli_apply.check_output(str(tmp_path / "out.csv"), spec, str(workdir))  # fine
  for output, spec_, message in (
    (str(table), spec, "is the input"),
    (str(tmp_path / "folder" / ".." / "new.csv"), spec, "is the input"),
    (str(workdir / "embeddings_test.npz"), spec, f"is inside --workdir={workdir}"),
    (str(workdir / "sub" / "x.csv"), spec, "is inside --workdir"),
    (str(tmp_path / "folder"), spec, "is a directory"),
    (
      str(tmp_path / "folder" / "out.npz"),
      f"folder:{tmp_path / 'folder'}",
      "is inside the input folder",
    ),
  ):
    with pytest.raises(UsageError, match=f"^--output={re.escape(output)} {message}"):
      cli_apply.check_output(output, spec_, str(workdir))
  (tmp_path / "out_samples.csv").write_text("a\n1\n")  # where --samples would go: the input
  with pytest.raises(UsageError, match=r"out_samples.csv \(the samples file\) is the input"):
    cli_apply.check_output(
      str(tmp_path / "out.csv"), f"csv:{tmp_path / 'out_samples.csv'}", str(workdir), samples=True
    )
  cli_apply.check_output(str(tmp_path / "out.csv"), f"csv:{tmp_path / 'out_samples.csv'}", "")


# --- End to end: a trained table run, experiments.apply as a subprocess.


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
  from dlu import config
  from dlu.train import loop

  base = tmp_path_factory.mktemp("apply_strict")
  rng = np.random.default_rng(0)
  path = base / "train.csv"
  rows = [
    f"{a:.4f},{b:.4f},{c:.4f},{'pq'[i % 2]}" for i, (a, b, c) in enumerate(rng.normal(size=(40, 3)))
  ]
  path.write_text("a,b,c,y\n" + "\n".join(rows) + "\n")
  workdir = str(base / "run")
  cfg = config.make_config(
    model="ae_mlp",
    dataset=f"csv:{path}",
    label_column="y",
    widths=["8"],
    latent_dim=2,
    batch_size=8,
    num_steps=20,
    log_every=10,
    eval_every=10,
    checkpoint_every=10,
    embedding_plot="none",
  )
  loop.train_and_evaluate(cfg, workdir)
  return workdir, str(path)


def _snapshot(*paths):
  """Every file under `paths`: its bytes and mtime."""
  out = {}
  for top in paths:
    walk = (
      [(os.path.dirname(top), [], [os.path.basename(top)])] if os.path.isfile(top) else os.walk(top)
    )
    for root, _, names in walk:
      for name in names:
        p = os.path.join(root, name)
        with open(p, "rb") as f:
          out[p] = (f.read(), os.stat(p).st_mtime_ns)
  return out


def _apply(*args):
  return subprocess.run(
    [sys.executable, "-m", "experiments.apply", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )


@pytest.mark.slow
def test_new_rows_need_no_label_and_match_by_name(table_run, tmp_path):
  workdir, train = table_run
  header, *lines = open(train).read().splitlines()
  unlabelled = tmp_path / "unlabelled.csv"
  unlabelled.write_text(
    "c,a,b\n" + "\n".join(",".join(r.split(",")[i] for i in (2, 0, 1)) for r in lines) + "\n"
  )
  before = _snapshot(workdir, train, str(unlabelled))
  out = tmp_path / "out.csv"
  proc = _apply(f"--workdir={workdir}", f"--input=csv:{unlabelled}", f"--output={out}")
  assert proc.returncode == 0, proc.stderr
  assert _snapshot(workdir, train, str(unlabelled)) == before
  written = np.genfromtxt(out, delimiter=",", names=True)
  run = dlu.load_run(workdir)
  np.testing.assert_allclose(written["score"], run.score(f"csv:{train}"), rtol=1e-5, atol=1e-7)
  shuffled = pa.table({"b": [0.1], "y": ["p"], "a": [0.2], "c": [0.3]})
  np.testing.assert_allclose(run.encode(shuffled), run.encode(np.array([[0.2, 0.1, 0.3]])))


@pytest.mark.slow
@pytest.mark.parametrize(
  "case",
  ["inf", "missing", "header_only", "output_is_input", "output_in_workdir", "output_dir", "impute"],
)
def test_refusals_are_one_line_exit_2_and_touch_nothing(table_run, tmp_path, case):
  workdir, _ = table_run
  table = tmp_path / "new.csv"
  body = {"inf": "1,inf,3", "missing": "1,2,3\n4,,6", "header_only": ""}.get(case, "1,2,3")
  table.write_text(f"a,b,c\n{body}\n" if body else "a,b,c\n")
  output = {
    "output_is_input": str(table),
    "output_in_workdir": os.path.join(workdir, "embeddings_test.npz"),
    "output_dir": str(tmp_path),
  }.get(case, str(tmp_path / "out.csv"))
  extra = ["--impute=mean"] if case == "impute" else []
  message = {
    "inf": f"--input=csv:{table}: column 'b' row 2 holds inf, not a finite number",
    "missing": f"--input=csv:{table}: column 'b' has missing values (first at row 3)",
    "header_only": f"--input=csv:{table}: has no rows",
    "output_is_input": f"--output={table} is the input",
    "output_in_workdir": f"--output={output} is inside --workdir={workdir}",
    "output_dir": f"--output={tmp_path} is a directory",
    "impute": "--impute=mean: the run was trained with --impute=none",
  }[case]
  before = _snapshot(workdir, str(tmp_path))
  proc = _apply(f"--workdir={workdir}", f"--input=csv:{table}", f"--output={output}", *extra)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert proc.stderr.startswith(f"error: {message}"), proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert _snapshot(workdir, str(tmp_path)) == before


@pytest.mark.slow
def test_conditional_gan_samples_keep_a_feature_named_label(tmp_path):
  from dlu import config
  from dlu.train import loop

  rng = np.random.default_rng(1)
  path = tmp_path / "train.csv"
  rows = [f"{a:.4f},{b:.4f},{'pq'[i % 2]}" for i, (a, b) in enumerate(rng.normal(size=(40, 2)))]
  path.write_text("label,b,kind\n" + "\n".join(rows) + "\n")
  workdir = str(tmp_path / "gan")
  cfg = config.make_config(
    model="mlp_gan",
    dataset=f"csv:{path}",
    label_column="kind",
    conditional=True,
    gan_widths=["8"],
    latent_dim=2,
    batch_size=8,
    num_steps=10,
    log_every=10,
    eval_every=10,
    checkpoint_every=10,
    evaluators=["metrics"],
    embedding_plot="none",
  )
  loop.train_and_evaluate(cfg, workdir)
  new = tmp_path / "new.csv"
  new.write_text("b,label\n0.5,0.25\n")
  out = tmp_path / "out.csv"
  proc = _apply(f"--workdir={workdir}", f"--input=csv:{new}", f"--output={out}", "--samples=2")
  assert proc.returncode == 0, proc.stderr
  header, *lines = open(tmp_path / "out_samples.csv").read().splitlines()
  assert header == "label,b,kind" and len(lines) == 4
  assert [line.split(",")[2] for line in lines] == ["p", "q", "p", "q"]
  assert all(float(line.split(",")[0]) == float(line.split(",")[0]) for line in lines)
