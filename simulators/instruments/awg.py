"""Simulated Keysight 33522B arbitrary waveform generator (33500B series front panel, SCPI over a LAN socket).

Behaves as the real instrument for the subset below; every setting is queryable (append ``?``).

=========================================================  ==========================================================
``[SOURce#:]FUNCtion[:SHAPe] SIN|SQU|TRI|RAMP|PULS|PRBS|NOIS|ARB|DC``
``[SOURce#:]FUNCtion:ARBitrary <name>``                    a volatile arb (or ``"INT:\\BUILTIN\\EXP_RISE.ARB"``)
``[SOURce#:]FUNCtion:ARBitrary:SRATe <Sa/s>``              1 uSa/s .. 250 MSa/s
``[SOURce#:]FUNCtion:ARBitrary:FILTer NORM|STEP|OFF``       stored only
``[SOURce#:]FREQuency <Hz>``                               built-in functions, 1 uHz .. 30 MHz
``[SOURce#:]VOLTage[:AMPLitude] <Vpp>``                    1 mVpp .. 10 Vpp into 50 ohm (scaled with the load)
``[SOURce#:]VOLTage:OFFSet <V>``, ``:HIGH``, ``:LOW``      |offset| + Vpp/2 <= 5 V into 50 ohm
``OUTPut#[:STATe] ON|OFF``, ``OUTPut#:LOAD <ohm>|INF``       load 1 ohm .. 10 kohm or INF
``FORMat:BORDer NORM|SWAP``                                byte order of binary blocks (NORM: big-endian)
``[SOURce#:]DATA:ARBitrary <name>,<v1>,...|<block>``       floats in [-1, 1] (block: float32)
``[SOURce#:]DATA:ARBitrary:DAC <name>,<n1>,...|<block>``   ints in [-32767, 32767] (block: int16)
``[SOURce#:]DATA:VOLatile:CLEar``, ``:CATalog?``, ``:FREE?``  volatile arb memory, 1,000,000 points per channel
``[SOURce#:]BURSt:STATe ON|OFF``, ``:MODE TRIG|GAT``, ``:NCYCles <n>|INF``
``TRIGger#:SOURce IMM|EXT|TIM|BUS``, ``*TRG``, ``TRIGger#[:IMMediate]``
=========================================================  ==========================================================

Output model: a waveform value w in [-1, 1] (after the int16 DAC) gives ``v = w * Vpp / 2 + offset`` across the
configured load L; the EMF behind the 50 ohm source is ``v * (L + 50) / L`` (2 v at 50 ohm, v at INF). Changing
``OUTP:LOAD`` rescales the displayed amplitude and offset so the EMF stays the same, as the real instrument does.

When an output plays, the instrument calls ``listener.on_awg_play(channel, emf_v, sample_rate_hz, continuous)``:
continuously when the output is on with burst off (or burst with an immediate trigger), once per trigger in burst
mode (``BUS`` source and ``*TRG``, or ``TRIG#``). ``listener.on_awg_stop(channel)`` when it stops.

Deviations from the real instrument: out-of-range values are refused (error queued, setting unchanged) instead of
clipped; an arb name that already exists is refused with -221 (clear with ``DATA:VOL:CLE`` first); memory errors use
the generic -225; built-in functions play one period of 1000 samples (fewer above 250 kHz); PULS/PRBS/NOIS are rough
stand-ins; the burst idle level, burst period, gated bursts and EXT/TIM triggers are not simulated; a burst longer
than ``max_burst_samples`` (4 Mi samples) is played to the bench for its first ``max_burst_samples`` only.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from simulators.scpi import Call, SCPIError, SCPIInstrument, nr1, nr3, scpi, setting

log = logging.getLogger(__name__)

SOURCE_OHM = 50.0
BUILTIN_EXP_RISE = "INT:\\BUILTIN\\EXP_RISE.ARB"
_ARB_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,11}")
MAX_VALUE_CHARS = 64  # longest ASCII arb value accepted (``+1.000000000000000E+00`` has 22)


class AwgListener(Protocol):
    """What the AWG's outputs are wired to (the bench)."""

    def on_awg_play(self, channel: int, emf_v: np.ndarray, sample_rate_hz: float, continuous: bool) -> None: ...

    def on_awg_stop(self, channel: int) -> None: ...


