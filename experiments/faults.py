"""Train on a simulated bench whose instruments misbehave, and compare with a clean run.

    python experiments/faults.py experiments/electronic_digits.yaml [--rate 0.0005] [--block-rate 0.02] [--seeds 0 1 2]
                                                                    [--out DIR]

Both runs calibrate and fit the twin on the clean bench (as a lab does before a long run); then every instrument
injects every kind of fault (late replies, no reply, dropped connections or a pulled serial cable, garbled and short
binary blocks, errors in the error queue, spontaneous resets, a frozen instrument), each with probability ``--rate``
per reply (``--block-rate`` per binary block for the damaged blocks), while the network trains and is evaluated.
A run that stops (a batch still failing after ``training.max_retries`` retries) is resumed with ``--resume``, as an
operator would, up to ``--max-resumes`` times.

Writes ``faults.json`` and ``faults.md`` in ``--out``: faults injected per kind, failed physical forwards (detected
faults), batches retried, run stops and resumes, epochs lost (planned epochs missing from metrics.csv or counted twice),
and the test accuracy of both runs. The links' timeouts are cut to ``--timeout`` seconds so that a silent instrument
costs seconds, not the lab's 10 s.

One clean run against one faulty run cannot resolve a small accuracy difference: a retried batch is measured again,
so every later batch sees another noise draw, and that alone moved an optical vowels run by up to 0.055
(experiments/results_faults.md).
``--seeds`` repeats the pair for several seeds (each sets the experiment's ``seed``, i.e. the network's start and the
batch order, and the faults' seed) and reports each pair and the mean and spread over the seeds. The twin is fitted
once, on a bench of its own, before any run, so that every run starts from the same bench state.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
from pathlib import Path

from drivers.errors import InstrumentError
from orchestrator.config import ExperimentConfig, data_dir
from orchestrator.experiment_file import load_experiment
from orchestrator.experiment import load_task, train_on_setup
from orchestrator.lab import device_width, fault_plans
from orchestrator.session import open_session
from common.files import atomic_write_bytes

log = logging.getLogger("faults")


def train(cfg: ExperimentConfig, faulty: ExperimentConfig | None, out: Path, max_resumes: int) -> dict:
    """One training run on a fresh simulated bench; with ``faulty``, its faults are switched on after calibration.
    Returns the summary plus the faults injected, the stops and the epochs in metrics.csv."""
    data = load_task(cfg, data_dir())
    n = device_width(cfg, data.x_train.shape[1])
    stops, resume = [], False
    with open_session(cfg, n, simulate=True) as session:
        setup, bench, twin = session.setup, session.bench, session.twin()
        if faulty is not None:
            bench.set_faults(fault_plans(faulty))
        calls0 = setup.counters.forward_calls  # successful physical forwards, of all sessions of this run
        while True:
            try:
                summary = train_on_setup(cfg, data, setup, twin, out, resume=resume, bench=bench)
                break
            except InstrumentError as err:
                stops.append(str(err))
                log.warning("the run stopped (%s); resuming (%d of %d)", err, len(stops), max_resumes)
                if len(stops) > max_resumes:
                    raise
                resume = True  # the first batch's retry reconnects and sets the instruments up again
        injected = {role: dict(server.injector.counts) for role, server in bench.servers.items()}
        forwards = setup.counters.forward_calls - calls0
    with (out / "metrics.csv").open() as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    return {**summary, "faults_injected": injected, "stops": stops, "metric_epochs": epochs, "forwards": forwards}


def fit_twin_first(cfg: ExperimentConfig) -> None:
    """Calibrate and fit the experiment's twin on a bench of its own, unless its artifact exists, so that the runs
    that follow all load it and start from a fresh bench."""
    data = load_task(cfg, data_dir())
    n = device_width(cfg, data.x_train.shape[1])
    with open_session(cfg, n, simulate=True) as session:
        session.twin()


def compare(cfg: ExperimentConfig, faulty: ExperimentConfig, out: Path, max_resumes: int) -> dict:
    """A clean run and a faulty run of ``cfg``; the report of the pair."""
    clean = train(cfg, None, out / "clean", max_resumes)
    hit = train(cfg, faulty, out / "faults", max_resumes)
    planned = list(range(1, cfg.training.epochs + 1))  # metrics.csv counts epochs from 1
    kinds: dict[str, int] = {}
    for counts in hit["faults_injected"].values():
        for kind, count in counts.items():
            kinds[kind] = kinds.get(kind, 0) + count
    return {
        "seed": cfg.seed, "fault_seed": faulty.simulate.faults["all"].seed,
        "faults_injected": sum(kinds.values()), "faults_injected_by_kind": kinds,
        "faults_injected_by_instrument": hit["faults_injected"],
        "physical_forwards": hit["forwards"] + hit["forward_failures"],
        "failed_forwards": hit["forward_failures"], "batches_retried": hit["batches_retried"],
        # the share of physical forwards (one batch through one layer, each attempt counted) that a fault broke:
        # the fault rate a lab sees, whatever the number of commands per forward
        "failed_forward_share": round(hit["forward_failures"] / max(1, hit["forwards"] + hit["forward_failures"]), 4),
        "run_stops_resumed": len(hit["stops"]), "stop_messages": hit["stops"],
        "clean_run_stops_resumed": len(clean["stops"]),  # a clean run can time out too, on a loaded machine
        "epochs_lost": len(set(planned) - set(hit["metric_epochs"])),
        "epochs_counted_twice": len(hit["metric_epochs"]) - len(set(hit["metric_epochs"])),
        "test_accuracy_clean": clean["test_accuracy"], "test_accuracy_with_faults": hit["test_accuracy"],
        "difference": round(hit["test_accuracy"] - clean["test_accuracy"], 4),
        "wall_time_clean_s": clean["wall_time_s"], "wall_time_with_faults_s": hit["wall_time_s"],
    }


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "sd": round(sd, 4), "min": round(min(values), 4),
            "max": round(max(values), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--rate", type=float, default=0.0005, help="probability per reply of each kind of fault")
    parser.add_argument("--block-rate", type=float, default=0.02,
                        help="probability per binary block of garbling it and of cutting it short (a scope or "
                             "camera sends one block per batch, so --rate alone would hardly ever damage one)")
    parser.add_argument("--out", type=Path, default=Path("runs/faults"))
    parser.add_argument("--timeout", type=float, default=2.0, help="the instruments' link timeout, s")
    parser.add_argument("--max-resumes", type=int, default=20,
                        help="resumes of a stopped run before giving up (each is counted in the report)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="repeat the clean/faulty pair for each seed (default: the experiment's seed only)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field of the experiment; simulate.faults.* fields apply to the faulty run "
                             "only (e.g. --set simulate.faults.camera.garble_block=1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")

    overrides = dict(pair.split("=", 1) for pair in args.sets)
    # faults given with --set belong to the faulty run only: the clean run is the reference
    fault_sets = {key: value for key, value in overrides.items() if key.startswith("simulate.faults")}
    overrides = {key: value for key, value in overrides.items() if key not in fault_sets}
    cfg = load_experiment(args.experiment, overrides=overrides or None)
    if cfg.simulate.faults:
        parser.error(f"{args.experiment} injects faults (simulate.faults); the clean run must not")
    for role, _ in cfg.instruments:
        overrides[f"instruments.{role}.timeout_s"] = str(args.timeout)
    cfg = load_experiment(args.experiment, overrides=overrides)
    fit_twin_first(cfg)
    seeds = args.seeds if args.seeds is not None else [cfg.seed]
    pairs = []
    for seed in seeds:
        seeded = {**overrides, "seed": str(seed)}
        faulty = load_experiment(args.experiment, overrides={
            **seeded, "simulate.faults.all.seed": str(seed), "simulate.faults.all.rate": str(args.rate),
            "simulate.faults.all.garble_block": str(args.block_rate),
            "simulate.faults.all.short_block": str(args.block_rate), **fault_sets})
        out = args.out if args.seeds is None else args.out / f"seed-{seed}"
        pairs.append(compare(load_experiment(args.experiment, overrides=seeded), faulty, out, args.max_resumes))
        log.warning("seed %d: test accuracy %.3f clean, %.3f with faults", seed,
                    pairs[-1]["test_accuracy_clean"], pairs[-1]["test_accuracy_with_faults"])
    report = {"experiment": cfg.experiment, "rate_per_reply_and_kind": args.rate,
              "rate_per_binary_block": args.block_rate, "link_timeout_s": args.timeout}
    if len(pairs) == 1:
        report.update(pairs[0])
    else:
        report["seeds"] = seeds
        for key in ("test_accuracy_clean", "test_accuracy_with_faults", "difference", "failed_forward_share"):
            report[key] = spread([pair[key] for pair in pairs])
        for key in ("faults_injected", "physical_forwards", "failed_forwards", "batches_retried", "run_stops_resumed",
                    "clean_run_stops_resumed", "epochs_lost", "epochs_counted_twice"):
            report[key] = sum(pair[key] for pair in pairs)
        report["pairs"] = pairs
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "faults.json", json.dumps(report, indent=2).encode())
    lines = [f"# Faults: {cfg.experiment}, rate {args.rate} per reply and kind", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in report.items() if key not in ("stop_messages", "pairs")]
    if len(pairs) > 1:
        lines += ["", "| seed | faults injected | forwards broken | batches retried | stops resumed | epochs lost "
                      "/ twice | accuracy clean -> faults (difference) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['seed']} | {p['faults_injected']} | {p['failed_forwards']} of {p['physical_forwards']} "
                  f"({p['failed_forward_share']:.1%}) | {p['batches_retried']} | {p['run_stops_resumed']} | "
                  f"{p['epochs_lost']} / {p['epochs_counted_twice']} | {p['test_accuracy_clean']:.3f} -> "
                  f"{p['test_accuracy_with_faults']:.3f} ({p['difference']:+.3f}) |" for p in pairs]
    atomic_write_bytes(args.out / "faults.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
