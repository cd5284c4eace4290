"""The notebooks in docs/notebooks run as written, top to bottom, in a fresh folder."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "docs", "notebooks", "*.ipynb")))


def test_there_are_notebooks_and_the_docs_link_them():
  assert NOTEBOOKS
  with open(os.path.join(ROOT, "docs", "data.md"), encoding="utf-8") as f:
    docs = f.read()
  for path in NOTEBOOKS:
    assert f"notebooks/{os.path.basename(path)}" in docs


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(tmp_path, path):
  nb = nbformat.read(path, as_version=4)
  source = nb.cells[1].source
  assert "NUM_STEPS = 1000" in source
  nb.cells[1].source = source.replace("NUM_STEPS = 1000", "NUM_STEPS = 200")  # a short run
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a laptop
  client = NotebookClient(nb, timeout=300, resources={"metadata": {"path": str(tmp_path)}})
  client.execute(env=env)
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs)  # the plot was drawn
  assert (tmp_path / "workdirs" / "wine_notebook" / "eval.json").is_file()
  tables = [o["data"]["text/plain"] for o in outputs if "text/plain" in o.get("data", {})]
  assert any("confidence" in t and "cluster" in t for t in tables)
