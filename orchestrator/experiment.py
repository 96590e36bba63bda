"""What ``pnn run`` and ``pnn bench`` do: open a session on the bench, get a twin, train, evaluate on the device,
write the run folder (``orchestrator.run_folder``)."""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import yaml
from torch import nn

from common.files import atomic_write_bytes
from drivers.setups.base import PhysicalSetup
from orchestrator.config import ConfigError, ExperimentConfig
from orchestrator.datasets import Dataset, load_dataset
from orchestrator.lab import device_outputs, device_width
from orchestrator.kits import setup_kit
from orchestrator.network import PhysicalNetwork, digital_baseline
from orchestrator.refine import ARTIFACT, Refiner, refine_metadata
from orchestrator.provenance import data_checksum, environment, twin_record, utc_now, version_line
from orchestrator.run_folder import RunFolder, RunWatch, ended_early, using_run_folder
from orchestrator.session import open_session
from orchestrator.trainer import (CHECKPOINT, TRAIN_EVAL_SAMPLES, Evaluation, StopRequest, Trainer, time_split,
                                  write_metrics)

if TYPE_CHECKING:
    from orchestrator.plot_worker import PlotWorker

log = logging.getLogger(__name__)


def load_task(cfg: ExperimentConfig, data_dir: str | None) -> Dataset:
    t = cfg.task
    return load_dataset(t.dataset, data_dir=data_dir, downsample=t.downsample, n_train=t.n_train,
                        n_test=t.n_test, seed=cfg.seed, audio_duration_s=t.audio_duration_s,
                        audio_rate_hz=t.audio_rate_hz)


def build_network(cfg: ExperimentConfig, data: Dataset, width: int) -> PhysicalNetwork:
    """The experiment's physical network (untrained), for a device of the given width."""
    n = cfg.network
    return PhysicalNetwork(data.x_train.shape[1], data.n_classes, width, n.depth, n.theta_bounds, n.readout,
                           n.shuffle_slots, seed=cfg.seed, n_outputs=device_outputs(cfg, width), theta_init=n.theta_init,
                           input_layer=n.input)


def train_on_setup(cfg: ExperimentConfig, data: Dataset, setup: PhysicalSetup, twin: nn.Module | None, out: Path, *,
                   resume: bool, bench=None, on_batch=None, on_epoch=None, stop: StopRequest | None = None,
                   twin_info: dict | None = None, tensorboard: bool = True, twin_data_samples: int = 0,
                   plotter: PlotWorker | None = None) -> dict:
    """Train and evaluate one network on an open setup; writes the run folder and returns the summary.

    ``twin`` is None for perturbative training. ``twin_info`` describes the twin for the provenance
    (``provenance.twin_record``); ``tensorboard`` writes event files; ``twin_data_samples``: the device samples
    measured for the twin's data in this session (0 when an existing twin was loaded); ``plotter`` draws the plots
    in a process of its own (``orchestrator.plot_worker``; None: here)."""
    with using_run_folder(out, append=resume):
        return _train_on_setup(cfg, data, setup, twin, Path(out), resume=resume, bench=bench, on_batch=on_batch,
                               on_epoch=on_epoch, stop=stop, twin_info=twin_info, tensorboard=tensorboard,
                               twin_data_samples=twin_data_samples, plotter=plotter)


def twin_data_cost(twin_info: dict | None) -> int:
    """The device samples the twin's data cost (its twin_data.h5 beside the artifact: samples x repeats); 0 for the
    perfect twin, no twin, or data that are not there."""
    artifact = (twin_info or {}).get("artifact")
    path = Path(artifact).parent / "twin_data.h5" if artifact else None
    if path is None or not path.is_file():
        return 0
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f["y"].shape[0]) * int(f.attrs.get("repeats", 1))
    except (OSError, KeyError) as err:
        log.warning("cannot read the size of %s: %s", path, err)
        return 0


