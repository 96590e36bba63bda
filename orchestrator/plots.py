"""PNG plots for run folders and calibration reports.

Figures are drawn with matplotlib's object API on the Agg canvas: no GUI, no pyplot global state, safe to call
from any thread. Each function creates the parent folder, writes one PNG and returns its path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

log = logging.getLogger(__name__)

_MAX_SCATTER_POINTS = 20_000
_DPI = 110


def _figure(n_panels: int = 1, width: float = 5.0, height: float = 4.0) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(width * n_panels, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, format="png")
    fig.clear()
    log.debug("wrote %s", path)
    return path


def _number(value: Any) -> float:
    """A metric value as float; None, '' or unparsable text (e.g. from a CSV) -> NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def plot_learning_curves(rows: list[dict], path: str | Path, title: str = "Learning curves") -> Path:
    """Loss (left) and accuracy (right) per epoch from metric rows.

    Every ``*_loss`` and ``*_accuracy`` column present in the rows is drawn (e.g. train_loss, train_accuracy,
    val_accuracy, test_accuracy); columns that are missing or empty everywhere are skipped. Values may be
    strings, as read back from metrics.csv.
    """
    keys = list(dict.fromkeys(k for row in rows for k in row))
    epochs = np.array([_number(row.get("epoch", i + 1)) for i, row in enumerate(rows)])
    fig, (ax_loss, ax_acc) = _figure(2)
    for ax, suffix, label in ((ax_loss, "_loss", "loss"), (ax_acc, "_accuracy", "accuracy")):
        drawn = 0
        for key in (k for k in keys if k.endswith(suffix)):
            values = np.array([_number(row.get(key)) for row in rows])
            if np.isnan(values).all():
                continue
            ok = ~np.isnan(values)
            ax.plot(epochs[ok], values[ok], marker="o", ms=3, label=key.removesuffix(suffix).replace("_", " "))
            drawn += 1
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {label} recorded", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
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
    ax.set_title(f"{title} (accuracy {accuracy:.1%}, {counts.sum()} samples)")
    return _save(fig, path)


def plot_physical_outputs(outputs: np.ndarray | Sequence[np.ndarray], path: str | Path,
                          title: str = "Physical outputs", labels: Sequence[str] | None = None) -> Path:
    """Device outputs of a few samples, one panel per layer, one line per sample.

    Args:
        outputs: [K, n_out] for one layer, or a list of such arrays (one per layer; n_out may differ).
        labels: one panel title per layer; default "layer 1", "layer 2", ...
    """
    layers = [np.atleast_2d(np.asarray(outputs, dtype=float))] if isinstance(outputs, np.ndarray) \
        else [np.atleast_2d(np.asarray(o, dtype=float)) for o in outputs]
    if not layers:
        raise ValueError("no outputs to plot")
    if labels is not None and len(labels) != len(layers):
        raise ValueError(f"{len(labels)} labels for {len(layers)} layers")
    fig, axes = _figure(len(layers), 4.5, 3.5)
    for number, (ax, y) in enumerate(zip(axes, layers), 1):
        for k, trace in enumerate(y):
            ax.plot(np.arange(len(trace)), trace, marker="o" if len(trace) <= 50 else None, ms=3,
                    label=f"sample {k + 1}")
        ax.set_title(f"{labels[number - 1] if labels is not None else f'layer {number}'} ({y.shape[1]} outputs)")
        ax.set_xlabel("output index")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("device output")
    if len(layers[0]) <= 10:
        axes[-1].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


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
    ax_sc.legend(loc="upper left")
    ax_sc.grid(alpha=0.3)

    for k in range(min(n_examples, len(y_device))):
        line, = ax_tr.plot(y_device[k], lw=1.5, label=f"sample {k + 1} device")
        ax_tr.plot(y_twin[k], lw=1.5, ls="--", color=line.get_color(), label=f"sample {k + 1} twin")
    ax_tr.set_xlabel("output index")
    ax_tr.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_tr.set_ylabel("output")
    ax_tr.legend(fontsize=8)
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


__all__ = ["plot_learning_curves", "plot_confusion_matrix", "plot_physical_outputs", "plot_twin_vs_device",
           "plot_trace", "plot_frequency_response"]


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
