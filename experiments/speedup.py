"""Wall time of training runs at this checkout against a baseline commit, side by side in one script run.

    python experiments/speedup.py [--baseline 0372e4e] [--repeats 1] [--jobs ...]

The baseline is exported (``git archive``) into a temporary folder and both trees run the same ``pnn`` commands on
the simulated bench, each in a fresh process with fresh artifacts (the twin is calibrated and fitted every time, as
for a new user), alternating baseline and current so that a machine that gets busier or quieter during the script
affects both alike:

- the README's main job, ``pnn run experiments/electronic_digits.yaml --simulate``;
- one epoch of ``experiments/electronic_mnist.yaml`` (``--epochs 1``): the command's wall time, and the epoch's own
  time from metrics.csv (training and its device evaluation, without the twin's calibration);
- one epoch of it on 6,000 training images with the perfect twin, and with the physics twin (``--jobs``).

Prints one JSON line per run and a Markdown table with the ratios (current / baseline; below 1 is faster) and the
test accuracies. Needs PNN_DATA_DIR for MNIST.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

JOBS = {
    "main job (electronic_digits)": ["run", "experiments/electronic_digits.yaml", "--simulate"],
    # pinned to the file's settings at 0372e4e (it has since become the full-scale winner of the MNIST search)
    "electronic_mnist, one epoch": ["run", "experiments/electronic_mnist.yaml", "--simulate", "--epochs", "1",
                                    "--set", "task.n_train=12000", "--set", "network.width=392",
                                    "--set", "training.batch_size=128"],
    # the full-scale network with the simulator's own physics, or the fitted physics twin, as PAT's twin, on a tenth
    # of the training set and 2,000 test images
    **{f"electronic_mnist, {twin} twin, one epoch": ["run", "experiments/electronic_mnist.yaml", "--simulate",
                                                     "--twin", twin, "--epochs", "1", "--set", "task.n_train=6000",
                                                     "--set", "task.n_test=2000"] for twin in ("perfect", "physics")},
}


def export(rev: str, into: Path) -> Path:
    """The tree of commit ``rev`` in ``into`` (no git history)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def head_commit() -> str:
    """The label of the current tree's figures: the short hash of this checkout's HEAD, with ``+changes`` when
    tracked files differ from it (uncommitted changes are measured, not the commit)."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    clean = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD"]).returncode == 0
    return head if clean else f"{head}+changes"


def run(tree: Path, args: list[str], scratch: Path) -> dict:
    """One ``pnn`` command in ``tree`` (its own code first on the path), with its artifacts and run folder in
    ``scratch``; its wall time and what its run folder says."""
    out = scratch / "run"
    env = {**os.environ, "PYTHONPATH": str(tree), "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "orchestrator.cli", *args, "--out", str(out),
           "--set", f"artifacts_dir={scratch / 'artifacts'}"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} in {tree} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    with (out / "metrics.csv").open() as f:
        epochs = [float(row["seconds"]) for row in csv.DictReader(f)]
    return {"wall_s": round(wall, 1), "test_accuracy": summary["test_accuracy"],
            "first_epoch_s": round(epochs[0], 1), "device_busy_share": summary.get("device_busy_share")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="0372e4e")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--jobs", nargs="+", default=list(JOBS)[:2], choices=list(JOBS))
    args = parser.parse_args()
    head = head_commit()
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="pnn-speedup-") as tmp:
        trees = {args.baseline: export(args.baseline, Path(tmp) / "baseline"), head: ROOT}
        for job in args.jobs:
            for repeat in range(args.repeats):
                for rev, tree in trees.items():
                    scratch = Path(tempfile.mkdtemp(dir=tmp))
                    result = run(tree, JOBS[job], scratch)
                    results.setdefault((job, rev), []).append(result)
                    print(json.dumps({"job": job, "commit": rev, "repeat": repeat, **result}), flush=True)
    lines = [f"| job | {args.baseline} wall (s) | {head} wall (s) | ratio | first epoch (s) | ratio | "
             f"test accuracy {args.baseline} / {head} |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for job in args.jobs:
        base, new = results[(job, args.baseline)], results[(job, head)]

        def mean(rows: list[dict], key: str) -> float:
            return sum(r[key] for r in rows) / len(rows)

        wall, epoch = (mean(new, "wall_s"), mean(base, "wall_s")), (mean(new, "first_epoch_s"),
                                                                     mean(base, "first_epoch_s"))
        lines.append(f"| {job} | {wall[1]:.0f} | {wall[0]:.0f} | {wall[0] / wall[1]:.2f} | {epoch[1]:.1f} -> "
                     f"{epoch[0]:.1f} | {epoch[0] / epoch[1]:.2f} | {mean(base, 'test_accuracy'):.3f} / "
                     f"{mean(new, 'test_accuracy'):.3f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
