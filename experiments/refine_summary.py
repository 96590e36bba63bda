"""The tables and the twin-error figure of results_refine.md from the run folders of refine_acceptance.sh.

    python experiments/refine_summary.py [RUNS [PNG]]      # default: runs/refine17 experiments/results_refine_twin_error.png

Prints Markdown tables (optical_vowels and mechanical_digits per mode: each seed, mean ± sd; electronic_digits PAT vs
perturbative) and writes PNG (optical_vowels' neural twin's NMSE on the newest device measurements, before each
epoch's refinements, per PAT + refine and in silico + refine run).
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

from orchestrator.plots import _figure, _save


def summary(folder: Path) -> dict | None:
    path = folder / "summary.json"
    s = json.loads(path.read_text()) if path.is_file() else None
    return s if s and s.get("status") == "finished" else None


def metrics(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def refine_table(root: Path, experiment: str, twin: str, ax=None) -> None:
    """One experiment's table: per mode, each seed's device test accuracy, mean ± sd, the device budget and, with
    refinement, the twin's error on new device data (first epoch -> last); those curves go on ``ax``."""
    print(f"| {experiment}, {twin} twin | seeds | device test accuracy per seed | mean ± sd | device samples "
          "(twin data + training + refinement) | twin NMSE on new device data: first epoch -> last |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mode in ("pat", "pat+refine", "in_silico", "in_silico+refine", "perturbative"):
        runs = sorted(root.glob(f"{experiment}-{mode}-seed*"))
        done = [(r, s) for r in runs if (s := summary(r))]
        if not done:
            continue
        acc = [s["test_accuracy"] for _, s in done]
        sd = f" ± {statistics.stdev(acc):.3f}" if len(acc) > 1 else ""
        nmse = ""
        if "refine" in mode:
            firsts = [s["refine"]["twin_nmse_recent_first"] for _, s in done]
            lasts = [s["refine"]["twin_nmse_recent_last"] for _, s in done]
            nmse = " / ".join(f"{a:.4f} -> {b:.4f}" for a, b in zip(firsts, lasts))
            if ax is not None:
                for k, (r, _) in enumerate(done):
                    rows = [row for row in metrics(r) if row.get("twin_nmse_recent_before")]
                    ax.plot([int(row["epoch"]) for row in rows],
                            [float(row["twin_nmse_recent_before"]) for row in rows],
                            "-" if mode.startswith("pat") else "--", color="C0" if mode.startswith("pat") else "C1",
                            label=mode if k == 0 else None)
        budget = statistics.mean(s["device_samples_budget"] for _, s in done)
        print(f"| {mode} | {len(done)} | {', '.join(f'{a:.3f}' for a in acc)} | {statistics.mean(acc):.3f}{sd} | "
              f"{budget:.0f} | {nmse} |")
    print()


def main(root: Path, png: Path) -> None:
    fig, (ax,) = _figure(1, 7, 4)
    refine_table(root, "optical_vowels", "neural", ax)
    refine_table(root, "mechanical_digits", "physics")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("twin NMSE on the newest device measurements\n(before refinement: not yet seen)")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.suptitle("optical_vowels, neural twin refined from training's device measurements")
    _save(fig, png)
    print("| electronic_digits | epochs | device test accuracy | device samples (twin data + training) | "
          "training samples | wall time (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for folder in sorted(root.glob("electronic_digits-*")):
        s = summary(folder)
        if s:
            name = folder.name.removeprefix("electronic_digits-")
            print(f"| {name} | {s['epochs']} | {s['test_accuracy']:.3f} | {s['device_samples_budget']} | "
                  f"{s['device_samples_by_purpose']['training']} | {s['wall_time_s']:.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/refine17"),
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).with_name("results_refine_twin_error.png"))
