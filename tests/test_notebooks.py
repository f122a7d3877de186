"""The notebooks: committed without outputs, and each one runs from top to bottom.

Execution uses nbclient in a temporary copy (so runs write nothing into the checkout), in a fresh
kernel with the repository importable. `pytest --nbmake notebooks/` runs them the same way.
"""

import os
import pathlib
import shutil

import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def test_there_are_notebooks():
  names = {p.name for p in NOTEBOOKS}
  assert {"prune_any_flax_model.ipynb", "bert_fine_pruning.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type != "code":
      continue
    assert not cell.get("outputs"), f"{path.name} cell {i} has outputs: clear them"
    assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution_count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
  from nbclient import NotebookClient

  work = tmp_path / "notebooks"
  work.mkdir()
  copy = work / path.name
  shutil.copy(path, copy)
  nb = nbformat.read(copy, as_version=4)
  # The kernel is a fresh process: it must not inherit the 8 fake devices of conftest.py, nor
  # the suite's fast-compile options (the notebooks compute more than they compile: their
  # slower code would cost more than the compile time they save), and it must import this checkout.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
    [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                          resources={"metadata": {"path": str(work)}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors, errors
