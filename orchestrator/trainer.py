"""Training and evaluation of a physical network, with metrics, checkpoints and resume.

Modes: ``pat`` (device forward, twin backward), ``in_silico`` (twin forward and backward) and ``perturbative``
(SPSA: two device forwards per step with every trainable parameter perturbed by ±c_k, no twin; ``spsa_step``).
Evaluation is always on the device. One row of metrics.csv per finished epoch. With a ``Refiner``
(``orchestrator.refine``) the twin is fine-tuned from the training's own device measurements between batches.

Device samples are the currency (``DeviceSamples``): every item of every physical forward is counted by what it was
for (training, evaluation, refinement), over all sessions; metrics.csv has the running totals per epoch, and the
``device_samples_budget``: the twin's data plus training plus refinement.

The checkpoint (checkpoint.pt, written atomically) says where training is: the epoch in progress, how many of its
batches are done, and everything needed to continue exactly there (network, optimizer, the metric rows, the epoch's
running sums, the random-number state, the retry counts). It is written after every epoch, and after the last
completed batch when training stops early:
- on request (``StopRequest``: ``pnn run`` sets it on the first Ctrl-C or SIGTERM): the current batch is finished,
  the checkpoint saved, then ``TrainingStopped`` is raised;
- when the device keeps failing (``retrying``: a failed physical forward is retried ``max_retries`` times after
  recovering the instruments, then ``DeviceFailure`` is raised).
Time is accounted for per epoch (metrics.csv) on the training thread: ``instrument_s`` (physical forwards, retries
and recoveries included, and the device evaluation), ``twin_s`` (PAT: the backward pass, the twins' VJPs, and any
wait for a twin's forward pass after the device finished; in silico: the twin's forward and backward passes; with a
``Refiner``: its waits for a refinement, and with ``overlap: false`` the fine-tuning itself),
``optimizer_s`` (the step and the projection of θ), ``other_s`` (the rest: the digital layers, data, bookkeeping)
and ``device_busy_share`` = instrument_s / seconds.

``resume=True`` continues from the checkpoint. The batch order of an epoch depends only on (seed, epoch), so a resumed
run trains the same batches as an uninterrupted one and ends with the same epochs, each in metrics.csv once.

A ``TrainingWatch`` sees training as it goes (the run folder's plots, TensorBoard): every batch's loss at its global
step (the batches trained so far, over all sessions; kept in the checkpoint), and every finished epoch with its
evaluation on the device.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from drivers.errors import InstrumentError
from orchestrator.config import ConfigError, TrainingConfig
from orchestrator.datasets import Dataset
from orchestrator.network import Layer, PhysicalNetwork
from orchestrator.pat import physics_aware
from common.files import CorruptFileError, atomic_write_bytes, read_torch_file
from orchestrator.retry import RetryCounts, retrying

if TYPE_CHECKING:
    from orchestrator.refine import Refiner

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


TRAIN_EVAL_SAMPLES = 2000  # training samples evaluated on the device at the end of a run
OUTPUT_SAMPLES = 64  # test samples whose physical outputs an evaluation keeps (for the plots)


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


# -- stopping early ------------------------------------------------------------------------------------------------

@dataclass
class StopRequest:
    """Asks a running trainer to stop at its next safe point: after the current batch.

    ``pnn run`` and ``pnn bench`` set ``signal`` on the first Ctrl-C or SIGTERM (see ``cli.stop_on_signals``). The
    trainer sets ``training`` while it checks the request after every batch; outside that there is no safe point to
    wait for, and the signal handler aborts at once instead.
    """

    signal: int | None = None  # the signal that asked for the stop
    training: bool = False


class TrainingStopped(Exception):
    """Training stopped on request after a completed batch; the checkpoint holds everything up to there."""

    def __init__(self, epoch: int, batch: int, n_batches: int, signal: int | None):
        self.epoch, self.batch, self.n_batches, self.signal = epoch, batch, n_batches, signal
        super().__init__(f"stopped after epoch {epoch} batch {batch} of {n_batches}")


TIME_PARTS = ("instrument", "twin", "optimizer")
"""What the training thread's time is split into (the rest is ``other``)."""


