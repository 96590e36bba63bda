"""The setup contract: what a physical setup must provide, and what it may.

``PhysicalSystem`` is all that physics-aware training needs (``orchestrator.pat``): sizes, the safe range of θ and a
measured forward pass. ``PhysicalSetup`` is what the rest of pnn-lab needs from a setup opened on a bench (set-up,
recovery after a failed batch, instrument calibration, a snapshot for the run folder, making it safe); subclass it,
implement the required members, and override the optional ones your setup has a use for::

    required    name, n_inputs, n_params, n_outputs, param_bounds, enc, forward(x, θ)
    optional    instruments, configure(), calibrate_instruments(), calibration_summary(),
                reuse_calibration(snapshot, source), snapshot(), output_off(), device_seconds_per_item()
    provided    counters, recover() (reconnect each instrument, set up again, read the settings back)

Shapes: x [B, n_inputs] in [-1, 1]; θ [n_params] (shared by the batch) or [B, n_params] inside ``param_bounds``;
y [B, n_outputs] in the setup's output units. ``check_batch`` refuses anything else before it reaches hardware.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from drivers.errors import LimitViolation

log = logging.getLogger(__name__)


@runtime_checkable
class PhysicalSystem(Protocol):
    """The physical-layer contract of physics-aware training.

    ``forward(x, theta)`` maps x [B, n_inputs] in [-1, 1] and theta [n_params] (shared by the batch)
    or [B, n_params] to y [B, n_outputs]. ``param_bounds`` is the safe range of theta: (low, high),
    each [n_params]; it is enforced before anything reaches hardware.
    """

    n_inputs: int
    n_params: int
    n_outputs: int
    param_bounds: tuple[Tensor, Tensor]

    def forward(self, x: Tensor, theta: Tensor) -> Tensor: ...


def check_batch(instrument: str, x: Tensor, theta: Tensor, n_inputs: int, param_bounds: tuple[Tensor, Tensor]) -> None:
    """Refuse a batch before anything reaches the hardware: x must be [B, n_inputs], finite, in [-1, 1]; θ finite and
    inside ``param_bounds``. Raises LimitViolation naming ``instrument``."""
    if x.dim() != 2 or x.shape[1] != n_inputs:
        raise LimitViolation(instrument, None, f"inputs must have shape [B, {n_inputs}], got {list(x.shape)}")
    if not torch.isfinite(x).all() or x.abs().max() > 1.0 + 1e-6:
        raise LimitViolation(instrument, None, f"inputs must lie in [-1, 1]; got [{x.min():.3g}, {x.max():.3g}]")
    low, high = (b.double() for b in param_bounds)
    if not torch.isfinite(theta).all() or (theta < low - 1e-6).any() or (theta > high + 1e-6).any():
        raise LimitViolation(instrument, None, "parameters outside param_bounds; refusing to drive the device")


def uniform_bounds(n: int, bounds: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """The same (low, high) for each of ``n`` parameters, as ``param_bounds`` tensors ([n] each)."""
    return torch.full((n,), float(bounds[0])), torch.full((n,), float(bounds[1]))


@dataclass
class Counters:
    """What the setup did so far (for throughput and overhead reports)."""

    forward_calls: int = 0
    samples: int = 0
    uploads: int = 0
    instrument_s: float = 0.0
    history: list[int] = field(default_factory=list)  # uploads per forward call
    clipped_records: int = 0  # records (scope) or spectra (camera) cut off at the instrument's full scale

    def record(self, samples: int, uploads: int, seconds: float) -> None:
        """Count one forward call of ``samples`` items in ``uploads`` uploads that took ``seconds`` on the
        instruments."""
        self.instrument_s += seconds
        self.forward_calls += 1
        self.samples += samples
        self.uploads += uploads
        self.history.append(uploads)


class PhysicalSetup(ABC):
    """A ``PhysicalSystem`` opened on a bench: the members the orchestrator uses (see the module docstring).

    A subclass's ``__init__`` sets ``n_inputs``, ``n_params``, ``n_outputs``, ``param_bounds`` and ``enc`` and calls
    ``super().__init__()``.
    """

    name: ClassVar[str]
    """The setup's name, as in the experiment file's ``setup`` and in twin data and artifact metadata."""
    n_inputs: int
    n_params: int
    n_outputs: int
    param_bounds: tuple[Tensor, Tensor]
    """Safe range of θ: (low [n_params], high [n_params]); the trainer keeps θ inside it after every step."""
    enc: Any
    """The experiment's encoding section (a pydantic model): twin data and twins are reused only for an equal one."""

    def __init__(self) -> None:
        self.counters = Counters()

    @property
    def instruments(self) -> tuple:
        """The instrument drivers (``drivers.scpi.SCPIInstrument``) the setup talks to, for ``recover``; none for a
        setup without instruments."""
        return ()

    @abstractmethod
    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        """Measure a batch: x [B, n_inputs] in [-1, 1], θ [n_params] or [B, n_params] -> y [B, n_outputs] (float32).
        Counts the call in ``counters``; raises an ``InstrumentError`` when an instrument fails."""

    def __call__(self, x: Tensor, theta: Tensor) -> Tensor:
        return self.forward(x, theta)

    # -- optional: override what your setup has -------------------------------------------------------------------
    def configure(self) -> None:
        """Put the instruments in the state every forward pass relies on (outputs stay off or idle)."""

    def recover(self) -> None:
        """After a failed forward: reopen each instrument's link, put the instruments back in their set-up state
        (``configure``) and read back the settings it applied. A reset instrument is logged; what the drivers
        remember of their settings is forgotten first, since after a failure none of it is sure."""
        for inst in self.instruments:
            inst.link.reconnect()
            if inst.was_reset():
                log.warning("%s had reset itself: applying its settings again", inst.name)
            inst.settings.clear()
        self.configure()
        for inst in self.instruments:
            inst.verify_settings()

    def calibrate_instruments(self) -> dict:
        """The instrument calibration done whenever the setup is opened (delays, dark frames, ...); what it found."""
        return {}

    def calibration_summary(self) -> dict:
        """What the instrument calibration found, for calibration.json and report.json (empty before it ran)."""
        return {}

    def reuse_calibration(self, snapshot: dict | None, source: str) -> bool:
        """Read the outputs as they were read when ``source`` (a twin, or its data) was measured: ``snapshot`` is the
        setup's ``snapshot()`` stored with it. Returns False when it was measured under instrument settings that no
        longer hold: it must then be measured again."""
        return True

    def snapshot(self) -> dict:
        """Instrument identities and settings, for the run folder and the metadata of twin data and twins."""
        return {"encoding": self.enc.model_dump(), "n": self.n_inputs, "n_outputs": self.n_outputs}

    def output_off(self) -> None:
        """Make the setup safe (outputs off, SLM blank); safe to call at any time, never raises."""

    def device_seconds_per_item(self) -> dict[str, float]:
        """The instruments' own time per batch item, s, by what takes it (``{"device": ...}``); empty if unknown."""
        return {}