def make_refiner(cfg: ExperimentConfig, setup: PhysicalSetup, twin: nn.Module, out: Path,
                 twin_info: dict | None) -> Refiner:
    """The twin's online refinement for this run: mixed with the twin data it was fitted on, if they are there."""
    from orchestrator.calibrate import encoding_key
    from twins.data import load_twin_data

    info = twin_info or {}
    original = None
    if info.get("artifact"):
        path = Path(info["artifact"]).parent / "twin_data.h5"
        if path.is_file():
            original = load_twin_data(path)
            if info.get("twin_data_checksum") not in (None, original.checksum()):
                log.warning("%s is not the data the twin was fitted on; refining on the run's measurements only", path)
                original = None
    if original is None and cfg.twin.refine.mix_fraction > 0:
        log.warning("no original twin data to mix into the refinement: the twin is refined on the run's measurements")
    lineage = {"refined_from": info.get("artifact"), "original_val_nmse": info.get("val_nmse"),
               "setup": cfg.setup, "experiment": cfg.experiment, "twin": cfg.twin.kind,
               "encoding": encoding_key(cfg.encoding), "n": int(setup.n_inputs), "n_outputs": int(setup.n_outputs),
               "instruments": json.dumps(setup.snapshot(), default=str)}
    return Refiner(twin, cfg.twin.refine, out, original, refine_metadata(setup, encoding_key(setup.enc), out),
                   {k: v for k, v in lineage.items() if v is not None}, seed=cfg.seed,
                   theta_bounds=setup.param_bounds)


def _train_on_setup(cfg: ExperimentConfig, data: Dataset, setup: PhysicalSetup, twin: nn.Module | None, out: Path, *,
                    resume: bool, bench, on_batch, on_epoch, stop: StopRequest | None, twin_info: dict | None,
                    tensorboard: bool, twin_data_samples: int, plotter: PlotWorker | None) -> dict:
    session_started = utc_now()
    torch.manual_seed(cfg.seed)
    net = build_network(cfg, data, setup.n_inputs)
    refine = cfg.twin.refine.enabled
    about = {
        "experiment": cfg.experiment, "setup": cfg.setup, "mode": cfg.training.mode,
        "twin": cfg.twin.kind if twin is not None else "-", "refine": refine,
        "network": "hybrid" if net.hybrid else "fully physical", "depth": cfg.network.depth,
        "width": setup.n_inputs, "trainable_parameters": net.n_trainable(), "dataset": cfg.task.dataset}
    folder = RunFolder(out, about, data.class_names, setup_kit(cfg.setup).output_axis(cfg, setup))
    previous = folder.previous_summary() if resume else {}
    times = {"started": previous.get("started", session_started) if resume else session_started,
             "session_started": session_started}
    log.info("%s: %s, %s, into %s (%s)", cfg.experiment, cfg.training.mode + (" + refine" if refine else ""),
             f"{cfg.twin.kind} twin" if twin is not None else "no twin", out, version_line())
    about["provenance"] = run_provenance(cfg, data, twin_info, previous)
    watch = RunWatch(folder, tensorboard=tensorboard, final_after=cfg.training.epochs, plotter=plotter)
    twin_samples = twin_data_cost(twin_info) if twin is not None else 0
    refiner = make_refiner(cfg, setup, twin, out, twin_info) if refine and twin is not None else None
    trainer = Trainer(net, data, setup.forward, twin, cfg.training, cfg.seed, out, recover=setup.recover,
                      on_batch=on_batch, stop=stop, watch=watch, refiner=refiner, twin_samples=twin_samples)
    folder.start(cfg, setup.snapshot(), {**about, **times})
    c = setup.counters
    calls0, samples0, inst0, clipped0 = c.forward_calls, c.samples, c.instrument_s, c.clipped_records
    physics0 = bench.physics.busy_s if bench is not None else 0.0
    t0 = time.perf_counter()
    try:
        rows = trainer.fit(resume=resume, progress=on_epoch)
        t_eval, clock_eval = time.perf_counter(), dict(trainer.clock.seconds)  # final evaluation on the device
        record: list = []
        test_pred = trainer.predict(data.x_test, record=record)
        # the final plots: in the plot worker, while the device measures the training accuracy
        watch.draw_final(rows, Evaluation.of(data.y_test, test_pred, record))
        n_tr = min(len(data.y_train), TRAIN_EVAL_SAMPLES)
        train_acc = trainer.accuracy(data.x_train[:n_tr], data.y_train[:n_tr])
    except BaseException as err:  # also Ctrl-C: the folder must say how far it got
        watch.close()
        epoch, batch = trainer.saved_position
        summary = {**about, **times, "ended": utc_now(), "status": ended_early(err),
                   "reason": str(err) or type(err).__name__, "epochs": len(trainer.rows),
                   "checkpoint": {"epoch": epoch, "batch": batch, "batches_per_epoch": trainer.n_batches},
                   "wall_time_s": trainer.wall_s + trainer.at.seconds, **asdict(trainer.retries)}
        folder.write_summary(summary)
        raise
    try:  # the event files are closed on every way out
        test_acc = float((test_pred == torch.as_tensor(data.y_test)).float().mean())
        wall = time.perf_counter() - t0
        eval_s = time.perf_counter() - t_eval
        inst_s = c.instrument_s - inst0
        summary = {
            **about, **times, "status": "finished",
            "test_accuracy": test_acc, "train_accuracy": train_acc, "epochs": len(rows),
            # training epochs (of all sessions, if resumed) + the final evaluation
            "wall_time_s": trainer.wall_s + eval_s,
            "physical_forward_calls": c.forward_calls - calls0, "device_samples": c.samples - samples0,
            # device samples by purpose: training, evaluation, refinement over all sessions; twin data measured in
            # this one
            "device_samples_by_purpose": {**asdict(trainer.samples), "twin_data": twin_data_samples},
            "twin_data_samples": twin_samples,  # what the twin's data cost, whenever they were measured
            "device_samples_budget": twin_samples + trainer.samples.training + trainer.samples.refinement,
            "samples_per_s": (c.samples - samples0) / inst_s if inst_s > 0 else None,
            "instrument_time_s": inst_s, "uploads_per_forward_max": max(c.history[calls0:], default=0),
            "scope_clipped_records": c.clipped_records - clipped0,
            "simulated": bench is not None,
            **asdict(trainer.retries),  # device failures of all sessions (see orchestrator.retry.RetryCounts)
        }
        # the time split of all epochs (of all sessions, if resumed) and the final evaluation
        parts = {part: sum(row.get(f"{part}_s", 0.0) for row in rows) + seconds
                 for part, seconds in trainer.clock.since(clock_eval).items()}
        summary.update(time_split(parts, summary["wall_time_s"]))
        if bench is not None:
            summary["physics_time_s"] = bench.physics.busy_s - physics0
            summary["physics_share_of_wall"] = summary["physics_time_s"] / wall if wall > 0 else None
        if cfg.training.mode == "in_silico":
            summary["twin_test_accuracy"] = rows[-1].get("twin_test_accuracy") if rows else None
        if refiner is not None:
            summary["refine"] = {"refinements": refiner.refinements, "samples": refiner.samples,
                                 "artifact": ARTIFACT if (out / ARTIFACT).exists() else None,
                                 "twin_nmse_recent_first": next(
                                     (r["twin_nmse_recent_before"] for r in rows
                                      if r.get("twin_nmse_recent_before") is not None), None),
                                 "twin_nmse_recent_last": next(
                                     (r["twin_nmse_recent_last"] for r in reversed(rows)
                                      if r.get("twin_nmse_recent_last") is not None), None)}
        write_metrics(out / "metrics.csv", rows)
        watch.finish_plots(trainer.step)
    finally:
        watch.close()
    summary["ended"] = utc_now()
    folder.write_summary(summary)
    return summary


