"""Plots: each writes a real PNG, creating folders as needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator import plots
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


# -- plots a physicist can read (issue 15, item 6) ------------------------------------------------------------------

@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures the plot functions draw, laid out as saved (nothing is written)."""
    drawn = []

    def keep(fig, path):
        fig.canvas.draw()
        drawn.append(fig)
        return Path(path)

    monkeypatch.setattr(plots, "_save", keep)
    return drawn


def test_the_learning_curves_draw_the_running_train_accuracy_and_say_where_accuracy_is_measured(tmp_path, figures):
    rows = [{"epoch": e, "train_loss": 1 / e, "train_accuracy_running": 0.5 + e / 20,
             "test_accuracy": 0.4 + e / 20 if e % 2 else ""} for e in range(1, 6)]
    plots.plot_learning_curves(rows, tmp_path / "lc.png", "digits: pat with the neural twin (measured on the device)")
    fig, = figures
    ax_acc = fig.axes[1]
    curves = {line.get_label(): line.get_ydata() for line in ax_acc.get_lines()}
    assert list(curves) == ["train (running, during the epoch)", "test, on the device"]
    assert list(curves["train (running, during the epoch)"]) == [r["train_accuracy_running"] for r in rows]
    assert len(curves["test, on the device"]) == 3  # the epochs evaluated on the device
    assert "on the device" in fig._suptitle.get_text() and "neural twin" in fig._suptitle.get_text()


def _points_under_legend(ax) -> int:
    """How many of the axes' data points lie under its legend's box (in display coordinates)."""
    box = ax.get_legend().get_window_extent()
    hidden = 0
    for line in ax.get_lines():
        xy = ax.transData.transform(np.column_stack([line.get_xdata(), line.get_ydata()]))
        hidden += int(sum(box.contains(*p) for p in xy))
    for collection in ax.collections:
        xy = ax.transData.transform(collection.get_offsets())
        hidden += int(sum(box.contains(*p) for p in xy))
    return hidden


def test_the_twin_vs_device_legends_hide_no_data(tmp_path, figures):
    rng = np.random.default_rng(2)
    device = rng.random((400, 16))
    plots.plot_twin_vs_device(device, device + 0.05 * rng.standard_normal(device.shape), tmp_path / "t.png")
    fig, = figures
    ax_scatter, ax_traces = fig.axes
    assert _points_under_legend(ax_traces) == 0
    assert _points_under_legend(ax_scatter) < 0.01 * device.size
    assert ax_scatter.get_legend().get_frame().get_alpha() < 1  # and what is under it shows through


def test_physical_outputs_in_physical_units_with_the_full_scale(tmp_path, figures):
    rng = np.random.default_rng(3)
    axis = plots.OutputAxis(np.arange(8) * 4.0 + 2, "time in the item (µs)", "scope CH1 (V, bin mean)", 0.5,
                            (-2.0, 2.0))
    outputs = [rng.standard_normal((20, 8)), rng.standard_normal((20, 8))]
    plots.plot_physical_outputs(outputs, tmp_path / "p.png", "run: outputs", axis=axis,
                                sample_classes=[str(c) for c in rng.integers(0, 4, 20)])
    fig, = figures
    heat_maps = [ax for ax in fig.axes if ax.images]
    assert len(heat_maps) == 2  # one per layer: all 20 samples
    traces = [ax for ax in fig.axes if ax.get_lines() and not ax.images]
    assert len(traces) == 2 * 3  # the first three samples, each in a panel of its own, per layer
    first = traces[0]
    assert list(first.get_lines()[0].get_xdata()) == list(axis.positions)
    assert list(first.get_lines()[0].get_ydata()) == pytest.approx(list(0.5 * outputs[0][0]))  # volts
    assert sorted(line.get_ydata()[0] for line in first.get_lines()[1:]) == [-2.0, 2.0]  # the full scale
    assert {ax.get_xlabel() for ax in traces} >= {"time in the item (µs)"}


def test_the_kits_say_what_the_outputs_are() -> None:
    from types import SimpleNamespace

    from orchestrator.experiment_file import load_experiment
    from orchestrator.kits import setup_kit

    root = Path(__file__).resolve().parents[1] / "experiments"
    cfg = load_experiment(root / "electronic_digits.yaml")
    axis = setup_kit("electronic").output_axis(cfg, SimpleNamespace(n_inputs=320, n_outputs=320))
    # 2 x 320 values of 2 samples at 1 MSa/s: 1280 µs, one output bin per 4 µs
    assert axis.positions[:2] == pytest.approx([2.0, 6.0]) and axis.positions[-1] == pytest.approx(1278.0)
    assert "µs" in axis.label and "V" in axis.value_label
    assert axis.scale == cfg.encoding.output_volts_per_unit
    assert axis.full_scale == (-4 * cfg.instruments.scope.volts_per_div, 4 * cfg.instruments.scope.volts_per_div)
    optical = load_experiment(root / "optical_vowels.yaml")
    axis = setup_kit("optical").output_axis(optical, SimpleNamespace(n_inputs=28, n_outputs=28))
    assert "nm" in axis.label and abs(np.mean(axis.positions) - 400.0) < 1e-9  # the second harmonic of 800 nm
    assert axis.positions[-1] - axis.positions[0] == pytest.approx(optical.encoding.output_span_nm * 27 / 28)
