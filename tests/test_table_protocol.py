"""scripts/table_protocol.py on a tiny table of its own: strings, yes/no, missing cells and an
id column; the hidden cells, the baselines' scores and the report checked against the files."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIES = ["Adelie", "Gentoo", "Chinstrap"]
ISLANDS = ["Biscoe", "Dream", "Torgersen"]


def _write_table(path) -> list[dict]:
  """90 rows of three well separated classes: a text category with missing cells, two numbers
  (one with missing cells), a yes/no column, an id."""
  rng = np.random.default_rng(0)
  rows = []
  for i in range(90):
    c = i % 3
    island = ISLANDS[c] if rng.random() > 0.2 else ISLANDS[int(rng.integers(3))]
    vip = ["no", "yes"][c == 0 if rng.random() > 0.1 else int(rng.integers(2))]
    rows.append(
      {
        "id": f"r{i}",
        "species": SPECIES[c],
        "island": "" if i % 11 == 0 else island,
        "bill": "" if i % 7 == 0 else f"{30 + 8 * c + rng.normal():.2f}",
        "mass": f"{3000 + 600 * c + 100 * rng.normal():.0f}",
        "vip": vip,
      }
    )
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return rows


def _run(*args):
  xla_flags = " ".join(
    f
    for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  )
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, "scripts", "table_protocol.py"), *args],
    cwd=ROOT,
    env={**os.environ, "XLA_FLAGS": xla_flags, "PYTHONPATH": ROOT},
    capture_output=True,
    text=True,
    timeout=300,
  )


def _read(path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_quick_protocol_hides_cells_scores_the_imputers_and_clusters(tmp_path):
  table = tmp_path / "rows.csv"
  rows = _write_table(table)
  before = table.read_bytes()
  out = tmp_path / "protocol"
  args = [f"--out={out}", "--quick", f"--csv={table}", "--csv_label=species", "--csv_id=id"]
  done = _run(*args)
  assert done.returncode == 0, done.stdout + done.stderr
  assert table.read_bytes() == before  # the user's table is read, never written
  result = json.load(open(out / "results.json"))
  r = result["tables"]["rows"]
  features = ["island", "bill", "mass", "vip"]
  observed = sum(row[n] != "" for row in rows for n in features)
  assert r["table"]["kinds"] == {
    "island": "categorical",
    "bill": "numeric",
    "mass": "numeric",
    "vip": "boolean",
  }
  assert r["table"]["rows"] == 90 and r["table"]["classes"] == 3
  assert r["table"]["missing_share"] == pytest.approx(1 - observed / (90 * len(features)))

  # The hidden copy: 20% of the observed feature cells emptied, nothing else changed.
  hidden_rows = _read(out / "rows" / "hidden_r20_s0.csv")
  hidden = {(i, n) for i, row in enumerate(hidden_rows) for n in features if row[n] == ""}
  hidden -= {(i, n) for i, row in enumerate(rows) for n in features if row[n] == ""}
  assert len(hidden) == round(0.2 * observed) == r["imputation"]["0.2"]["hidden_cells"][0]
  for i, (row, copy) in enumerate(zip(rows, hidden_rows)):
    for n in row:
      if (i, n) not in hidden:
        assert copy[n] == "" if row[n] == "" else float_or_text(copy[n]) == float_or_text(row[n])

  # Mean / most frequent, recomputed here from the two files.
  std = {n: np.std([float(row[n]) for row in rows if row[n] != ""]) for n in ("bill", "mass")}
  errors, right, total = [], 0, 0
  for n in features:
    seen = [row[n] for row in hidden_rows if row[n] != ""]
    cells = [i for i, m in hidden if m == n]
    if n in std:
      fill = np.mean([float(v) for v in seen])
      errors += [((fill - float(rows[i][n])) / std[n]) ** 2 for i in cells]
    else:
      levels, counts = np.unique(seen, return_counts=True)
      mode = levels[np.argmax(counts)]
      right += sum(mode == rows[i][n] for i in cells)
      total += len(cells)
  scores = r["imputation"]["0.2"]
  assert scores["mean_mode"]["nrmse"]["mean"] == pytest.approx(np.sqrt(np.mean(errors)))
  assert scores["mean_mode"]["cat_acc"]["mean"] == pytest.approx(right / total)
  # Imputers that use the other columns beat the column means on correlated columns.
  for method in ("knn", "iterative_onehot", "iterative_ordinal"):
    assert scores[method]["nrmse"]["mean"] < 0.8 * scores["mean_mode"]["nrmse"]["mean"]
  assert scores["knn"]["cat_acc"]["mean"] > scores["mean_mode"]["cat_acc"]["mean"]
  # dlu's autoencoder, trained with the hidden cells missing (--impute=model), then run.impute.
  assert result["tables"]["rows"]["dlu_impute"] == "model"
  dlu = scores["dlu_ae_mlp"]
  assert dlu["nrmse"]["mean"] < 0.8 * scores["mean_mode"]["nrmse"]["mean"]
  assert dlu["cat_acc"]["mean"] > scores["mean_mode"]["cat_acc"]["mean"]
  assert set(dlu["rmse_units"]) == {"bill", "mass"}
  flags = open(out / "rows" / "impute_ae_mlp_r20_s0" / "flags.txt").read()
  assert "--impute=model" in flags and "hidden_r20_s0.csv" in flags
  # GAIN on the same hidden cells, filled by run.impute the same way.
  gain = scores["dlu_gain"]
  assert gain["nrmse"]["mean"] < scores["mean_mode"]["nrmse"]["mean"]
  flags = open(out / "rows" / "impute_gain_r20_s0" / "flags.txt").read()
  assert "--model=gain" in flags and "hidden_r20_s0.csv" in flags
  assert set(scores["knn"]["rmse_units"]) == {"bill", "mass"}

  clusters = r["clustering"]
  assert set(clusters) == {"sklearn_kmeans", "sklearn_gmm", "dlu_ae_mlp_kmeans"}
  assert clusters["sklearn_kmeans"]["acc"]["mean"] > 0.9  # three well separated classes
  assert all(0 < c["acc"]["mean"] <= 1 and 0 <= c["nmi"]["mean"] <= 1 for c in clusters.values())
  assert clusters["dlu_ae_mlp_kmeans"]["acc"]["mean"] > 0.6  # chance is about 1/3

  # One class as normal (quick: the first, Adelie): trained on 80% of its rows only, scored on
  # the rest; the classes are well apart, so every detector finds the other two.
  normal = _read(out / "rows" / "normal_c0_s0.csv")
  assert len(normal) == 24 and {row["species"] for row in normal} == {"Adelie"}
  assert set(r["anomaly"]) == {"Adelie"}
  aurocs = r["anomaly"]["Adelie"]
  assert set(aurocs) == {"knn", "iforest", "lof", "pca", "dlu_ae_mlp", "dlu_ae_mlp+knn"}
  assert all(a["mean"] > 0.9 for a in aurocs.values()), aurocs
  assert r["anomaly_mean"]["dlu_ae_mlp"]["mean"] == aurocs["dlu_ae_mlp"]["mean"]

  report = (out / "results.md").read_text()
  assert "| Adelie | 1.000 ± 0.000 |" in report or "| Adelie | 0.9" in report
  assert "| rows | 90 | 6 | 2 / 1 / 1 |" in report
  assert "| rows | 20% (" in report and "| dlu_ae_mlp | 0." in report
  assert len(result["run"]["load_start"]) == 3 and result["tables"]["rows"]["wall_s"] > 0

  # A second run into the same folder replaces nothing.
  again = _run(*args)
  assert again.returncode == 2 and "--out=" in again.stderr and "not empty" in again.stderr
  assert json.load(open(out / "results.json")) == result


def float_or_text(v: str):
  try:
    return float(v)
  except ValueError:
    return v


@pytest.mark.slow
def test_bad_flags_are_one_line(tmp_path):
  done = _run(f"--out={tmp_path / 'a'}", f"--csv={tmp_path / 'x.csv'}")
  assert done.returncode == 2 and "--csv needs --csv_label" in done.stderr
  done = _run(f"--out={tmp_path / 'b'}", "--tables=penguins,nope")
  assert done.returncode == 2 and "--tables: nope unknown" in done.stderr
  done = _run(f"--out={tmp_path / 'd'}", "--tables=penguins", "--parts=anomaly,oops")
  assert done.returncode == 2 and "--parts=anomaly,oops: expected some of" in done.stderr
  for name in "abd":
    assert not os.path.exists(tmp_path / name)


@pytest.mark.slow
def test_a_missing_table_is_one_line_and_writes_nothing(tmp_path):
  done = _run(f"--out={tmp_path / 'c'}", f"--csv={tmp_path / 'none.csv'}", "--csv_label=y")
  assert done.returncode == 2 and "none.csv" in done.stderr and "no such file" in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "c")