class Stopwatch:
    """Wall time on the training thread by what it was spent on (``TIME_PARTS``), s."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(TIME_PARTS, 0.0)

    def timed(self, part: str, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``fn`` with the time of each call added to ``part``."""
        def call(*args: Tensor) -> Tensor:
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.seconds[part] += time.perf_counter() - t0
        return call

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] += seconds

    def since(self, before: dict[str, float]) -> dict[str, float]:
        return {part: self.seconds[part] - before.get(part, 0.0) for part in TIME_PARTS}


def time_split(parts: dict[str, float], wall_s: float) -> dict[str, float | None]:
    """The columns of a time split: ``<part>_s`` for each part, ``other_s`` and ``device_busy_share``."""
    return {**{f"{part}_s": parts.get(part, 0.0) for part in TIME_PARTS},
            "other_s": max(0.0, wall_s - sum(parts.get(part, 0.0) for part in TIME_PARTS)),
            "device_busy_share": parts.get("instrument", 0.0) / wall_s if wall_s > 0 else None}


@dataclass
class DeviceSamples:
    """Device samples (items of a physical forward: one layer of one input) consumed, by purpose, over all sessions
    of a run. The twin's data are counted where they were measured (``calibrate``); see ``Trainer.twin_samples``."""

    training: int = 0
    evaluation: int = 0
    refinement: int = 0

    def columns(self, twin_samples: int = 0) -> dict[str, int]:
        """metrics.csv's columns: the running totals and the budget (twin data + training + refinement)."""
        return {"device_samples_training": self.training, "device_samples_evaluation": self.evaluation,
                "device_samples_refinement": self.refinement,
                "device_samples_budget": twin_samples + self.training + self.refinement}


def spsa_gains(k: int, a: float, c: float, A: float, alpha: float, gamma: float) -> tuple[float, float]:
    """Spall's gain sequences at step k (from 0): a_k = a / (k + 1 + A)^alpha, c_k = c / (k + 1)^gamma."""
    return a / (k + 1 + A) ** alpha, c / (k + 1) ** gamma


def spsa_gradient(loss: Callable[[], float], params: list[Tensor], c: float, generator: torch.Generator,
                  project: Callable[[], None] | None = None) -> tuple[list[Tensor], float, float]:
    """One simultaneous-perturbation estimate of d loss / d params (Spall 1992): every element moved by ±c at once
    with a random Rademacher sign Δ, g = (loss(p + cΔ) - loss(p - cΔ)) / (2c) Δ. ``loss()`` is called twice;
    ``project`` (e.g. keeping θ in its bounds) after each perturbation. The parameters end as they started, also
    when ``loss()`` raises.
    Returns the estimate (one tensor per parameter), loss(p + cΔ) and loss(p - cΔ)."""
    deltas = [torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1 for p in params]
    base = [p.detach().clone() for p in params]
    losses = []
    try:
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, b, d in zip(params, base, deltas):
                    p.copy_(b + sign * c * d)
                if project is not None:
                    project()
            losses.append(float(loss()))
    finally:  # also when a forward fails: the parameters must not stay perturbed (a checkpoint would save them)
        with torch.no_grad():
            for p, b in zip(params, base):
                p.copy_(b)
    scale = (losses[0] - losses[1]) / (2 * c)
    return [scale * d for d in deltas], losses[0], losses[1]


@dataclass
class EpochProgress:
    """The epoch in progress (0-based) and how far it got: its first ``batches_done`` batches are trained; the sums
    give its running loss and accuracy, ``seconds`` its training time so far (over all sessions), ``retries_at_start``
    the retry counts when it began."""

    epoch: int = 0
    batches_done: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    retries_at_start: dict = field(default_factory=dict)
    time_parts: dict = field(default_factory=dict)  # the epoch's seconds so far by TIME_PARTS


