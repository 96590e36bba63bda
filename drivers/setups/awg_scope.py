"""What the electronic and mechanical setups share: an AWG plays a whole batch as one waveform, a scope records the
device's response, and the record is cut into items and binned into outputs.

A subclass says how a batch becomes drive units (``drive``), how an item's trace becomes outputs (``outputs``) and how
the AWG is set up (``configure_awg``); this class does the rest::

    x [B, n], θ  --drive-->  units [B, L]  --waveform-->  lead | item 1 | guard | item 2 | guard | ... | lead
                 --play-->   scope record  --sample_averages-->  one value per AWG sample, shifted by the delay
                 --cut-->    [B, L]  --outputs-->  y [B, n_outputs]

The batch is split only when the AWG memory or the scope record cannot hold it (``items_per_upload``).
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt, field_validator
from torch import Tensor

from encoding.awg_scope import sample_averages

from drivers.awg import LOAD_MAX_OHM, LOAD_MIN_OHM
from drivers.errors import LimitViolation
from drivers.scope import _TRIGGER_SOURCES
from common.models import StrictModel
from drivers.resources import Resource
from drivers.setups.base import PhysicalSetup, check_batch, uniform_bounds

log = logging.getLogger(__name__)

SCREEN_DIVISIONS = 8  # vertical divisions of the InfiniiVision screen (its ADC range)
ADC_CODES = 256  # the 8-bit ADC (NORM acquisition): code = round(volts / step) in -128 .. 127 about the screen centre


LoadOhm = Annotated[float, Field(ge=LOAD_MIN_OHM, le=LOAD_MAX_OHM)] | Literal["INF"]
"""The 33500B's output load setting: 1 ohm to 10 kohm, or INF (High-Z)."""


class AWGConfig(StrictModel):
    """How to reach and drive the arbitrary waveform generator (Keysight 33500B series)."""

    resource: Resource = Field(description="VISA resource, e.g. TCPIP0::192.168.1.20::5025::SOCKET")
    visa_library: str = "@py"
    timeout_s: PositiveFloat = 10.0
    channel: Literal[1, 2] = 1
    load_ohm: LoadOhm = 50.0
    max_abs_volts: float = Field(gt=0, le=10, description="safety limit on the programmed |offset| + amplitude/2 (V "
                                 "into the configured load); the driver refuses anything above it")
    max_abs_offset_volts: float | None = Field(None, ge=0, description="safety limit on |offset|, V (0: no DC offset)")
    memory_points: PositiveInt = 1_000_000


class ScopeConfig(StrictModel):
    """How to reach and set up the oscilloscope (Keysight InfiniiVision)."""

    resource: Resource
    visa_library: str = "@py"
    timeout_s: PositiveFloat = 10.0
    channel: int = Field(1, ge=1, le=4)
    reference_channel: int = Field(2, ge=1, le=4, description="channel that sees the AWG output (delay calibration)")
    volts_per_div: PositiveFloat = 0.35
    reference_volts_per_div: PositiveFloat = 0.5
    trigger_source: str = "EXT"
    trigger_level_v: float = 1.0
    max_points: PositiveInt = 1_000_000
    # the setups acquire NORM (8-bit codes): BYTE carries them whole in half the bytes; WORD adds bits in HRES, AVER
    waveform_format: Literal["WORD", "BYTE"] = "BYTE"

    @field_validator("trigger_source")
    @classmethod
    def _known_source(cls, source: str) -> str:
        if source.upper() not in _TRIGGER_SOURCES:
            raise ValueError(f"{source!r} is not one of {', '.join(sorted(set(_TRIGGER_SOURCES.values())))}")
        return source


