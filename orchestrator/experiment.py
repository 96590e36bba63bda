"""What ``pnn run`` and ``pnn bench`` do: open the setup, get a twin, train, evaluate on the device, write the
run folder (config.yaml, instruments.json, metrics.csv, checkpoint.pt, summary.json, PNG plots).

summary.json always tells what state the folder is in: ``"status": "running"`` from the start, then ``"finished"``,
or, when the run ended early, ``"stopped"`` (first Ctrl-C or SIGTERM), ``"failed"`` (the device kept failing, or
another error) or ``"aborted"`` (a second Ctrl-C), with the position the checkpoint holds (resume continues after it).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from orchestrator import plots
from orchestrator.calibrate import adopt_cut, calibrate, encoding_key, twin_path
from orchestrator.config import ExperimentConfig, dump_config
from orchestrator.datasets import Dataset, load_dataset
from orchestrator.lab import device_outputs, device_width, open_setup, start_simulated_bench
from orchestrator.network import PhysicalNetwork, digital_baseline
from common.files import atomic_write_bytes
from orchestrator.trainer import (TRAIN_EVAL_SAMPLES, StopRequest, Trainer, TrainingStopped,
                                  write_metrics)
from twins.artifact import load_twin

log = logging.getLogger(__name__)


def load_task(cfg: ExperimentConfig, data_dir: str | None) -> Dataset:
    t = cfg.task
    return load_dataset(t.dataset, data_dir=data_dir, downsample=t.downsample, n_train=t.n_train,
                        n_test=t.n_test, seed=cfg.seed, audio_duration_s=t.audio_duration_s,
                        audio_rate_hz=t.audio_rate_hz)


def get_twin(cfg: ExperimentConfig, kind: str, setup, bench, artifacts: Path,
             progress: Callable | None = None) -> nn.Module:
    """The twin of ``kind``: the perfect twin from the simulated bench, or a fitted artifact (calibrating first
    when it does not exist yet or was made for another encoding)."""
    if kind == "perfect":
        if bench is None:
            raise ValueError("the perfect twin exists only on a simulated bench (use --simulate)")
        from orchestrator.perfect_twin import perfect_twin

        return perfect_twin(cfg, bench, setup)
    path = twin_path(artifacts, kind)
    if path.exists():
        model, meta = load_twin(path)
        if (meta.get("encoding") != encoding_key(cfg.encoding) or meta.get("n") != setup.n_inputs
                or not adopt_cut(setup, meta.get("instruments"), str(path))):
            log.warning("%s was fitted for other settings; calibrating again", path)
            model = None
        else:
            log.info("using %s twin %s (held-out NMSE %.4f)", kind, path, meta.get("val_nmse", float("nan")))
    else:
        log.info("no %s twin at %s yet; calibrating first", kind, path)
        model = None
    if model is None:
        calibrate(cfg, setup, artifacts, [kind], progress=progress)
        model = load_twin(path)[0]
    return model.requires_grad_(False)  # PAT differentiates the twin in its inputs only, never trains it


def build_network(cfg: ExperimentConfig, data: Dataset, width: int) -> PhysicalNetwork:
    """The experiment's physical network (untrained), for a device of the given width."""
    n = cfg.network
    return PhysicalNetwork(data.x_train.shape[1], data.n_classes, width, n.depth, n.theta_bounds, n.readout,
                           n.shuffle_slots, seed=cfg.seed, n_outputs=device_outputs(cfg, width), theta_init=n.theta_init,
                           input_layer=n.input)


def ended_early(err: BaseException) -> str:
    """The summary status of a run that ended with ``err``."""
    if isinstance(err, TrainingStopped):
        return "stopped"
    return "aborted" if isinstance(err, KeyboardInterrupt) else "failed"