@dataclass
class Evaluation:
    """An evaluation on the device: the true and predicted classes of the test samples, and each physical layer's
    outputs [samples, n_outputs] for the first ``OUTPUT_SAMPLES`` of them."""

    y_true: np.ndarray
    predicted: np.ndarray
    layer_outputs: list[np.ndarray]

    @classmethod
    def of(cls, y_true: np.ndarray | Tensor, predicted: Tensor, record: list[Tensor]) -> "Evaluation":
        return cls(np.asarray(y_true), predicted.numpy(), [r[:OUTPUT_SAMPLES].numpy() for r in record])


class TrainingWatch:
    """What training shows as it goes; the trainer calls these on its own thread. This one does nothing."""

    def start(self, step: int, resumed: bool) -> None:
        """Training starts (``resumed``: from a checkpoint) after ``step`` batches trained."""

    def batch(self, step: int, loss: float) -> None:
        """The ``step``-th batch (counted over the whole run) was trained with this loss."""

    def epoch_evaluated(self, rows: list[dict], evaluation: Evaluation | None) -> None:
        """An epoch was trained and evaluated (``evaluation`` None: not evaluated this epoch); ``rows`` are the metric
        rows so far, the last one without its seconds yet (time spent here counts as the epoch's ``other_s``)."""

    def epoch_done(self, step: int, row: dict) -> None:
        """The epoch's metric row is final, at the global ``step`` of its last batch."""


# -- the trainer -----------------------------------------------------------------------------------------------------

