"""Plots: each writes a real PNG, creating folders as needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.plots import (plot_confusion_matrix, plot_learning_curves, plot_physical_outputs,
                                plot_trace, plot_twin_vs_device)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5000


def test_learning_curves_with_missing_columns(tmp_path):
    rows = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5 + e / 20, "test_accuracy": 0.4 + e / 20}
            for e in range(1, 6)]
    rows[2]["test_accuracy"] = ""  # as read back from a CSV with an empty cell
    path = plot_learning_curves(rows, tmp_path / "run" / "plots" / "learning_curves.png")
    assert path == tmp_path / "run" / "plots" / "learning_curves.png"
    assert_png(path)
    assert_png(plot_learning_curves([], tmp_path / "empty.png"))


def test_confusion_matrix(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 200)
    pred = np.where(rng.random(200) < 0.8, y, rng.integers(0, 7, 200))
    assert_png(plot_confusion_matrix(y, pred, ["ae", "ah", "aw", "er", "ih", "iy", "uw"], tmp_path / "cm.png"))
    with pytest.raises(ValueError, match="0..1"):
        plot_confusion_matrix([0, 2], [0, 1], ["a", "b"], tmp_path / "bad.png")


def test_physical_outputs_twin_and_trace(tmp_path):
    rng = np.random.default_rng(1)
    assert_png(plot_physical_outputs(rng.random((3, 16)), tmp_path / "one.png", "Layer outputs"))
    assert_png(plot_physical_outputs([rng.random((3, 16)), rng.random((3, 10))], tmp_path / "two.png",
                                     "Layer outputs", labels=["input layer", "last layer"]))
    device = rng.random((400, 16))
    assert_png(plot_twin_vs_device(device, device + 0.05 * rng.standard_normal(device.shape),
                                   tmp_path / "twin.png", "Neural twin"))
    t = np.linspace(0, 1e-3, 5000)
    assert_png(plot_trace(t, np.sin(2 * np.pi * 5e3 * t), tmp_path / "a" / "b" / "trace.png", "Scope CH1"))