def load_factor(load_ohm: float) -> float:
    """Voltage across the load per volt of EMF: L / (L + 50 ohm); 1 for INF (high-Z)."""
    return 1.0 if math.isinf(load_ohm) else load_ohm / (load_ohm + SOURCE_OHM)


@dataclass
class AwgChannel:
    """Settings of one output channel (volts into the configured load, hertz, samples per second)."""

    function: str = "SIN"
    frequency_hz: float = 1e3
    amplitude_vpp: float = 0.1
    offset_v: float = 0.0
    load_ohm: float = 50.0
    output: bool = False
    arb: str = BUILTIN_EXP_RISE
    sample_rate_hz: float = 40e3
    arb_filter: str = "NORM"
    burst: bool = False
    burst_mode: str = "TRIG"
    burst_cycles: float = 1.0  # math.inf for INF
    trigger_source: str = "IMM"
    memory: dict[str, np.ndarray] = field(default_factory=dict)  # volatile arbs: NAME -> int16 DAC codes

    @property
    def max_vpp(self) -> float:
        """Largest amplitude into the load: 20 Vpp EMF (10 Vpp into 50 ohm)."""
        return 20.0 * load_factor(self.load_ohm)

    @property
    def min_vpp(self) -> float:
        return 2e-3 * load_factor(self.load_ohm)

    @property
    def max_level_v(self) -> float:
        """Largest |offset| + Vpp/2 into the load: 10 V EMF (5 V into 50 ohm)."""
        return 10.0 * load_factor(self.load_ohm)

    @property
    def used_points(self) -> int:
        return sum(len(codes) for codes in self.memory.values())


def _builtin_exp_rise() -> np.ndarray:
    t = np.linspace(0.0, 1.0, 1000)
    w = 2.0 * (1.0 - np.exp(-5.0 * t)) / (1.0 - np.exp(-5.0)) - 1.0
    return np.round(w * 32767).astype(np.int16)


