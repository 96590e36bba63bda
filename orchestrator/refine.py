"""Online twin refinement: the twin keeps learning from the measurements training makes anyway.

Every physical forward of a training batch measures one layer's (x, θ, y) at exactly the operating points training
visits. The ``Refiner`` keeps the newest ``buffer_size`` of these samples in a ring buffer (``RingBuffer``) and writes
all of them, with the metadata of twin data, to ``RUN/refine_data/part-NNNNN.h5`` (one file per checkpoint, each
written atomically). Every ``every_batches`` batches, between two batches, it

1. swaps in the weights of the refinement started at the previous such point (waiting for it if it is not done);
2. copies the twin and fine-tunes the copy (``twins.refine.fine_tune``) on the buffer mixed with the original twin
   data, in a worker thread, while the device measures the next batches (``overlap: false``: at once).

The twin in use is only ever changed by the training thread between batches: PAT's backward pass differentiates the
graph of the forward pass of the same batch, built with the same weights.

The error reported per epoch is the twin's NMSE on the measurements made since the previous refinement point: before
fine-tuning (the twin had not seen them: out of sample) and after (they are part of its fine-tuning data). The refined
twin is saved as ``RUN/twin_refined.pt`` with its lineage (the original artifact, the run, the samples it learned
from); the checkpoint holds the buffer, the twin and any pending refinement, so ``--resume`` continues with them.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from orchestrator.config import RefineConfig
from twins.artifact import save_twin
from twins.data import TwinData, save_twin_data
from twins.neural import robust_std
from twins.refine import fine_tune, twin_nmse

log = logging.getLogger(__name__)

_REFINE_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twin-refine")
"""Fine-tunes twin copies beside the training thread (one at a time)."""

ARTIFACT = "twin_refined.pt"
DATA_FOLDER = "refine_data"


class RingBuffer:
    """The newest ``capacity`` samples (x [n_inputs], θ [n_params], y [n_outputs]), float32, oldest overwritten."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.arrays: tuple[np.ndarray, ...] | None = None
        self.next = 0  # where the next sample goes
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, x: np.ndarray, theta: np.ndarray, y: np.ndarray) -> None:
        """Add samples x [B, n], θ [B, p], y [B, o]; beyond ``capacity`` the oldest go."""
        new = [np.asarray(a, dtype=np.float32) for a in (x, theta, y)]
        if self.arrays is None:
            self.arrays = tuple(np.zeros((self.capacity, a.shape[1]), np.float32) for a in new)
        new = [a[-self.capacity:] for a in new]
        b = len(new[0])
        index = (self.next + np.arange(b)) % self.capacity
        for store, a in zip(self.arrays, new):
            store[index] = a
        self.next = int((self.next + b) % self.capacity)
        self.size = min(self.capacity, self.size + b)

    def data(self, metadata: dict | None = None) -> TwinData:
        """The samples, oldest first, as (copied) twin data."""
        if self.arrays is None:
            raise ValueError("the buffer is empty")
        order = (self.next - self.size + np.arange(self.size)) % self.capacity
        return TwinData(*(a[order] for a in self.arrays), metadata=dict(metadata or {}))

    def state(self) -> dict:
        return {"capacity": self.capacity, "next": self.next, "size": self.size,
                "arrays": None if self.arrays is None else [torch.from_numpy(a.copy()) for a in self.arrays]}

    def load_state(self, state: dict) -> None:
        """Continue from ``state()``; saved with another capacity, the samples are re-added oldest first (a smaller
        buffer keeps the newest)."""
        saved = RingBuffer(int(state["capacity"]))
        arrays = state["arrays"]
        saved.arrays = None if arrays is None else tuple(t.numpy().astype(np.float32) for t in arrays)
        saved.next, saved.size = int(state["next"]), int(state["size"])
        if saved.capacity == self.capacity or saved.arrays is None:
            self.arrays, self.next, self.size = saved.arrays, saved.next, saved.size
            return
        kept = saved.data()  # read with the capacity it was saved with
        self.arrays, self.next, self.size = None, 0, 0
        self.add(kept.x, kept.theta, kept.y)


