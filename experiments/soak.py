"""Soak test (not in CI): train against the simulated bench for a long time and watch memory and threads.

    python experiments/soak.py experiments/electronic_digits.yaml --minutes 30 [--rate 0.001] [--out runs/soak]

Opens one simulated bench and one setup, then trains the experiment's network again and again (fresh run folders,
faults injected at ``--rate`` per reply and kind if given) until ``--minutes`` have passed. Every ``--every`` seconds
it records the process's resident memory (MB), its Python threads and open file descriptors, and how many runs and
physical batches have gone by, to ``soak.csv``, with a plot ``soak.png``. A leak shows as a line that keeps rising
after the first run; the summary at the end gives the growth from the end of the first run to the last sample.
Linux (reads /proc/self).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import threading
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from drivers.errors import InstrumentError  # noqa: E402
from orchestrator.config import data_dir  # noqa: E402
from orchestrator.experiment_file import load_experiment  # noqa: E402
from orchestrator.experiment import load_task, train_on_setup  # noqa: E402
from orchestrator.lab import device_width, fault_plans  # noqa: E402
from orchestrator.session import open_session  # noqa: E402

log = logging.getLogger("soak")


def resident_mb() -> float:
    """Resident set size of this process, MB (from /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--rate", type=float, default=0.0, help="faults per reply and kind (0: none)")
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    overrides = dict(pair.split("=", 1) for pair in args.sets)
    cfg = load_experiment(args.experiment, overrides=overrides or None)
    if args.rate:
        overrides.update({f"instruments.{role}.timeout_s": "2" for role, _ in cfg.instruments})
        cfg = load_experiment(args.experiment, overrides=overrides)
    faulty = load_experiment(args.experiment, overrides={**overrides, "simulate.faults.all.rate": str(args.rate)})
    args.out.mkdir(parents=True, exist_ok=True)

    samples: list[dict] = []
    state = {"runs": 0, "failed_runs": 0, "batches": 0, "first_run_end": None}
    stop = threading.Event()
    start = time.monotonic()

    def sample() -> None:
        while True:
            samples.append({"elapsed_s": round(time.monotonic() - start, 1), "rss_mb": round(resident_mb(), 1),
                            "threads": threading.active_count(), "open_fds": len(os.listdir("/proc/self/fd")),
                            "runs": state["runs"], "batches": state["batches"]})
            if stop.wait(args.every):
                return

    sampler = threading.Thread(target=sample, name="soak-sampler", daemon=True)
    sampler.start()
    data = load_task(cfg, data_dir())
    n = device_width(cfg, data.x_train.shape[1])
    with open_session(cfg, n, simulate=True) as session:
        setup, bench, twin = session.setup, session.bench, session.twin()
        if args.rate:
            bench.set_faults(fault_plans(faulty))

        def on_batch(*_: object) -> None:
            state["batches"] += 1

        try:
            while time.monotonic() - start < args.minutes * 60:
                try:
                    train_on_setup(cfg, data, setup, twin, args.out / f"run_{state['runs'] % 2}", resume=False,
                                   bench=bench, on_batch=on_batch)
                except InstrumentError as err:  # a run stopped by faults: note it and start the next one
                    state["failed_runs"] += 1
                    log.warning("soak: a run stopped: %s", err)
                state["runs"] += 1
                if state["first_run_end"] is None:
                    state["first_run_end"] = len(samples)
                log.warning("soak: %d runs, %.1f min", state["runs"], (time.monotonic() - start) / 60)
        finally:  # whatever happened, the samples so far are written
            stop.set()
            sampler.join()
    sample_first = samples[min(state["first_run_end"] or 0, len(samples) - 1)]
    last = samples[-1]
    summary = {"experiment": cfg.experiment, "minutes": round(last["elapsed_s"] / 60, 1), "runs": state["runs"],
               "failed_runs": state["failed_runs"], "batches": state["batches"], "fault_rate": args.rate,
               "rss_mb_after_first_run": sample_first["rss_mb"], "rss_mb_last": last["rss_mb"],
               "rss_growth_mb": round(last["rss_mb"] - sample_first["rss_mb"], 1),
               "threads_after_first_run": sample_first["threads"], "threads_last": last["threads"],
               "threads_max": max(s["threads"] for s in samples),
               "open_fds_after_first_run": sample_first["open_fds"], "open_fds_last": last["open_fds"]}
    with (args.out / "soak.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(samples[0]))
        writer.writeheader()
        writer.writerows(samples)
    (args.out / "soak.json").write_text(json.dumps(summary, indent=2))
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    minutes = [s["elapsed_s"] / 60 for s in samples]
    for ax, key, label in zip(axes, ("rss_mb", "threads", "open_fds"), ("resident memory, MB", "threads", "open fds")):
        ax.plot(minutes, [s[key] for s in samples])
        ax.set_ylabel(label)
    axes[-1].set_xlabel("minutes")
    axes[0].set_title(f"soak: {cfg.experiment}, {state['runs']} runs")
    fig.tight_layout()
    fig.savefig(args.out / "soak.png", dpi=100)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