class SimKeysight33522B(SCPIInstrument):
    """Front panel of a Keysight 33522B two-channel AWG. ``output_enabled[ch]`` tells whether an output is on."""

    idn = "Agilent Technologies,33522B,MY52000001,3.05-1.19-2.00-52-00"
    channels = (1, 2)
    memory_points = 1_000_000
    min_points = 8
    sample_rate_range_hz = (1e-6, 250e6)
    max_block_bytes = 4 * memory_points + 64
    max_message_bytes = 32 << 20  # a million ASCII values
    max_burst_samples = 1 << 22  # a burst is simulated for this many samples at most (see the module docstring)
    FUNCTIONS = ("SINusoid", "SQUare", "TRIangle", "RAMP", "PULSe", "PRBS", "NOISe", "ARBitrary", "DC")

    def __init__(self, lock=None, listener: AwgListener | None = None):
        super().__init__(lock)
        self.listener = listener
        self.state: dict[int, AwgChannel] = {}
        self.byte_order = "NORM"
        self._noise = np.random.default_rng(1)
        self.reset()

    def reset(self) -> None:
        was_on = [ch for ch, st in self.state.items() if st.output]
        self.state = {ch: AwgChannel() for ch in self.channels}
        self.byte_order = "NORM"
        for ch in was_on:
            self._replay(ch)

    @property
    def output_enabled(self) -> dict[int, bool]:
        return {ch: st.output for ch, st in self.state.items()}

    # -- waveform model ----------------------------------------------------------------------------------------------

    def waveform(self, channel: int) -> tuple[np.ndarray, float]:
        """One period of the selected waveform as DAC values in [-1, 1] and its sample rate (Sa/s)."""
        st = self.state[channel]
        if st.function == "ARB":
            codes = _builtin_exp_rise() if st.arb == BUILTIN_EXP_RISE else st.memory[st.arb]
            return codes.astype(np.float64) / 32767.0, st.sample_rate_hz
        n = int(min(1000, max(8, self.sample_rate_range_hz[1] // st.frequency_hz)))  # the DAC runs at 250 MSa/s
        phase = np.arange(n) / n
        shapes = {
            "SIN": lambda: np.sin(2 * np.pi * phase),
            "SQU": lambda: np.where(phase < 0.5, 1.0, -1.0),
            "PULS": lambda: np.where(phase < 0.1, 1.0, -1.0),
            "TRI": lambda: 1.0 - 4.0 * np.abs(phase - 0.5),
            "RAMP": lambda: 2.0 * phase - 1.0,
            "PRBS": lambda: self._noise.choice([-1.0, 1.0], n),
            "NOIS": lambda: np.clip(self._noise.normal(0.0, 0.3, n), -1, 1),
            "DC": lambda: np.zeros(n),
        }
        w = np.round(shapes[st.function]() * 32767) / 32767.0
        return w, st.frequency_hz * n

    def emf(self, channel: int, w: np.ndarray) -> np.ndarray:
        """Open-circuit EMF (V) behind the 50 ohm source for DAC values ``w``."""
        st = self.state[channel]
        vpp = 0.0 if st.function == "DC" else st.amplitude_vpp
        return (w * vpp / 2.0 + st.offset_v) / load_factor(st.load_ohm)

    def _continuous(self, st: AwgChannel) -> bool:
        return not st.burst or st.trigger_source == "IMM" or math.isinf(st.burst_cycles)

    def _replay(self, channel: int) -> None:
        """Tell the listener what the output does now (after a setting changed)."""
        if self.listener is None:
            return
        st = self.state[channel]
        if st.output and self._continuous(st):
            w, fs = self.waveform(channel)
            self.listener.on_awg_play(channel, self.emf(channel, w), fs, True)
        else:
            self.listener.on_awg_stop(channel)

    def _fire(self, channel: int) -> None:
        """One trigger: play a burst of NCYC periods if the channel is in triggered burst mode with output on."""
        st = self.state[channel]
        if not (st.burst and st.output) or self.listener is None or self._continuous(st):
            log.debug("awg: trigger on channel %d ignored (burst %s, output %s)", channel, st.burst, st.output)
            return
        w, fs = self.waveform(channel)
        # hostile input: NCYC 1E8 of a 1000-point waveform is 1e11 samples (745 GiB; 6 GiB and an hour of physics at
        # 8 points): only the start of a long burst is simulated, far more than a scope record holds
        cycles = min(int(st.burst_cycles), max(1, self.max_burst_samples // len(w)))
        if cycles < st.burst_cycles:
            log.warning("awg: burst of %d cycles simulated for its first %d", st.burst_cycles, cycles)
        emf = self.emf(channel, np.tile(w, cycles))
        self.listener.on_awg_play(channel, emf, fs, False)

    # -- helpers -----------------------------------------------------------------------------------------------------

    def _ch(self, call: Call) -> AwgChannel:
        if call.suffix not in self.state:
            raise SCPIError(-114, f"channel {call.suffix}")
        return self.state[call.suffix]

    def _set_levels(self, call: Call, vpp: float, offset: float) -> None:
        st = self._ch(call)
        if not st.min_vpp <= vpp <= st.max_vpp:
            raise SCPIError(-222, f"amplitude {vpp:g} Vpp outside [{st.min_vpp:g}, {st.max_vpp:g}] at this load")
        if abs(offset) > st.max_level_v:
            raise SCPIError(-222, f"offset {offset:g} V outside +-{st.max_level_v:g} V at this load")
        if st.function != "DC" and abs(offset) + vpp / 2 > st.max_level_v * (1 + 1e-12):
            raise SCPIError(-221, f"|offset| + Vpp/2 = {abs(offset) + vpp / 2:g} V exceeds {st.max_level_v:g} V")
        st.amplitude_vpp, st.offset_v = vpp, offset
        self._replay(call.suffix)

    # -- function and sample rate ------------------------------------------------------------------------------------

    @scpi("[SOURce#:]FUNCtion[:SHAPe]")
    def _function(self, call: Call) -> None:
        st = self._ch(call)
        st.function = call.choice(0, self.FUNCTIONS)
        self._replay(call.suffix)

    @scpi("[SOURce#:]FUNCtion[:SHAPe]?")
    def _function_q(self, call: Call) -> str:
        return self._ch(call).function

    @scpi("[SOURce#:]FUNCtion:ARBitrary")
    def _arb(self, call: Call) -> None:
        st = self._ch(call)
        name = call.text(0).upper()
        if name == BUILTIN_EXP_RISE.upper():
            st.arb = BUILTIN_EXP_RISE
        elif name in st.memory:
            st.arb = name
        else:
            raise SCPIError(-224, f"no arb waveform {name!r} in channel {call.suffix} memory")
        self._replay(call.suffix)

    @scpi("[SOURce#:]FUNCtion:ARBitrary?")
    def _arb_q(self, call: Call) -> str:
        return f'"{self._ch(call).arb}"'

    @scpi("[SOURce#:]FUNCtion:ARBitrary:SRATe")
    def _srate(self, call: Call) -> None:
        st = self._ch(call)
        lo, hi = self.sample_rate_range_hz
        st.sample_rate_hz = call.number(0, lo=lo, hi=hi, default=40e3, unit="SA/S")
        self._replay(call.suffix)

    @scpi("[SOURce#:]FUNCtion:ARBitrary:SRATe?")
    def _srate_q(self, call: Call) -> str:
        return nr3(self._ch(call).sample_rate_hz)

    _filter = setting("[SOURce#:]FUNCtion:ARBitrary:FILTer", "arb_filter", choices=("NORMal", "STEP", "OFF"),
                      per_channel=True)

    @scpi("[SOURce#:]FREQuency[:CW]")
    def _frequency(self, call: Call) -> None:
        self._ch(call).frequency_hz = call.number(0, lo=1e-6, hi=30e6, default=1e3, unit="HZ")
        self._replay(call.suffix)

    @scpi("[SOURce#:]FREQuency[:CW]?")
    def _frequency_q(self, call: Call) -> str:
        return nr3(self._ch(call).frequency_hz)

    # -- levels ------------------------------------------------------------------------------------------------------

    @scpi("[SOURce#:]VOLTage[:LEVel][:IMMediate][:AMPLitude]")
    def _amplitude(self, call: Call) -> None:
        st = self._ch(call)
        vpp = call.number(0, lo=st.min_vpp, hi=st.max_vpp, default=0.1, unit="V")
        self._set_levels(call, vpp, st.offset_v)

    @scpi("[SOURce#:]VOLTage[:LEVel][:IMMediate][:AMPLitude]?")
    def _amplitude_q(self, call: Call) -> str:
        return nr3(self._ch(call).amplitude_vpp)

    @scpi("[SOURce#:]VOLTage[:LEVel][:IMMediate]:OFFSet")
    def _offset(self, call: Call) -> None:
        st = self._ch(call)
        offset = call.number(0, lo=-st.max_level_v, hi=st.max_level_v, default=0.0, unit="V")
        self._set_levels(call, st.amplitude_vpp, offset)

    @scpi("[SOURce#:]VOLTage[:LEVel][:IMMediate]:OFFSet?")
    def _offset_q(self, call: Call) -> str:
        return nr3(self._ch(call).offset_v)

    @scpi("[SOURce#:]VOLTage[:LEVel][:IMMediate]:HIGH")
    def _high(self, call: Call) -> None:
        st = self._ch(call)
        low = st.offset_v - st.amplitude_vpp / 2
        high = call.number(0, lo=-st.max_level_v, hi=st.max_level_v, unit="V")
        self._set_levels(call, high - low, (high + low) / 2)

    @scpi("[SOURce#:]VOLTage[:LEVel][:IMMediate]:HIGH?")
    def _high_q(self, call: Call) -> str:
        st = self._ch(call)
        return nr3(st.offset_v + st.amplitude_vpp / 2)

    @scpi("[SOURce#:]VOLTage[:LEVel][:IMMediate]:LOW")
    def _low(self, call: Call) -> None:
        st = self._ch(call)
        high = st.offset_v + st.amplitude_vpp / 2
        low = call.number(0, lo=-st.max_level_v, hi=st.max_level_v, unit="V")
        self._set_levels(call, high - low, (high + low) / 2)

    @scpi("[SOURce#:]VOLTage[:LEVel][:IMMediate]:LOW?")
    def _low_q(self, call: Call) -> str:
        st = self._ch(call)
        return nr3(st.offset_v - st.amplitude_vpp / 2)

    # -- output ------------------------------------------------------------------------------------------------------

    @scpi("OUTPut#[:STATe]")
    def _output(self, call: Call) -> None:
        st = self._ch(call)
        st.output = call.boolean(0)
        log.info("awg: output %d %s", call.suffix, "ON" if st.output else "OFF")
        self._replay(call.suffix)

    @scpi("OUTPut#[:STATe]?")
    def _output_q(self, call: Call) -> str:
        return "1" if self._ch(call).output else "0"

    @scpi("OUTPut#:LOAD")
    def _load(self, call: Call) -> None:
        st = self._ch(call)
        if call.text(0).upper() in ("INF", "INFINITY"):
            load = math.inf
        else:
            load = call.number(0, lo=1.0, hi=10e3, default=50.0, unit="OHM")
        scale = load_factor(load) / load_factor(st.load_ohm)  # keep the EMF: the displayed levels follow the load
        st.load_ohm, st.amplitude_vpp, st.offset_v = load, st.amplitude_vpp * scale, st.offset_v * scale
        self._replay(call.suffix)

    @scpi("OUTPut#:LOAD?")
    def _load_q(self, call: Call) -> str:
        return nr3(self._ch(call).load_ohm)

    _border = setting("FORMat:BORDer", "byte_order", choices=("NORMal", "SWAPped"))

    # -- arbitrary waveform memory -----------------------------------------------------------------------------------

    @scpi("[SOURce#:]DATA:ARBitrary", nargs=(2, memory_points + 1))
    def _data_arb(self, call: Call) -> None:
        order = ">" if self.byte_order == "NORM" else "<"
        if call.is_block(1):
            values = self._block_values(call, np.dtype(order + "f4")).astype(np.float64)
        else:
            values = self._ascii_values(call)
        if not np.all(np.isfinite(values)) or np.any(np.abs(values) > 1.0):
            raise SCPIError(-222, "arb values must lie in [-1, 1]")
        self._store(call, np.round(values * 32767).astype(np.int16))

    @scpi("[SOURce#:]DATA:ARBitrary:DAC", nargs=(2, memory_points + 1))
    def _data_dac(self, call: Call) -> None:
        order = ">" if self.byte_order == "NORM" else "<"
        if call.is_block(1):
            codes = self._block_values(call, np.dtype(order + "i2")).astype(np.int32)
        else:
            values = self._ascii_values(call)
            if np.any(values != np.round(values)):
                raise SCPIError(-104, "DAC values must be integers")
            codes = values.astype(np.int64)
        if np.any(np.abs(codes) > 32767):
            raise SCPIError(-222, "DAC values must lie in [-32767, 32767]")
        self._store(call, codes.astype(np.int16))

    @staticmethod
    def _block_values(call: Call, dtype: np.dtype) -> np.ndarray:
        if len(call) != 2:
            raise SCPIError(-108, "a binary block must be the only data parameter")
        payload = call.block(1)
        if len(payload) % dtype.itemsize:
            raise SCPIError(-161, f"{len(payload)} bytes are not a whole number of {dtype.itemsize}-byte values")
        return np.frombuffer(payload, dtype=dtype)

    @staticmethod
    def _ascii_values(call: Call) -> np.ndarray:
        # hostile input: numpy pads every value to the longest one, so one 100 kB "value" among 100k short ones
        # would take 10 GB; no number needs more than MAX_VALUE_CHARS characters
        if max(map(len, call.parts[1:])) > MAX_VALUE_CHARS:
            raise SCPIError(-104, f"arb data value longer than {MAX_VALUE_CHARS} characters")
        try:
            return np.array(call.parts[1:], dtype=np.bytes_).astype(np.float64)
        except ValueError:
            raise SCPIError(-104, "arb data must be numbers") from None

    def _store(self, call: Call, codes: np.ndarray) -> None:
        st = self._ch(call)
        name = call.text(0)
        if not _ARB_NAME.fullmatch(name):
            raise SCPIError(-224, f"arb name {name!r}: 1-12 letters, digits or '_', starting with a letter")
        name = name.upper()
        if name in st.memory:
            raise SCPIError(-221, f"arb {name!r} already exists; use DATA:VOL:CLE")
        if len(codes) < self.min_points:
            raise SCPIError(-222, f"an arb needs at least {self.min_points} points, got {len(codes)}")
        if st.used_points + len(codes) > self.memory_points:
            raise SCPIError(-225, f"{len(codes)} points do not fit in {self.memory_points - st.used_points} free")
        st.memory[name] = codes
        log.info("awg: channel %d arb %s loaded, %d points", call.suffix, name, len(codes))

    @scpi("[SOURce#:]DATA:VOLatile:CLEar", nargs=0)
    def _clear(self, call: Call) -> None:
        st = self._ch(call)
        st.memory.clear()
        if st.arb != BUILTIN_EXP_RISE:
            st.arb = BUILTIN_EXP_RISE
            self._replay(call.suffix)

    @scpi("[SOURce#:]DATA:VOLatile:CATalog?")
    def _catalog(self, call: Call) -> str:
        names = self._ch(call).memory
        return ",".join(f'"{n}"' for n in names) if names else '""'

    @scpi("[SOURce#:]DATA:VOLatile:FREE?")
    def _free(self, call: Call) -> str:
        return nr1(self.memory_points - self._ch(call).used_points)

    # -- burst and trigger -------------------------------------------------------------------------------------------

    @scpi("[SOURce#:]BURSt:STATe")
    def _burst(self, call: Call) -> None:
        self._ch(call).burst = call.boolean(0)
        self._replay(call.suffix)

    @scpi("[SOURce#:]BURSt:STATe?")
    def _burst_q(self, call: Call) -> str:
        return "1" if self._ch(call).burst else "0"

    _burst_mode = setting("[SOURce#:]BURSt:MODE", "burst_mode", choices=("TRIGgered", "GATed"), per_channel=True)

    @scpi("[SOURce#:]BURSt:NCYCles")
    def _ncycles(self, call: Call) -> None:
        st = self._ch(call)
        if call.text(0).upper() in ("INF", "INFINITY"):
            st.burst_cycles = math.inf
        else:
            st.burst_cycles = float(call.integer(0, lo=1, hi=100_000_000, default=1))
        self._replay(call.suffix)

    @scpi("[SOURce#:]BURSt:NCYCles?")
    def _ncycles_q(self, call: Call) -> str:
        return nr3(self._ch(call).burst_cycles)

    @scpi("TRIGger#:SOURce")
    def _trigger_source(self, call: Call) -> None:
        self._ch(call).trigger_source = call.choice(0, ("IMMediate", "EXTernal", "TIMer", "BUS"))
        self._replay(call.suffix)

    @scpi("TRIGger#:SOURce?")
    def _trigger_source_q(self, call: Call) -> str:
        return self._ch(call).trigger_source

    @scpi("*TRG")
    def _trg(self, call: Call) -> None:
        bus = [ch for ch, st in self.state.items() if st.trigger_source == "BUS"]
        if not bus:
            raise SCPIError(-211, "*TRG needs TRIG:SOUR BUS")
        for ch in bus:
            self._fire(ch)

    @scpi("TRIGger#[:IMMediate]", nargs=0)
    def _trigger_now(self, call: Call) -> None:
        self._ch(call)
        self._fire(call.suffix)
