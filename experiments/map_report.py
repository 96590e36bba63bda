"""The map of issue 17: device test accuracy against twin quality and network depth, per training mode, per bench.

    python experiments/map_report.py runs/sweeps/map_electronic [runs/sweeps/map_mechanical ...]
        [--md experiments/results_map.md] [--png-dir experiments]

Reads every finished trial's run folder under each SWEEP_DIR/trials/ (``pnn sweep`` of
experiments/sweeps/map_*.yaml): ``config.yaml`` (training.mode, twin.refine.enabled, network.depth, the twin's
settings) and ``summary.json`` (test_accuracy, the twin's held-out NMSE in its provenance record, device samples).
A folder that is itself a run folder (summary.json beside config.yaml) is read as one trial.

The map is two slices through (twin, depth): the *depth slice* (every depth, with the base twin) and the *twin slice*
(every twin, at the base depth). The base twin and depth are the sweep's base experiment (``sweep.json``), else the
most common among the trials. Perturbative training uses no twin: its trials are keyed by depth alone.

Writes per bench ``results_map_<setup>.png`` (left: device accuracy against the twin's held-out NMSE, log x, one curve
per mode, perturbative as a horizontal line; right: against depth, one curve per mode; the optical bench with the
paper's vowel figure marked) and a Markdown table; the tables go into ``--md`` between the markers
``<!-- map_report: begin -->`` and ``<!-- map_report: end -->`` (the rest of the file is kept; a new file gets just
the markers and the tables). Prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from matplotlib.ticker import NullFormatter

from orchestrator.plots import _figure, _save

BEGIN, END = "<!-- map_report: begin -->", "<!-- map_report: end -->"
MODES = ["in_silico", "in_silico+refine", "pat", "pat+refine", "perturbative"]
MODE_NAMES = {"in_silico": "in silico", "in_silico+refine": "in silico + refine", "pat": "PAT",
              "pat+refine": "PAT + refine", "perturbative": "perturbative"}
MODE_STYLE = {"in_silico": ("C1", "o", "--"), "in_silico+refine": ("C4", "D", "--"), "pat": ("C0", "s", "-"),
              "pat+refine": ("C2", "^", "-"), "perturbative": ("C7", "x", ":")}
PAPER = {"optical": [("paper: PAT 0.93 (Wright et al. 2022, SHG vowels)", 0.93)]}
"""Reference accuracies drawn as horizontal lines: the paper's optical vowels with PAT, as results_optical.md quotes
it (the paper's in-silico figure is quoted there only as 'far below PAT')."""
CHANCE = {"digits": 1 / 10, "mnist": 1 / 10, "fashion_mnist": 1 / 10, "fsdd": 1 / 10, "vowels": 1 / 7}
"""Chance accuracy of each data set (one over its classes), drawn as a grey line."""
FULL_SCALE = {"optical": [("PAT", 0.078, 0.879), ("in silico", 0.078, 0.594), ("PAT", 0.0036, 0.932),
                          ("in silico", 0.0036, 0.900)]}
"""This project's full-scale rows (100 epochs, depth 3; results_optical.md): (mode, twin NMSE, device accuracy)."""


@dataclass
class Trial:
    """One finished run: where it sits in the map and what it reached."""

    folder: Path
    setup: str
    experiment: str
    dataset: str
    mode: str              # one of MODES
    seed: int
    depth: int
    twin_key: str          # the twin's settings (without refine), "" for perturbative
    twin_label: str        # e.g. "neural 4000, 16 ch"
    twin_nmse: float | None
    accuracy: float
    budget: int            # device samples: twin data (its settings) + training + refinement
    epochs: int
    wall_time_s: float
    commit: str
    started: str = ""      # ISO time the run started
    refined_nmse: tuple[float, float] | None = None  # refine: the twin's NMSE on new device data, first epoch, last


def read_trial(folder: Path) -> Trial | None:
    """The trial in a run folder, or None if it has not finished."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if summary.get("status") != "finished" or not isinstance(summary.get("test_accuracy"), (int, float)):
        return None
    training, twin = config["training"], dict(config["twin"])
    refine = bool(twin.pop("refine", {}).get("enabled"))
    mode = training["mode"] + ("+refine" if refine else "")
    perturbative = training["mode"] == "perturbative"
    twin_info = summary.get("provenance", {}).get("twin") or {}
    nmse = twin_info.get("val_nmse")
    by_purpose = summary.get("device_samples_by_purpose", {})
    twin_data = 0 if perturbative else _twin_samples(twin)
    return Trial(folder=folder, setup=summary.get("setup") or config["setup"], experiment=config["experiment"],
                 dataset=config["task"]["dataset"], mode=mode, seed=int(config.get("seed", 0)),
                 depth=int(config["network"]["depth"]),
                 twin_key="" if perturbative else json.dumps(twin, sort_keys=True),
                 twin_label="no twin" if perturbative else twin_label(twin),
                 twin_nmse=float(nmse) if isinstance(nmse, (int, float)) and not perturbative else None,
                 accuracy=float(summary["test_accuracy"]),
                 budget=twin_data + int(by_purpose.get("training", 0)) + int(by_purpose.get("refinement", 0)),
                 epochs=int(summary.get("epochs", 0)), wall_time_s=float(summary.get("wall_time_s") or 0.0),
                 commit=str(summary.get("provenance", {}).get("git_commit", "?"))[:7]
                 + ("+dirty" if summary.get("provenance", {}).get("git_dirty") is True else ""),
                 started=str(summary.get("started", "")), refined_nmse=_refined(summary))


def _refined(summary: dict) -> tuple[float, float] | None:
    refine = summary.get("refine")
    if isinstance(refine, dict) and all(isinstance(refine.get(f"twin_nmse_recent_{k}"), (int, float))
                                        for k in ("first", "last")):
        return float(refine["twin_nmse_recent_first"]), float(refine["twin_nmse_recent_last"])
    return None


def _twin_samples(twin: dict) -> int:
    """Device samples measured for the twin: ``twin.samples`` times repeats (calibration measures them for every
    kind; the physics twin fits its constants on the first ``twin.physics.samples``)."""
    return int(twin["samples"]) * int(twin.get("repeats", 1))


def twin_label(twin: dict) -> str:
    """A short description of a twin's settings: its kind, measured samples and size."""
    if twin["kind"] == "physics":
        return f"physics, {twin['physics']['samples']} of {twin['samples']}"
    neural = twin["neural"]
    size = (f"{neural['channels']} ch" if neural["architecture"] == "temporal_conv"
            else "MLP " + "-".join(str(h) for h in neural["hidden"]))
    return f"{twin['kind']} {twin['samples']}, {size}"


def find_trials(folders: Iterable[Path]) -> tuple[list[Trial], dict[str, dict], dict[Path, Counter]]:
    """Finished trials under the folders, the sweeps' base experiments by setup, and each folder's trial count by
    status (finished, and what trial.json says of the others)."""
    trials: list[Trial] = []
    bases: dict[str, dict] = {}
    counts: dict[Path, Counter] = {}
    for folder in folders:
        runs = [folder] if (folder / "summary.json").is_file() else sorted(p for p in (folder / "trials").glob("*")
                                                                            if p.is_dir())
        counts[folder] = Counter()
        spec_file = folder / "sweep.json"
        if spec_file.is_file():
            spec = json.loads(spec_file.read_text())
            bases[spec["setup"]] = spec["base"]
        for run in runs:
            trial = read_trial(run)
            if trial is not None:
                trials.append(trial)
                counts[folder]["finished"] += 1
            else:
                status = _json(run / "trial.json").get("status") or "pending"
                counts[folder]["running" if status == "running" else status] += 1
    return trials, bases, counts


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def base_point(trials: list[Trial], base: dict | None) -> tuple[str, int]:
    """The map's crossing point: the base experiment's twin and depth, else the most common among the trials."""
    if base is not None:
        twin = dict(base["twin"])
        twin.pop("refine", None)
        return json.dumps(twin, sort_keys=True), int(base["network"]["depth"])
    with_twin = [t for t in trials if t.twin_key]
    twin_key = Counter(t.twin_key for t in with_twin).most_common(1)[0][0] if with_twin else ""
    depth = Counter(t.depth for t in trials).most_common(1)[0][0]
    return twin_key, depth


def samples_text(n: float) -> str:
    """Device samples, short: 250 -> "0.25k", 4000 -> "4k", 68665 -> "69k"."""
    return f"{n / 1000:.2g}k" if n < 9950 else f"{n / 1000:.0f}k"


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class BenchMap:
    """One bench's map: accuracies per (twin, depth) point and mode."""

    setup: str
    trials: list[Trial]
    twin_key: str
    depth: int

    def cells(self) -> dict[tuple[str, int], dict[str, list[Trial]]]:
        """(twin key, depth) -> mode -> trials; perturbative trials go to (base twin, their depth), one per seed (its
        trials at other twins' points are the same run again)."""
        out: dict[tuple[str, int], dict[str, list[Trial]]] = defaultdict(lambda: defaultdict(list))
        for t in self.trials:
            runs = out[(self.twin_key if t.mode == "perturbative" else t.twin_key, t.depth)][t.mode]
            if t.mode != "perturbative" or all(r.seed != t.seed for r in runs):
                runs.append(t)
        return out

    def modes(self) -> list[str]:
        present = {t.mode for t in self.trials}
        return [m for m in MODES if m in present]

    def points(self) -> list[tuple[str, int]]:
        """The rows of the table: the depth slice by depth, then the other twins at the base depth (worst twin
        first), then any other point."""
        cells = self.cells()
        depth_slice = sorted((k for k in cells if k[0] == self.twin_key), key=lambda k: k[1])
        twin_slice = sorted((k for k in cells if k[0] != self.twin_key and k[1] == self.depth),
                            key=lambda k: -(self.nmse(k[0]) or 0.0))
        rest = sorted(k for k in cells if k not in depth_slice and k not in twin_slice)
        return depth_slice + twin_slice + rest

    def nmse(self, twin_key: str) -> float | None:
        values = [t.twin_nmse for t in self.trials if t.twin_key == twin_key and t.twin_nmse is not None]
        return statistics.mean(values) if values else None

    def label(self, twin_key: str) -> str:
        return next((t.twin_label for t in self.trials if t.twin_key == twin_key), "?")

    def short_label(self, twin_key: str) -> str:
        """What sets a twin apart from the base twin, for the plot: its samples, its size if not the base's
        (e.g. "16k", "4k, 4 ch", "physics")."""
        twin, base = json.loads(twin_key), json.loads(self.twin_key) if self.twin_key else {}
        if twin["kind"] == "physics":
            return "physics"
        size = twin_label(twin).split(", ", 1)[1]
        base_size = twin_label(base).split(", ", 1)[1] if base.get("kind") not in (None, "physics") else None
        return f"{twin['samples'] / 1000:g}k" + (f", {size}" if size != base_size else "")

    def table(self) -> list[str]:
        """Markdown: one row per point, a column per mode with the device accuracy (mean ± sd over seeds) and the
        device samples it cost (twin data + training + refinement)."""
        modes = self.modes()
        cells = self.cells()
        lines = ["| depth | twin | twin NMSE (held out) | " + " | ".join(MODE_NAMES[m] for m in modes) + " |",
                 "| --- | --- | --- | " + " | ".join("---" for _ in modes) + " |"]
        for key in self.points():
            nmse = self.nmse(key[0])
            row = [str(key[1]), self.label(key[0]) + (" (base)" if key[0] == self.twin_key else ""),
                   f"{nmse:.4f}" if nmse is not None else "-"]
            for mode in modes:
                runs = cells[key].get(mode, [])
                if not runs:
                    row.append("")
                    continue
                mean, sd = _mean_sd([t.accuracy for t in runs])
                budget = statistics.mean(t.budget for t in runs)
                row.append(f"{mean:.3f}" + (f" ± {sd:.3f} (n={len(runs)})" if len(runs) > 1 else "")
                           + f" ({samples_text(budget)})")
            lines.append("| " + " | ".join(row) + " |")
        return lines

    def depth_curve(self, mode: str) -> list[tuple[int, float, float]]:
        """(depth, mean accuracy, sd) along the depth slice."""
        cells = self.cells()
        return [(d, *_mean_sd([t.accuracy for t in cells[(k, d)][mode]]))
                for (k, d) in sorted(cells, key=lambda kd: kd[1]) if k == self.twin_key and cells[(k, d)].get(mode)]

    def nmse_curve(self, mode: str) -> list[tuple[float, float, float]]:
        """(twin NMSE, mean accuracy, sd) along the twin slice, by NMSE."""
        cells = self.cells()
        out = []
        for (k, d), by_mode in cells.items():
            nmse = self.nmse(k)
            if d == self.depth and by_mode.get(mode) and nmse is not None:
                out.append((nmse, *_mean_sd([t.accuracy for t in by_mode[mode]])))
        return sorted(out)

    def findings(self) -> list[str]:
        """Sentences read off the curves: each mode from the shallowest to the deepest network, and from the worst
        twin to the best."""
        out = []
        for mode in self.modes():
            curve = self.depth_curve(mode)
            if len(curve) > 1:
                out.append(f"{MODE_NAMES[mode]}: depth {curve[0][0]} -> {curve[-1][0]}: {curve[0][1]:.3f} -> "
                           f"{curve[-1][1]:.3f} (" + ", ".join(f"{a:.3f}" for _, a, _ in curve) + ")")
        for mode in self.modes():
            curve = self.nmse_curve(mode)
            if len(curve) > 1:
                out.append(f"{MODE_NAMES[mode]}: twin NMSE {curve[-1][0]:.4f} -> {curve[0][0]:.4f} (worst twin to "
                           f"best, depth {self.depth}): {curve[-1][1]:.3f} -> {curve[0][1]:.3f}")
        refined = sorted(((self.nmse(t.twin_key) or 0.0, t) for t in self.trials
                          if t.refined_nmse and t.depth == self.depth), key=lambda nt: -nt[0])
        if refined:
            out.append("the refined twin's NMSE on the newest device data, first epoch -> last (depth "
                       f"{self.depth}, by twin): " + "; ".join(
                           f"{MODE_NAMES[t.mode]}, {self.short_label(t.twin_key)}: {t.refined_nmse[0]:.4f} -> "
                           f"{t.refined_nmse[1]:.4f}" for _, t in refined))
        return out

    def plot(self, path: Path) -> Path:
        """Two panels: device accuracy against the twin's held-out NMSE (log x), and against depth."""
        fig, (left, right) = _figure(2, 6.0, 4.6)
        for mode in self.modes():
            color, marker, line = MODE_STYLE[mode]
            if mode == "perturbative":
                at_base = [(a, s) for d, a, s in self.depth_curve(mode) if d == self.depth]
                if at_base:
                    left.axhline(at_base[0][0], color=color, ls=line, lw=1.5,
                                 label=f"{MODE_NAMES[mode]} (no twin)")
            else:
                curve = self.nmse_curve(mode)
                if curve:
                    x, y, sd = zip(*curve)
                    left.errorbar(x, y, yerr=sd if any(sd) else None, color=color, marker=marker, ls=line,
                                  label=MODE_NAMES[mode], capsize=3)
            curve = self.depth_curve(mode)
            if curve:
                x, y, sd = zip(*curve)
                right.errorbar(x, y, yerr=sd if any(sd) else None, color=color, marker=marker, ls=line,
                               label=MODE_NAMES[mode], capsize=3)
        twins = sorted({(self.nmse(t.twin_key), self.short_label(t.twin_key)) for t in self.trials
                        if t.twin_key and t.depth == self.depth and self.nmse(t.twin_key) is not None})
        for nmse, label in twins:  # which twin each NMSE is, upright along the bottom
            left.annotate(label, (nmse, 0.0), xytext=(-2, 4), textcoords="offset points", rotation=90,
                          xycoords=("data", "axes fraction"), ha="right", va="bottom", fontsize=7, color="0.35")
        chance = {CHANCE[t.dataset] for t in self.trials if t.dataset in CHANCE}
        if len(chance) == 1:
            level = chance.pop()
            for ax in (left, right):
                ax.axhline(level, color="0.6", lw=0.8, label="chance")
        for text, value in PAPER.get(self.setup, []):
            for ax in (left, right):
                ax.axhline(value, color="k", ls="-.", lw=1, label=text)
        full = FULL_SCALE.get(self.setup, [])
        for k, (mode, nmse, acc) in enumerate(full):
            left.plot(nmse, acc, marker="*", ms=11, mfc="none", ls="none",
                      color=MODE_STYLE["pat" if mode == "PAT" else "in_silico"][0],
                      label="this project, depth 3, 100 epochs (colour: mode)" if k == 0 else None)
        left.set_xscale("log")
        if twins:  # plain numbers at 1-2-5 steps, no crowded minor labels
            shown = [n for n, _ in twins] + [n for _, n, _ in FULL_SCALE.get(self.setup, [])]
            lo, hi = min(shown), max(shown)
            ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                     for m in (1, 2, 5) if lo / 1.5 <= m * 10.0 ** e <= hi * 1.5]
            left.set_xticks(ticks, [f"{t:g}" for t in ticks])
            left.xaxis.set_minor_formatter(NullFormatter())
        left.set_xlabel(f"twin held-out NMSE (depth {self.depth})")
        right.set_xlabel(f"physical layers (twin: {self.label(self.twin_key)})")
        right.set_xticks(sorted({t.depth for t in self.trials}))
        for ax in (left, right):
            ax.set_ylabel("device test accuracy")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3, which="both")
        legend: dict[str, object] = {}  # one legend for both panels, below them
        for ax in (left, right):
            for handle, text in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(text, handle)
        if legend:
            fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=min(4, len(legend)),
                       fontsize=8, frameon=False)
        epochs = sorted({t.epochs for t in self.trials})
        experiment = sorted({t.experiment for t in self.trials})
        fig.suptitle(f"{self.setup} bench ({', '.join(experiment)}, {'/'.join(map(str, epochs))} epochs per run): "
                     f"device accuracy against twin quality and depth", fontsize=10)
        return _save(fig, path)


