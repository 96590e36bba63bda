"""Simulated Keysight InfiniiVision DSOX1102G oscilloscope (2 channels, 8-bit ADC, SCPI over a LAN socket).

Commands (every setting is also a query):

================================================  ====================================================================
``:CHANnel#:SCALe|RANGe|OFFSet <V>``               V/div (1 mV .. 10 V times the probe), range = 8 div, screen centre
``:CHANnel#:COUPling AC|DC``, ``:PROBe <x>``, ``:DISPlay ON|OFF``
``:TIMebase:RANGe|SCALe <s>``, ``:POSition <s>``   range = 10 div (50 ns .. 500 s); position = reference - trigger
``:TIMebase:REFerence LEFT|CENTer|RIGHt``          reference 1 div from the left, centre, 1 div from the right
``:TRIGger:MODE EDGE``, ``:TRIGger:SWEep AUTO|NORMal``
``:TRIGger[:EDGE]:SOURce CHANnel#|EXTernal``, ``:LEVel <V>``, ``:SLOPe POS|NEG|EITH|ALT``
``:ACQuire:TYPE NORM|AVER|HRES|PEAK``, ``:COUNt <n>``, ``:SRATe?``
``:RUN``, ``:STOP``, ``:SINGle``, ``:DIGitize [CHANnel#[,CHANnel#]]``   (``:DIGitize`` holds the client until done)
``:AER?``, ``:TER?`` (read clears), ``:OPERegister:CONDition?`` (+8 run, +32 waiting for trigger)
``:WAVeform:SOURce CHANnel#``, ``:FORMat ASCii|BYTE|WORD``, ``:BYTeorder LSBF|MSBF``, ``:UNSigned ON|OFF``
``:WAVeform:POINts <n>|MAX``, ``:POINts:MODE NORM|MAX|RAW``, ``:PREamble?``, ``:DATA?``, ``:XINC?`` ...
================================================  ====================================================================

Acquisition model: the record spans ``:TIM:RANG`` with up to 1,000,000 points (2 GSa/s with one channel on,
1 GSa/s with two); ``:WAV:DATA?`` returns it decimated to at most ``:WAV:POIN`` points (62,500 at most in NORMal
points mode). On a trigger the bench calls ``capture(traces, sample_rate_hz, start_s)``: each channel is linearly
interpolated onto the record grid (edge values held outside the trace; ``scope_record.resample``, compiled), AC
coupling removes the mean, and the 8-bit ADC quantizes with a step of 8 div * V/div / 256 about the screen centre,
clipping at the screen edges (codes 0 and 255). HRES first averages the input over each record interval and keeps
12 bits; AVER averages ``:ACQ:COUN`` triggered acquisitions of 8-bit codes. ``:WAV:DATA?`` is always an IEEE
block with ``#8`` and 8 digits; ASCii data are comma-separated volts inside the same block. Preamble:
y = (code - yreference) * yincrement + yorigin. (A DC-coupled channel outside AVER keeps its input and the settings
at the trigger and is interpolated and quantized only at the points a transfer reads: the same numbers, without
computing a 1 M-point record for a decimated read.)

The trigger is the AWG's sync (EXT source: time 0 of the traces) or an edge on a channel (first crossing of the level
with a hysteresis of 0.05 div). With no edge, AUTO sweep triggers at time 0 and NORMal sweep keeps waiting.

Deviations from the real scope: the sample rate is not rounded to the scope's discrete values; AUTO sweep never
triggers on its own timer (acquisitions happen only when the AWG plays); PEAK detect acquires like NORMal;
other trigger modes, math, measurements and the display are not simulated.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from simulators.instruments.scope_record import (SCREEN_DIVISIONS, AnalogChannel, Record, adc_codes, box_average,
                                                 quantize)
from simulators.scpi import Block, Call, SCPIError, SCPIInstrument, nr1, nr3, scpi, setting

log = logging.getLogger(__name__)

TIME_DIVISIONS = 10
REFERENCE_FRACTION = {"LEFT": 0.1, "CENT": 0.5, "RIGH": 0.9}
TYPE_CODES = {"NORM": 0, "PEAK": 1, "AVER": 2, "HRES": 3}
FORMAT_CODES = {"BYTE": 0, "WORD": 1, "ASC": 4}
TRIGGER_HYSTERESIS_DIV = 0.05
_CHANNEL = re.compile(r"CHAN(?:NEL)?([0-9]{1,9})")  # bounded: int() refuses thousands of digits


def _nr3(value: float) -> str:
    return nr3(value, 8)


class ScopeListener(Protocol):
    def on_scope_armed(self) -> None: ...


@dataclass
class ScopeChannel:
    """Vertical settings of one channel (displayed volts, i.e. at the probe tip)."""

    display: bool
    scale_v: float = 1.0
    offset_v: float = 0.0
    coupling: str = "DC"
    probe: float = 1.0


class SimInfiniiVision(SCPIInstrument):
    """Front panel of a Keysight InfiniiVision DSOX1102G. ``run_state`` is ``"run"``, ``"single"`` or ``"stop"``."""

    idn = "KEYSIGHT TECHNOLOGIES,DSOX1102G,CN57000001,02.12.2021071625"
    channels = (1, 2)
    max_points = 1_000_000
    normal_points = 62_500
    max_sample_rate_hz = 2e9  # one channel on; half with two
    error_queue_size = 30

    def __init__(self, lock=None, listener: ScopeListener | None = None):
        super().__init__(lock)
        self.listener = listener
        self.reset()

    def reset(self) -> None:
        self.chan = {1: ScopeChannel(display=True), 2: ScopeChannel(display=False)}
        self.time_range_s = 1e-3
        self.time_position_s = 0.0
        self.time_reference = "CENT"
        self.trigger_mode = "EDGE"
        self.trigger_sweep = "AUTO"
        self.trigger_source = "CHAN1"
        self.trigger_level_v = 0.0
        self.trigger_slope = "POS"
        self.acq_type = "NORM"
        self.acq_count = 8
        self.wav_source = 1
        self.wav_format = "BYTE"
        self.wav_byte_order = "MSBF"
        self.wav_unsigned = True
        self.wav_points = 1000
        self.wav_points_mode = "NORM"
        self.run_state = "run"
        self.armed = True
        self.record: Record | None = None
        self._pending: tuple[Record, float] | None = None  # record and the monotonic time it completes
        self._acquire_channels: tuple[int, ...] | None = None  # :DIGitize sources
        self._avg_sum: dict[int, np.ndarray] = {}
        self._avg_n = 0
        self._armed_event = False
        self._trigger_event = False

    # -- acquisition (called by the bench under the lock) ------------------------------------------------------------

    def wants_trigger(self) -> bool:
        """True while the scope is armed (running, or single and not yet triggered)."""
        return self.armed

    def window_s(self) -> tuple[float, float]:
        """Start and end of the record relative to the trigger (s)."""
        t0 = self.time_position_s - REFERENCE_FRACTION[self.time_reference] * self.time_range_s
        return t0, t0 + self.time_range_s

    def channels_needed(self) -> tuple[int, ...]:
        """The channels whose traces the next ``capture`` reads: those it acquires, and an edge trigger's source."""
        needed = set(self._acquire_channels or (c for c, s in self.chan.items() if s.display))
        if self.trigger_source != "EXT":
            needed.add(int(self.trigger_source[4:]))
        return tuple(sorted(needed))

    def sample_rate_hz(self) -> float:
        n_on = max(1, sum(c.display for c in self.chan.values()))
        return min(self.max_sample_rate_hz / n_on, self.max_points / self.time_range_s)

    def capture(self, traces: dict[int, np.ndarray], sample_rate_hz: float, start_s: float = 0.0,
                ready_in_s: float = 0.0) -> bool:
        """Acquire ``traces`` (volts per channel, sample k at ``start_s + k / sample_rate_hz`` after the AWG trigger).

        Returns False if the scope was not armed or did not trigger. With ``ready_in_s`` > 0 the acquisition
        completes that many seconds later (realtime benches).
        """
        with self.lock:
            if not self.armed:
                return False
            t_trig = self._trigger_time(traces, sample_rate_hz, start_s)
            if t_trig is None:
                log.debug("scope: no trigger edge; still armed")
                return False
            srate = self.sample_rate_hz()
            t0, _ = self.window_s()
            n = max(2, min(self.max_points, int(round(self.time_range_s * srate))))
            first = t_trig + t0  # record point k is at first + k / srate, fractional sample (k - start_s) fs
            channels = self._acquire_channels or tuple(c for c, s in self.chan.items() if s.display)
            if any(acc.shape[0] != n for acc in self._avg_sum.values()):  # the grid changed: restart averaging
                self._avg_sum, self._avg_n = {}, 0
            rec = Record(srate, t0, n, self.acq_type, self.acq_count if self.acq_type == "AVER" else 1)
            for ch in channels:
                cfg = self.chan[ch]
                trace = np.asarray(traces.get(ch, np.zeros(2)), dtype=np.float64)
                if self.acq_type == "HRES":
                    trace = box_average(trace, int(sample_rate_hz // srate))
                if trace.shape[0] == 0:
                    raise ValueError("capture: an empty trace")
                rec.scale_v[ch], rec.offset_v[ch] = cfg.scale_v, cfg.offset_v
                analog = AnalogChannel(trace, first, srate, start_s, sample_rate_hz, n, cfg.probe, cfg.scale_v,
                                       cfg.offset_v, self.acq_type)
                if cfg.coupling == "DC" and self.acq_type != "AVER":
                    rec.analog[ch] = analog  # quantized when read, at the points read
                    continue
                volts = analog.volts(1)
                if cfg.coupling == "AC":
                    volts -= volts.mean()
                rec.codes[ch] = self._digitize(ch, volts)
            if self.acq_type == "AVER":
                self._avg_n += 1
            self._trigger_event = True
            complete = self.acq_type != "AVER" or self._avg_n >= self.acq_count
            if self.run_state == "single" and complete:
                self.armed = False
            self._pending = (rec, time.monotonic() + ready_in_s)
            self._advance()
            self.changed.notify_all()
            return True

    def _digitize(self, ch: int, volts: np.ndarray) -> np.ndarray:
        """8-bit ADC (12 bits in HRES, averaged 8-bit codes in AVER) as 16-bit codes about 32768."""
        cfg = self.chan[ch]
        if self.acq_type != "AVER":
            return quantize(volts, cfg.scale_v, cfg.offset_v, self.acq_type)
        code8 = adc_codes(volts, cfg.scale_v, cfg.offset_v) + 128
        self._avg_sum[ch] = self._avg_sum.get(ch, 0.0) + code8
        mean = self._avg_sum[ch] / (self._avg_n + 1)
        return np.clip(np.round(mean * 256), 0, 65535).astype(np.uint16)

    def _trigger_time(self, traces: dict[int, np.ndarray], fs: float, start_s: float) -> float | None:
        """Trigger time relative to the AWG trigger: 0 for EXT, else the first edge on the source channel."""
        if self.trigger_source == "EXT":
            return 0.0
        ch = int(self.trigger_source[4:])
        cfg = self.chan[ch]
        y = np.asarray(traces.get(ch, np.zeros(2)), dtype=np.float64) * cfg.probe
        k = _first_edge(y, self.trigger_level_v, TRIGGER_HYSTERESIS_DIV * cfg.scale_v, self.trigger_slope)
        if k is None:
            return 0.0 if self.trigger_sweep == "AUTO" else None
        frac = (self.trigger_level_v - y[k - 1]) / (y[k] - y[k - 1]) if y[k] != y[k - 1] else 0.0
        return start_s + (k - 1 + frac) / fs

    def _advance(self) -> None:
        """Complete a pending acquisition once its time has come."""
        if self._pending is not None and time.monotonic() >= self._pending[1]:
            self.record, self._pending = self._pending[0], None
            if self.run_state == "single" and not self.armed:
                self.run_state = "stop"
                self._acquire_channels = None
            self.changed.notify_all()

    def _arm(self, mode: str, channels: tuple[int, ...] | None = None) -> None:
        self.run_state, self.armed = mode, True
        self._acquire_channels = channels
        self._armed_event = True
        self._avg_sum, self._avg_n = {}, 0
        self._pending = None
        self.changed.notify_all()
        if self.listener is not None:
            self.listener.on_scope_armed()

    def acquisition_done(self) -> bool:
        self._advance()
        return self.run_state == "stop"

    # -- helpers -----------------------------------------------------------------------------------------------------

    def _ch(self, call: Call) -> ScopeChannel:
        if call.suffix not in self.chan:
            raise SCPIError(-114, f"channel {call.suffix}")
        return self.chan[call.suffix]

    def _channel_param(self, call: Call, i: int) -> int:
        m = _CHANNEL.fullmatch(call.text(i).upper())
        if m is None:
            raise SCPIError(-224, f"{call.text(i)!r} is not CHANnel<n>")
        if int(m[1]) not in self.chan:
            raise SCPIError(-224, f"no channel {m[1]}")
        return int(m[1])

    # -- run control -------------------------------------------------------------------------------------------------

    @scpi(":RUN", nargs=0)
    def _run(self, call: Call) -> None:
        self._arm("run")

    @scpi(":STOP", nargs=0)
    def _stop(self, call: Call) -> None:
        if self._pending is not None:
            self.record, self._pending = self._pending[0], None
        self.run_state, self.armed = "stop", False
        self._acquire_channels = None
        self.changed.notify_all()

    @scpi(":SINGle", nargs=0)
    def _single(self, call: Call) -> None:
        self._arm("single")

    @scpi(":DIGitize", nargs=(0, 2))
    def _digitize_cmd(self, call: Call) -> None:
        channels = tuple(self._channel_param(call, i) for i in range(len(call))) or None
        self._arm("single", channels)
        call.then_wait(self.acquisition_done)

    @scpi(":AER?")
    def _aer(self, call: Call) -> str:
        value, self._armed_event = self._armed_event, False
        return nr1(value)

    @scpi(":TER?")
    def _ter(self, call: Call) -> str:
        value, self._trigger_event = self._trigger_event, False
        return nr1(value)

    @scpi(":OPERegister:CONDition?")
    def _oper(self, call: Call) -> str:
        self._advance()
        return nr1((8 if self.run_state != "stop" else 0) | (32 if self.armed else 0))

    # -- channels ----------------------------------------------------------------------------------------------------

    @scpi(":CHANnel#:SCALe")
    def _scale(self, call: Call) -> None:
        cfg = self._ch(call)
        cfg.scale_v = call.number(0, lo=1e-3 * cfg.probe, hi=10.0 * cfg.probe, unit="V")

    @scpi(":CHANnel#:SCALe?")
    def _scale_q(self, call: Call) -> str:
        return _nr3(self._ch(call).scale_v)

    @scpi(":CHANnel#:RANGe")
    def _range(self, call: Call) -> None:
        cfg = self._ch(call)
        n = SCREEN_DIVISIONS
        cfg.scale_v = call.number(0, lo=n * 1e-3 * cfg.probe, hi=n * 10.0 * cfg.probe, unit="V") / n

    @scpi(":CHANnel#:RANGe?")
    def _range_q(self, call: Call) -> str:
        return _nr3(SCREEN_DIVISIONS * self._ch(call).scale_v)

    @scpi(":CHANnel#:OFFSet")
    def _offset(self, call: Call) -> None:
        cfg = self._ch(call)
        limit = (2.0 if cfg.scale_v <= 0.2 * cfg.probe else 40.0) * cfg.probe
        cfg.offset_v = call.number(0, lo=-limit, hi=limit, unit="V")

    @scpi(":CHANnel#:OFFSet?")
    def _offset_q(self, call: Call) -> str:
        return _nr3(self._ch(call).offset_v)

    _coupling = setting(":CHANnel#:COUPling", "coupling", choices=("AC", "DC"), per_channel=True)

    @scpi(":CHANnel#:PROBe")
    def _probe(self, call: Call) -> None:
        cfg = self._ch(call)
        ratio = call.number(0, lo=0.1, hi=10000.0)
        cfg.scale_v, cfg.offset_v = cfg.scale_v * ratio / cfg.probe, cfg.offset_v * ratio / cfg.probe
        cfg.probe = ratio

    @scpi(":CHANnel#:PROBe?")
    def _probe_q(self, call: Call) -> str:
        return _nr3(self._ch(call).probe)

    _display = setting(":CHANnel#:DISPlay", "display", "boolean", per_channel=True)

    # -- timebase ----------------------------------------------------------------------------------------------------

    _time_range = setting(":TIMebase:RANGe", "time_range_s", "number", lo=50e-9, hi=500.0, unit="S", fmt=_nr3)

    @scpi(":TIMebase:SCALe")
    def _time_scale(self, call: Call) -> None:
        self.time_range_s = TIME_DIVISIONS * call.number(0, lo=5e-9, hi=50.0, unit="S")

    @scpi(":TIMebase:SCALe?")
    def _time_scale_q(self, call: Call) -> str:
        return _nr3(self.time_range_s / TIME_DIVISIONS)

    _time_position = setting(":TIMebase:POSition", "time_position_s", "number", lo=-500.0, hi=500.0, default=0.0,
                             unit="S", fmt=_nr3)
    _time_reference = setting(":TIMebase:REFerence", "time_reference", choices=("LEFT", "CENTer", "RIGHt"))

    # -- trigger -----------------------------------------------------------------------------------------------------

    _trigger_mode = setting(":TRIGger:MODE", "trigger_mode", choices=("EDGE",))
    _trigger_sweep = setting(":TRIGger:SWEep", "trigger_sweep", choices=("AUTO", "NORMal"))

    @scpi(":TRIGger[:EDGE]:SOURce")
    def _trigger_source_cmd(self, call: Call) -> None:
        word = call.text(0).upper()
        self.trigger_source = "EXT" if word in ("EXT", "EXTERNAL") else f"CHAN{self._channel_param(call, 0)}"

    @scpi(":TRIGger[:EDGE]:SOURce?")
    def _trigger_source_q(self, call: Call) -> str:
        return self.trigger_source

    @scpi(":TRIGger[:EDGE]:LEVel", nargs=(1, 2))
    def _trigger_level(self, call: Call) -> None:
        if len(call) == 2:
            word = call.text(1).upper()
            if word not in ("EXT", "EXTERNAL"):
                self._channel_param(call, 1)
        self.trigger_level_v = call.number(0, lo=-400.0, hi=400.0, unit="V")

    @scpi(":TRIGger[:EDGE]:LEVel?")
    def _trigger_level_q(self, call: Call) -> str:
        return _nr3(self.trigger_level_v)

    _trigger_slope = setting(":TRIGger[:EDGE]:SLOPe", "trigger_slope",
                             choices=("POSitive", "NEGative", "EITHer", "ALTernate"))

    # -- acquisition settings ----------------------------------------------------------------------------------------

    @scpi(":ACQuire:TYPE")
    def _acq_type(self, call: Call) -> None:
        self.acq_type = call.choice(0, ("NORMal", "AVERage", "HRESolution", "PEAK"))
        self._avg_sum, self._avg_n = {}, 0

    @scpi(":ACQuire:TYPE?")
    def _acq_type_q(self, call: Call) -> str:
        return self.acq_type

    _acq_count = setting(":ACQuire:COUNt", "acq_count", "integer", lo=2, hi=65536)

    @scpi(":ACQuire:SRATe?")
    def _acq_srate_q(self, call: Call) -> str:
        return _nr3(self.record.sample_rate_hz if self.record else self.sample_rate_hz())

    # -- waveform transfer -------------------------------------------------------------------------------------------

    @scpi(":WAVeform:SOURce")
    def _wav_source(self, call: Call) -> None:
        self.wav_source = self._channel_param(call, 0)

    @scpi(":WAVeform:SOURce?")
    def _wav_source_q(self, call: Call) -> str:
        return f"CHAN{self.wav_source}"

    _wav_format = setting(":WAVeform:FORMat", "wav_format", choices=("ASCii", "BYTE", "WORD"))
    _wav_byte_order = setting(":WAVeform:BYTeorder", "wav_byte_order", choices=("LSBFirst", "MSBFirst"))
    _wav_unsigned = setting(":WAVeform:UNSigned", "wav_unsigned", "boolean")

    @scpi(":WAVeform:POINts")
    def _wav_points(self, call: Call) -> None:
        self.wav_points = call.integer(0, lo=100, hi=8_000_000, maximum=8_000_000)

    @scpi(":WAVeform:POINts?")
    def _wav_points_q(self, call: Call) -> str:
        return nr1(self._readout_grid()[1])

    _wav_points_mode = setting(":WAVeform:POINts:MODE", "wav_points_mode", choices=("NORMal", "MAXimum", "RAW"))

    def _readout_grid(self) -> tuple[int, int]:
        """(stride, points) of the transfer: the record decimated to at most ``:WAV:POIN`` points."""
        self._advance()
        n = self.record.n_points if self.record else int(round(self.time_range_s * self.sample_rate_hz()))
        raw = self.wav_points_mode == "RAW" or (self.wav_points_mode == "MAX" and self.run_state == "stop")
        target = max(1, min(self.wav_points, n if raw else min(n, self.normal_points)))
        stride = math.ceil(n / target)
        return stride, len(range(0, n, stride))

    def preamble(self) -> list[float]:
        """The 10 fields of ``:WAV:PRE?`` for the current source and format."""
        stride, points = self._readout_grid()
        ch = self.wav_source
        rec = self.record
        if rec is not None and ch in rec.channels():
            srate, t0, scale, offset, acq, count = (rec.sample_rate_hz, rec.t0_s, rec.scale_v[ch], rec.offset_v[ch],
                                                    rec.acq_type, rec.count)
        else:
            cfg = self.chan[ch]
            srate, t0, scale, offset, acq = self.sample_rate_hz(), self.window_s()[0], cfg.scale_v, cfg.offset_v, \
                self.acq_type
            count = self.acq_count if acq == "AVER" else 1
            points = 0 if rec is not None else points
        lsb = SCREEN_DIVISIONS * scale / 256.0
        if self.wav_format == "BYTE":
            yinc, yref = lsb, 128
        else:
            yinc, yref = lsb / 256.0, 32768
        return [FORMAT_CODES[self.wav_format], TYPE_CODES[acq], points, count, stride / srate, t0, 0,
                yinc, offset, yref if self.wav_unsigned else 0]

    @scpi(":WAVeform:PREamble?")
    def _wav_preamble(self, call: Call) -> str:
        f = self.preamble()
        ints = (0, 1, 2, 3, 6, 9)
        return ",".join(nr1(v) if k in ints else _nr3(v) for k, v in enumerate(f))

    @scpi(":WAVeform:XINCrement?")
    def _wav_xinc(self, call: Call) -> str:
        return _nr3(self.preamble()[4])

    @scpi(":WAVeform:XORigin?")
    def _wav_xorigin(self, call: Call) -> str:
        return _nr3(self.preamble()[5])

    @scpi(":WAVeform:YINCrement?")
    def _wav_yinc(self, call: Call) -> str:
        return _nr3(self.preamble()[7])

    @scpi(":WAVeform:YORigin?")
    def _wav_yorigin(self, call: Call) -> str:
        return _nr3(self.preamble()[8])

    @scpi(":WAVeform:YREFerence?")
    def _wav_yref(self, call: Call) -> str:
        return nr1(self.preamble()[9])

    @scpi(":WAVeform:DATA?")
    def _wav_data(self, call: Call) -> Block:
        stride, _ = self._readout_grid()
        ch = self.wav_source
        if self.record is None or ch not in self.record.channels():
            call.session.push_error(SCPIError(-221, f"no acquired data for CHAN{ch}"))
            return Block(b"", digits=8)
        codes = self.record.read(ch, stride)
        if self.wav_format == "ASC":
            lsb16 = SCREEN_DIVISIONS * self.record.scale_v[ch] / 256.0 / 256.0
            volts = (codes.astype(np.float64) - 32768.0) * lsb16 + self.record.offset_v[ch]
            return Block(",".join(f"{v:+.6E}" for v in volts.tolist()).encode(), digits=8)
        if self.wav_format == "BYTE":
            data = np.minimum((codes.astype(np.uint32) + 128) >> 8, 255).astype(np.uint8)
            if not self.wav_unsigned:
                data = (data.astype(np.int16) - 128).astype(np.int8)
            return Block(data.tobytes(), digits=8)
        order = "<" if self.wav_byte_order == "LSBF" else ">"
        if self.wav_unsigned:
            data = codes.astype(order + "u2")
        else:
            data = (codes.astype(np.int32) - 32768).astype(order + "i2")
        return Block(data.tobytes(), digits=8)


def _first_edge(y: np.ndarray, level: float, hysteresis: float, slope: str) -> int | None:
    """Index k of the first sample past a trigger edge (y[k-1] before the level, y[k] at or past it), or None.

    An edge counts only if, since the last edge, the signal was beyond the hysteresis band on the other side (or
    started on the other side of the level).
    """
    if y.shape[0] < 2:
        return None
    idx = np.arange(y.shape[0])
    candidates = []
    for sign in ((1.0,) if slope == "POS" else (-1.0,) if slope == "NEG" else (1.0, -1.0)):
        s = sign * (y - level)
        past = s >= 0
        low = s < -hysteresis
        low[0] |= s[0] < 0
        last_low = np.maximum.accumulate(np.where(low, idx, -1))
        last_high = np.maximum.accumulate(np.where(past, idx, -1))
        hits = np.flatnonzero(past[1:] & (last_low[:-1] > last_high[:-1])) + 1
        if hits.size:
            candidates.append(int(hits[0]))
    return min(candidates) if candidates else None
