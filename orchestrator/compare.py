"""``pnn compare RUN...``: run folders side by side, as one table and one plot of their learning curves."""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from orchestrator import plots

log = logging.getLogger(__name__)

COLUMNS = ("run", "experiment", "mode", "twin", "status", "test accuracy (device)", "epochs", "wall time (s)",
           "device busy share", "commit")
NUMERIC_COLUMNS = {"test accuracy (device)", "epochs", "wall time (s)", "device busy share"}


class CompareError(ValueError):
    """A folder is not a run folder that can be compared; the message names it and what is missing."""


@dataclass
class RunRecord:
    """A run folder's summary.json and metrics.csv."""

    path: Path
    summary: dict
    rows: list[dict]

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)

    def test_accuracy(self) -> float | None:
        """The final device test accuracy; for a run that did not finish, that of its last evaluated epoch."""
        value = self.summary.get("test_accuracy")
        if value is None:
            tested = [plots.number(r.get("test_accuracy")) for r in self.rows]
            tested = [v for v in tested if not math.isnan(v)]
            value = tested[-1] if tested else None
        return value

    def cells(self) -> list[str]:
        """The table row (see ``COLUMNS``)."""
        s = self.summary
        accuracy, busy, wall = self.test_accuracy(), s.get("device_busy_share"), s.get("wall_time_s")
        commit = str(s.get("provenance", {}).get("git_commit", "unknown"))
        if commit != "unknown":
            commit = commit[:10] + ("+dirty" if s.get("provenance", {}).get("git_dirty") is True else "")
        return [self.name, str(s.get("experiment", "?")), str(s.get("mode", "?")), str(s.get("twin", "?")),
                str(s.get("status", "?")), "" if accuracy is None else f"{accuracy:.3f}",
                str(s.get("epochs", len(self.rows))), "" if wall is None else f"{wall:.0f}",
                "" if busy is None else f"{busy:.2f}", commit]


def load_run(path: str | Path) -> RunRecord:
    """Read a run folder. Raises CompareError when it is not a folder or lacks a readable summary.json or
    metrics.csv."""
    path = Path(path)
    if not path.is_dir():
        raise CompareError(f"{path}: not a folder")
    try:
        summary = json.loads((path / "summary.json").read_text())
    except FileNotFoundError:
        raise CompareError(f"{path}: no summary.json, not a run folder (pnn run --out writes one)") from None
    except (OSError, ValueError) as err:
        raise CompareError(f"{path}/summary.json: unreadable ({err})") from None
    if not isinstance(summary, dict):
        raise CompareError(f"{path}/summary.json: not a run summary")
    try:
        with open(path / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise CompareError(f"{path}: no metrics.csv (the run finished no epoch)") from None
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise CompareError(f"{path}/metrics.csv: unreadable ({err})") from None
    return RunRecord(path, summary, rows)


def plot_comparison(runs: list[RunRecord], path: str | Path) -> Path:
    """The device test accuracy per epoch of each run, one line each (the running train accuracy dotted)."""
    curves = []
    for run in runs:
        s = run.summary
        curves.append(plots.Curve(f"{run.name} ({s.get('mode', '?')}, {s.get('twin', '?')} twin)",
                                  [plots.number(r.get("epoch", i + 1)) for i, r in enumerate(run.rows)],
                                  [plots.number(r.get("test_accuracy")) for r in run.rows],
                                  [plots.number(r.get("train_accuracy_running")) for r in run.rows]))
    experiments = ", ".join(sorted({str(r.summary.get("experiment", "?")) for r in runs}))
    return plots.plot_compared_runs(curves, path, f"{experiments}: {len(runs)} run(s) compared")