def _stack(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    return tuple(np.concatenate([s[i] for s in samples]) for i in range(3))


class Refiner:
    """Refines ``twin`` (in place, between batches) from the device measurements handed to ``record``.

    Args:
        twin: the twin training uses; it must have floating-point parameters.
        settings: the experiment's ``twin.refine``.
        out_dir: the run folder (``refine_data/``, ``twin_refined.pt``).
        original: the twin data the twin was fitted on (mixed into every fine-tuning step), or None.
        metadata: the metadata of the measured data (as twin data: setup, n, encoding, instruments, ...).
        lineage: what the refined twin comes from (original artifact, its held-out NMSE, ...), for its artifact.
        seed: seeds the fine-tuning's minibatches.
    """

    def __init__(self, twin: nn.Module, settings: RefineConfig, out_dir: Path, original: TwinData | None = None,
                 metadata: dict | None = None, lineage: dict | None = None, seed: int = 0,
                 theta_bounds: tuple[Tensor, Tensor] | None = None):
        if not any(p.is_floating_point() for p in twin.parameters()):
            raise ValueError("twin refinement needs a twin with parameters to fine-tune")
        self.twin, self.s, self.out_dir, self.original = twin, settings, Path(out_dir), original
        self.metadata = dict(metadata or {})
        self.lineage = dict(lineage or {})
        self.seed = seed
        self.theta_bounds = theta_bounds  # ([n_params], [n_params]): where jittered θ must stay
        self.buffer = RingBuffer(settings.buffer_size)
        # the batch in progress's measurements: committed between batches (``after_batch``), dropped if it fails
        self.staged: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.recent: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # measured since the last refinement point
        self.unsaved: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # not yet in an HDF5 part
        self.parts = 0  # HDF5 parts written
        self.samples = 0  # samples recorded, over the whole run
        self.refinements = 0  # refinements swapped in, over the whole run
        self.started = 0  # refinements started
        self.pending: Future | None = None
        self.epoch_stats: list[tuple[float, float]] = []  # (NMSE before, after) of the epoch's refinements
        self.history: list[tuple[float, float]] = []  # the same for every refinement of the run
        self.scale: Tensor | None = None
        self.wait_s = 0.0  # the training thread's time on refinements (waits; overlap false: the fine-tuning), s

    # -- the training thread ---------------------------------------------------------------------------------------
    def record(self, x: Tensor, theta: Tensor, y: Tensor) -> None:
        """One physical forward's measurements: x [B, n], θ [n_params] or [B, n_params], y [B, n_outputs]. They are
        staged until the batch is done (``commit``): a batch that fails is measured again on resume, so its
        measurements must not reach the buffer, the HDF5 parts or the checkpoint."""
        x_np = x.detach().cpu().numpy().astype(np.float32)
        th = theta.detach().cpu().expand(x.shape[0], -1) if theta.dim() == 1 else theta.detach().cpu()
        self.staged.append((x_np, th.numpy().astype(np.float32), y.detach().cpu().numpy().astype(np.float32)))

    def commit(self) -> None:
        """The completed batch's measurements go into the buffer, the next refinement's data and the next HDF5 part."""
        for sample in self.staged:
            self.buffer.add(*sample)
            self.recent.append(sample)
            self.unsaved.append(sample)
            self.samples += len(sample[0])
        self.staged = []

    def drop_staged(self) -> None:
        """Forget the measurements of a batch that failed (it is measured again when the run resumes)."""
        self.staged = []

    def recording(self, device, counted_as: Callable[[str], AbstractContextManager] | None = None):
        """``device`` (x, θ) -> y, with every measurement recorded; with ``jitter``, each call also measures points
        near the batch's (``nearby``), inside ``counted_as("refinement")`` (the trainer's sample count)."""
        def call(x: Tensor, theta: Tensor) -> Tensor:
            y = device(x, theta)
            self.record(x, theta, y)
            if self.s.jitter > 0:
                x_near, theta_near = self.nearby(x, theta)
                with counted_as("refinement") if counted_as is not None else nullcontext():
                    self.record(x_near, theta_near, device(x_near, theta_near))
            return y
        return call

    def nearby(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
        """The first ``jitter_samples`` of the batch's points x [B, n], θ [n] or [B, n_params], each moved by a
        normal step of standard deviation ``jitter`` (x kept in [-1, 1], θ in ``theta_bounds``): x [k, n], θ [k, p].
        The steps follow from the seed and the samples recorded so far, so a resumed run draws the same."""
        k = min(self.s.jitter_samples, x.shape[0])
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * self.samples + len(self.staged))
        theta = (theta.expand(x.shape[0], -1) if theta.dim() == 1 else theta)[:k]
        x_near = (x[:k] + self.s.jitter * torch.randn(x[:k].shape, generator=gen, dtype=x.dtype)).clamp(-1.0, 1.0)
        theta_near = theta + self.s.jitter * torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
        if self.theta_bounds is not None:
            low, high = (b.to(theta.dtype) for b in self.theta_bounds)
            theta_near = torch.maximum(torch.minimum(theta_near, high), low)
        return x_near, theta_near

    def after_batch(self, batches_done: int) -> None:
        """Called between batches (``batches_done`` of the epoch): at every ``every_batches``-th, swap in the
        pending refinement and start the next. The batch's measurements are committed first."""
        self.commit()
        if batches_done % self.s.every_batches == 0:
            self.swap_pending()
            self.start()

    def finish_epoch(self) -> dict:
        """Swap in the pending refinement; the epoch's columns for metrics.csv."""
        self.swap_pending()
        stats, self.epoch_stats = self.epoch_stats, []
        before = [b for b, _ in stats]
        after = [a for _, a in stats]
        return {"twin_nmse_recent_before": float(np.mean(before)) if stats else None,
                "twin_nmse_recent_after": float(np.mean(after)) if stats else None,
                "twin_nmse_recent_last": before[-1] if stats else None,
                "refinements": len(stats), "refine_buffer": len(self.buffer)}

    def start(self, steps: int | None = None, at_once: bool = False) -> None:
        """Start a refinement on what was measured since the last one (nothing measured: none), of ``steps`` Adam
        steps (None: the settings'); ``at_once``: on the training thread and swapped in now, whatever ``overlap``."""
        if not self.recent:
            return
        recent = TwinData(*_stack(self.recent))
        self.recent = []
        buffer = self.buffer.data()
        if self.scale is None:
            self.scale = robust_std(torch.as_tensor(self.original.y if self.original is not None else buffer.y))
        work = copy.deepcopy(self.twin)  # the twin's weights do not change while it is copied: between batches
        seed = self.seed * 1_000_003 + self.started
        self.started += 1
        args = (work, recent, buffer, self.original, self.s, steps or self.s.steps, self.scale, seed)
        if self.s.overlap and not at_once:
            self.pending = _REFINE_WORKER.submit(_refine, *args)
        else:  # at once, on the training thread: the twin's time
            t0 = time.perf_counter()
            done: Future = Future()
            done.set_result(_refine(*args))
            self.wait_s += time.perf_counter() - t0
            self.pending = done
            self.swap_pending()

    def swap_pending(self) -> None:
        """Wait for the pending refinement, if any, and load its weights into the twin (between batches only)."""
        if self.pending is None:
            return
        t0 = time.perf_counter()
        state, before, after = self.pending.result()
        self.wait_s += time.perf_counter() - t0
        self.pending = None
        with torch.no_grad():
            self.twin.load_state_dict(state)
        self.refinements += 1
        self.epoch_stats.append((before, after))
        self.history.append((before, after))
        log.debug("twin refined (%d): NMSE on the newest measurements %.4g -> %.4g", self.refinements, before, after)

    # -- files and checkpoints ---------------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the measurements not yet on disk as the next HDF5 part, and the refined twin's artifact."""
        if self.unsaved:
            x, theta, y = _stack(self.unsaved)
            meta = {**self.metadata, "part": self.parts + 1,
                    "date": dt.datetime.now(dt.timezone.utc).isoformat()}
            save_twin_data(self.out_dir / DATA_FOLDER / f"part-{self.parts + 1:05d}.h5",
                           TwinData(x, theta, y, {k: v for k, v in meta.items() if isinstance(v, (str, int, float))}))
            self.parts += 1
            self.unsaved = []
        if self.refinements:
            self.save_artifact()

    def save_artifact(self) -> Path | None:
        """``RUN/twin_refined.pt``: the twin as refined so far, with the original's metadata and its lineage."""
        meta = {**self.lineage, "refined_in_run": str(self.out_dir.resolve()), "refine_samples": self.samples,
                "refinements": self.refinements, "refine_data": f"{DATA_FOLDER}/part-*.h5",
                "date": dt.datetime.now(dt.timezone.utc).isoformat()}
        try:
            return save_twin(self.out_dir / ARTIFACT, self.twin, meta)
        except (AttributeError, TypeError, ValueError) as err:  # a twin that is not a registered kind: not saved
            log.debug("the refined twin is not saved as an artifact: %s", err)
            return None

    def state(self) -> dict:
        """Everything a resumed run needs (the pending refinement is waited for, not swapped in)."""
        pending = self.pending.result() if self.pending is not None else None
        return {"buffer": self.buffer.state(), "twin": {k: v.detach().clone() for k, v in self.twin.state_dict().items()},
                "pending": None if pending is None else {"state": pending[0], "before": pending[1],
                                                         "after": pending[2]},
                "recent": [[torch.from_numpy(a.copy()) for a in s] for s in self.recent],
                "epoch_stats": [list(s) for s in self.epoch_stats], "history": [list(s) for s in self.history],
                "parts": self.parts, "samples": self.samples,
                "refinements": self.refinements, "started": self.started,
                "scale": None if self.scale is None else self.scale.clone()}

    def load_state(self, state: dict) -> None:
        """Continue from ``state()`` as saved: the twin's weights, the buffer, the pending refinement. HDF5 parts
        written after that checkpoint are removed (the resumed run measures those batches again)."""
        with torch.no_grad():
            self.twin.load_state_dict(state["twin"])
        self.buffer.load_state(state["buffer"])
        self.recent = [tuple(t.numpy() for t in s) for s in state["recent"]]
        self.staged, self.unsaved = [], []
        self.epoch_stats = [tuple(s) for s in state["epoch_stats"]]
        self.history = [tuple(s) for s in state.get("history", [])]
        self.parts, self.samples = int(state["parts"]), int(state["samples"])
        self.refinements, self.started = int(state["refinements"]), int(state["started"])
        self.scale = state["scale"]
        self.pending = None
        if state["pending"] is not None:
            p = state["pending"]
            self.pending = Future()
            self.pending.set_result((p["state"], float(p["before"]), float(p["after"])))
        for part in sorted((self.out_dir / DATA_FOLDER).glob("part-*.h5")):
            if int(part.stem.split("-")[1]) > self.parts:
                part.unlink()

    def close(self) -> None:
        """Wait for a refinement still running (its result is dropped unless swapped in)."""
        if self.pending is not None and not self.pending.done():
            self.pending.exception()


def _refine(work: nn.Module, recent: TwinData, buffer: TwinData, original: TwinData | None, s: RefineConfig,
            steps: int, scale: Tensor, seed: int) -> tuple[dict[str, Tensor], float, float]:
    """Fine-tune ``work`` (a copy of the twin) for ``steps`` Adam steps; its weights and its NMSE on ``recent``
    before and after."""
    before = twin_nmse(work, recent)
    fine_tune(work, buffer, original, steps=steps, batch_size=s.batch_size, lr=s.lr, mix_fraction=s.mix_fraction,
              scale=scale, seed=seed)
    after = twin_nmse(work, recent)
    return {k: v.detach() for k, v in work.state_dict().items()}, before, after


def refine_metadata(setup: Any, encoding_key: str, run: Path) -> dict:
    """The metadata of the refinement's measurements, as ``calibrate.collect_twin_data`` writes for twin data."""
    import json

    return {"setup": setup.name, "n": int(setup.n_inputs), "repeats": 1, "encoding": encoding_key,
            "instruments": json.dumps(setup.snapshot(), default=str), "source": "training measurements (refinement)",
            "run": str(Path(run).resolve())}