class AwgScopeSetup(PhysicalSetup):
    """PhysicalSystem base: x [B, n_inputs] in [-1, 1], θ [n_params] or [B, n_params] in param_bounds -> y.

    ``instruments`` has ``awg`` and ``scope`` sections (``AWGConfig``, ``ScopeConfig``); ``encoding`` has
    ``sample_rate_hz``, ``guard_samples``, ``lead_samples``, ``output_volts_per_unit`` and ``samples_per_item(n)``.
    """

    name = "awg_scope"  # the setup's name in data and artifact metadata
    device = "device"  # what the AWG drives, for messages
    frequency_response = None  # the device's measured response, for setups that measure one
    points_per_sample = 2  # scope points per AWG sample: enough for the box average to be exact (sample_averages)

    def __init__(self, awg, scope, instruments, encoding, n_inputs: int, n_outputs: int,
                 param_bounds: tuple[float, float] = (-1.0, 1.0), delay_s: float = 0.0):
        super().__init__()
        self.awg, self.scope = awg, scope
        self.cfg, self.enc = instruments, encoding
        self.n_inputs = self.n_params = n_inputs
        self.n_outputs = n_outputs
        self.param_bounds = uniform_bounds(n_inputs, param_bounds)
        if encoding.drive_volts_per_unit > instruments.awg.max_abs_volts:
            raise LimitViolation(awg.name, None, f"drive_volts_per_unit {encoding.drive_volts_per_unit} V exceeds "
                                 f"the {self.device}'s safety limit max_abs_volts {instruments.awg.max_abs_volts} V")
        self.delay_s = delay_s  # AWG trigger to scope record (calibrate_delay)
        self.response_delay_s = 0.0  # the device's own delay on top (e.g. sound through air), measured by a subclass
        self._timebase: tuple[float, int] | None = None

    # -- what a subclass defines ------------------------------------------------------------------------------
    def drive(self, x: Tensor, theta: Tensor) -> Tensor:
        """x [B, n], θ [n] or [B, n] -> drive units [B, L] in [-1, 1]."""
        raise NotImplementedError

    def outputs(self, items: Tensor) -> Tensor:
        """Recorded volts over each item's drive samples [B, L] -> outputs [B, n_outputs] (units)."""
        raise NotImplementedError

    def configure_awg(self) -> None:
        """Load, levels, burst mode; leaves the output off unless the setup keeps it on."""
        raise NotImplementedError

    # -- instrument set-up ------------------------------------------------------------------------------------
    @property
    def instruments(self) -> tuple:
        return (self.awg, self.scope)

    def configure(self) -> None:
        """Put both instruments in the state every forward pass relies on."""
        scope, sc = self.scope, self.cfg.scope
        for inst in (self.awg, self.scope):
            inst.clear()  # *CLS: an old power-on bit or error must not fail the first batch
        scope.set_channel(sc.channel, scale_v_per_div=sc.volts_per_div, offset_v=0.0, coupling="DC", display=True)
        # the reference channel is switched on only for the delay calibration: one channel per acquisition
        # halves what the scope digitizes and sends
        scope.set_channel(sc.reference_channel, scale_v_per_div=sc.reference_volts_per_div, offset_v=0.0,
                          coupling="DC", display=False)
        scope.set_edge_trigger(source=sc.trigger_source, level_v=sc.trigger_level_v, slope="POS")
        scope.set_acquisition(type="NORM")
        self._timebase = None
        self.configure_awg()

    @staticmethod
    def item_room(instruments, encoding) -> int:
        """AWG samples one upload has for items: the AWG memory or the scope record, whichever is smaller, less the
        leads before and after."""
        return min(instruments.awg.memory_points, instruments.scope.max_points) - 2 * encoding.lead_samples

    def items_per_upload(self) -> int:
        """How many batch items fit in one waveform (AWG memory and scope record both limit it)."""
        per_item = self.enc.samples_per_item(self.n_inputs)
        room = self.item_room(self.cfg, self.enc)
        if room < per_item:
            raise LimitViolation(self.awg.name, None, f"one item needs {per_item} samples, the AWG memory / scope "
                                 f"record holds {room}")
        return room // per_item

    def device_seconds_per_item(self) -> dict[str, float]:
        """The instruments' own time per batch item, s: the waveform playing it (guard included)."""
        return {"device": self.enc.samples_per_item(self.n_inputs) / self.enc.sample_rate_hz}

    # -- the physical forward pass ------------------------------------------------------------------------------
    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        """Run a batch through the device. x [B, n] in [-1, 1], θ [n] or [B, n] in param_bounds -> y [B, n_outputs]."""
        x, theta = x.detach().double(), theta.detach().double()
        check_batch(self.awg.name, x, theta, self.n_inputs, self.param_bounds)
        units = self.drive(x, theta)
        t0 = time.perf_counter()
        chunks = [self._play_and_record(part) for part in torch.split(units, self.items_per_upload())]
        for inst in (self.awg, self.scope):
            inst.check_status()  # a reset or an error during the batch makes its outputs worthless
        self.counters.record(x.shape[0], len(chunks), time.perf_counter() - t0)
        return torch.cat(chunks).float()

    __call__ = forward

    def waveform(self, units: Tensor) -> np.ndarray:
        """[B, L] drive units -> one waveform (DAC values in [-1, 1]): lead, then each item and its guard."""
        lead, guard = self.enc.lead_samples, self.enc.guard_samples
        units = units.numpy()
        batch, length = units.shape
        wave = np.zeros(2 * lead + batch * (length + guard), dtype=units.dtype)
        items = wave[lead: wave.size - lead].reshape(batch, length + guard)
        np.clip(units, -1.0, 1.0, out=items[:, :length])  # written in place: no padded copies
        return wave

    def _play_and_record(self, units: Tensor) -> Tensor:
        enc, sc = self.enc, self.cfg.scope
        wave = self.waveform(units)
        record = self.play(wave, channel=sc.channel)
        self._check_screen(record.volts)
        # sample k of the device is its output at k / fs after the AWG starts, plus the delay: average the
        # record over one sample period centred there (robust to how the scope's grid falls on the AWG's)
        trace = sample_averages(record.t, record.volts, len(wave), enc.sample_rate_hz,
                                self.delay_s + self.response_delay_s - 0.5 / enc.sample_rate_hz)
        # cut the items out of the recorded trace and bin each one
        per_item = enc.samples_per_item(self.n_inputs)
        body = trace[enc.lead_samples: enc.lead_samples + units.shape[0] * per_item]
        items = torch.as_tensor(body).reshape(units.shape[0], per_item)[:, : units.shape[1]]
        return self.outputs(items)

    def screen_edges(self) -> tuple[float, float]:
        """The lowest and highest volts the scope's 8-bit ADC reports on the output channel: its codes -128 and +127
        (steps of 8 div * V/div / 256 about the screen centre), where everything beyond the screen lands."""
        step = SCREEN_DIVISIONS * self.cfg.scope.volts_per_div / ADC_CODES
        return -ADC_CODES // 2 * step, (ADC_CODES // 2 - 1) * step

    def clipped_points(self, volts: np.ndarray) -> int:
        """How many points of a record sit on the ADC's lowest or highest code (the signal went past the screen)."""
        low, high = self.screen_edges()
        half = 0.5 * SCREEN_DIVISIONS * self.cfg.scope.volts_per_div / ADC_CODES  # half a code: rounding in the scaling
        return int(np.count_nonzero((volts <= low + half) | (volts >= high - half)))

    def _check_screen(self, volts: np.ndarray) -> None:
        """Count (and warn once about) records that reach the edge of the scope's screen: the ADC cut them off."""
        clipped = self.clipped_points(volts)
        if clipped:
            self.counters.clipped_records += 1
            if self.counters.clipped_records == 1:
                low, high = self.screen_edges()
                log.warning("%s: %d of %d points (%.2g %%) of the record on CHAN%d are at the screen edge (the "
                            "ADC's last codes, %.3g V and %+.3g V): the output went past the screen and is clipped "
                            "there; raise instruments.scope.volts_per_div (scope_clipped_records counts such records)",
                            self.scope.name, clipped, volts.size, 100 * clipped / volts.size,
                            self.cfg.scope.channel, low, high)

    def before_upload(self) -> None:
        """Called before a waveform is replaced (the electronic setup switches the output off). The AWG's error queue
        is read once after the upload: an error here fails the batch before the trigger, naming these settings."""
        self.awg.output = False

    def before_trigger(self) -> None:
        """Called once the new waveform is loaded, before the scope is armed. The AWG's error queue is read once
        after the trigger: an error here fails the batch before its record is read, naming these settings."""
        self.awg.output = True

    def play(self, wave: np.ndarray, channel: int):
        """Upload ``wave`` (DAC values in [-1, 1] at the encoding's sample rate), play it once, and return the
        scope's record of ``channel`` (a ``drivers.scope.Waveform``: t [N] s from the trigger, volts [N])."""
        awg, scope, enc = self.awg, self.scope, self.enc
        fs = enc.sample_rate_hz
        # one look at each instrument's error queue where the order of checking does not matter: the output switch
        # before the upload, the waveform and its sample rate; then the switch before the trigger and the trigger.
        # Every value is still checked against its limits before it is sent, and an error names the whole group
        with awg.errors_checked_once():
            self.before_upload()
            awg.upload_arb("PNNBATCH", wave)
            awg.sample_rate = fs
        duration = len(wave) / fs
        points = min(self.cfg.scope.max_points, self.points_per_sample * len(wave))
        if self._timebase != (duration, points):
            # InfiniiVision's LEFT reference is 1 of 10 divisions from the left edge: delay it by one division
            # so the record starts at the trigger and holds the whole waveform
            scope.set_timebase(range_s=duration, position_s=duration / 10, reference="LEFT")
            self._timebase = (duration, points)
        with awg.errors_checked_once():
            self.before_trigger()
            scope.arm_single(timeout_s=self.cfg.scope.timeout_s)
            awg.trigger()
        scope.wait_complete(timeout_s=self.cfg.scope.timeout_s + 2 * duration)
        return scope.read_waveform(channel, points=points, fmt=self.cfg.scope.waveform_format)

    # -- calibration ----------------------------------------------------------------------------------------------
    def calibrate_delay(self, n_samples: int = 4096, seed: int = 0) -> float:
        """Measure the AWG-to-scope delay (s) by cross-correlating a pseudo-random waveform with what the scope's
        reference channel records. Sets and returns ``delay_s``."""
        rng = np.random.default_rng(seed)
        fs = self.enc.sample_rate_hz
        room = self.item_room(self.cfg, self.enc) - 256
        n_samples = max(64, min(n_samples, room))
        chips = np.sign(rng.standard_normal(n_samples // 8)).repeat(8) * 0.5
        wave = np.concatenate([np.zeros(self.enc.lead_samples), chips, np.zeros(self.enc.lead_samples + 256)])
        record = self.record_reference(wave)
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

    def calibrate_instruments(self) -> dict:
        """The instrument calibration done whenever the setup is opened: the AWG-to-scope delay."""
        return {"delay_s": self.calibrate_delay()}

    def calibration_summary(self) -> dict:
        """The delays found (empty before the calibration ran)."""
        if not self.delay_s:
            return {}
        return {"delay_s": self.delay_s, "response_delay_s": self.response_delay_s}

    def reuse_calibration(self, snapshot: dict | None, source: str) -> bool:
        """Cut items where ``source`` was measured. The cut (``response_delay_s``) is a software setting, re-derived
        from a noisy onset whenever the setup is opened; a twin's fitted delay is right only for the cut it was fitted
        with."""
        stored = (snapshot or {}).get("response_delay_s")
        if stored is not None and stored != self.response_delay_s:
            log.info("cutting items %.1f us after the trigger delay, as for %s (the new calibration said %.1f us)",
                     stored * 1e6, source, self.response_delay_s * 1e6)
            self.response_delay_s = stored
        return True

    def record_reference(self, wave: np.ndarray):
        """Play ``wave`` and return the scope's record of the reference channel (the AWG output)."""
        ref_ch = self.cfg.scope.reference_channel
        self.scope.set_channel(ref_ch, display=True)
        try:
            return self.play(wave, channel=ref_ch)
        finally:
            self.scope.set_channel(ref_ch, display=False)

    def output_off(self) -> None:
        """Switch the AWG output off (safe to call at any time, never raises)."""
        self.awg.output_off()

    def snapshot(self) -> dict:
        """Instrument identities and settings for the run folder."""
        return {"awg": {"identity": str(self.awg.identity), **self.cfg.awg.model_dump()},
                "scope": {"identity": str(self.scope.identity), **self.cfg.scope.model_dump()},
                "encoding": self.enc.model_dump(), "delay_s": self.delay_s, "response_delay_s": self.response_delay_s,
                "n": self.n_inputs,
                "n_outputs": self.n_outputs}
