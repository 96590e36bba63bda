"""Calibration workflow: instrument calibration, twin data collection, twin fits, and a report.

Files in the artifacts folder (``ExperimentConfig.artifacts_path``):
    calibration.json         delays (optical: dark level, spectrometer offset, LUT check) and instrument identities
    (the setup's own)        written by its kit: the plate's frequency_response.csv and .png, optical_calibration.png
    twin_data.h5             measured (x, θ, y) with metadata (HDF5)
    twin_neural.pt           neural twin artifact    twin_physics.pt  physics twin    twin_hybrid.pt  physics + neural
    report.json, *.png       held-out errors and plots of twin vs device
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from common.files import atomic_write_bytes
from drivers.setups.base import PhysicalSetup
from orchestrator import plots
from orchestrator.config import ExperimentConfig
from orchestrator.kits import setup_kit
from orchestrator.retry import retrying
from twins.artifact import TWIN_FILES, load_twin, save_twin, twin_path
from twins.data import TwinData, load_twin_data, save_twin_data
from twins.fit import fit_twin, nmse
from twins.hybrid import fit_hybrid
from twins.neural import NeuralTwin, TemporalConvTwin

log = logging.getLogger(__name__)

__all__ = ["TWIN_FILES", "build_twin", "calibrate", "collect_twin_data", "encoding_key", "fit_and_save",
           "reuse_calibration", "twin_path"]


def encoding_key(encoding) -> str:
    """The encoding as stored in twin data and twin metadata: data and twins are reused only for the same one."""
    return json.dumps(encoding.model_dump())


def reuse_calibration(setup: PhysicalSetup, instruments_json: str | None, source: str) -> bool:
    """Read the setup's outputs as when ``source`` (a twin or its data, stored with the setup's snapshot
    ``instruments_json``) was measured; False when it was measured under settings that no longer hold and must be
    measured again (``PhysicalSetup.reuse_calibration``)."""
    return setup.reuse_calibration(json.loads(instruments_json) if instruments_json else None, source)


def collect_twin_data(setup: PhysicalSetup, n_samples: int, repeats: int, seed: int,
                      batch: int = 1024, progress: Callable[[int, int], None] | None = None,
                      max_retries: int = 2) -> TwinData:
    """Measure ``n_samples`` random (x, θ) pairs, uniform within the safe ranges, each ``repeats`` times averaged.
    A failed batch is retried ``max_retries`` times, each after ``setup.recover()``, as in training."""
    forward = retrying(setup.forward, max_retries, setup.recover)
    gen = torch.Generator().manual_seed(seed)
    n = setup.n_inputs
    low, high = setup.param_bounds
    x = 2 * torch.rand(n_samples, n, generator=gen) - 1
    theta = low + (high - low) * torch.rand(n_samples, n, generator=gen)
    ys = []
    for start in range(0, n_samples, batch):
        sl = slice(start, start + batch)
        ys.append(torch.stack([forward(x[sl], theta[sl]) for _ in range(repeats)]).mean(0))
        if progress:
            progress(min(start + batch, n_samples), n_samples)
    y = torch.cat(ys)
    meta = {"setup": setup.name, "n": n, "repeats": repeats, "seed": seed,
            "encoding": encoding_key(setup.enc), "instruments": json.dumps(setup.snapshot(), default=str),
            "date": dt.datetime.now(dt.timezone.utc).isoformat()}
    return TwinData(x=x.numpy().astype(np.float32), theta=theta.numpy().astype(np.float32),
                    y=y.numpy().astype(np.float32), metadata=meta)


def build_twin(kind: str, cfg: ExperimentConfig, n: int, n_outputs: int, setup: PhysicalSetup | None = None):
    """A fresh, untrained twin of the given kind for this experiment (the hybrid twin's residual part). Its initial
    weights follow ``cfg.seed`` alone (the caller's global torch random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _untrained_twin(kind, cfg, n, n_outputs, setup)


def _untrained_twin(kind: str, cfg: ExperimentConfig, n: int, n_outputs: int, setup: PhysicalSetup | None):
    if kind in ("neural", "hybrid"):
        nc = cfg.twin.neural
        if nc.architecture == "temporal_conv":
            return TemporalConvTwin(n, n, n_outputs, channels=nc.channels, kernel=nc.kernel,
                                    dilations=tuple(nc.dilations))
        return NeuralTwin(n, n, n_outputs, hidden=tuple(nc.hidden), residual=nc.residual)
    if kind == "physics":
        if setup is None:
            raise ValueError("a physics twin is built for an open setup")
        return setup_kit(cfg.setup).physics_twin(cfg, setup, n, n_outputs)
    raise ValueError(f"no trainable twin of kind {kind!r}")


def fit_threads(requested: int | None) -> int | None:
    """The torch threads a neural twin's fit uses: ``twin.neural.threads``, but never more than torch's own setting,
    which a sweep trial sets to its ``cpus_per_trial`` (None: torch's setting)."""
    return None if requested is None else min(requested, torch.get_num_threads())


def fit_and_save(kind: str, cfg: ExperimentConfig, data: TwinData, artifacts: Path, setup: PhysicalSetup,
                 progress: Callable[[int, float, float], None] | None = None,
                 report_entries: list[dict] | None = None) -> dict:
    """Fit a twin of ``kind`` to measured data, save the artifact, return its report entry. The hybrid twin is the
    saved physics twin (fitted first if missing or fitted to other data; its entry then goes to ``report_entries``)
    plus a neural residual fitted to what the physics twin misses."""
    train, val = data.split(cfg.twin.val_fraction, seed=cfg.seed)
    n, n_out = data.x.shape[1], data.y.shape[1]
    model = build_twin(kind, cfg, n, n_out, setup)
    nc, pc = cfg.twin.neural, cfg.twin.physics
    if kind == "neural":
        rep = fit_twin(model, train, val, epochs=nc.epochs, lr=nc.lr, batch_size=nc.batch_size,
                       patience=nc.patience, seed=cfg.seed, threads=fit_threads(nc.threads), progress=progress)
    elif kind == "physics":
        sub = min(pc.samples, len(train.y))
        train = TwinData(train.x[:sub], train.theta[:sub], train.y[:sub], train.metadata)
        rep = fit_twin(model, train, val, epochs=pc.epochs, lr=pc.lr, batch_size=pc.batch_size,
                       patience=pc.patience, seed=cfg.seed, progress=progress)
    else:
        physics = fitted_physics_twin(cfg, data, artifacts, setup, report_entries)
        model, rep = fit_hybrid(physics, model, train, val, epochs=nc.epochs, lr=nc.lr, batch_size=nc.batch_size,
                                patience=nc.patience, seed=cfg.seed, threads=fit_threads(nc.threads), progress=progress)
    meta = {"setup": cfg.setup, "experiment": cfg.experiment, "twin": kind,
            "encoding": encoding_key(cfg.encoding), "n": int(n), "n_outputs": int(n_out),
            "instruments": json.dumps(setup.snapshot(), default=str), "dataset_checksum": data.checksum(),
            "val_nmse": float(rep.val_nmse), "train_nmse": float(rep.train_nmse),
            "date": dt.datetime.now(dt.timezone.utc).isoformat()}
    save_twin(twin_path(artifacts, kind), model, meta)
    log.info("%s twin: held-out NMSE %.4f (%d epochs, %.1f s)", kind, rep.val_nmse, rep.epochs_run, rep.seconds)
    return {"kind": kind, "val_nmse": float(rep.val_nmse), "train_nmse": float(rep.train_nmse),
            "epochs": rep.epochs_run, "seconds": rep.seconds}


def fitted_physics_twin(cfg: ExperimentConfig, data: TwinData, artifacts: Path, setup: PhysicalSetup,
                        report_entries: list[dict] | None) -> torch.nn.Module:
    """The saved physics twin if it was fitted to ``data``, else a new fit (saved; its entry appended)."""
    path = twin_path(artifacts, "physics")
    if path.exists():
        model, meta = load_twin(path)
        if meta.get("dataset_checksum") == data.checksum():
            return model.requires_grad_(False)
    entry = fit_and_save("physics", cfg, data, artifacts, setup)
    if report_entries is not None:
        report_entries.append({**entry, "dataset_checksum": data.checksum()})
    return load_twin(path)[0].requires_grad_(False)


def calibrate(cfg: ExperimentConfig, setup: PhysicalSetup, artifacts: Path, kinds: list[str],
              progress: Callable[[str, int, int], None] | None = None) -> dict:
    """The whole calibration: instruments (delays, the plate's response; done when the setup was opened), twin data
    (reused if present for the same encoding), twin fits, report."""
    artifacts.mkdir(parents=True, exist_ok=True)
    kit = setup_kit(cfg.setup)
    if not setup.calibration_summary():  # open_setup has usually calibrated the instruments already
        setup.calibrate_instruments()
    snapshot = setup.snapshot()
    atomic_write_bytes(artifacts / "calibration.json", json.dumps(
        {**setup.calibration_summary(), "instruments": snapshot}, indent=2, default=str).encode())
    kit.save_calibration(setup, artifacts)
    data_file = artifacts / "twin_data.h5"
    data = None
    if data_file.exists():
        data = load_twin_data(data_file)
        if (data.metadata.get("encoding") != encoding_key(setup.enc) or data.x.shape[1] != setup.n_inputs
                or len(data.y) < cfg.twin.samples
                or not reuse_calibration(setup, data.metadata.get("instruments"), str(data_file))):
            log.info("%s was measured with other settings; measuring again", data_file)
            data = None
    if data is None:
        data = collect_twin_data(setup, cfg.twin.samples, cfg.twin.repeats, seed=cfg.seed + 7,
                                 max_retries=cfg.training.max_retries,
                                 progress=(lambda i, n: progress("twin data", i, n)) if progress else None)
        save_twin_data(data_file, data)
    report_file = artifacts / "report.json"
    earlier = json.loads(report_file.read_text()).get("twins", []) if report_file.exists() else []
    report = {**setup.calibration_summary(), "twin_data": str(data_file),
              "samples": int(len(data.y)), "dataset_checksum": data.checksum(),
              "twins": [t for t in earlier if t.get("kind") not in kinds and t.get("dataset_checksum") == data.checksum()]}
    for kind in kinds:
        cb = (lambda e, tr, va, k=kind: progress(f"fit {k} twin", e, 0)) if progress else None
        entry = fit_and_save(kind, cfg, data, artifacts, setup, progress=cb, report_entries=report["twins"])
        report["twins"] = [t for t in report["twins"] if t["kind"] != kind]  # a refit replaces the earlier entry
        report["twins"].append({**entry, "dataset_checksum": report["dataset_checksum"]})
        plot_twin_vs_device(kind, artifacts, data, cfg)
    kit.plot_fitted(setup, artifacts)
    atomic_write_bytes(report_file, json.dumps(report, indent=2).encode())
    return report


def plot_twin_vs_device(kind: str, artifacts: Path, data: TwinData, cfg: ExperimentConfig, n_show: int = 512) -> Path:
    """Scatter and traces of the twin against held-out device measurements."""
    _, val = data.split(cfg.twin.val_fraction, seed=cfg.seed)
    model, _ = load_twin(twin_path(artifacts, kind))
    with torch.no_grad():
        pred = model(torch.as_tensor(val.x[:n_show]), torch.as_tensor(val.theta[:n_show])).numpy()
    err = float(nmse(torch.as_tensor(pred), torch.as_tensor(val.y[:n_show])))
    return plots.plot_twin_vs_device(val.y[:n_show], pred, artifacts / f"twin_{kind}_vs_device.png",
                                     f"{kind} twin vs device (held-out NMSE {err:.3f})")
