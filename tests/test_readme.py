"""README's train / evaluate / apply example runs as written, in a fresh folder."""

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


def test_the_example_is_found():
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
