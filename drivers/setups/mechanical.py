"""The mechanical setup: an AWG drives an audio amplifier and a speaker carrying a metal plate; a microphone listens to
the plate and an oscilloscope records the microphone.

Wiring::

    AWG CH1 (High-Z) --> amplifier input --> speaker + plate ~~ air ~~> microphone --> scope CHAN1
    AWG CH1          --> scope CHAN2 (reference, delay calibration)      AWG sync --> scope EXT TRIG

The encoding (x and θ interleaved or added in time slots, the microphone trace binned into outputs by mean or
root mean square) is ``encoding.mechanical``.

A batch becomes ONE arbitrary waveform played by one bus-triggered burst and recorded by one single-shot scope
acquisition, split only when the AWG memory or the scope record cannot hold it.

Speaker safety: the drive never exceeds ``max_abs_volts``; the AWG offset is pinned at 0 V (the driver refuses any
other value: a DC voltage heats the voice coil and pushes the cone off centre); switching the output on ramps the
amplitude up in ``ramp_steps`` steps over ``ramp_s``; the output stays on between batches, idling at 0 V, and the
amplitude drops to the ramp's lowest level while a new waveform is uploaded (the 33500B may play its default waveform
while its memory is reloaded).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, PositiveFloat, PositiveInt
from scipy import signal
from torch import Tensor

from drivers.errors import LimitViolation
from common.models import StrictModel
from drivers.setups.awg_scope import AWGConfig, AwgScopeSetup, LoadOhm, ScopeConfig
from encoding.awg_scope import bin_outputs, sample_averages
from encoding.mechanical import MechanicalEncoding, drive_units

log = logging.getLogger(__name__)

ONSET_FRACTION = 0.1  # the acoustic delay is where the measured impulse response first reaches 10 % of its peak
EARLY_CUT_SAMPLES = 2  # items are cut this many samples before that onset (twins fit the remaining delay)


class SpeakerAWGConfig(AWGConfig):
    """The AWG driving the amplifier: High-Z load (the amplifier input is 10 kohm), amplitude ramp on switch-on."""

    load_ohm: LoadOhm = "INF"
    max_abs_offset_volts: Literal[0.0] = Field(0.0, description="fixed: the driver refuses any DC offset")
    ramp_steps: PositiveInt = Field(8, description="amplitude steps when the output is switched on")
    ramp_s: float = Field(0.2, ge=0, description="duration of the switch-on ramp, s")
    keep_output_on: bool = Field(True, description="leave the output on between batches (it idles at the waveform's "
                                 "first point, 0 V); false: off while uploading, ramped on before every batch")


class MicScopeConfig(ScopeConfig):
    volts_per_div: PositiveFloat = 0.1
    reference_volts_per_div: PositiveFloat = 0.2


class MechanicalInstruments(StrictModel):
    awg: SpeakerAWGConfig
    scope: MicScopeConfig


@dataclass
class FrequencyResponse:
    """The plate's small-signal response measured through the instruments.

    f_hz [F]; response [F] complex, microphone volts per volt at the amplifier input (the trigger delay removed,
    the acoustic delay still in the phase); coherence [F] in [0, 1] (1: the output is all response, no noise);
    acoustic_delay_s: where the measured impulse response starts.
    """

    f_hz: np.ndarray
    response: np.ndarray
    coherence: np.ndarray
    acoustic_delay_s: float

    def as_cut(self, delay_s: float) -> np.ndarray:
        """The response with ``delay_s`` of its delay removed (as seen by twins of items cut that late)."""
        return self.response * np.exp(2j * np.pi * self.f_hz * delay_s)


class MechanicalSetup(AwgScopeSetup):
    """PhysicalSystem for the speaker-driven plate: x [B, n] in [-1, 1], θ [n] in param_bounds -> y [B, n_outputs]."""

    name = "mechanical"
    device = "speaker"

    def __init__(self, awg, scope, instruments: MechanicalInstruments, encoding: MechanicalEncoding, n: int,
                 param_bounds: tuple[float, float] = (-1.0, 1.0), delay_s: float = 0.0):
        n_out = encoding.n_outputs(n)
        if n_out > encoding.drive_samples(n):
            raise ValueError(f"output_bins {n_out} exceeds the {encoding.drive_samples(n)} drive samples of an item")
        super().__init__(awg, scope, instruments, encoding, n, n_out, param_bounds, delay_s)
        if getattr(awg, "max_abs_offset_volts", None) != 0:
            raise LimitViolation(awg.name, None, "the AWG driving the speaker must refuse any DC offset "
                                 "(construct it with max_abs_offset_volts=0)")
        self._output_on = False
        self.frequency_response: FrequencyResponse | None = None  # measured by calibrate_instruments

    # -- the AWG: no offset, ramped switch-on ----------------------------------------------------------------------
    def configure_awg(self) -> None:
        awg, enc, ac = self.awg, self.enc, self.cfg.awg
        awg.output = False
        self._output_on = False
        awg.load = ac.load_ohm
        awg.configure_burst(n_cycles=1, trigger_source="BUS")
        # idle at 0 V: a silent waveform is loaded before the output is ever switched on
        awg.set_levels(amplitude_vpp=self._ramp_levels()[0], offset_v=0.0)
        awg.upload_arb("PNNBATCH", np.zeros(max(8, 2 * enc.lead_samples)))
        awg.sample_rate = enc.sample_rate_hz
        if ac.keep_output_on:
            self.enable_output()

    def _ramp_levels(self) -> np.ndarray:
        """Amplitudes (Vpp) of the switch-on ramp, ending at the working amplitude (DAC +-1 -> +-drive volts)."""
        target = 2.0 * self.enc.drive_volts_per_unit
        low = max(self.awg.amplitude_limits_vpp()[0], target / 100)
        return np.geomspace(low, target, self.cfg.awg.ramp_steps + 1)

    def enable_output(self) -> None:
        """Switch the output on at a low amplitude and ramp up to the working amplitude over ``ramp_s``. Before a
        trigger (``before_trigger``) the AWG's error queue is read once, after the trigger, for the whole ramp."""
        levels = self._ramp_levels()
        self.awg.set_levels(amplitude_vpp=levels[0], offset_v=0.0)
        self.awg.output = True
        self._output_on = True
        for vpp in levels[1:]:
            time.sleep(self.cfg.awg.ramp_s / max(1, len(levels) - 1))
            self.awg.amplitude = vpp
        log.info("%s: output on, amplitude ramp to %.3g Vpp sent", self.awg.name, levels[-1])

    def before_upload(self) -> None:
        if not self.cfg.awg.keep_output_on:
            self.awg.output = False
            self._output_on = False
        elif self._output_on:
            # while the waveform memory is cleared and reloaded the AWG may play its default waveform: quietly
            self.awg.amplitude = self._ramp_levels()[0]

    def before_trigger(self) -> None:
        if not self._output_on:
            self.enable_output()
        else:
            self.awg.amplitude = self._ramp_levels()[-1]

    def output_off(self) -> None:
        self._output_on = False
        super().output_off()

    # -- encoding ------------------------------------------------------------------------------------------------
    def drive(self, x: Tensor, theta: Tensor) -> Tensor:
        return drive_units(x, theta, self.enc)

    def outputs(self, items: Tensor) -> Tensor:
        return bin_outputs(items, self.n_outputs, self.enc.bin_statistic) / self.enc.output_volts_per_unit

    # -- calibration ---------------------------------------------------------------------------------------------
    def measure_frequency_response(self, duration_s: float = 2.0, level: float = 0.3, seed: int = 0,
                                   segment: int = 4096) -> FrequencyResponse:
        """Play white noise (``level`` units rms, clipped to +-1) for ``duration_s`` and estimate the transfer
        function from the amplifier input to the microphone by Welch's method (scipy.signal.csd / welch) on
        segments of ``segment`` samples; the impulse response (its inverse FFT) gives the acoustic delay.
        Needs ``calibrate_delay`` first (the trigger delay is removed from the record)."""
        fs, enc = self.enc.sample_rate_hz, self.enc
        rng = np.random.default_rng(seed)
        room = min(self.cfg.awg.memory_points, self.cfg.scope.max_points) // self.points_per_sample
        n = int(min(duration_s * fs, room - 2 * enc.lead_samples - enc.guard_samples))
        segment = min(segment, n // 4)
        noise = np.clip(level * rng.standard_normal(n), -1.0, 1.0)
        noise[:64] *= np.linspace(0, 1, 64)  # no click at the start
        wave = np.concatenate([np.zeros(enc.lead_samples), noise, np.zeros(enc.lead_samples + enc.guard_samples)])
        record = self.play(wave, channel=self.cfg.scope.channel)
        mic = sample_averages(record.t, record.volts, len(wave), fs, self.delay_s - 0.5 / fs)
        drive_v = wave * enc.drive_volts_per_unit
        f, s_xy = signal.csd(drive_v, mic, fs=fs, nperseg=segment)
        _, s_xx = signal.welch(drive_v, fs=fs, nperseg=segment)
        _, coherence = signal.coherence(drive_v, mic, fs=fs, nperseg=segment)
        response = s_xy / np.maximum(s_xx, 1e-30)  # scipy's csd is conj(X) Y, so H = S_xy / S_xx
        impulse = np.abs(np.fft.irfft(response, n=segment)[: segment // 2])
        onset = int(np.argmax(impulse > ONSET_FRACTION * impulse.max()))
        log.info("plate response measured: %d frequencies, impulse response onset %.3f ms", len(f), onset / fs * 1e3)
        return FrequencyResponse(f, response, coherence, onset / fs)

    def calibrate_instruments(self) -> dict:
        """Trigger delay (reference channel), then the plate's frequency response; the acoustic delay it shows is
        added to the delay at which items are cut from the microphone record."""
        self.response_delay_s = 0.0
        self.calibrate_delay()
        self.frequency_response = self.measure_frequency_response()
        # cut early rather than late: a causal twin can model a delay, not an advance
        onset = self.frequency_response.acoustic_delay_s * self.enc.sample_rate_hz
        self.response_delay_s = max(0.0, onset - EARLY_CUT_SAMPLES) / self.enc.sample_rate_hz
        return {"delay_s": self.delay_s, "acoustic_onset_s": self.frequency_response.acoustic_delay_s,
                "response_delay_s": self.response_delay_s}
