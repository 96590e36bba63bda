"""PNG plots for run folders and calibration reports.

Figures are drawn with matplotlib's object API on the Agg canvas: no GUI, no pyplot global state, safe to call
from any thread. Each function creates the parent folder, writes one PNG and returns its path.
"""

from __future__ import annotations

import io
import logging
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from common.files import atomic_write_bytes

log = logging.getLogger(__name__)

_MAX_SCATTER_POINTS = 20_000
_MAX_TRACE_BINS = 64
_DPI = 110


def _figure(n_panels: int = 1, width: float = 5.0, height: float = 4.0) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(width * n_panels, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]


def _save(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG, atomically (a reader never sees half a file)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=_DPI, format="png")
    fig.clear()
    atomic_write_bytes(path, buf.getvalue())
    log.debug("wrote %s", path)
    return path


def _wrap(title: str, width_in: float) -> str:
    """A figure title broken into lines that fit ``width_in`` inches (at the default title size)."""
    return "\n".join(textwrap.wrap(title, max(30, int(width_in * 11)))) or title


def number(value: Any) -> float:
    """A metric value as float; None, '' or unparsable text (e.g. from a CSV) -> NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


CURVE_LABELS = {"train_accuracy_running": "train (running, during the epoch)",
                "test_accuracy": "test, on the device", "twin_test_accuracy": "test, on the twin",
                "train_loss": "train (running, during the epoch)"}
"""Legend labels of the metrics.csv columns; other columns are named after themselves."""


def plot_learning_curves(rows: list[dict], path: str | Path, title: str = "Learning curves") -> Path:
    """Loss (left) and accuracy (right) per epoch from metric rows.

    Every ``*_loss`` and ``*_accuracy`` column present in the rows is drawn, and ``*_accuracy_running`` (the running
    train accuracy of an epoch's batches); columns that are missing or empty everywhere are skipped. Values may be
    strings, as read back from metrics.csv.
    """
    keys = list(dict.fromkeys(k for row in rows for k in row))
    epochs = np.array([number(row.get("epoch", i + 1)) for i, row in enumerate(rows)])
    fig, (ax_loss, ax_acc) = _figure(2)
    for ax, suffixes, label in ((ax_loss, ("_loss",), "loss"),
                                (ax_acc, ("_accuracy", "_accuracy_running"), "accuracy")):
        drawn = 0
        for key in (k for k in keys if k.endswith(suffixes)):
            values = np.array([number(row.get(key)) for row in rows])
            if np.isnan(values).all():
                continue
            ok = ~np.isnan(values)
            name = CURVE_LABELS.get(key, key.removesuffix(suffixes[0]).replace("_", " "))
            ax.plot(epochs[ok], values[ok], marker="o", ms=3, label=name,
                    ls="--" if key.endswith("_running") else "-")
            drawn += 1
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8, framealpha=0.6)
        else:
            ax.text(0.5, 0.5, f"no {label} recorded", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(_wrap(title, fig.get_figwidth()))
    return _save(fig, path)


def plot_confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                          class_names: Sequence[str], path: str | Path, title: str = "Confusion matrix") -> Path:
    """Counts of (true class, predicted class); colours are normalised per true class (row)."""
    y_true, y_pred = np.asarray(y_true, dtype=int).ravel(), np.asarray(y_pred, dtype=int).ravel()
    n = len(class_names)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= n):
        raise ValueError(f"class indices must be in 0..{n - 1} for {n} class names")
    counts = np.zeros((n, n), dtype=int)
    np.add.at(counts, (y_true, y_pred), 1)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    accuracy = np.trace(counts) / max(counts.sum(), 1)

    size = min(4 + 0.45 * n, 14)
    fig, (ax,) = _figure(1, size + 1, size)
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of true class")
    ax.set_xticks(range(n), class_names, rotation=45 if max(map(len, class_names), default=0) > 2 else 0,
                  ha="right" if max(map(len, class_names), default=0) > 2 else "center")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:
        for i, j in np.ndindex(n, n):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if fractions[i, j] > 0.5 else "black")
    ax.set_title(_wrap(f"{title} (accuracy {accuracy:.1%}, {counts.sum()} samples)", size - 0.5))
    return _save(fig, path)


@dataclass(frozen=True)
class OutputAxis:
    """What a physical layer's outputs mean, for plots: ``positions`` [n_outputs] along ``label`` (e.g. the bins'
    centre times in µs, or their wavelengths in nm), ``scale`` turns output units into ``value_label``'s unit, and
    ``full_scale`` holds the levels (in that unit) where the instrument's range ends, if known."""

    positions: np.ndarray
    label: str = "output bin"
    value_label: str = "device output (units)"
    scale: float = 1.0
    full_scale: tuple[float, ...] = ()

    @classmethod
    def bins(cls, n_outputs: int) -> "OutputAxis":
        """The default: output bin indices, outputs in their own units."""
        return cls(np.arange(n_outputs, dtype=float))


