"""A sweep's results: one row per trial in ``results.csv`` and ``results.md``, and ``sweep.png``, the metric against the
two most influential settings. Rewritten (atomically) whenever a trial ends, and at the end of the sweep.

Influence of a setting on the metric, over the trials that reported it: the absolute Spearman rank correlation for a
setting with numeric values, the correlation ratio (eta: the share of the metric's spread explained by the setting's
groups, square-rooted) for any other; both lie in [0, 1]. A setting with a single value has influence 0.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.files import atomic_write_bytes

log = logging.getLogger(__name__)

RESULTS_CSV, RESULTS_MD, PLOT = "results.csv", "results.md", "sweep.png"

STATUSES = ("finished", "stopped early", "running", "interrupted", "failed", "pending")
"""A trial's status in the results: trained all its epochs; stopped by the scheduler (its metric is that of its last
evaluated epoch); training now; stopped with the sweep (``pnn sweep --resume`` continues it); ended with an error;
not started."""


@dataclass
class TrialRow:
    """One trial in the results."""

    trial: str
    settings: dict[str, Any]
    status: str = "pending"
    metric: float | None = None
    epochs: int | None = None
    wall_time_s: float | None = None
    error: str = ""
    extra: dict = field(default_factory=dict)

    def cells(self, keys: list[str], metric: str) -> dict[str, Any]:
        return {"trial": self.trial, "status": self.status, **{k: _text(self.settings.get(k)) for k in keys},
                metric: self.metric, "epochs": self.epochs, "wall_time_s": _round(self.wall_time_s),
                "error": self.error, "run_folder": f"trials/{self.trial}"}


def write_results(sweep_dir: Path, rows: list[TrialRow], keys: list[str], metric: str, mode: str, title: str) -> None:
    """results.csv, results.md and (with two finished trials or more) sweep.png in ``sweep_dir``."""
    ordered = sorted(rows, key=lambda r: _order(r, mode))
    buf = io.StringIO()
    columns = ["trial", "status", *keys, metric, "epochs", "wall_time_s", "error", "run_folder"]
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in ordered:
        writer.writerow(row.cells(keys, metric))
    atomic_write_bytes(sweep_dir / RESULTS_CSV, buf.getvalue().encode())
    ranking = influence(rows, keys)
    atomic_write_bytes(sweep_dir / RESULTS_MD, markdown(ordered, keys, metric, mode, title, ranking).encode())
    if sum(r.metric is not None for r in rows) >= 2 and keys:
        plot_sweep(sweep_dir / PLOT, rows, [k for k, _ in ranking[:2]], metric, title, dict(ranking))


def markdown(rows: list[TrialRow], keys: list[str], metric: str, mode: str, title: str,
             ranking: list[tuple[str, float]]) -> str:
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    lines = [f"# {title}", "",
             f"{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".",
             f"Metric: {metric} ({mode}); a trial stopped early shows its last evaluated epoch.", ""]
    best = next((r for r in rows if r.metric is not None), None)
    if best is not None:
        lines += [f"Best: trial {best.trial}, {metric} {best.metric:.4f}, "
                  + ", ".join(f"{k}={_text(best.settings.get(k))}" for k in keys) + ".", ""]
    if ranking:
        lines += ["Influence on the metric (|Spearman rank correlation|, or the correlation ratio for settings that "
                  "are not numbers): " + ", ".join(f"{k} {v:.2f}" for k, v in ranking) + ".", ""]
    lines += ["| trial | status | " + " | ".join(keys) + f" | {metric} | epochs | wall time (s) | error |",
              "| --- | --- | " + " | ".join("---" for _ in keys) + " | --- | --- | --- | --- |"]
    for r in rows:
        value = "" if r.metric is None else f"{r.metric:.4f}"
        wall = "" if r.wall_time_s is None else f"{r.wall_time_s:.0f}"
        error = r.error.replace("|", "\\|").replace("\n", " ")[:200]
        lines.append(f"| {r.trial} | {r.status} | " + " | ".join(_text(r.settings.get(k)) for k in keys)
                     + f" | {value} | {'' if r.epochs is None else r.epochs} | {wall} | {error} |")
    return "\n".join(lines) + "\n"


def influence(rows: list[TrialRow], keys: list[str]) -> list[tuple[str, float]]:
    """(setting, influence in [0, 1]) for every setting, the most influential first (see the module's note)."""
    done = [r for r in rows if r.metric is not None and math.isfinite(r.metric)]
    scores = []
    for key in keys:
        values = [r.settings.get(key) for r in done]
        metric = np.array([r.metric for r in done], dtype=float)
        scores.append((key, _score(values, metric)))
    return sorted(scores, key=lambda kv: -kv[1])


def _score(values: list[Any], metric: np.ndarray) -> float:
    if len(values) < 2 or len({json.dumps(v, sort_keys=True, default=str) for v in values}) < 2 or np.ptp(metric) == 0:
        return 0.0
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        rho = np.corrcoef(_ranks(np.array(values, dtype=float)), _ranks(metric))[0, 1]
        return float(abs(rho)) if math.isfinite(rho) else 0.0
    groups: dict[str, list[float]] = {}
    for v, m in zip(values, metric):
        groups.setdefault(json.dumps(v, sort_keys=True, default=str), []).append(float(m))
    mean = metric.mean()
    between = sum(len(g) * (np.mean(g) - mean) ** 2 for g in groups.values())
    total = float(((metric - mean) ** 2).sum())
    return float(math.sqrt(between / total)) if total > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as Spearman's correlation uses them)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def plot_sweep(path: Path, rows: list[TrialRow], keys: list[str], metric: str, title: str,
               scores: dict[str, float]) -> None:
    """The metric against the two most influential settings (colour = metric; x = failed trials), or against the
    only setting."""
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    done = [r for r in rows if r.metric is not None]
    failed = [r for r in rows if r.status == "failed"]
    x = _setting_axis(ax, "x", keys[0], done + failed, scores)
    n = len(done)
    if len(keys) > 1:
        y = _setting_axis(ax, "y", keys[1], done + failed, scores)
        points = ax.scatter(x[:n], y[:n], c=[r.metric for r in done], cmap="viridis", s=60, edgecolors="k")
        fig.colorbar(points, ax=ax, label=metric)
        if failed:
            ax.scatter(x[n:], y[n:], marker="x", c="tab:red", s=60, label="failed")
            ax.legend(loc="best")
        for xi, yi, r in zip(x[:n], y[:n], done):
            ax.annotate(f"{r.metric:.3f}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    else:
        ax.scatter(x[:n], [r.metric for r in done], s=60, edgecolors="k")
        ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    atomic_write_bytes(path, buf.getvalue())


def _setting_axis(ax, which: str, key: str, rows: list[TrialRow], scores: dict[str, float]) -> np.ndarray:
    """Label the ``which`` ('x' or 'y') axis of ``ax`` with the setting and its influence, log-scaled for values
    spanning 20x or more, with category labels for values that are not numbers; returns the rows' positions on it."""
    values, ticks = _axis([r.settings.get(key) for r in rows])
    getattr(ax, f"set_{which}label")(f"{key} (influence {scores.get(key, 0):.2f})")
    if not ticks and len(values) and values.min() > 0 and values.max() / values.min() >= 20:
        getattr(ax, f"set_{which}scale")("log")
    if ticks:
        getattr(ax, f"set_{which}ticks")(range(len(ticks)), ticks)
    return values


def _axis(values: list[Any]) -> tuple[np.ndarray, list[str]]:
    """Numbers as they are; anything else as positions 0..k-1 with their labels."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=float), []
    labels = list(dict.fromkeys(_text(v) for v in values))
    return np.array([labels.index(_text(v)) for v in values], dtype=float), labels


def _order(row: TrialRow, mode: str) -> tuple:
    if row.metric is None:
        return (1, STATUSES.index(row.status) if row.status in STATUSES else 99, row.trial)
    return (0, -row.metric if mode == "max" else row.metric, row.trial)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
