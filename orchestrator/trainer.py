"""Training and evaluation of a physical network, with metrics, checkpoints and resume.

Modes: ``pat`` (device forward, twin backward) and ``in_silico`` (twin forward and backward). Evaluation is always
on the device. One row of metrics.csv per finished epoch; a checkpoint (atomic write) after every epoch;
``resume=True`` continues after the last finished epoch with the same data order as an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from drivers.errors import InstrumentError
from orchestrator.config import TrainingConfig
from orchestrator.datasets import Dataset
from orchestrator.network import Layer, PhysicalNetwork
from orchestrator.pat import physics_aware
from twins.artifact import atomic_write

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


TRAIN_EVAL_SAMPLES = 2000  # training samples evaluated on the device at the end of a run


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that a crash leaves either the old or the new version, never a torn one."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def write_metrics(path: Path, rows: list[dict]) -> None:
    """metrics.csv, one row per epoch (rewritten atomically from the full list)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def retrying(layer: Layer, max_retries: int, recover: Callable[[], None] | None) -> Layer:
    """Retry a failed physical forward up to ``max_retries`` times (after ``recover()``), then re-raise."""

    def call(x: Tensor, theta: Tensor) -> Tensor:
        for attempt in range(max_retries + 1):
            try:
                return layer(x, theta)
            except InstrumentError as err:
                if attempt == max_retries:
                    raise
                log.warning("physical forward failed (%s); retry %d of %d", err, attempt + 1, max_retries)
                if recover is not None:
                    recover()
        raise AssertionError("unreachable")

    return call


class Trainer:
    """Trains ``net`` on ``data`` using ``device`` (a PhysicalSystem's forward) and ``twin``, as the experiment's
    ``training`` section says."""

    def __init__(self, net: PhysicalNetwork, data: Dataset, device: Layer, twin: nn.Module | None,
                 settings: TrainingConfig, seed: int, out_dir: Path, recover: Callable[[], None] | None = None,
                 on_batch: Callable[[int, int], None] | None = None):
        self.net, self.data, self.twin, self.s, self.seed = net, data, twin, settings, seed
        self.out_dir = Path(out_dir)
        self.device = retrying(device, settings.max_retries, recover)
        self.on_batch = on_batch
        params = [p for p in net.parameters() if p.requires_grad]
        if settings.optimizer == "adam":
            self.opt = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
        else:
            self.opt = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                                       weight_decay=settings.weight_decay)
        if twin is None or settings.mode not in ("pat", "in_silico"):
            raise ValueError(f"training mode {settings.mode!r} needs a twin; modes are 'pat' and 'in_silico'")
        # PAT: the device forward, the twin's gradient; in silico: the twin for both
        self.train_layer: Layer = physics_aware(self.device, twin) if settings.mode == "pat" else twin
        self.rows: list[dict] = []
        self.start_epoch = 0
        self.wall_s = 0.0

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int) -> None:
        state = {"epoch": epoch, "net": self.net.state_dict(), "opt": self.opt.state_dict(),
                 "rows": self.rows, "wall_s": self.wall_s,
                 "torch_rng": torch.get_rng_state()}
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.out_dir / CHECKPOINT, buf.getvalue())

    def load_checkpoint(self) -> bool:
        path = self.out_dir / CHECKPOINT
        if not path.exists():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.net.load_state_dict(state["net"])
            self.opt.load_state_dict(state["opt"])
        except Exception as err:  # noqa: BLE001 - any corruption becomes one clear message
            raise RuntimeError(f"{path}: cannot resume from this checkpoint ({err})") from err
        self.rows = list(state["rows"])
        self.wall_s = float(state["wall_s"])
        torch.set_rng_state(state["torch_rng"])
        self.start_epoch = int(state["epoch"]) + 1
        log.info("resuming after epoch %d", self.start_epoch - 1)
        return True

    # -- training ------------------------------------------------------------------------------------------------
    def batches(self, epoch: int) -> list[Tensor]:
        """The epoch's batches of training indices; depends only on (seed, epoch), so a resumed run sees the
        same order as an uninterrupted one."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.data.y_train), generator=gen)
        return list(torch.split(order, self.s.batch_size))

    def learning_rate(self, epoch: int) -> float:
        """Cosine decay from the configured rate over the configured epochs (computed, not stored, so a resumed
        run that is given more epochs follows the schedule for its new length)."""
        return 0.5 * self.s.lr * (1 + math.cos(math.pi * epoch / max(1, self.s.epochs)))

    def train_epoch(self, epoch: int) -> dict:
        self.net.train()
        for group in self.opt.param_groups:
            group["lr"] = self.learning_rate(epoch)
        x_all = torch.as_tensor(self.data.x_train)
        y_all = torch.as_tensor(self.data.y_train)
        total_loss, correct, seen = 0.0, 0, 0
        batches = self.batches(epoch)
        for i, idx in enumerate(batches):
            logits = self.net(x_all[idx], self.train_layer)
            loss = nn.functional.cross_entropy(logits, y_all[idx])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.net.project_()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y_all[idx]).sum())
            seen += len(idx)
            if self.on_batch:
                self.on_batch(i + 1, len(batches))
        return {"train_loss": total_loss / seen, "train_accuracy_running": correct / seen}

    @torch.no_grad()
    def predict(self, x: np.ndarray | Tensor, layer: Layer | None = None, record: list | None = None) -> Tensor:
        """Predicted classes for features x [N, F], on the device unless another layer function is given."""
        self.net.eval()
        layer = layer or self.device
        x = torch.as_tensor(x)
        preds = []
        for part in torch.split(x, self.s.eval_batch_size):
            preds.append(self.net(part, layer, record).argmax(1))
            record = None  # record physical outputs of the first evaluation batch only
        return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)

    def accuracy(self, x, y, layer: Layer | None = None) -> float:
        return float((self.predict(x, layer) == torch.as_tensor(y)).float().mean())

    def fit(self, resume: bool = False, progress: Callable[[int, dict], None] | None = None) -> list[dict]:
        """Train to the configured number of epochs; returns the metric rows."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_checkpoint()
        for epoch in range(self.start_epoch, self.s.epochs):
            t0 = time.perf_counter()
            row = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            k = self.s.epoch_test_samples or len(self.data.y_test)
            row["test_accuracy"] = self.accuracy(self.data.x_test[:k], self.data.y_test[:k])
            if self.s.mode == "in_silico":
                row["twin_test_accuracy"] = self.accuracy(self.data.x_test[:k], self.data.y_test[:k], self.twin)
            row["lr"] = self.learning_rate(epoch)
            row["seconds"] = time.perf_counter() - t0
            self.wall_s += row["seconds"]
            self.rows.append(row)
            write_metrics(self.out_dir / "metrics.csv", self.rows)
            self.save_checkpoint(epoch)
            if progress:
                progress(epoch + 1, row)
        return self.rows
