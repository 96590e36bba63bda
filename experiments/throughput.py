"""Measure the simulated bench's throughput at an experiment's encoding.

    python experiments/throughput.py experiments/electronic_digits.yaml [--batch 512] [--repeats 5] [--realtime]
    python experiments/throughput.py experiments/electronic_digits.yaml --batch 512 --baseline f12a421 [--rounds 3]

Prints device samples per second (of wall time, and per CPU-second of the process) through the whole stack (drivers,
pyvisa-py or pyserial, simulated instruments, physics) for a few batch sizes, the uploads per forward call, the share
of wall time spent computing physics, and the instruments' own time per sample with the share of wall time it
accounts for (``device_busy_share``: in realtime mode, how busy the simulated devices and their serial lines are; the
rest is the software around them).

With ``--baseline REV`` it measures this checkout against commit REV instead: REV is exported (``git archive``) into a
temporary folder and both trees' ``throughput.py`` run in fresh processes on one core (``OMP_NUM_THREADS=1``),
alternating for ``--rounds`` rounds, and a Markdown table gives each round's samples per CPU-second and the ratio of
the medians (current / baseline; above 1 is faster). With ``--paired`` the two trees run at the same time instead,
each pinned to a core of its own (the first two this process may use, swapped every round): a shared machine's slow
spells then fall on both, and the table adds each round's ratio and their median. Give it enough ``--repeats`` that
the timed loop lasts well beyond the other process's start-up (a few seconds): at batch 64, 3 repeats gave 0.80 where
40 repeats gave 1.08.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common.memory import keep_freed_memory
from orchestrator.experiment_file import load_experiment
from orchestrator.datasets import load_dataset
from orchestrator.lab import device_width
from orchestrator.session import open_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--realtime", action="store_true")
    parser.add_argument("--baseline", help="a commit to compare with, side by side")
    parser.add_argument("--rounds", type=int, default=3, help="with --baseline: alternating runs of each tree")
    parser.add_argument("--paired", action="store_true",
                        help="with --baseline: run the two trees at the same time, on a core each")
    args = parser.parse_args()
    if args.baseline:
        compare(args)
        return
    keep_freed_memory()  # as the pnn command does
    cfg = load_experiment(args.experiment, overrides={"simulate.realtime": args.realtime})
    data = load_dataset(cfg.task.dataset, downsample=cfg.task.downsample, n_train=64, n_test=64, seed=0) \
        if cfg.task.dataset == "digits" else None
    n = device_width(cfg, data.x_train.shape[1]) if data is not None else cfg.network.width
    gen = torch.Generator().manual_seed(0)
    rows = []
    with open_session(cfg, n, simulate=True) as session:
        setup, bench = session.setup, session.bench
        theta = 2 * torch.rand(n, generator=gen) - 1
        for batch in args.batch:
            x = 2 * torch.rand(batch, n, generator=gen) - 1
            setup.forward(x, theta)  # warm-up
            busy0, calls0, uploads0 = bench.physics.busy_s, setup.counters.forward_calls, setup.counters.uploads
            t0, cpu0 = time.perf_counter(), time.process_time()
            for _ in range(args.repeats):
                setup.forward(x, theta)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            physics = bench.physics.busy_s - busy0
            per_item = setup.device_seconds_per_item()
            rows.append({"experiment": cfg.experiment, "width": n, "batch": batch, "realtime": args.realtime,
                         "samples_per_s": round(batch * args.repeats / wall, 1),
                         # per CPU-second of this process (drivers, links, simulated instruments and physics all
                         # run in it): the one-core figure, steadier than wall time on a shared machine
                         "samples_per_cpu_s": round(batch * args.repeats / cpu, 1),
                         "uploads_per_forward": (setup.counters.uploads - uploads0)
                         / (setup.counters.forward_calls - calls0),
                         "physics_share": round(physics / wall, 3), "other_share": round(1 - physics / wall, 3),
                         **{f"{part}_time_per_sample_us": round(s * 1e6, 1) for part, s in per_item.items()},
                         # realtime: how much of the wall time the simulated devices (and serial lines) are busy
                         "device_busy_share": round(sum(per_item.values()) * batch * args.repeats / wall, 3)})
    print(json.dumps(rows, indent=2))


def compare(args: argparse.Namespace) -> None:
    """This checkout against ``args.baseline`` in fresh one-core processes, alternating or (``--paired``) side by
    side; prints a Markdown table."""
    from speedup import ROOT, export, head_commit  # experiments/speedup.py, beside this file

    head = head_commit()
    experiment = Path(args.experiment).resolve().relative_to(ROOT)
    cpu_rates: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="pnn-throughput-") as tmp:
        trees = {args.baseline: export(args.baseline, Path(tmp) / "baseline"), head: ROOT}
        cmd = [sys.executable, "experiments/throughput.py", str(experiment), "--repeats", str(args.repeats),
               "--batch", *map(str, args.batch), *(["--realtime"] if args.realtime else [])]
        cores = sorted(os.sched_getaffinity(0))[:2]
        if args.paired and len(cores) < 2:
            raise SystemExit("--paired needs two CPU cores")
        for round_ in range(args.rounds):
            if args.paired:  # both at once, each on a core of its own, the cores swapped every round
                running = {rev: start(cmd, tree, core=cores[(i + round_) % 2])
                           for i, (rev, tree) in enumerate(trees.items())}
                try:
                    results = {rev: finish(process, trees[rev]) for rev, process in running.items()}
                finally:  # one failed: the other does not run on alone
                    for process in running.values():
                        if process.poll() is None:
                            process.kill()
            else:
                results = {rev: finish(start(cmd, tree), tree) for rev, tree in trees.items()}
            for rev, rows in results.items():
                for row in rows:
                    cpu_rates.setdefault((rev, row["batch"]), []).append(row["samples_per_cpu_s"])
                    print(json.dumps({"commit": rev, "round": round_, "batch": row["batch"],
                                      "samples_per_s": row["samples_per_s"],
                                      "samples_per_cpu_s": row["samples_per_cpu_s"]}), flush=True)
    print(f"| {experiment.stem}, batch | {args.baseline} samples/CPU-s | {head} samples/CPU-s | ratio of medians |"
          + (" ratio per (paired) round | median of the rounds' ratios |" if args.paired else ""))
    print("| --- | --- | --- | --- |" + (" --- | --- |" if args.paired else ""))
    for batch in args.batch:
        base, new = cpu_rates[(args.baseline, batch)], cpu_rates[(head, batch)]
        row = (f"| {batch} | {', '.join(f'{v:.0f}' for v in base)} | {', '.join(f'{v:.0f}' for v in new)} | "
               f"{statistics.median(new) / statistics.median(base):.2f} |")
        if args.paired:
            ratios = [n / b for n, b in zip(new, base)]
            row += f" {', '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.2f} |"
        print(row)


def start(cmd: list[str], tree: Path, core: int | None = None) -> subprocess.Popen:
    """``cmd`` in ``tree`` on one thread (and on CPU core ``core``, if given), its output piped."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "NUMBA_NUM_THREADS": "1"}
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    return subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=pin)


def finish(process: subprocess.Popen, tree: Path) -> list[dict]:
    """The rows a ``throughput.py`` run printed; raises if it failed."""
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"throughput.py in {tree} failed ({process.returncode}):\n{err[-3000:]}")
    return json.loads(out)


if __name__ == "__main__":
    main()
