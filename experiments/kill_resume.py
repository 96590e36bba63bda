"""A run killed with SIGKILL and resumed, against an uninterrupted run (not in CI).

    python experiments/kill_resume.py experiments/electronic_digits.yaml [--kills 3] [--seed 0] [--out runs/kill]

Runs ``pnn run EXP --simulate`` once to the end (``uninterrupted``), then again in ``killed``, where the process is
killed with SIGKILL (no handler runs, nothing is saved on the way out) ``--kills`` times at seeded random moments
during training, and resumed with ``--resume`` after each kill, as an operator would after a crash or a power cut.
Both runs use the same twin (the first run fits it and stores it in the artifacts folder; the others load it).

Writes ``kill_resume.json`` and ``.md`` in ``--out``: the final test accuracy of both runs and their difference,
the epochs in each metrics.csv (every planned epoch must appear exactly once), the kill times and the epoch and
batch each resume started from.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch


def pnn(*args: str) -> list[str]:
    script = shutil.which("pnn", path=str(Path(sys.executable).parent))
    return ([script] if script else [sys.executable, "-m", "orchestrator.cli"]) + list(args)


def epochs_in(metrics: Path) -> list[int]:
    if not metrics.exists():
        return []
    with metrics.open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def checkpoint_position(out: Path) -> tuple[int, int] | None:
    """(epochs finished, batches of the next one done) from the checkpoint, or None if there is none yet."""
    path = out / "checkpoint.pt"
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    progress = state.get("epoch_progress", {})
    return int(progress.get("epoch", state["epoch"] + 1)), int(progress.get("batches_done", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill times")
    parser.add_argument("--out", type=Path, default=Path("runs/kill"))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    sets = [item for pair in args.sets for item in ("--set", pair)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("uninterrupted", "killed"):
        shutil.rmtree(args.out / name, ignore_errors=True)

    t0 = time.monotonic()
    subprocess.run(pnn("run", args.experiment, "--simulate", "--out", str(args.out / "uninterrupted"), *sets),
                   check=True, env=env, stdout=subprocess.DEVNULL)
    full_s = time.monotonic() - t0

    rng = random.Random(args.seed)
    killed = args.out / "killed"
    kills: list[dict] = []
    resume: list[str] = []
    while True:
        proc = subprocess.Popen(pnn("run", args.experiment, "--simulate", "--out", str(killed), *sets, *resume),
                                env=env, stdout=subprocess.DEVNULL)
        started_from = checkpoint_position(killed) if resume else (0, 0)
        if len(kills) < args.kills:
            # somewhere in this session's share of the run, after the set-up (which takes ~10 % of a run)
            after_s = rng.uniform(0.1, 1.0) * full_s / (args.kills + 1) + 0.1 * full_s
            try:
                proc.wait(timeout=after_s)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills.append({"after_s": round(after_s, 1), "session_started_from": started_from,
                              "checkpoint_at_kill": checkpoint_position(killed),
                              "epochs_in_metrics_at_kill": epochs_in(killed / "metrics.csv")})
                resume = ["--resume"]
                continue
        if proc.wait() != 0:
            raise SystemExit(f"the resumed run failed (exit {proc.returncode})")
        break

    full = json.loads((args.out / "uninterrupted" / "summary.json").read_text())
    hit = json.loads((killed / "summary.json").read_text())
    planned = list(range(1, int(full["epochs"]) + 1))
    epochs = epochs_in(killed / "metrics.csv")
    report = {
        "experiment": full["experiment"], "kills": len(kills), "kill_log": kills,
        "epochs_planned": len(planned), "epochs_in_metrics": epochs,
        "every_epoch_exactly_once": sorted(epochs) == planned,
        "test_accuracy_uninterrupted": full["test_accuracy"], "test_accuracy_killed_and_resumed": hit["test_accuracy"],
        "difference": round(hit["test_accuracy"] - full["test_accuracy"], 4),
        "wall_time_uninterrupted_s": round(full_s, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kill_resume.json").write_text(json.dumps(report, indent=2))
    lines = [f"# SIGKILL and resume: {full['experiment']}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in report.items()]
    (args.out / "kill_resume.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
