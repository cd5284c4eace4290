"""README's train / evaluate / apply example runs as written, in a fresh folder, and so does the
Python snippet of docs/evaluation.md on the run it made."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example_commands() -> list[str]:
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  section = text.split("## Train, evaluate, apply", 1)[1].split("\n## ", 1)[0]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _api_snippet() -> str:
  with open(os.path.join(ROOT, "docs", "evaluation.md"), encoding="utf-8") as f:
    text = f.read()
  section = text.split("## Applying a run to new data", 1)[1].split("\n## ", 1)[0]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_example_is_found():
  assert 'dlu.load_run("workdirs/wine")' in _api_snippet()
  commands = _example_commands()
  assert [c.split()[2] for c in commands[1:]] == [
    "experiments.train",
    "experiments.evaluate",
    "experiments.apply",
  ]


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path):
  env = {
    **os.environ,
    "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    "PYTHONPATH": ROOT,
  }
  env.pop("XLA_FLAGS", None)  # one device, as a user's laptop
  for command in _example_commands():
    proc = subprocess.run(
      command.replace("python ", f"{sys.executable} ", 1),
      shell=True,
      cwd=tmp_path,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
  assert (tmp_path / "workdirs" / "wine" / "eval.json").is_file()
  # A header and one scored row per new row.
  scored = (tmp_path / "scored.csv").read_text().splitlines()
  assert len(scored) == len((tmp_path / "new_rows.csv").read_text().splitlines())
  # The notebook snippet, as written, on the run the example made and the rows it applied.
  rows = len(scored) - 1
  check = f"\nimport numpy as np\nn = len(np.asarray(s))\nassert n == {rows} == z.shape[0] == x_hat.shape[0]\n"
  check += "assert clusters.shape == confidence.shape == (n,) and np.isfinite(s).all()\n"
  proc = subprocess.run(
    [sys.executable, "-c", _api_snippet() + check],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