def no_twin_record() -> dict:
    """The provenance's twin entry of a run that uses no twin (perturbative training)."""
    return {"kind": None, "note": "perturbative training uses no twin"}


def run_provenance(cfg: ExperimentConfig, data: Dataset, twin_info: dict | None, previous: dict) -> dict:
    """Where the run came from (``orchestrator.provenance``), and the data's checksum; warns when a resumed run's
    data differ from those its first session used."""
    checksum = data_checksum(data.x_train, data.y_train, data.x_test, data.y_test)
    before = previous.get("provenance", {}).get("data", {}).get("sha256")
    if isinstance(before, str) and before != checksum:   # (runs before 2026-12-06 held the files' checksums here)
        log.warning("the data differ from those the run's earlier session used (sha256 %s, now %s)", before[:12],
                    checksum[:12])
    log.info("data: %s, %d train / %d test samples, sha256 %s", data.name, len(data.y_train), len(data.y_test),
             checksum[:16])
    return {**environment(), "twin": twin_info or {"kind": cfg.twin.kind},
            "data": {"name": data.name, "sha256": checksum, "n_train": int(len(data.y_train)),
                     "n_test": int(len(data.y_test)), "n_features": data.n_features,
                     # where the data set came from: its files and their checksums, the split, the scaling
                     **{k: v for k, v in data.info.items() if k in ("source", "split", "scaling")},
                     **({"files_sha256": data.info["sha256"]} if "sha256" in data.info else {})}}


