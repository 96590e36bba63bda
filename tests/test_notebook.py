"""The researchers' notebook (examples/pat_on_a_simulated_bench.ipynb) runs from top to bottom in a fresh kernel:
a simulated bench started, a setup opened, a twin fitted, one physics-aware layer checked, a two-layer network
trained with PAT above chance on the device, and the bench closed."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "pat_on_a_simulated_bench.ipynb"


def cell_text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def test_the_notebook_trains_a_network_on_the_simulated_bench(tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "the notebook is stored without outputs"
    # runs in tmp_path: nothing is written into the checkout (its artifacts go to a temporary folder too)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any cell's error
    text = "\n".join(cell_text(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert "output equals the device's: True" in text
    before = float(re.search(r"before training: device test accuracy ([0-9.]+)", text).group(1))
    final = float(re.search(r"final device test accuracy: ([0-9.]+)", text).group(1))
    assert final > 0.4 and final > before + 0.2, text  # 10 classes: chance is 0.1
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "runs").exists()