def train_on_setup(cfg: ExperimentConfig, data: Dataset, setup, twin: nn.Module, out: Path, *, resume: bool,
                   bench=None, on_batch=None, on_epoch=None, stop: StopRequest | None = None) -> dict:
    """Train and evaluate one network on an open setup; writes the run folder and returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "config.yaml", dump_config(cfg).encode())
    atomic_write_bytes(out / "instruments.json", json.dumps(setup.snapshot(), indent=2, default=str).encode())
    torch.manual_seed(cfg.seed)
    net = build_network(cfg, data, setup.n_inputs)
    trainer = Trainer(net, data, setup.forward, twin, cfg.training, cfg.seed, out, recover=setup.recover,
                      on_batch=on_batch, stop=stop)
    about = {
        "experiment": cfg.experiment, "setup": cfg.setup, "mode": cfg.training.mode, "twin": cfg.twin.kind,
        "network": "hybrid" if net.hybrid else "fully physical", "depth": cfg.network.depth,
        "width": setup.n_inputs, "trainable_parameters": net.n_trainable(), "dataset": cfg.task.dataset}
    atomic_write_bytes(out / "summary.json", json.dumps({**about, "status": "running"}, indent=2).encode())
    c = setup.counters
    calls0, samples0, inst0, clipped0 = c.forward_calls, c.samples, c.instrument_s, c.clipped_records
    physics0 = bench.physics.busy_s if bench is not None else 0.0
    t0 = time.perf_counter()
    try:
        rows = trainer.fit(resume=resume, progress=on_epoch)
        t_eval = time.perf_counter()  # final evaluation on the device
        record: list = []
        test_pred = trainer.predict(data.x_test, record=record)
        n_tr = min(len(data.y_train), TRAIN_EVAL_SAMPLES)
        train_acc = trainer.accuracy(data.x_train[:n_tr], data.y_train[:n_tr])
    except BaseException as err:  # also Ctrl-C: the folder must say how far it got
        epoch, batch = trainer.saved_position
        summary = {**about, "status": ended_early(err), "reason": str(err) or type(err).__name__,
                   "epochs": len(trainer.rows),
                   "checkpoint": {"epoch": epoch, "batch": batch, "batches_per_epoch": trainer.n_batches},
                   "wall_time_s": trainer.wall_s + trainer.at.seconds, **asdict(trainer.retries)}
        atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
        raise
    test_acc = float((test_pred == torch.as_tensor(data.y_test)).float().mean())
    wall = time.perf_counter() - t0
    eval_s = time.perf_counter() - t_eval
    inst_s = c.instrument_s - inst0
    summary = {
        **about, "status": "finished",
        "test_accuracy": test_acc, "train_accuracy": train_acc, "epochs": len(rows),
        # training epochs (of all sessions, if resumed) + the final evaluation
        "wall_time_s": trainer.wall_s + eval_s,
        "physical_forward_calls": c.forward_calls - calls0, "device_samples": c.samples - samples0,
        "samples_per_s": (c.samples - samples0) / inst_s if inst_s > 0 else None,
        "instrument_time_s": inst_s, "uploads_per_forward_max": max(c.history[calls0:], default=0),
        "scope_clipped_records": c.clipped_records - clipped0,
        "simulated": bench is not None,
        **asdict(trainer.retries),  # device failures of all sessions (see trainer.RetryCounts)
    }
    if bench is not None:
        summary["physics_time_s"] = bench.physics.busy_s - physics0
        summary["physics_share_of_wall"] = summary["physics_time_s"] / wall if wall > 0 else None
    if cfg.training.mode == "in_silico":
        summary["twin_test_accuracy"] = rows[-1].get("twin_test_accuracy") if rows else None
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    write_metrics(out / "metrics.csv", rows)
    plots.plot_learning_curves(rows, out / "learning_curves.png")
    plots.plot_confusion_matrix(np.asarray(data.y_test), test_pred.numpy(), data.class_names, out / "confusion_matrix.png")
    plots.plot_physical_outputs([r[:4].numpy() for r in record], out / "physical_outputs.png",
                                "device outputs of each layer (4 test samples)",
                                labels=[f"layer {i + 1}" for i in range(len(record))])
    return summary


def simulated_outputs(bench) -> dict[str, tuple[bool, str]]:
    """What the simulated front panels show: role -> (safe, description); every AWG output off, the SLM blank."""
    states = {}
    for role, inst in bench.instruments.items():
        if hasattr(inst, "output_enabled"):  # the AWG
            on = [ch for ch, enabled in inst.output_enabled.items() if enabled]
            states[role] = (not on, f"output(s) {on} ON" if on else "outputs off")
        elif hasattr(inst, "is_blank"):  # the SLM
            states[role] = (inst.is_blank, "blank" if inst.is_blank else "showing a pattern")
    return states


def report_simulated_outputs(bench, wait_s: float = 2.0) -> None:
    """Log what the simulated instruments show once the setup is closed. They work through the commands they were
    sent in their own threads (after an abort a command may still be queued), so give them ``wait_s`` to go safe."""
    deadline = time.monotonic() + wait_s
    while not all(safe for safe, _ in simulated_outputs(bench).values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    for role, (safe, state) in simulated_outputs(bench).items():
        log.log(logging.INFO if safe else logging.WARNING, "simulated %s after the run: %s", role, state)


def run(cfg: ExperimentConfig, out: Path, *, simulate: bool, resume: bool, data_dir: str | None,
        on_batch=None, on_epoch=None, on_calibration=None, stop: StopRequest | None = None) -> dict:
    """``pnn run``: everything for one training run."""
    data = load_task(cfg, data_dir)
    n = device_width(cfg, data.x_train.shape[1])
    with ExitStack() as stack:
        bench = stack.enter_context(start_simulated_bench(cfg)) if simulate else None
        if bench is not None:
            stack.callback(report_simulated_outputs, bench)  # runs after the setup below has closed
        setup = stack.enter_context(open_setup(cfg, n, bench=bench))
        twin = get_twin(cfg, cfg.twin.kind, setup, bench, cfg.artifacts_path(simulate), progress=on_calibration)
        return train_on_setup(cfg, data, setup, twin, out, resume=resume, bench=bench,
                              on_batch=on_batch, on_epoch=on_epoch, stop=stop)


BENCH_ROWS = [("pat", "neural"), ("pat", "physics"), ("pat", "perfect"), ("in_silico", "neural"), ("digital", "-")]
"""The default rows of ``pnn bench``; ``BENCH_ROW_CHOICES`` are all it can run."""
BENCH_ROW_CHOICES = BENCH_ROWS + [("pat", "hybrid"), ("in_silico", "physics"), ("in_silico", "hybrid")]


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
          on_row: Callable[[str, str], None] | None = None, stop: StopRequest | None = None,
          **callbacks) -> list[dict]:
    """``pnn bench``: the comparison table, each row a full run in ``out/<mode>_<twin>/``, on one bench."""
    data = load_task(cfg, data_dir)
    n = device_width(cfg, data.x_train.shape[1])
    results: list[dict] = []
    with ExitStack() as stack:
        sim = stack.enter_context(start_simulated_bench(cfg)) if simulate else None
        if sim is not None:
            stack.callback(report_simulated_outputs, sim)  # runs after the setup below has closed
        setup = stack.enter_context(open_setup(cfg, n, bench=sim))
        for mode, kind in rows:
            if on_row:
                on_row(mode, kind)
            if mode == "digital":
                results.append(train_digital(cfg, data, build_network(cfg, data, n).n_trainable()))
            else:
                if kind == "perfect" and sim is None:
                    continue
                row_cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"mode": mode}),
                                                 "twin": cfg.twin.model_copy(update={"kind": kind})})
                twin = get_twin(row_cfg, kind, setup, sim, cfg.artifacts_path(simulate))
                results.append(train_on_setup(row_cfg, data, setup, twin, out / f"{mode}_{kind}", resume=False,
                                              bench=sim, stop=stop, **callbacks))
            atomic_write_bytes(out / "bench.json", json.dumps(results, indent=2).encode())
    atomic_write_bytes(out / "bench.md", bench_table(cfg, results).encode())
    return results


def bench_table(cfg: ExperimentConfig, results: list[dict]) -> str:
    """The bench results as a Markdown table."""
    lines = [f"# {cfg.experiment}: benchmark", "",
             "| mode | twin | network | test accuracy | train accuracy | parameters | wall time (s) | device samples/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        sps = r.get("samples_per_s")
        lines.append(f"| {r['mode']} | {r['twin']} | {r.get('network', '')} | {r['test_accuracy']:.3f} | "
                     f"{r['train_accuracy']:.3f} | {r.get('trainable_parameters', '')} | {r['wall_time_s']:.0f} | "
                     f"{'' if sps is None else f'{sps:.0f}'} |")
    return "\n".join(lines) + "\n"
