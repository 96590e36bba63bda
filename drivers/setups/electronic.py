"""The nonlinear-circuit setup: an AWG drives an RLC circuit with a diode pair, an oscilloscope records it.

Encoding of one sample (all in "units" in [-1, 1]; ``drive_volts_per_unit`` turns units into volts at the
circuit input, ``output_volts_per_unit`` turns measured volts back into units)::

    values   x_1 θ_1 x_2 θ_2 ... x_n θ_n        (inputs and parameters interleaved in time)
    samples  each value held ``samples_per_value`` AWG samples, then ``guard_samples`` of 0 V
    output   the circuit voltage over the 2n value slots, averaged in n equal bins -> y_1 ... y_n

A batch becomes ONE arbitrary waveform (samples back to back, each followed by its guard interval), played once
by a bus-triggered burst and recorded by one single-shot scope acquisition; the batch is split only when the AWG
memory or the scope record cannot hold it. The scope trace is interpolated onto the AWG sample grid shifted by
the calibrated AWG-to-scope delay (``calibrate_delay``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator
from torch import Tensor

from drivers.errors import LimitViolation

log = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AWGConfig(_Strict):
    """How to reach and drive the arbitrary waveform generator (Keysight 33500B series)."""

    resource: str = Field(description="VISA resource, e.g. TCPIP0::192.168.1.20::5025::SOCKET")
    visa_library: str = "@py"
    timeout_s: PositiveFloat = 10.0
    channel: Literal[1, 2] = 1
    load_ohm: float | Literal["INF"] = 50.0
    max_abs_volts: float = Field(gt=0, le=10, description="safety limit on the programmed |offset| + amplitude/2 (V "
                                 "into the configured load); the driver refuses anything above it")
    memory_points: PositiveInt = 1_000_000


class ScopeConfig(_Strict):
    """How to reach and set up the oscilloscope (Keysight InfiniiVision)."""

    resource: str
    visa_library: str = "@py"
    timeout_s: PositiveFloat = 10.0
    channel: int = Field(1, ge=1, le=4)
    reference_channel: int = Field(2, ge=1, le=4, description="channel that sees the AWG output (delay calibration)")
    volts_per_div: PositiveFloat = 0.35
    reference_volts_per_div: PositiveFloat = 0.5
    trigger_source: str = "EXT"
    trigger_level_v: float = 1.0
    max_points: PositiveInt = 1_000_000
    waveform_format: Literal["WORD", "BYTE"] = "WORD"


class ElectronicInstruments(_Strict):
    awg: AWGConfig
    scope: ScopeConfig


class ElectronicEncoding(_Strict):
    """Time-domain encoding of inputs, parameters and outputs (see module docstring)."""

    sample_rate_hz: float = Field(1e6, gt=0, le=250e6)
    samples_per_value: PositiveInt = 2
    guard_samples: int = Field(128, ge=0)
    drive_volts_per_unit: PositiveFloat = 1.0
    output_volts_per_unit: PositiveFloat = 0.5
    lead_samples: int = Field(32, ge=8, description="0 V samples before the first sample of a batch")

    def samples_per_item(self, n_inputs: int) -> int:
        """AWG samples one batch item occupies, guard included."""
        return 2 * n_inputs * self.samples_per_value + self.guard_samples


# ----------------------------------------------------------------------------------------------------------
# Pure encoding functions, shared by the setup and the twins


def drive_units(x: Tensor, theta: Tensor, enc: ElectronicEncoding) -> Tensor:
    """x [B, n] and theta [n] or [B, n] (units) -> drive waveform [B, 2 n spv] (units), x and θ interleaved."""
    theta = theta.expand(x.shape[0], -1) if theta.dim() == 1 else theta
    values = torch.stack([x, theta], dim=2).reshape(x.shape[0], -1)
    return values.repeat_interleave(enc.samples_per_value, dim=1)


def bin_outputs(trace: Tensor, n_outputs: int) -> Tensor:
    """trace [B, T] -> [B, n_outputs]: mean over n_outputs equal consecutive bins (T divisible by n_outputs)."""
    return trace.reshape(trace.shape[0], n_outputs, -1).mean(dim=2)


@dataclass
class Counters:
    """What the setup did so far (for throughput and overhead reports)."""

    forward_calls: int = 0
    samples: int = 0
    uploads: int = 0
    instrument_s: float = 0.0
    history: list[int] = field(default_factory=list)  # uploads per forward call


class ElectronicSetup:
    """PhysicalSystem for the nonlinear circuit: x [B, n] in [-1, 1], θ [n] in param_bounds -> y [B, n]."""

    def __init__(self, awg, scope, instruments: ElectronicInstruments, encoding: ElectronicEncoding,
                 n: int, param_bounds: tuple[float, float] = (-1.0, 1.0), delay_s: float = 0.0):
        self.awg, self.scope = awg, scope
        self.cfg, self.enc = instruments, encoding
        self.n_inputs = self.n_params = self.n_outputs = n
        self.param_bounds = (torch.full((n,), float(param_bounds[0])), torch.full((n,), float(param_bounds[1])))
        self.delay_s = delay_s
        self.counters = Counters()
        self._timebase: tuple[float, int] | None = None
        if encoding.drive_volts_per_unit > instruments.awg.max_abs_volts:
            raise LimitViolation(awg.name, None, f"drive_volts_per_unit {encoding.drive_volts_per_unit} V exceeds "
                                 f"the safety limit max_abs_volts {instruments.awg.max_abs_volts} V")

    # -- instrument set-up ------------------------------------------------------------------------------
    def configure(self) -> None:
        """Put both instruments in the state every forward pass relies on (output stays off until armed)."""
        awg, scope, enc, sc = self.awg, self.scope, self.enc, self.cfg.scope
        awg.output = False
        awg.load = self.cfg.awg.load_ohm
        awg.set_levels(amplitude_vpp=2.0 * enc.drive_volts_per_unit, offset_v=0.0)  # DAC +-1 -> +-drive_volts_per_unit
        awg.configure_burst(n_cycles=1, trigger_source="BUS")
        scope.set_channel(sc.channel, scale_v_per_div=sc.volts_per_div, offset_v=0.0, coupling="DC", display=True)
        # the reference channel is switched on only for the delay calibration: one channel per acquisition
        # halves what the scope digitizes and sends
        scope.set_channel(sc.reference_channel, scale_v_per_div=sc.reference_volts_per_div, offset_v=0.0,
                          coupling="DC", display=False)
        scope.set_edge_trigger(source=sc.trigger_source, level_v=sc.trigger_level_v, slope="POS")
        scope.set_acquisition(type="NORM")
        self._timebase = None

    def recover(self) -> None:
        """After a failed forward: reopen both links and put the instruments back in their set-up state."""
        for inst in (self.awg, self.scope):
            inst.link.reconnect()
        self.configure()

    def items_per_upload(self) -> int:
        """How many batch items fit in one waveform (AWG memory and scope record both limit it)."""
        per_item = self.enc.samples_per_item(self.n_inputs)
        room = min(self.cfg.awg.memory_points, self.cfg.scope.max_points) - 2 * self.enc.lead_samples
        if room < per_item:
            raise LimitViolation(self.awg.name, None, f"one item needs {per_item} samples, the AWG memory / scope "
                                 f"record holds {room}")
        return room // per_item

    # -- the physical forward pass ------------------------------------------------------------------------
    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        """Run a batch through the circuit. x [B, n] in [-1, 1], θ [n] or [B, n] in param_bounds -> y [B, n]."""
        x, theta = x.detach().double(), theta.detach().double()
        self._check_inputs(x, theta)
        units = drive_units(x, theta, self.enc)
        t0 = time.perf_counter()
        chunks = [self._play_and_record(part) for part in torch.split(units, self.items_per_upload())]
        c = self.counters
        c.instrument_s += time.perf_counter() - t0
        c.forward_calls += 1
        c.samples += x.shape[0]
        c.uploads += len(chunks)
        c.history.append(len(chunks))
        return torch.cat(chunks).float()

    __call__ = forward

    def _check_inputs(self, x: Tensor, theta: Tensor) -> None:
        if not torch.isfinite(x).all() or x.abs().max() > 1.0 + 1e-6:
            raise LimitViolation(self.awg.name, None, f"inputs must lie in [-1, 1]; got [{x.min():.3g}, {x.max():.3g}]")
        low, high = (b.double() for b in self.param_bounds)
        if not torch.isfinite(theta).all() or (theta < low - 1e-6).any() or (theta > high + 1e-6).any():
            raise LimitViolation(self.awg.name, None, "parameters outside param_bounds; refusing to drive the circuit")

    def waveform(self, units: Tensor) -> np.ndarray:
        """[B, L] drive units -> one waveform (DAC values in [-1, 1]): lead, then each item and its guard."""
        enc = self.enc
        items = torch.nn.functional.pad(units, (0, enc.guard_samples)).reshape(-1)
        lead = torch.zeros(enc.lead_samples, dtype=units.dtype)
        return torch.cat([lead, items, lead]).clamp(-1.0, 1.0).numpy()

    def _play_and_record(self, units: Tensor) -> Tensor:
        enc, sc = self.enc, self.cfg.scope
        wave = self.waveform(units)
        record = self.play(wave, channel=sc.channel)
        # sample k of the circuit is its voltage at k / fs after the AWG starts, plus the delay: average the
        # record over one sample period centred there (robust to how the scope's grid falls on the AWG's)
        trace = sample_averages(record.t, record.volts, len(wave), enc.sample_rate_hz,
                                self.delay_s - 0.5 / enc.sample_rate_hz)
        # cut the items out of the recorded trace and bin each one
        per_item = enc.samples_per_item(self.n_inputs)
        body = trace[enc.lead_samples: enc.lead_samples + units.shape[0] * per_item]
        items = torch.as_tensor(body).reshape(units.shape[0], per_item)[:, : units.shape[1]]
        return bin_outputs(items, self.n_outputs) / enc.output_volts_per_unit

    def play(self, wave: np.ndarray, channel: int):
        """Upload ``wave`` (DAC values in [-1, 1] at the encoding's sample rate), play it once, and return the
        scope's record of ``channel`` (a ``drivers.scope.Waveform``: t [N] s from the trigger, volts [N])."""
        awg, scope, enc = self.awg, self.scope, self.enc
        fs = enc.sample_rate_hz
        awg.output = False
        awg.upload_arb("PNNBATCH", wave)
        awg.sample_rate = fs
        duration = len(wave) / fs
        points = min(self.cfg.scope.max_points, 2 * len(wave))  # 2 points per AWG sample for the box average
        if self._timebase != (duration, points):
            # InfiniiVision's LEFT reference is 1 of 10 divisions from the left edge: delay it by one division
            # so the record starts at the trigger and holds the whole waveform
            scope.set_timebase(range_s=duration, position_s=duration / 10, reference="LEFT")
            self._timebase = (duration, points)
        awg.output = True
        scope.arm_single(timeout_s=self.cfg.scope.timeout_s)
        awg.trigger()
        scope.wait_complete(timeout_s=self.cfg.scope.timeout_s + 2 * duration)
        return scope.read_waveform(channel, points=points, fmt=self.cfg.scope.waveform_format)

    # -- calibration -------------------------------------------------------------------------------------------
    def calibrate_delay(self, n_samples: int = 4096, seed: int = 0) -> float:
        """Measure the AWG-to-scope delay (s) by cross-correlating a pseudo-random waveform with what the scope's
        reference channel records. Sets and returns ``delay_s``."""
        rng = np.random.default_rng(seed)
        fs = self.enc.sample_rate_hz
        room = min(self.cfg.awg.memory_points, self.cfg.scope.max_points) - 2 * self.enc.lead_samples - 256
        n_samples = max(64, min(n_samples, room))
        chips = np.sign(rng.standard_normal(n_samples // 8)).repeat(8) * 0.5
        wave = np.concatenate([np.zeros(self.enc.lead_samples), chips, np.zeros(self.enc.lead_samples + 256)])
        ref_ch = self.cfg.scope.reference_channel
        self.scope.set_channel(ref_ch, display=True)
        try:
            record = self.play(wave, channel=ref_ch)
        finally:
            self.scope.set_channel(ref_ch, display=False)
        recorded = np.interp(np.arange(len(wave)) / fs, record.t, record.volts, left=0.0, right=0.0)
        recorded = recorded - recorded.mean()
        ref = wave - wave.mean()
        corr = np.correlate(recorded, ref, mode="full")[len(ref) - 1:]  # lags 0 .. len-1
        k = int(np.argmax(corr[: len(ref) // 2]))
        # fractional part: at sample instants, a record delayed by k + f samples reads (1 - f) x[n - k] + f x[n - k - 1]
        # (linear between the AWG's samples); solve for f by least squares
        mix = np.stack([np.roll(ref, k), np.roll(ref, k + 1)], axis=1)
        (a, b), *_ = np.linalg.lstsq(mix, recorded, rcond=None)
        frac = float(np.clip(b / (a + b), 0.0, 1.0)) if a + b != 0 else 0.0
        self.delay_s = (k + frac) / fs
        log.info("AWG-to-scope delay: %.3f us", self.delay_s * 1e6)
        return self.delay_s

    def output_off(self) -> None:
        """Switch the AWG output off (safe to call at any time, never raises)."""
        self.awg.output_off()

    def snapshot(self) -> dict:
        """Instrument identities and settings for the run folder."""
        return {"awg": {"identity": str(self.awg.identity), **self.cfg.awg.model_dump()},
                "scope": {"identity": str(self.scope.identity), **self.cfg.scope.model_dump()},
                "encoding": self.enc.model_dump(), "delay_s": self.delay_s, "n": self.n_inputs}


def sample_averages(t: np.ndarray, volts: np.ndarray, n: int, fs: float, delay_s: float) -> np.ndarray:
    """The scope record (t [N] s, volts [N]) averaged over each of n AWG sample periods, the k-th starting at
    k / fs + delay_s. A box average of the piecewise-linear record, exact whatever the scope's point spacing, so
    the result does not depend on how the scope's grid falls against the AWG's (that is, on the batch size).
    Periods outside the record count as 0 V."""
    t = np.concatenate([[t[0] - 1e-12], t, [t[-1] + 1e-12]])
    v = np.concatenate([[0.0], volts, [0.0]])
    integral = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * np.diff(t))])  # V s at each t
    edges = np.arange(n + 1) / fs + delay_s
    return np.diff(np.interp(edges, t, integral)) * fs


__all__ = ["AWGConfig", "ScopeConfig", "ElectronicInstruments", "ElectronicEncoding", "ElectronicSetup",
           "drive_units", "bin_outputs", "sample_averages", "emf_per_unit"]


def emf_per_unit(awg: AWGConfig, enc: ElectronicEncoding, source_ohm: float = 50.0) -> float:
    """AWG EMF (V) per drive unit: the AWG sets ``drive_volts_per_unit`` into its configured load, so the EMF
    behind its 50 ohm source is larger by (R_load + 50) / R_load (twice at 50 ohm, equal for High-Z)."""
    if awg.load_ohm == "INF":
        return enc.drive_volts_per_unit
    return enc.drive_volts_per_unit * (awg.load_ohm + source_ohm) / awg.load_ohm
