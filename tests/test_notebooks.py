"""The notebooks run top to bottom on tiny trained runs and draw their figures."""

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the [test] extra")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the [test] extra")


def execute(name, workdir, monkeypatch):
  """Runs notebooks/<name> on `workdir`; returns (number of figures, all printed text). Fails on any cell error."""
  monkeypatch.setenv("DLM_WORKDIR", str(workdir))
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
  nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(REPO)}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
  assert not errors, errors
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  return sum("image/png" in o.get("data", {}) for o in outputs), text


def test_denoising_trajectories_notebook_executes(trained_run, monkeypatch):
  figures, text = execute("denoising_trajectories.ipynb", trained_run[0], monkeypatch)
  assert figures == 3
  assert "step   0 |" in text and "mean confidence at reveal" in text
  assert "threshold 0.5:" in text and "low-confidence remasking:" in text


def test_inside_hrm_notebook_executes(trained_hrm_run, monkeypatch):
  figures, text = execute("inside_hrm.ipynb", trained_hrm_run[0], monkeypatch)
  assert figures == 2
  assert "mean L-iterations: masked" in text and "H-cycle 1:" in text


@pytest.mark.slow  # the wing's own tests (tests/test_thought.py) cover what it draws; 35 s cold
def test_thought_evolution_notebook_executes(trained_thought_run, monkeypatch):
  figures, text = execute("thought_evolution.ipynb", trained_thought_run[0], monkeypatch)
  assert figures == 4
  assert "step-to-step correlation: estimate" in text and "alpha 0.50:" in text
  assert "steer_scale 0.1: final property" in text
  assert "slot 1 of memory 2 is slot 0 of memory 1: True" in text


def test_sudoku_solving_notebook_executes(puzzle_runs, monkeypatch):
  root = puzzle_runs
  monkeypatch.setenv("DLM_PUZZLES", str(root / "test"))
  monkeypatch.setenv("DLM_PUZZLE_COUNT", "4")
  monkeypatch.setenv("DLM_ARMS", f"diffusion={root / 'run'},hrm={root / 'hrm'}")
  figures, text = execute("sudoku_solving.ipynb", root / "hrm", monkeypatch)
  assert figures == 3  # the filled grid, ACT's heat map and curves, accuracy against difficulty
  assert "step  0\n" in text and "blanks wrong" in text
  assert "replay agreement 100%" in text and "ACT easy:" in text
  assert "diffusion: easy exact" in text and "hrm: easy exact" in text
