"""Executes notebooks/01_quickstart.ipynb end to end on the tiny 'smoke' config (CPU kernel).

The kernel is this venv's python (a kernelspec written into a tmp JUPYTER_PATH, so a system-wide
`python3` kernel can never be picked up), with JAX_PLATFORMS=cpu. Parameters are injected by
a cell inserted right after the one tagged `parameters` (the papermill convention: the
defaults stay visible and anything not overridden keeps its default).
"""
import json
import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "01_quickstart.ipynb")
KERNEL = "tokenrl-test"
SUMMARY_KEYS = {"baseline_accuracy", "final_accuracy", "accuracy_gain", "wall_seconds", "steps",
                "sft_steps", "rl_steps", "objective", "skipped_updates"}


def _tagged(nb, tag):
  cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
  assert len(cells) == 1, f"expected exactly one cell tagged {tag!r}, found {len(cells)}"
  return cells[0]


def _text(cell) -> str:
  return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
                 and o.get("name") == "stdout")


def test_notebook_is_stored_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, f"cell {i} holds outputs"
  assert _tagged(nb, "parameters").source.startswith("ARG = None")


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  kernel_dir = tmp_path / "jupyter" / "kernels" / KERNEL
  kernel_dir.mkdir(parents=True)
  (kernel_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "tokenrl test (venv python)", "language": "python",
      "env": {"JAX_PLATFORMS": "cpu"},
  }))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))

  nb = nbformat.read(NOTEBOOK, as_version=4)
  workdir = tmp_path / "run"
  at = nb.cells.index(_tagged(nb, "parameters")) + 1
  nb.cells.insert(at, nbformat.v4.new_code_cell(
      f"ARG = 'smoke'\nWORKDIR = {str(workdir)!r}\nREPO_DIR = {REPO!r}",
      metadata={"tags": ["injected-parameters"]}))
  client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError naming the cell if any cell errors

  for i, cell in enumerate(nb.cells):
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"cell {i} errored: {errors}"
  summary = json.loads(_text(_tagged(nb, "summary")).split("\n", 1)[1])
  assert SUMMARY_KEYS <= set(summary), SUMMARY_KEYS - set(summary)
  assert summary["steps"] == summary["sft_steps"] + summary["rl_steps"] == 4 + 3
  for key in ("baseline_accuracy", "final_accuracy"):
    assert 0.0 <= summary[key] <= 1.0
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert images, "the plot cell displayed no figure"
  assert (workdir / "summary.json").is_file() and (workdir / "metrics.jsonl").is_file()
  # The last cell printed one line per held-out prompt, each judged by the verifier.
  lines = _text(nb.cells[-2]).strip().splitlines()
  assert len(lines) == 8 and all(l.endswith((" ok", " wrong")) for l in lines), lines