class Trainer:
    """Trains ``net`` on ``data`` using ``device`` (a PhysicalSystem's forward) and ``twin``, as the experiment's
    ``training`` section says. ``recover`` reopens the instruments after a failed forward; ``stop`` is checked after
    every batch."""

    def __init__(self, net: PhysicalNetwork, data: Dataset, device: Layer, twin: nn.Module | None,
                 settings: TrainingConfig, seed: int, out_dir: Path, recover: Callable[[], None] | None = None,
                 on_batch: Callable[[int, int, int, int], None] | None = None, stop: StopRequest | None = None,
                 watch: TrainingWatch | None = None, refiner: "Refiner | None" = None, twin_samples: int = 0):
        """``on_batch(batches_done, batches_per_epoch, epoch, epochs)`` after every batch (epoch counted from 1);
        ``refiner`` refines ``twin`` from the training's device measurements; ``twin_samples``: the device samples
        the twin's data cost (for the budget column)."""
        self.net, self.data, self.twin, self.s, self.seed = net, data, twin, settings, seed
        self.out_dir = Path(out_dir)
        self.retries = RetryCounts()
        self.clock = Stopwatch()
        self.samples = DeviceSamples()
        self.purpose = "training"  # what the device's samples are counted as now (see ``counting``)
        self.twin_samples = twin_samples
        self.refiner = refiner
        measured = self.clock.timed("instrument", retrying(device, settings.max_retries, recover, self.retries))
        self.device = self._counted(measured)
        self.on_batch = on_batch
        self.stop = stop
        self.watch = watch or TrainingWatch()
        params = [p for p in net.parameters() if p.requires_grad]
        if settings.optimizer == "adam":
            self.opt = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
        else:
            self.opt = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                                       weight_decay=settings.weight_decay)
        if settings.mode not in ("pat", "in_silico", "perturbative"):
            raise ValueError(f"unknown training mode {settings.mode!r}; modes are 'pat', 'in_silico', 'perturbative'")
        if twin is None and settings.mode != "perturbative":
            raise ValueError(f"training mode {settings.mode!r} needs a twin")
        if refiner is not None and settings.mode == "perturbative":
            raise ValueError("perturbative training uses no twin: there is none to refine")
        # the device's training measurements, recorded for the refinement
        self.measuring = refiner.recording(self.device, self.counting) if refiner is not None else self.device
        # PAT: the device forward, the twin's gradient; in silico: the twin for both; perturbative: the device only
        self.train_layer: Layer = (physics_aware(self.measuring, twin) if settings.mode == "pat"
                                   else self.clock.timed("twin", twin) if settings.mode == "in_silico"
                                   else self.device)
        self.rows: list[dict] = []
        self.at = EpochProgress()
        self.saved_position = (0, 0)  # the position() the checkpoint file holds
        self.wall_s = 0.0
        self.step = 0  # batches trained over the whole run (all sessions): the global step of the last one
        self.evaluation: Evaluation | None = None  # the last evaluation on the device

    def _counted(self, device: Layer) -> Layer:
        def call(x: Tensor, theta: Tensor) -> Tensor:
            y = device(x, theta)
            setattr(self.samples, self.purpose, getattr(self.samples, self.purpose) + int(x.shape[0]))
            return y
        return call

    @contextmanager
    def counting(self, purpose: str) -> Iterator[None]:
        """Count the device's samples as ``purpose`` (a ``DeviceSamples`` field) inside the block."""
        before, self.purpose = self.purpose, purpose
        try:
            yield
        finally:
            self.purpose = before

    @property
    def n_batches(self) -> int:
        """Batches per epoch."""
        return math.ceil(len(self.data.y_train) / self.s.batch_size)

    def position(self) -> tuple[int, int]:
        """The last completed batch as (epoch, batch), both counted from 1; (0, 0) before the first."""
        if self.at.batches_done == 0:
            return (self.at.epoch, self.n_batches if self.at.epoch else 0)
        return self.at.epoch + 1, self.at.batches_done

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Save where training is (``self.at``), atomically."""
        state = {"epoch": self.at.epoch - 1,  # the last finished epoch (0-based; -1: none), as in older checkpoints
                 "epoch_progress": asdict(self.at), "batch_size": self.s.batch_size, "n_train": len(self.data.y_train),
                 "net": self.net.state_dict(), "opt": self.opt.state_dict(), "rows": self.rows,
                 "wall_s": self.wall_s, "retries": asdict(self.retries), "torch_rng": torch.get_rng_state(),
                 "global_step": self.step, "device_samples": asdict(self.samples)}
        if self.refiner is not None:
            self.refiner.save()
            state["refine"] = self.refiner.state()
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.out_dir / CHECKPOINT, buf.getvalue())
        self.saved_position = self.position()

    def load_checkpoint(self) -> bool:
        """Restore the last checkpoint; False if there is none. Raises CorruptFileError naming the file, what is wrong
        and what to do, for a truncated, corrupted or foreign checkpoint or one of another network; ConfigError
        (the CLI's exit 2, like every settings mismatch) for a checkpoint resumed with another twin.refine, or inside
        an epoch with another batch size or training set."""
        path = self.out_dir / CHECKPOINT
        if not path.exists():
            return False
        remedy = "run without --resume to start afresh"
        state = read_torch_file(path, "checkpoint", remedy)
        missing = [key for key in ("epoch", "net", "opt", "rows", "wall_s", "torch_rng")
                   if not isinstance(state, dict) or key not in state]
        if missing:
            raise CorruptFileError(f"{path}: not a pnn-lab checkpoint (no {', '.join(missing)}); {remedy}")
        if self.refiner is None and "refine" in state:  # resumed without it, the refined twin would be dropped
            raise ConfigError([(str(path), None, "twin.refine", "this run was trained with twin.refine (the checkpoint "
                                "holds its refined twin and measurements); resume it with the same twin.refine, or "
                                f"{remedy}")])
        if self.refiner is not None and "refine" not in state:  # nothing to refine from: a different run
            raise ConfigError([(str(path), None, "twin.refine", "this run was trained without twin.refine; resume it "
                                f"without it, or {remedy}")])
        try:
            self.net.load_state_dict(state["net"])
            self.opt.load_state_dict(state["opt"])
            rows, wall_s = list(state["rows"]), float(state["wall_s"])
            torch.set_rng_state(state["torch_rng"])
        except Exception as err:  # noqa: BLE001 - whatever does not fit becomes one clear message
            raise CorruptFileError(f"{path}: cannot resume from this checkpoint, it does not fit this run's network "
                                   f"or optimizer ({type(err).__name__}: {err}); resume with the settings it was saved "
                                   f"with, or {remedy}") from err
        self.rows, self.wall_s = rows, wall_s
        self.samples = DeviceSamples(**state.get("device_samples", {}))
        if self.refiner is not None:
            self.refiner.load_state(state["refine"])
        self.resume_from(state, path)
        return True

    def resume_from(self, state: dict, path: Path) -> None:
        """Take the position and retry counts from a loaded checkpoint (older ones hold finished epochs only)."""
        if "epoch_progress" in state:
            self.at = EpochProgress(**state["epoch_progress"])
        else:
            self.at = EpochProgress(int(state["epoch"]) + 1)
        for key, value in state.get("retries", {}).items():
            setattr(self.retries, key, value)
        if self.at.batches_done and (state["batch_size"], state["n_train"]) != (self.s.batch_size,
                                                                                len(self.data.y_train)):
            raise ConfigError([(str(path), None, "training.batch_size",
                                f"stopped inside epoch {self.at.epoch + 1} with batch size {state['batch_size']} and "
                                f"{state['n_train']} training samples; resume with the same settings (now "
                                f"{self.s.batch_size} and {len(self.data.y_train)})")])
        self.saved_position = self.position()
        epoch, batch = self.position()
        self.step = int(state.get("global_step", max(0, epoch - 1) * self.n_batches + batch))  # older: computed
        log.info("resuming after epoch %d batch %d of %d", *self.position(), self.n_batches)

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

    def train_epoch(self) -> None:
        """Train the remaining batches of the epoch in progress (``self.at``); stop after a batch if asked to."""
        at = self.at
        self.net.train()
        for group in self.opt.param_groups:
            group["lr"] = self.learning_rate(at.epoch)
        x_all = torch.as_tensor(self.data.x_train)
        y_all = torch.as_tensor(self.data.y_train)
        batches = self.batches(at.epoch)
        clock = self.clock
        for idx in batches[at.batches_done:]:
            t0, before = time.perf_counter(), dict(clock.seconds)
            if self.s.mode == "perturbative":
                logits, loss = self.spsa_step(x_all[idx], y_all[idx])
            else:
                logits, loss = self.gradient_step(x_all[idx], y_all[idx], at.batches_done)
            for part, seconds in clock.since(before).items():
                at.time_parts[part] = at.time_parts.get(part, 0.0) + seconds
            at.loss_sum += loss.item() * len(idx)
            at.correct += int((logits.argmax(1) == y_all[idx]).sum())
            at.seen += len(idx)
            at.batches_done += 1
            self.step += 1
            if self.refiner is not None:  # between two batches: the only place the twin's weights change
                waited = self.refiner.wait_s
                self.refiner.after_batch(at.batches_done)
                clock.add("twin", self.refiner.wait_s - waited)
                at.time_parts["twin"] = at.time_parts.get("twin", 0.0) + self.refiner.wait_s - waited
            self.watch.batch(self.step, loss.item())
            at.seconds += time.perf_counter() - t0
            if self.on_batch:
                self.on_batch(at.batches_done, len(batches), at.epoch + 1, self.s.epochs)
            self.stop_if_requested()

    def warm_up_twin(self) -> None:
        """``twin.refine.warmup_batches``: before the first step, the device measures the first training batches of
        the first epoch at the initial parameters, and the twin is refined on them at once (``warmup_steps`` Adam
        steps). Its samples count as refinement, its time as the first epoch's (the device's as instrument time, the
        fine-tuning as twin time); its NMSE before and after goes into epoch 1's row. The measurements are committed
        together: if the device fails in between, none is kept, and the resumed run warms up again."""
        refine, at = self.refiner.s, self.at
        x_all = torch.as_tensor(self.data.x_train)
        t0, before = time.perf_counter(), dict(self.clock.seconds)
        with torch.no_grad(), self.counting("refinement"):
            for idx in self.batches(at.epoch)[:refine.warmup_batches]:
                self.net(x_all[idx], self.measuring)
        self.refiner.commit()
        waited = self.refiner.wait_s
        self.refiner.start(steps=refine.warmup_steps, at_once=True)
        self.clock.add("twin", self.refiner.wait_s - waited)
        for part, seconds in self.clock.since(before).items():  # the first epoch's time
            at.time_parts[part] = at.time_parts.get(part, 0.0) + seconds
        at.seconds += time.perf_counter() - t0
        log.info("twin warmed up on %d device samples of %d batches: NMSE on them %.4g -> %.4g (%.1f s)",
                 self.refiner.samples, refine.warmup_batches, *self.refiner.history[-1], time.perf_counter() - t0)

    def gradient_step(self, x: Tensor, y: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        """One PAT or in-silico step on the batch (x [B, F], y [B]); in silico with refinement, the device measures
        every ``measure_every``-th batch for the twin. Returns the logits and the loss."""
        clock = self.clock
        if self.refiner is not None and self.s.mode == "in_silico" and batch % self.refiner.s.measure_every == 0:
            with torch.no_grad(), self.counting("refinement"):
                self.net(x, self.measuring)
        waited = getattr(self.train_layer, "twin_wait_s", 0.0)
        logits = self.net(x, self.train_layer)
        loss = nn.functional.cross_entropy(logits, y)
        self.opt.zero_grad()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        self.opt.step()
        self.net.project_()
        clock.add("twin", t2 - t1 + getattr(self.train_layer, "twin_wait_s", 0.0) - waited)
        clock.add("optimizer", time.perf_counter() - t2)
        return logits, loss

    def spsa_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """One SPSA step (``spsa_gradient``) on the batch: two device forwards of the network with all its trainable
        parameters perturbed by ±c_k (θ kept in its bounds), then every parameter moves by -a_k times the estimate
        and θ is projected into its bounds. The perturbation follows (seed, step), so a resumed run draws the same.
        Returns the mean of the two perturbed logits and the mean of the two losses."""
        sp = self.s.spsa
        a_k, c_k = spsa_gains(self.step, sp.a, sp.c, sp.A, sp.alpha, sp.gamma)
        params = [p for p in self.net.parameters() if p.requires_grad]
        logits: list[Tensor] = []

        def loss() -> float:
            logits.append(self.net(x, self.train_layer))
            return float(nn.functional.cross_entropy(logits[-1], y))

        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        with torch.no_grad():
            grads, loss_plus, loss_minus = spsa_gradient(loss, params, c_k, gen, self.net.project_)
            t0 = time.perf_counter()
            for p, g in zip(params, grads):
                p.sub_(a_k * g)
            self.net.project_()
            self.clock.add("optimizer", time.perf_counter() - t0)
        return (logits[0] + logits[1]) / 2, torch.tensor(0.5 * (loss_plus + loss_minus))

    def finish_epoch(self) -> dict:
        """Evaluate the trained epoch on the device, add its row to metrics.csv and checkpoint: the next epoch is
        the one in progress now."""
        at = self.at
        t0, before = time.perf_counter(), dict(self.clock.seconds)
        row = {"epoch": at.epoch + 1, "train_loss": at.loss_sum / at.seen,
               "train_accuracy_running": at.correct / at.seen}
        k = self.s.epoch_test_samples or len(self.data.y_test)
        evaluate = (at.epoch + 1) % self.s.eval_every == 0 or at.epoch + 1 >= self.s.epochs
        evaluation = None
        if evaluate:
            record: list[Tensor] = []
            predicted = self.predict(self.data.x_test[:k], record=record)
            evaluation = self.evaluation = Evaluation.of(self.data.y_test[:k], predicted, record)
            row["test_accuracy"] = float((evaluation.predicted == evaluation.y_true).mean())
        else:
            row["test_accuracy"] = None
        if self.s.mode == "in_silico":
            row["twin_test_accuracy"] = (self.accuracy(self.data.x_test[:k], self.data.y_test[:k], self.twin)
                                         if evaluate else None)
        if self.s.mode == "perturbative":
            sp = self.s.spsa
            row["lr"] = spsa_gains(self.step - 1, sp.a, sp.c, sp.A, sp.alpha, sp.gamma)[0]  # a_k of the last step
        else:
            row["lr"] = self.learning_rate(at.epoch)
        if self.refiner is not None:
            waited = self.refiner.wait_s
            row.update(self.refiner.finish_epoch())
            self.clock.add("twin", self.refiner.wait_s - waited)
        row.update(self.samples.columns(self.twin_samples))
        self.watch.epoch_evaluated(self.rows + [row], evaluation)
        row["seconds"] = at.seconds + time.perf_counter() - t0
        parts = {part: at.time_parts.get(part, 0.0) + s for part, s in self.clock.since(before).items()}
        row.update(time_split(parts, row["seconds"]))
        row.update(self.retries.since(at.retries_at_start))
        self.wall_s += row["seconds"]
        self.rows.append(row)
        write_metrics(self.out_dir / "metrics.csv", self.rows)
        self.watch.epoch_done(self.step, row)
        self.at = EpochProgress(at.epoch + 1, retries_at_start=asdict(self.retries))
        self.save_checkpoint()
        busy = row["device_busy_share"]  # the epoch is saved: say so
        log.info("epoch %d: loss %.3f, running train accuracy %.3f%s; %.1f s%s", row["epoch"], row["train_loss"],
                 row["train_accuracy_running"], "" if row["test_accuracy"] is None
                 else f", device test accuracy {row['test_accuracy']:.3f}", row["seconds"],
                 "" if busy is None else f", device busy {busy:.0%}")
        return row

    def stop_if_requested(self) -> None:
        """A safe point (after a batch or an epoch): if a stop was requested, save the checkpoint and stop."""
        if self.stop is None or self.stop.signal is None:
            return
        self.save_checkpoint()
        raise TrainingStopped(*self.position(), self.n_batches, self.stop.signal)

    @torch.no_grad()
    def predict(self, x: np.ndarray | Tensor, layer: Layer | None = None, record: list | None = None) -> Tensor:
        """Predicted classes for features x [N, F], on the device unless another layer function is given."""
        self.net.eval()
        layer = layer or self.device
        x = torch.as_tensor(x)
        preds = []
        with self.counting("evaluation"):
            for part in torch.split(x, self.s.eval_batch_size):
                preds.append(self.net(part, layer, record).argmax(1))
                record = None  # record physical outputs of the first evaluation batch only
        return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)

    def accuracy(self, x, y, layer: Layer | None = None) -> float:
        return float((self.predict(x, layer) == torch.as_tensor(y)).float().mean())

    def fit(self, resume: bool = False, progress: Callable[[int, dict], None] | None = None) -> list[dict]:
        """Train to the configured number of epochs; returns the metric rows.

        Raises TrainingStopped when stopped on request, DeviceFailure (or another InstrumentError) when the device
        fails; either way the checkpoint holds the batches completed so far."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = resume and self.load_checkpoint()
        if not resume and (self.out_dir / CHECKPOINT).exists():
            # a fresh run into an old run's folder: a crash before this run's first checkpoint must not leave the
            # old one there for --resume to continue
            log.warning("removing the previous run's %s from %s", CHECKPOINT, self.out_dir)
            (self.out_dir / CHECKPOINT).unlink()
        self.watch.start(self.step, resumed)
        try:
            if self.stop is not None:
                if self.stop.signal is not None:  # asked to stop before training began: nothing to finish, abort
                    raise KeyboardInterrupt
                self.stop.training = True
            if (self.refiner is not None and self.refiner.s.warmup_batches and self.step == 0
                    and self.refiner.refinements == 0):  # not yet warmed up (a run that failed while warming up, too)
                self.warm_up_twin()
                self.stop_if_requested()
            while self.at.epoch < self.s.epochs:
                self.train_epoch()
                row = self.finish_epoch()
                if progress:
                    progress(row["epoch"], row)
                self.stop_if_requested()
        except InstrumentError:
            # a failed batch changed nothing yet (the device is called before the optimizer step); the measurements
            # its earlier layers made are dropped, as the resumed run measures the batch again
            if self.refiner is not None:
                self.refiner.drop_staged()
            self.save_checkpoint()
            log.warning("checkpoint saved after epoch %d batch %d of %d", *self.position(), self.n_batches)
            raise
        finally:
            if self.stop is not None:
                self.stop.training = False
            if self.refiner is not None:
                self.refiner.close()
        if self.refiner is not None:
            self.refiner.save()
        return self.rows