def run(cfg: ExperimentConfig, out: Path, *, simulate: bool, resume: bool, data_dir: str | None,
        on_batch=None, on_epoch=None, on_calibration=None, stop: StopRequest | None = None,
        plotter: PlotWorker | None = None) -> dict:
    """``pnn run``: everything for one training run; the run folder's run.log holds the calibration's log too."""
    data = load_task(cfg, data_dir)
    n = device_width(cfg, data.x_train.shape[1])
    with using_run_folder(out, append=resume), open_session(cfg, n, simulate=simulate) as session:
        before = session.setup.counters.samples
        twin = None if cfg.training.mode == "perturbative" else session.twin(progress=on_calibration)
        return train_on_setup(cfg, data, session.setup, twin, out, resume=resume, bench=session.bench,
                              on_batch=on_batch, on_epoch=on_epoch, stop=stop,
                              twin_info=twin_record(cfg.twin.kind, session.artifacts, out) if twin is not None else
                              no_twin_record(),
                              twin_data_samples=session.setup.counters.samples - before, plotter=plotter)


BENCH_ROWS = [("pat", "neural"), ("pat", "physics"), ("pat", "perfect"), ("in_silico", "neural"), ("digital", "-")]
"""The default rows of ``pnn bench``; ``BENCH_ROW_CHOICES`` are all it can run. A mode ``pat+refine`` or
``in_silico+refine`` is that mode with ``twin.refine.enabled``; ``perturbative`` (SPSA) uses no twin."""
BENCH_ROW_CHOICES = BENCH_ROWS + [("pat", "hybrid"), ("in_silico", "physics"), ("in_silico", "hybrid"),
                                  *[(f"{mode}+refine", kind) for mode in ("pat", "in_silico")
                                    for kind in ("neural", "physics", "hybrid")],
                                  ("perturbative", "-")]