def bench_section(bench: BenchMap, png: Path, md_dir: Path) -> list[str]:
    trials = bench.trials
    # each run's own commit (a run continued with --resume names the commit it was continued at), with how many runs
    # each; in the order of the runs' start times
    runs_at = Counter(t.commit for t in sorted(trials, key=lambda t: t.started))
    code = ", ".join(f"{commit} ({n} run{'' if n == 1 else 's'})" for commit, n in runs_at.items())
    wall = sum(t.wall_time_s for t in trials)
    rel = Path(png).resolve().relative_to(md_dir.resolve()) if md_dir.resolve() in png.resolve().parents else png
    epochs = ", ".join(map(str, sorted({t.epochs for t in trials})))
    intro = (f"{len(trials)} finished runs, {epochs} epochs each, {wall / 60:.0f} min of run wall time in all; code "
             f"{code}. Base point: depth {bench.depth}, twin {bench.label(bench.twin_key)}. Each cell: "
             f"device test accuracy (device samples: twin data + training + refinement).")
    lines = [f"### {bench.setup} ({', '.join(sorted({t.experiment for t in trials}))})", "", intro, "",
             f"![{bench.setup} map]({rel})", ""]
    lines += bench.table()
    findings = bench.findings()
    if findings:
        lines += ["", "Read off the curves:", ""] + [f"- {f}" for f in findings]
    return lines + [""]


