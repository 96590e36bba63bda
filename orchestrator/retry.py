"""A device that fails: a physical forward retried after recovering the instruments, and the counts of it.

Used by training (``orchestrator.trainer``) and by the twin-data measurement of calibration alike.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Callable

from torch import Tensor

from drivers.errors import InstrumentError
from orchestrator.network import Layer

log = logging.getLogger(__name__)


@dataclass
class RetryCounts:
    """How often the device failed, over all sessions of a run (kept in the checkpoint; in summary.json and, per
    epoch, in metrics.csv)."""

    forward_failures: int = 0  # failed attempts: a physical forward, or a recovery, that raised an InstrumentError
    batches_retried: int = 0  # physical forwards (one layer, one batch) that needed more than one attempt
    recoveries: int = 0  # successful recoveries (links reopened, instruments set up again)

    def since(self, before: dict) -> dict:
        """The counts since ``before`` (an earlier ``asdict`` of these counts)."""
        return {k: v - before.get(k, 0) for k, v in asdict(self).items()}


class DeviceFailure(InstrumentError):
    """A physical forward failed on every attempt: the run stops (the trainer saves its checkpoint first)."""


def _cut(command: str | None, limit: int = 100) -> str | None:
    """A command cut to ``limit`` characters for a message (an ASCII waveform upload is megabytes long)."""
    return command if command is None or len(command) <= limit else command[:limit] + "..."


def _brief(err: InstrumentError) -> str:
    """``str(err)``, with a long command cut short."""
    return str(err).replace(repr(err.command), repr(_cut(err.command)), 1) if err.command else str(err)


def retrying(layer: Layer, max_retries: int, recover: Callable[[], None] | None,
             counts: RetryCounts | None = None) -> Layer:
    """``layer`` (a physical forward) with up to ``max_retries`` retries, each after ``recover()``.

    Attempt 1 is the forward; attempt k > 1 is ``recover()`` then the forward. An attempt fails when either raises an
    InstrumentError; a failed recovery is a failed attempt like any other. After the last failed attempt a
    ``DeviceFailure`` says which instrument, what was sent and what went wrong in each attempt. ``counts`` is updated.
    """
    counts = counts if counts is not None else RetryCounts()
    attempts = max_retries + 1

    def call(x: Tensor, theta: Tensor) -> Tensor:
        failures: list[str] = []
        for attempt in range(1, attempts + 1):
            if attempt == 2:
                counts.batches_retried += 1
            step = "forward"
            try:
                if attempt > 1 and recover is not None:
                    step = "recovery"
                    recover()
                    counts.recoveries += 1
                    step = "forward"
                return layer(x, theta)
            except InstrumentError as err:
                counts.forward_failures += 1
                failures.append(f"attempt {attempt}: {step} failed: {_brief(err)}")
                last = err
                if attempt < attempts:
                    log.warning("physical %s failed (%s); retry %d of %d", step, _brief(err), attempt, max_retries)
        sent = f"a batch of {x.shape[0]} inputs of width {x.shape[-1]}, θ in [{float(theta.min()):.3g}, " \
               f"{float(theta.max()):.3g}]"
        raise DeviceFailure(last.instrument, _cut(last.command),
                            f"the physical forward of {sent} failed on all {attempts} attempt(s) (the first and "
                            f"{max_retries} retries, each after recovering the instruments): " + "; ".join(failures))

    return call