def plot_physical_outputs(outputs: np.ndarray | Sequence[np.ndarray], path: str | Path,
                          title: str = "Physical outputs", labels: Sequence[str] | None = None,
                          axis: OutputAxis | None = None, sample_classes: Sequence[str] | None = None,
                          n_traces: int = 3) -> Path:
    """The device outputs of a layer for many samples as a heat map (samples by output position, grouped by class
    when ``sample_classes`` are given), and ``n_traces`` samples (of different classes where there are) each in a
    panel of its own, with the
    instrument's full scale dashed; one column per layer.

    Args:
        outputs: [K, n_out] for one layer, or a list of such arrays (one per layer; n_out may differ).
        labels: one column title per layer; default "layer 1", "layer 2", ...
        axis: what the outputs mean (positions, units, full scale); default output bin indices in output units.
            Used for the layers whose n_out it fits.
        sample_classes: the true class of each of the K samples (the heat map's rows are sorted by it).
    """
    layers = [np.atleast_2d(np.asarray(outputs, dtype=float))] if isinstance(outputs, np.ndarray) \
        else [np.atleast_2d(np.asarray(o, dtype=float)) for o in outputs]
    if not layers:
        raise ValueError("no outputs to plot")
    if labels is not None and len(labels) != len(layers):
        raise ValueError(f"{len(labels)} labels for {len(layers)} layers")
    n_traces = min(n_traces, min(len(y) for y in layers))
    shown = _samples_to_trace(min(len(y) for y in layers), n_traces, sample_classes)
    # a fixed layout, in inches (the constrained one doubles the time to draw): columns of 3.6 in, 1.6 in between
    # them and at the right for the colour bar and its label
    n_cols, col, gap, left = len(layers), 3.6, 1.6, 0.85
    width, height = left + n_cols * col + n_cols * gap, 3.9 + 1.3 * n_traces
    title = _wrap(title, width)
    top = 0.35 + 0.25 * title.count("\n") + 0.35
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1 + n_traces, n_cols, height_ratios=[2.6] + [1.0] * n_traces,
                            left=left / width, right=1 - gap / width, bottom=0.75 / height, top=1 - top / height,
                            hspace=0.12, wspace=gap / col)
    for number, y in enumerate(layers, 1):
        ax_map = fig.add_subplot(grid[0, number - 1])
        lay = axis if axis is not None and len(axis.positions) == y.shape[1] else OutputAxis.bins(y.shape[1])
        x, values = np.asarray(lay.positions, dtype=float), y * lay.scale
        name = labels[number - 1] if labels is not None else f"layer {number}"
        _output_heat_map(fig, ax_map, x, values, lay, sample_classes)
        ax_map.set_title(f"{name}: {len(y)} samples x {y.shape[1]} outputs", fontsize=10)
        for k, i in enumerate(shown):
            ax = fig.add_subplot(grid[1 + k, number - 1], sharex=ax_map)
            ax.plot(x, values[i], marker="o" if len(x) <= 50 else None, ms=2.5, lw=1)
            for level in lay.full_scale:
                ax.axhline(level, color="C3", ls="--", lw=0.8)
            which = f"sample {i + 1}" + (f" (class {sample_classes[i]})" if sample_classes is not None else "")
            ax.text(0.01, 0.96, which, transform=ax.transAxes, ha="left", va="top", fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.6, "edgecolor": "none", "pad": 1})
            ax.grid(alpha=0.3)
            ax.set_ylabel(lay.value_label if number == 1 and k == n_traces // 2 else "", fontsize=8)
            ax.tick_params(labelsize=8)
            if k == n_traces - 1:
                ax.set_xlabel(lay.label)
            else:
                ax.tick_params(labelbottom=False)
        if not n_traces:
            ax_map.set_xlabel(lay.label)
    if axis is not None and axis.full_scale and n_traces:
        fig.legend(handles=[Line2D([], [], color="C3", ls="--", lw=0.8, label="instrument full scale")],
                   loc="lower right", fontsize=8, frameon=False)
    fig.suptitle(title)
    return _save(fig, path)


def _samples_to_trace(n_samples: int, n_traces: int, sample_classes: Sequence[str] | None) -> list[int]:
    """The first sample of each class in turn, then the next ones, until there are ``n_traces``."""
    if sample_classes is None:
        return list(range(n_traces))
    seen: dict[str, int] = {}
    for i in range(n_samples):
        seen.setdefault(str(sample_classes[i]), i)
    first = list(seen.values())[:n_traces]
    return first + [i for i in range(n_samples) if i not in first][:n_traces - len(first)]


def _output_heat_map(fig: Figure, ax: Any, x: np.ndarray, values: np.ndarray, axis: OutputAxis,
                     sample_classes: Sequence[str] | None) -> None:
    """Samples (rows, grouped by class) by output position (columns), coloured by value."""
    order = np.arange(len(values))
    if sample_classes is not None:
        order = np.array(sorted(order, key=lambda i: (str(sample_classes[i]), i)))
    shown = values[order]
    half = 0.5 * (x[1] - x[0]) if len(x) > 1 else 0.5
    lo, hi = float(np.nanmin(shown)), float(np.nanmax(shown))
    if lo < 0 < hi:  # signed: diverging colours centred on 0
        bound = max(-lo, hi)
        style = {"cmap": "RdBu_r", "vmin": -bound, "vmax": bound}
    else:
        style = {"cmap": "viridis", "vmin": lo, "vmax": hi if hi > lo else lo + 1}
    image = ax.imshow(shown, aspect="auto", interpolation="nearest", origin="upper",
                      extent=(x[0] - half, x[-1] + half, len(shown) - 0.5, -0.5), **style)
    fig.colorbar(image, ax=ax, label=axis.value_label, pad=0.01)
    if sample_classes is not None:
        classes = [str(sample_classes[i]) for i in order]
        starts = [i for i in range(len(classes)) if i == 0 or classes[i] != classes[i - 1]]
        ends = starts[1:] + [len(classes)]
        for start in starts[1:]:
            ax.axhline(start - 0.5, color="white", lw=0.6)
        if len(starts) <= 30:
            ax.set_yticks([(a + b - 1) / 2 for a, b in zip(starts, ends)], [classes[a] for a in starts], fontsize=7)
        ax.set_ylabel("samples by class")
    else:
        ax.set_ylabel("sample")
    ax.tick_params(labelbottom=False)


def plot_twin_vs_device(y_device: np.ndarray, y_twin: np.ndarray, path: str | Path,
                        title: str = "Twin vs device", n_examples: int = 3) -> Path:
    """Left: twin prediction against device measurement for every output (y = x is perfect), with the RMS
    error relative to the device's spread. Right: a few samples' outputs, device solid, twin dashed."""
    y_device = np.atleast_2d(np.asarray(y_device, dtype=float))
    y_twin = np.atleast_2d(np.asarray(y_twin, dtype=float))
    if y_device.shape != y_twin.shape:
        raise ValueError(f"y_device {y_device.shape} and y_twin {y_twin.shape} differ in shape")
    rmse = float(np.sqrt(np.mean((y_twin - y_device) ** 2)))
    spread = float(np.std(y_device)) or 1.0

    fig, (ax_sc, ax_tr) = _figure(2)
    dev, twin = y_device.ravel(), y_twin.ravel()
    if dev.size > _MAX_SCATTER_POINTS:  # a fixed, reproducible thinning keeps large sets fast to draw
        keep = np.random.default_rng(0).choice(dev.size, _MAX_SCATTER_POINTS, replace=False)
        dev, twin = dev[keep], twin[keep]
    ax_sc.scatter(dev, twin, s=4, alpha=0.4, edgecolors="none")
    lo, hi = float(min(dev.min(), twin.min())), float(max(dev.max(), twin.max()))
    ax_sc.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="y = x")
    ax_sc.set_xlabel("device output")
    ax_sc.set_ylabel("twin prediction")
    ax_sc.set_title(f"RMS error {rmse:.3g} ({rmse / spread:.1%} of device std)")
    ax_sc.legend(loc="lower right", fontsize=8, framealpha=0.5)  # the data lie along the diagonal: this corner is free
    ax_sc.grid(alpha=0.3)

    shown = min(y_device.shape[1], _MAX_TRACE_BINS)  # more bins than this would be a blur of lines
    for k in range(min(n_examples, len(y_device))):
        line, = ax_tr.plot(y_device[k, :shown], lw=1.5)
        ax_tr.plot(y_twin[k, :shown], lw=1.5, ls="--", color=line.get_color())
    ax_tr.set_xlabel("output bin")
    ax_tr.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_tr.set_ylabel("output")
    part = "" if shown == y_device.shape[1] else f", their first {shown} of {y_device.shape[1]} outputs"
    ax_tr.set_title(f"{min(n_examples, len(y_device))} held-out samples, one colour each{part}", fontsize=10)
    # the legend says only what the line styles mean, outside the axes, so it hides no data
    ax_tr.legend(handles=[Line2D([], [], color="0.3", lw=1.5, label="device"),
                          Line2D([], [], color="0.3", lw=1.5, ls="--", label="twin")],
                 loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax_tr.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def plot_trace(t: np.ndarray, v: np.ndarray, path: str | Path, title: str = "Trace",
               xlabel: str = "time (s)", ylabel: str = "voltage (V)") -> Path:
    """One waveform (or several as columns of ``v`` [N, C]) against time."""
    t, v = np.asarray(t, dtype=float), np.asarray(v, dtype=float)
    fig, (ax,) = _figure(1, 8, 3.5)
    ax.plot(t, v, lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_frequency_response(f_hz: np.ndarray, measured: np.ndarray, models: dict[str, np.ndarray], path: str | Path,
                            title: str = "Frequency response") -> Path:
    """Magnitude (dB) and phase of a measured complex response [F] against frequency (log axis), with model
    responses (name -> complex [F]) drawn dashed on top. The DC point is left out."""
    f = np.asarray(f_hz, dtype=float)
    keep = f > 0
    fig = Figure(figsize=(8, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_mag, ax_ph = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2, sharex=None)
    for name, h, style in [("device", measured, "-")] + [(k, v, "--") for k, v in models.items()]:
        h = np.asarray(h)[keep]
        ax_mag.semilogx(f[keep], 20 * np.log10(np.maximum(np.abs(h), 1e-12)), style, lw=1, label=name)
        ax_ph.semilogx(f[keep], np.degrees(np.angle(h)), style, lw=0.8, label=name)
    ax_mag.set_ylabel("magnitude (dB re 1 V/V)")
    ax_ph.set_ylabel("phase (degrees)")
    ax_ph.set_xlabel("frequency (Hz)")
    for ax in (ax_mag, ax_ph):
        ax.grid(alpha=0.3, which="both")
    ax_mag.legend(fontsize=8)
    ax_mag.set_title(title)
    return _save(fig, path)


@dataclass
class Curve:
    """One run's learning curve: per epoch, the device test accuracy and the running train accuracy (NaN: none)."""

    label: str
    epochs: Sequence[float]
    test_accuracy: Sequence[float]
    train_accuracy_running: Sequence[float]


def plot_compared_runs(curves: Sequence[Curve], path: str | Path, title: str = "Runs compared") -> Path:
    """The device test accuracy per epoch of several runs, one colour each, with their running train accuracy
    dotted; the legend stands to the right of the axes."""
    fig, (ax,) = _figure(1, 8.5, 4.5)
    for k, curve in enumerate(curves):
        epochs = np.asarray(curve.epochs, dtype=float)
        for values, style, label in ((curve.test_accuracy, "-", curve.label), (curve.train_accuracy_running, ":", None)):
            values = np.asarray(values, dtype=float)
            ok = ~np.isnan(values) & ~np.isnan(epochs)
            if ok.any():
                ax.plot(epochs[ok], values[ok], style, marker="o" if style == "-" else None, ms=3, color=f"C{k % 10}",
                        label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy")
    ax.set_title("solid: test accuracy, measured on the device; dotted: running train accuracy", fontsize=9)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(title)
    return _save(fig, path)


def plot_accuracy_vs_samples(curves: Sequence[tuple[str, Sequence[tuple[float, float]]]], path: str | Path,
                             title: str = "Accuracy against device samples") -> Path:
    """Device test accuracy against the device samples consumed (log axis): one line per (label, [(samples,
    accuracy), ...]); the last point of each line is marked larger (the final evaluation)."""
    fig, (ax,) = _figure(1, 8.5, 4.5)
    for k, (label, points) in enumerate(curves):
        xy = np.asarray([p for p in points if p[0] > 0], dtype=float).reshape(-1, 2)
        if not len(xy):
            continue
        ax.plot(xy[:, 0], xy[:, 1], "-", marker="o", ms=3, color=f"C{k % 10}", label=label)
        ax.plot(xy[-1:, 0], xy[-1:, 1], "o", ms=7, color=f"C{k % 10}")
    ax.set_xscale("log")
    ax.set_xlabel("device samples consumed (twin data + training + refinement; one layer of one input each)")
    ax.set_ylabel("test accuracy, measured on the device")
    ax.grid(alpha=0.3, which="both")
    if curves:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(_wrap(title, 8.5))
    return _save(fig, path)


__all__ = ["OutputAxis", "Curve", "plot_accuracy_vs_samples", "plot_compared_runs", "plot_learning_curves", "plot_confusion_matrix", "plot_physical_outputs",
           "plot_twin_vs_device", "plot_trace", "plot_frequency_response"]


def plot_optical_calibration(reference: np.ndarray, dark: np.ndarray, bin_edges: np.ndarray, lut_gray: np.ndarray,
                             lut_power: np.ndarray, pi_gray_measured: float | None, pi_gray_table: float,
                             path: str | Path, title: str = "optical calibration") -> Path:
    """Left: the transform-limited SH spectrum above the dark frame (counts per camera column), the dark frame and the
    output bins' edges. Right: the lookup-table check, total SH counts against the gray level of the phase step, with
    the measured and the table's pi gray levels."""
    fig, (ax_sp, ax_lut) = _figure(2, 6.0, 4.0)
    columns = np.arange(len(reference))
    ax_sp.plot(columns, reference, lw=1, label="transform-limited SH (dark subtracted)")
    ax_sp.plot(columns, dark, lw=1, ls="--", label="dark frame")
    for edge in bin_edges:
        ax_sp.axvline(edge, color="0.7", lw=0.5)
    span = bin_edges[-1] - bin_edges[0]
    ax_sp.set_xlim(bin_edges[0] - 0.5 * span, bin_edges[-1] + 0.5 * span)
    ax_sp.set_xlabel("camera column")
    ax_sp.set_ylabel("counts")
    ax_sp.set_title("spectrum and output bins (grey lines)")
    ax_sp.legend(fontsize=8)
    ax_lut.plot(lut_gray, lut_power, ".-", ms=3, lw=1)
    ax_lut.axvline(pi_gray_table, color="C1", ls="--", label=f"pi by the SLM's table ({pi_gray_table:.1f})")
    if pi_gray_measured is not None:
        ax_lut.axvline(pi_gray_measured, color="C2", label=f"pi measured ({pi_gray_measured:.1f})")
    ax_lut.set_xlabel("gray level of the phase step")
    ax_lut.set_ylabel("total SH counts")
    ax_lut.set_title("lookup-table check")
    ax_lut.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
