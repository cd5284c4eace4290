"""Hostile input to `experiments.apply` on a trained table run: each case exits with status 2
and one line `error: ...` naming what is wrong, writes no output, and leaves every byte of the
workdir and of the input as it was."""

import os
import re

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from dlu import config
from dlu.runtime import cli
from dlu.train import loop
from experiments import apply as cli_apply
from tests.test_hostile_cases import snapshot

FLAGS = flags.FLAGS
HEADER = "a,b,c,y"
GOOD = "1,2,3,p\n4,5,6,q\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("table_run")
  rng = np.random.default_rng(0)
  rows = rng.normal(size=(60, 3))
  labels = np.where(rows[:, 0] > 0, "p", "q")
  lines = [HEADER] + [f"{a:.4f},{b:.4f},{c:.4f},{y}" for (a, b, c), y in zip(rows, labels)]
  (root / "train.csv").write_text("\n".join(lines) + "\n")
  workdir = str(root / "run")
  cfg = config.make_config(
    model="ae_mlp",
    dataset=f"csv:{root / 'train.csv'}",
    label_column="y",
    widths=(8,),
    latent_dim=2,
    batch_size=16,
    num_steps=4,
    eval_every=4,
    log_every=2,
    checkpoint_every=4,
  )
  loop.train_and_evaluate(cfg, workdir)
  return workdir


def _apply(capsys, **values):
  """The exit status and stderr of experiments.apply with these flags (parsed, as from the
  command line), in this process."""
  with flagsaver.flagsaver():
    FLAGS(["apply", *(f"--{k}={v}" for k, v in values.items())])
    try:
      cli.guarded(cli_apply.main, ["apply"])
      code = 0
    except SystemExit as e:
      code = e.code
  return code, capsys.readouterr().err


# (name, the input file's text or None for no file, extra flags, the message expected).
CASES = [
  ("missing_column", "a,c,y\n1,3,p\n", {}, r"lacks the feature columns 'b'"),
  ("text_cell", HEADER + "\n1,2,3,p\n4,five,6,q\n", {}, r"'b'.*row 3"),
  ("inf_cell", HEADER + "\n1,2,3,p\n4,inf,6,q\n", {}, r"'b' row 3 holds inf"),
  (
    "missing_cell",
    HEADER + "\n1,2,3,p\n4,,6,q\n",
    {},
    r"'b' has missing values \(first at row 3\)",
  ),
  ("header_only", HEADER + "\n", {}, r"has no rows \(only a header\)"),
  ("empty_file", "", {}, r"the file is empty"),
  ("no_such_file", None, {}, r"new.csv: no such file"),
  (
    "impute_not_the_runs",
    HEADER + "\n" + GOOD,
    {"impute": "mean"},
    r"--impute=mean.*--impute=none",
  ),
  ("output_is_the_input", HEADER + "\n" + GOOD, {"output": "INPUT"}, r"is the input"),
  (
    "output_in_workdir",
    HEADER + "\n" + GOOD,
    {"output": "WORKDIR/scores.csv"},
    r"inside --workdir",
  ),
  ("output_is_a_directory", HEADER + "\n" + GOOD, {"output": "DIR"}, r"is a directory"),
  ("output_bad_suffix", HEADER + "\n" + GOOD, {"output": "OUT.txt"}, r"\.npz or \.csv"),
  ("tfds_name", None, {"input": "mnist"}, r"^error: --input=mnist: expected a table"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_refused_with_one_line_and_nothing_changed(trained, tmp_path, capsys, case):
  _, text, extra, expected = case
  extra = dict(extra)
  source = tmp_path / "new.csv"
  if text is not None:
    source.write_text(text)
  (tmp_path / "DIR").mkdir()
  spec = extra.pop("input", f"csv:{source}")
  output = {
    "INPUT": str(source),
    "WORKDIR/scores.csv": os.path.join(trained, "scores.csv"),
    "DIR": str(tmp_path / "DIR"),
    "OUT.txt": str(tmp_path / "out.txt"),
  }.get(extra.pop("output", ""), str(tmp_path / "out.csv"))
  before, before_input = snapshot(trained), snapshot(str(source))
  code, err = _apply(capsys, workdir=trained, input=spec, output=output, **extra)
  lines = err.strip().splitlines()
  assert code == 2, err
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert re.search(expected, lines[0]), lines[0]
  assert snapshot(trained) == before and snapshot(str(source)) == before_input
  assert not (tmp_path / "out.csv").exists() and not (tmp_path / "out.txt").exists()
  assert os.listdir(tmp_path / "DIR") == []


@pytest.mark.slow
def test_good_rows_are_applied_and_nothing_else_changes(trained, tmp_path, capsys):
  source = tmp_path / "new.csv"
  source.write_text("c,b,a\n3,2,1\n6,5,4\n")  # another column order, no label
  before, before_input = snapshot(trained), snapshot(str(source))
  code, err = _apply(capsys, workdir=trained, input=f"csv:{source}", output=str(tmp_path / "o.csv"))
  assert code == 0, err
  assert len((tmp_path / "o.csv").read_text().splitlines()) == 3
  assert snapshot(trained) == before and snapshot(str(source)) == before_input
