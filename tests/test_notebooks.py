"""The trajectory notebook runs top to bottom on a trained embedded-default run and draws its figures."""

import nbformat
import pytest

from conftest import REPO

nbclient = pytest.importorskip("nbclient", reason="nbclient is in the [test] extra")


def test_denoising_trajectories_notebook_executes(trained_run, monkeypatch):
  workdir, _ = trained_run
  monkeypatch.setenv("DLM_WORKDIR", str(workdir))
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  notebook = nbformat.read(REPO / "notebooks" / "denoising_trajectories.ipynb", as_version=4)
  nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(REPO)}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
  assert not errors, errors
  assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "step   0 |" in text and "mean confidence at reveal" in text