def write_md(path: Path, body: list[str]) -> None:
    """Put ``body`` between the markers of ``path`` (keeping the rest), or write a new file with just the markers."""
    block = "\n".join([BEGIN, *body, END])
    text = path.read_text() if path.is_file() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR")
    parser.add_argument("--md", type=Path, default=Path(__file__).parent / "results_map.md")
    parser.add_argument("--png-dir", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    trials, bases, counts = find_trials(args.sweep_dirs)
    body = ["## The map (tables written by experiments/map_report.py)", "",
            "Trials read: " + "; ".join(f"`{folder}`: " + (", ".join(f"{n} {s}" for s, n in sorted(c.items())) or
                                                             "none") for folder, c in counts.items()) + ".", ""]
    by_setup: dict[str, list[Trial]] = defaultdict(list)
    for t in trials:
        by_setup[t.setup].append(t)
    for setup in sorted(by_setup):
        twin_key, depth = base_point(by_setup[setup], bases.get(setup))
        bench = BenchMap(setup, by_setup[setup], twin_key, depth)
        png = bench.plot(args.png_dir / f"results_map_{setup}.png")
        body += bench_section(bench, png, args.md.parent)
    write_md(args.md, body)
    print("\n".join(body))
    return 0 if trials else 1


if __name__ == "__main__":
    raise SystemExit(main())