def train_digital(cfg: ExperimentConfig, data: Dataset, n_params: int) -> dict:
    """The digital baseline: an MLP with about as many trainable parameters as the physical network."""
    model = digital_baseline(data.x_train.shape[1], data.n_classes, n_params, seed=cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    for _ in range(cfg.training.epochs):
        for idx in torch.split(torch.randperm(len(y), generator=gen), cfg.training.batch_size):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        test = float((model(torch.as_tensor(data.x_test)).argmax(1) == torch.as_tensor(data.y_test)).float().mean())
        train = float((model(x).argmax(1) == y).float().mean())
    return {"mode": "digital", "twin": "-", "test_accuracy": test, "train_accuracy": train,
            "trainable_parameters": sum(p.numel() for p in model.parameters()),
            "wall_time_s": time.perf_counter() - t0, "network": "digital MLP"}


def bench(cfg: ExperimentConfig, out: Path, *, simulate: bool, data_dir: str | None, rows=BENCH_ROWS,
          resume: bool = False, on_row: Callable[[str, str], None] | None = None, stop: StopRequest | None = None,
          **callbacks) -> list[dict]:
    """``pnn bench``: the comparison table, each row a full run in ``out/<mode>_<twin>/``, on one bench.

    ``resume``: a row whose folder holds a finished run of the same settings is kept as it is (no twin is fitted for
    it), one with a checkpoint continues from it, the others start afresh; a row folder that holds a run of other
    settings is a ``ConfigError``. (A row's folder may also come from ``pnn run --out OUT/<mode>_<twin>``.)"""
    data = load_task(cfg, data_dir)
    n = device_width(cfg, data.x_train.shape[1])
    results: list[dict] = []
    with open_session(cfg, n, simulate=simulate) as session:
        setup, sim = session.setup, session.bench
        for mode, kind in rows:
            if on_row:
                on_row(mode, kind)
            if mode == "digital":
                results.append(train_digital(cfg, data, build_network(cfg, data, n).n_trainable()))
            else:
                if kind == "perfect" and sim is None:
                    continue
                base_mode, refine = mode.removesuffix("+refine"), mode.endswith("+refine")
                row_cfg = cfg.model_copy(update={
                    "training": cfg.training.model_copy(update={"mode": base_mode}),
                    "twin": cfg.twin.model_copy(update={
                        "kind": kind if kind != "-" else cfg.twin.kind,
                        "refine": cfg.twin.refine.model_copy(update={"enabled": refine})})})
                row_out = out / f"{mode.replace('+', '_')}_{kind}".removesuffix("_-")
                kept = finished_row(row_out, row_cfg) if resume else None
                if kept is not None:
                    log.info("%s: finished in an earlier session (device test accuracy %.4f), kept", row_out,
                             kept["test_accuracy"])
                    results.append({**kept, "mode": mode, "run_folder": str(row_out)})
                    atomic_write_bytes(out / "bench.json", json.dumps(results, indent=2).encode())
                    continue
                before = setup.counters.samples
                twin = session.twin(kind, cfg=row_cfg) if base_mode != "perturbative" else None
                results.append(train_on_setup(row_cfg, data, setup, twin, row_out, bench=sim,
                                              resume=resume and (row_out / CHECKPOINT).exists(),
                                              stop=stop, twin_data_samples=setup.counters.samples - before,
                                              twin_info=twin_record(kind, session.artifacts, row_out)
                                              if twin is not None else no_twin_record(), **callbacks))
                results[-1]["mode"] = mode
                results[-1]["run_folder"] = str(row_out)
            atomic_write_bytes(out / "bench.json", json.dumps(results, indent=2).encode())
    atomic_write_bytes(out / "bench.md", bench_table(cfg, results).encode())
    plot_bench_samples(cfg, results, out / "bench_samples.png")
    return results


def finished_row(folder: Path, cfg: ExperimentConfig) -> dict | None:
    """The summary of the finished run of ``cfg`` in ``folder`` (all its epochs trained), or None when there is none
    or it is unfinished. Raises ``ConfigError`` when the folder holds a run of other settings (other than
    ``training.epochs``: a run of fewer epochs is continued, as ``pnn run --resume --epochs`` does)."""
    if not (folder / "summary.json").is_file():
        return None
    config = folder / "config.yaml"
    try:
        theirs = yaml.safe_load(config.read_text()) if config.is_file() else None
    except (OSError, yaml.YAMLError):
        theirs = None
    ours = cfg.model_dump(mode="json")
    differ = (sorted(set(settings_differences(theirs, ours)) - {"training.epochs"}) if isinstance(theirs, dict)
              else ["(config.yaml unreadable)"])
    if differ:
        fields = ", ".join(differ[:5]) + (" ..." if len(differ) > 5 else "")
        raise ConfigError([(str(config), None, fields, "this bench row's folder holds a run of other settings; use "
                                                        "another --out, or bench without --resume to train the row "
                                                        "afresh there")])
    return RunFolder(folder).finished_summary(cfg.training.epochs)


def settings_differences(a, b, prefix: str = "") -> list[str]:
    """The dotted paths at which two nested settings dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [path for key in sorted(set(a) | set(b), key=str)
                for path in settings_differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.removesuffix(".")]


def plot_bench_samples(cfg: ExperimentConfig, results: list[dict], path: Path) -> Path | None:
    """``bench_samples.png``: each row's device test accuracy after its evaluated epochs against the device samples
    consumed by then (the twin's data, training, refinement; evaluation not counted). None when no row has any."""
    from orchestrator import plots

    curves = []
    for r in results:
        folder = r.get("run_folder")
        if not folder or not (Path(folder) / "metrics.csv").is_file():
            continue
        with open(Path(folder) / "metrics.csv", newline="") as f:
            rows = [row for row in csv.DictReader(f) if row.get("test_accuracy") and row.get("device_samples_budget")]
        points = [(float(row["device_samples_budget"]), float(row["test_accuracy"])) for row in rows]
        if points:
            points[-1] = (points[-1][0], r["test_accuracy"])  # the final evaluation on the whole test set
            twin = f" ({r['twin']} twin)" if r.get("twin") not in (None, "-") else ""
            curves.append((f"{r['mode']}{twin}", points))
    if not curves:
        return None
    return plots.plot_accuracy_vs_samples(curves, path, f"{cfg.experiment}: device test accuracy against the "
                                                       f"device samples consumed")


def bench_table(cfg: ExperimentConfig, results: list[dict]) -> str:
    """The bench results as a Markdown table."""
    lines = [f"# {cfg.experiment}: benchmark", "",
             "| mode | twin | network | test accuracy | train accuracy | parameters | wall time (s) | device samples/s "
             "| device busy share | device samples (twin data + training + refinement) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        sps = r.get("samples_per_s")
        budget = r.get("device_samples_budget")
        lines.append(f"| {r['mode']} | {r['twin']} | {r.get('network', '')} | {r['test_accuracy']:.3f} | "
                     f"{r['train_accuracy']:.3f} | {r.get('trainable_parameters', '')} | {r['wall_time_s']:.0f} | "
                     f"{'' if sps is None else f'{sps:.0f}'} | {_share(r.get('device_busy_share'))} | "
                     f"{'' if budget is None else budget} |")
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"
