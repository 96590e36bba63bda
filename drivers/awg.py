"""Keysight 33500B series arbitrary waveform generator (33521B, 33522B, ...), SCPI over LAN socket 5025.

Every output value is checked BEFORE anything is sent; a refused call raises LimitViolation and leaves the
instrument untouched. Limits (33500B data sheet, scaled to the declared load R by 2R/(R+50) because the
source impedance is 50 ohm):

    sample rate           1 uSa/s .. 250 MSa/s (arbitrary waveforms)
    arb length            8 .. memory_points samples
    amplitude             1 mVpp .. 10 Vpp into 50 ohm (2 mVpp .. 20 Vpp into High-Z)
    |offset| + Vpp/2      <= 5 V into 50 ohm (10 V into High-Z)
    |offset| + Vpp/2      <= max_abs_volts (the user's safety limit, checked for every call)
    |offset|              <= max_abs_offset_volts (optional; 0 refuses any DC offset, e.g. for a speaker)

Exact command strings, shown for channel 1 (channel 2 uses SOUR2:, OUTP2, TRIG2):

    OUTP1:LOAD 50.0 | OUTP1:LOAD INF      OUTP1:LOAD?         load, ohm
    SOUR1:VOLT 1.5                        SOUR1:VOLT?         amplitude, Vpp into the load
    SOUR1:VOLT:OFFS 0.1                   SOUR1:VOLT:OFFS?    offset, V
    SOUR1:FUNC:ARB:SRAT 1000000.0         SOUR1:FUNC:ARB:SRAT?  sample rate, Sa/s
    OUTP1 ON | OUTP1 OFF                  OUTP1?
    FORM:BORD SWAP                        binary blocks little-endian
    SOUR1:DATA:VOL:CLE                    free the channel's volatile waveform memory
    SOUR1:DATA:ARB:DAC NAME,#<n><len><int16 LE codes>     binary upload (codes = round(sample * 32767))
    SOUR1:DATA:ARB NAME,0.5,-0.25,...                      ASCII upload (floats in [-1, 1])
    SOUR1:FUNC:ARB NAME, SOUR1:FUNC ARB                    play it
    SOUR1:BURS:MODE TRIG, SOUR1:BURS:NCYC 1, TRIG1:SOUR BUS, SOUR1:BURS:STAT ON    burst on a bus trigger
    SOUR1:BURS:STAT OFF                                    continuous
    *TRG                                                   bus trigger

Each setting is followed by ``SYST:ERR?`` (see ``drivers.scpi.SCPIInstrument``).

Overlapping uploads with playback (issue 14, point 3): the 33500B keeps named arbitrary waveforms in a channel's
volatile memory (``DATA:ARB <name>`` stores one, ``FUNC:ARB <name>`` selects the one that plays, ``DATA:VOL:CLE``
frees them), so a second waveform can sit in memory beside the one playing. Whether an upload into volatile memory is
accepted while another waveform plays with the output on, and whether ``FUNC:ARB`` then switches without a gap or a
glitch: not verified (the Keysight 33500 programming guide was not among the references searched). This driver does
not pipeline: the electronic and mechanical setups (``drivers.setups.awg_scope``) encode a whole batch as ONE
waveform (the items in time slots with guard intervals), played once on a bus trigger and recorded by one
single-shot scope acquisition, so there is no next waveform to load while one plays unless a batch outgrows the
AWG memory or the scope record (``items_per_upload``). On the realtime electronic bench the instruments already
account for 0.96 of a PAT epoch's wall time (experiments/results_speed.md, electronic_digits), which leaves little
for an overlap to win.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Literal

import numpy as np

from drivers.errors import InstrumentError, LimitViolation
from drivers.scpi import (
    Control, SCPIInstrument, check_choice, check_range, format_number,
)
from drivers.transport import Link

log = logging.getLogger(__name__)

Load = float | Literal["INF"]

SAMPLE_RATE_MIN_SA_S = 1e-6
SAMPLE_RATE_MAX_SA_S = 250e6
ARB_MIN_POINTS = 8
SOURCE_IMPEDANCE_OHM = 50.0
AMPLITUDE_MIN_VPP_50OHM = 1e-3
AMPLITUDE_MAX_VPP_50OHM = 10.0
PEAK_MAX_V_50OHM = 5.0
LOAD_MIN_OHM, LOAD_MAX_OHM = 1.0, 10e3
DAC_FULL_SCALE = 32767
BURST_MAX_CYCLES = 100_000_000
#: what OUTP:LOAD? answers for High-Z (the 33500B reports 9.9E+37)
HIGH_Z_REPLY = 9.9e37
_ARB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,11}$")
_TRIGGER_SOURCES = {"IMM": "IMM", "IMMEDIATE": "IMM", "EXT": "EXT", "EXTERNAL": "EXT", "TIM": "TIM",
                    "TIMER": "TIM", "BUS": "BUS"}


def load_factor(load: Load) -> float:
    """Voltage at the load relative to a matched 50 ohm load: 2R/(R+50); 2 for High-Z."""
    return 2.0 if load == "INF" else 2.0 * float(load) / (float(load) + SOURCE_IMPEDANCE_OHM)


class Keysight33500B(SCPIInstrument):
    """One channel of a Keysight 33500B series AWG.

    Args:
        link: open link (``TCPIP0::<ip>::5025::SOCKET``).
        name: instrument name for messages.
        channel: 1 or 2.
        load_ohm: load the output drives, ohm, or ``"INF"`` (High-Z); set on the instrument at construction.
        max_abs_volts: safety limit on |offset| + amplitude/2 at the load, V.
        max_abs_offset_volts: safety limit on |offset|, V (None: only max_abs_volts; 0: no DC offset at all).
        memory_points: arbitrary waveform memory of the channel, samples (1 M standard, 16 M with option MEM).

    On construction the load is set and the current amplitude and offset are read; if they already exceed
    a limit, the output is switched off. Use as a context manager to switch the output off and close on exit.
    """

    def _check_amplitude(self, vpp: float, command: str) -> None:
        self._check_levels(vpp, self._present("offset"), command)

    def _check_offset(self, volts: float, command: str) -> None:
        self._check_levels(self._present("amplitude"), volts, command)

    amplitude = Control("SOUR{ch}:VOLT", "Amplitude, Vpp into the declared load.", unit="Vpp",
                        check=_check_amplitude)
    offset = Control("SOUR{ch}:VOLT:OFFS", "DC offset, V into the declared load.", unit="V",
                     check=_check_offset)
    sample_rate = Control("SOUR{ch}:FUNC:ARB:SRAT", "Arbitrary-waveform sample rate, Sa/s.", unit="Sa/s",
                          low=SAMPLE_RATE_MIN_SA_S, high=SAMPLE_RATE_MAX_SA_S)

    def __init__(self, link: Link, *, name: str = "awg", channel: int = 1, load_ohm: Load = 50.0,
                 max_abs_volts: float, max_abs_offset_volts: float | None = None, memory_points: int = 1_000_000,
                 check_errors: bool = True):
        super().__init__(link, name=name, check_errors=check_errors)
        if channel not in (1, 2):
            raise ValueError(f"{name}: channel must be 1 or 2, got {channel!r}")
        if not (math.isfinite(max_abs_volts) and max_abs_volts > 0):
            raise ValueError(f"{name}: max_abs_volts must be a positive number of volts, got {max_abs_volts!r}")
        if memory_points < ARB_MIN_POINTS:
            raise ValueError(f"{name}: memory_points must be at least {ARB_MIN_POINTS}, got {memory_points}")
        self.channel = channel
        self.max_abs_volts = float(max_abs_volts)
        if max_abs_offset_volts is not None and not (math.isfinite(max_abs_offset_volts) and max_abs_offset_volts >= 0):
            raise ValueError(f"{name}: max_abs_offset_volts must be None or >= 0 V, got {max_abs_offset_volts!r}")
        self.max_abs_offset_volts = max_abs_offset_volts
        self.memory_points = int(memory_points)
        self._src = f"SOUR{channel}:"
        self._outp = f"OUTP{channel}"
        self._load: Load = 50.0
        self.load = load_ohm

    def command_fields(self) -> dict[str, int]:
        return {"ch": self.channel}

    # -- limits --------------------------------------------------------------------------------------------------
    def amplitude_limits_vpp(self) -> tuple[float, float]:
        """Allowed amplitude range for the declared load, Vpp."""
        k = load_factor(self._load)
        return AMPLITUDE_MIN_VPP_50OHM * k, AMPLITUDE_MAX_VPP_50OHM * k

    def peak_limit_v(self) -> float:
        """Largest allowed |offset| + amplitude/2: the instrument's limit or the safety limit, V."""
        return min(PEAK_MAX_V_50OHM * load_factor(self._load), self.max_abs_volts)

    def _check_levels(self, vpp: float, offset_v: float, command: str) -> None:
        low, high = self.amplitude_limits_vpp()
        check_range(self.name, command, vpp, low, high, "Vpp")
        check_range(self.name, command, offset_v, None, None, "V")
        if self.max_abs_offset_volts is not None and abs(offset_v) > self.max_abs_offset_volts:
            limit = ("no DC offset is allowed" if self.max_abs_offset_volts == 0
                     else f"the offset limit is {self.max_abs_offset_volts:g} V")
            raise LimitViolation(self.name, command, f"offset {offset_v:g} V refused: {limit}")
        peak = abs(offset_v) + vpp / 2.0
        instrument_peak = PEAK_MAX_V_50OHM * load_factor(self._load)
        if peak > self.peak_limit_v():
            which = (f"the safety limit max_abs_volts = {self.max_abs_volts:g} V"
                     if self.max_abs_volts <= instrument_peak
                     else f"the instrument limit {instrument_peak:g} V for load {self._load} ohm")
            raise LimitViolation(self.name, command, f"amplitude {vpp:g} Vpp with offset {offset_v:g} V peaks at "
                                                     f"|offset| + Vpp/2 = {peak:g} V, above {which}")

    # -- levels and load ---------------------------------------------------------------------------------------
    def set_levels(self, amplitude_vpp: float, offset_v: float) -> None:
        """Set amplitude (Vpp) and offset (V) together, in the order that keeps every intermediate state safe.

        Also the way out of a state that violates the limits (e.g. left on the front panel), which the
        separate setters refuse to move from one value at a time.
        """
        amp_cmd = f"{self._src}VOLT {format_number(amplitude_vpp)}"
        off_cmd = f"{self._src}VOLT:OFFS {format_number(offset_v)}"
        self._check_levels(amplitude_vpp, offset_v, f"{amp_cmd}; {off_cmd}")
        shrinking = amplitude_vpp <= self.settings.get("amplitude", math.inf)
        try:
            for cmd in ([amp_cmd, off_cmd] if shrinking else [off_cmd, amp_cmd]):
                self.write(cmd)
        except InstrumentError:
            self._read_levels()
            raise
        self.settings.update(amplitude=float(amplitude_vpp), offset=float(offset_v))

    @property
    def load(self) -> Load:
        """Declared load, ohm or ``"INF"`` (``OUTP1:LOAD``); scales the amplitude/offset limits."""
        value = self.query_float(f"{self._outp}:LOAD?")
        return "INF" if value >= HIGH_Z_REPLY else value

    @load.setter
    def load(self, value: Load) -> None:
        header = f"{self._outp}:LOAD"
        if isinstance(value, str) and value.upper() in ("INF", "INFINITY"):
            value, token = "INF", "INF"
        else:
            value = check_range(self.name, header, value, LOAD_MIN_OHM, LOAD_MAX_OHM, "ohm")
            token = format_number(value)
        self.write(f"{header} {token}")
        self._load = value
        self._read_levels()  # the instrument rescales the displayed amplitude/offset to the new load
        self._make_state_safe(f"{header} {token}")

    def _present(self, setting: str) -> float:
        """Present amplitude or offset as last read or set (read from the instrument if unknown)."""
        if setting not in self.settings:
            self._read_levels()
        return self.settings[setting]

    def _read_levels(self) -> None:
        _ = self.amplitude, self.offset  # Control getters refresh self.settings

    def _make_state_safe(self, command: str) -> None:
        """Switch the output off if the instrument's present levels exceed a limit."""
        try:
            self._check_levels(self.settings["amplitude"], self.settings["offset"], command)
        except LimitViolation as err:
            log.warning("%s: present levels exceed the limits (%s); switching output %d off", self.name,
                        err.detail, self.channel)
            self.write(f"{self._outp} OFF")

    # -- output ------------------------------------------------------------------------------------------------
    @property
    def output(self) -> bool:
        """Output relay state (``OUTP1 ON|OFF``). Switching on re-checks the present levels first."""
        return bool(self.query_int(f"{self._outp}?"))

    @output.setter
    def output(self, on: bool) -> None:
        cmd = f"{self._outp} {'ON' if on else 'OFF'}"
        if on:
            self._check_levels(self._present("amplitude"), self._present("offset"), cmd)
        self.write(cmd)

    def output_off(self) -> bool:
        """Switch the output off; never raises. On a failed link, reconnects once and retries, then logs.
        Returns whether the instrument took the command (False: the output may still be on)."""
        cmd = f"{self._outp} OFF"
        for attempt in (1, 2):
            try:
                if attempt == 2:
                    self.link.reconnect()
                self.write(cmd)
                return True
            except Exception as err:  # must never mask the error that brought us here
                log.error("%s: could not switch output %d off (attempt %d): %s", self.name, self.channel,
                          attempt, err)
        return False

    # -- arbitrary waveforms -------------------------------------------------------------------------------------
    def _check_arb(self, name: str, samples: np.ndarray, command: str) -> np.ndarray:
        if not _ARB_NAME.match(name):
            raise LimitViolation(self.name, command, f"arb name {name!r} must be 1-12 letters, digits or '_', "
                                                     f"starting with a letter")
        samples = np.asarray(samples, dtype=float)
        if samples.ndim != 1:
            raise LimitViolation(self.name, command, f"samples must be 1-D, got shape {samples.shape}")
        check_range(self.name, command, samples.size, ARB_MIN_POINTS, self.memory_points, "points")
        if not np.max(np.abs(samples)) <= 1.0:  # one test for all: NaN and infinity fail it too
            if not np.all(np.isfinite(samples)):
                raise LimitViolation(self.name, command, f"{np.count_nonzero(~np.isfinite(samples))} samples are "
                                                         f"NaN or infinite")
            raise LimitViolation(self.name, command, f"samples span [{samples.min():g}, {samples.max():g}], "
                                                     f"outside [-1, 1]")
        return samples

    def upload_arb(self, name: str, samples: np.ndarray) -> None:
        """Upload ``samples`` in [-1, 1] as int16 DAC codes in one binary block, then select and play it.

        Sends ``FORM:BORD SWAP``, ``SOUR1:DATA:VOL:CLE``, ``SOUR1:DATA:ARB:DAC NAME,#...``,
        ``SOUR1:FUNC:ARB NAME``, ``SOUR1:FUNC ARB``, then reads the error queue once: an error in any of them is
        raised naming all five (a failed upload also makes ``FUNC:ARB NAME`` fail: the name is not in memory).
        Full scale (+-1) maps to amplitude/2 around the offset.
        """
        prefix = f"{self._src}DATA:ARB:DAC {name},"
        samples = self._check_arb(name, samples, prefix.rstrip(","))
        codes = np.rint(samples * DAC_FULL_SCALE).astype("<i2")  # |samples| <= 1 checked: the codes fit int16
        self.write_all(["FORM:BORD SWAP", f"{self._src}DATA:VOL:CLE", (prefix, codes.tobytes()),
                        *self._play_arb(name)])

    def upload_arb_ascii(self, name: str, samples: np.ndarray) -> None:
        """Upload ``samples`` in [-1, 1] as ASCII floats (``SOUR1:DATA:ARB NAME,v1,v2,...``), then play it; the
        error queue is read once, after the four commands."""
        header = f"{self._src}DATA:ARB {name}"
        samples = self._check_arb(name, samples, header)
        self.write_all([f"{self._src}DATA:VOL:CLE", header + "," + ",".join(format_number(v) for v in samples.tolist()),
                        *self._play_arb(name)])

    def _play_arb(self, name: str) -> list[str]:
        """The commands that select the arb ``name`` and play it."""
        return [f"{self._src}FUNC:ARB {name}", f"{self._src}FUNC ARB"]

    # -- burst and trigger ------------------------------------------------------------------------------------
    def configure_burst(self, n_cycles: int = 1, trigger_source: str = "BUS") -> None:
        """Triggered burst of ``n_cycles`` waveform periods per trigger (BUS = ``*TRG``, EXT, TIM, IMM)."""
        ncyc = f"{self._src}BURS:NCYC"
        if isinstance(n_cycles, bool) or int(n_cycles) != n_cycles:
            raise LimitViolation(self.name, ncyc, f"cycle count must be an integer, got {n_cycles!r}")
        check_range(self.name, ncyc, n_cycles, 1, BURST_MAX_CYCLES, "cycles")
        source = check_choice(self.name, f"TRIG{self.channel}:SOUR", trigger_source, _TRIGGER_SOURCES)
        self.write(f"{self._src}BURS:MODE TRIG")
        self.write(f"{ncyc} {int(n_cycles)}")
        self.write(f"TRIG{self.channel}:SOUR {source}")
        self.write(f"{self._src}BURS:STAT ON")

    def continuous(self) -> None:
        """Leave burst mode: play the waveform continuously."""
        self.write(f"{self._src}BURS:STAT OFF")

    def trigger(self) -> None:
        """Software (bus) trigger ``*TRG``."""
        self.write("*TRG")

    # -- lifetime ------------------------------------------------------------------------------------------------
    def __enter__(self) -> Keysight33500B:
        return self

    def __exit__(self, *exc: object) -> None:
        self.output_off()
        try:
            self.close()
        except InstrumentError as err:  # do not mask the exception that ended the with-block
            log.error("%s: closing the link: %s", self.name, err)
