"""Simulated PNN-LAB PS-SLM640: a 1-D phase-only spatial light modulator (640 pixels, 8-bit gray) on a serial line.

The instrument of the optical bench's 4f pulse shaper (see ``drivers.slm`` for the driver's view and line settings:
8N1, ``\\n`` terminators both ways). Every setting is also a query unless marked read only.

=========================================  ===========================================================================
``PIXels?``                                ``640``: number of pixels (read only)
``LUT:DATA?``                              ``#41024<256 float32 LE>``: phase (rad) of gray 0..255 at ``LUT:WAV?``;
                                           nominal ``2 pi g / 255`` (read only)
``LUT:WAVelength?``                        ``8.0E-07``: wavelength the LUT is given for, m (read only)
``PATTern[:DATA] #<block>``                640 uint8 gray levels, shown at once; the LC settles in ``SETT?`` s
``PATTern[:DATA]?``                        ``#3640<640 uint8>``: the pattern shown now
``PATTern:BLANk``                          show the all-zero pattern (the safe state)
``PATTern:BLANk?``                         ``1`` if the all-zero pattern is shown, else ``0``
``SEQuence[:DATA] #<block>``               K * 640 uint8 (K patterns, row-major), 1 <= K <= ``SEQ:MAX?``; replaces
                                           the loaded sequence
``SEQuence:COUNt?``                        K loaded (0 after ``*RST``)
``SEQuence:MAXimum?``                      ``4096`` (read only): patterns per bank
``SEQuence:BANK<n>[:DATA] #<block>``       as ``SEQ:DATA``, into sequence bank n = 1|2 (``SEQ:DATA`` is bank 1);
                                           allowed while the OTHER bank plays
``SEQuence:BANK<n>:COUNt?``                K loaded in bank n
``SEQuence:BANK<n>:STARt``                 play bank n once (``SEQ:STAR`` plays bank 1)
``SEQuence:BANK?``                         ``0`` idle, else the bank playing (1|2)
``SEQuence:DWELl <s>``                     time each pattern is shown, 1 ms .. 10 s (``MIN``, ``MAX``, ``DEF`` 10 ms)
``SEQuence:STARt``                         play the sequence once (see below); the last pattern stays shown
``SEQuence:STATe?``                        ``RUN`` or ``IDLE``
``TRIGger:OUTPut ON|OFF``                  pulse the trigger output once per pattern of a sequence; query ``1|0``
``SETTle?``                                ``5.0E-03``: LC settling time, s (read only)
``*OPC?``                                  ``1`` once the sequence (or the settling of a pattern) is done
=========================================  ===========================================================================

Errors (queued, state unchanged): a pattern block of other than 640 bytes -> -161 "Invalid block data" (-223 "Too
much data" if longer); a sequence block that is empty or not a multiple of 640 -> -161, more than ``SEQ:MAX?``
patterns -> -223 (a block beyond the reader's bound, 4096 * 640 bytes, is refused while framing, also -223); a
parameter that is not a block -> -104; ``SEQ:STAR`` with no sequence loaded, a start while a sequence runs, or a load
into the bank that is playing -> -221 "Settings conflict"; a bank other than 1 or 2 -> -114 "Header suffix out of
range". ``*RST``: blank pattern, both banks cleared, ``DWEL`` 0.01 s, ``TRIG:OUTP ON``.

Double-buffered sequence memory: two banks of ``SEQ:MAX?`` patterns each. A bank can be loaded while the other one
plays (the upload still takes its time on the serial line: 10 bits per byte at the line's baud rate), so a long
batch can be shown in chunks with the next chunk's upload hidden behind the current one's playback. A bank is started
only when no sequence plays (no queued start: the host starts the next bank once ``*OPC?`` says the current one is
done). Without the ``BANK`` commands the instrument behaves as with one sequence memory (bank 1).

Sequence playback: for each pattern, show it, wait ``SETT?``, pulse the trigger out (if ``TRIG:OUTP ON``), keep it
for the rest of ``DWEL``; the whole sequence takes K * ``DWEL`` s. With ``realtime=True`` that time passes on the wall
clock: ``SEQ:STAT?`` answers ``RUN``, ``PATT?`` returns the pattern shown at that moment, and ``*OPC?`` answers when
the sequence ends (after ``PATT``, when the LC has settled). Without ``realtime`` everything completes at once.
``PATT`` or ``PATT:BLAN`` during a sequence stops it. A sequence's clock starts when its start command is received:
the time the bench's physics takes to compute its frames is the simulation's, not the instrument's.

Wiring (the bench, ``simulators.benches``): ``listener.on_slm_sequence(patterns [K, 640] uint8, dwell_s, settle_s,
trigger_out, start_s=<monotonic time the sequence started>)`` on ``SEQ:STAR`` or ``SEQ:BANK<n>:STAR`` and
``listener.on_slm_pattern(pattern [640] uint8)`` whenever a pattern is shown by ``PATT``, ``PATT:BLAN`` or ``*RST``;
both called under the instrument lock with read-only copies.

Deviations from a real SLM: the LUT is the nominal one (the true phase response lives in the bench's physics); a
sequence aborted by ``PATT`` still counts as played for the bench; flow control is not simulated (the pty carries
whatever is written); the serial number is drawn from ``seed``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

import numpy as np

from simulators.scpi import Block, Call, SCPIError, SCPIInstrument, scpi, setting

log = logging.getLogger(__name__)


def _nr3(value: float) -> str:
    """Shortest exponent form that reads back as the same float: ``8.0E-07``, ``1.25E-02``."""
    return np.format_float_scientific(value, unique=True, trim="0", exp_digits=2).upper()


class SLMListener(Protocol):
    """What the SLM is wired to (the optical bench)."""

    def on_slm_sequence(self, patterns: np.ndarray, dwell_s: float, settle_s: float, trigger_out: bool, *,
                        start_s: float) -> None: ...

    def on_slm_pattern(self, pattern: np.ndarray) -> None: ...


def _frozen(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out.flags.writeable = False
    return out


class SimPhaseSLM(SCPIInstrument):
    """Front panel of a PS-SLM640. Attributes for tests and the bench: ``shown_pattern`` (uint8 [640]), ``is_blank``,
    ``running``, ``banks`` (the two sequence banks, uint8 [K, 640] each), ``sequence`` (bank 1), ``playing_bank``
    (0 idle, 1 or 2), ``dwell_s``, ``trigger_out``, ``lut_rad`` (float32 [256]).

    Args:
        lock: shared with the other instruments of the bench.
        listener: the bench (see the module docstring).
        seed: draws the serial number.
        realtime: sequences and settling take their physical time (see the module docstring).
    """

    n_pixels = 640
    sequence_max = 4096  # patterns per bank
    n_banks = 2
    settle_s = 5e-3
    lut_wavelength_m = 800e-9
    default_dwell_s = 0.01
    dwell_range_s = (1e-3, 10.0)
    max_block_bytes = sequence_max * n_pixels
    max_message_bytes = max_block_bytes + 256

    def __init__(self, lock: threading.RLock | None = None, listener: SLMListener | None = None, *, seed: int = 0,
                 realtime: bool = False):
        super().__init__(lock)
        self.listener = listener
        self.realtime = realtime
        serial = int(np.random.default_rng(seed).integers(100_000, 1_000_000))
        self.idn = f"PNN-LAB,PS-SLM640,SLM{serial},1.0"
        #: nominal lookup table: phase (rad) of gray g at 800 nm, as stored in the instrument
        self.lut_rad = (2.0 * np.pi * np.arange(256) / 255.0).astype(np.float32)
        self.reset()

    def reset(self) -> None:
        self._shown = np.zeros(self.n_pixels, dtype=np.uint8)
        self.banks = [np.zeros((0, self.n_pixels), dtype=np.uint8) for _ in range(self.n_banks)]
        self.dwell_s = self.default_dwell_s
        self.trigger_out = True
        self._run: tuple[np.ndarray, float, float] | None = None  # patterns, monotonic start, dwell
        self._run_bank = 0  # the bank of ``_run`` (1 or 2)
        self._busy_until = 0.0  # monotonic time *OPC? waits for

    @property
    def sequence(self) -> np.ndarray:
        """The patterns of bank 1, the sequence of the plain ``SEQ`` commands (uint8 [K, 640])."""
        return self.banks[0]

    @property
    def playing_bank(self) -> int:
        """The bank whose sequence plays now: 1 or 2, 0 when none does."""
        with self.lock:
            return self._run_bank if self.running else 0

    # -- state seen by the bench and tests ---------------------------------------------------------------------------

    def _advance(self) -> None:
        """Finish a realtime sequence whose time is up: its last pattern stays shown."""
        if self._run is not None:
            patterns, start, dwell = self._run
            if time.monotonic() >= start + len(patterns) * dwell:
                self._shown, self._run = patterns[-1].copy(), None

    @property
    def shown_pattern(self) -> np.ndarray:
        """The gray levels shown now (uint8 [640], a copy)."""
        with self.lock:
            self._advance()
            if self._run is None:
                return self._shown.copy()
            patterns, start, dwell = self._run
            k = min(len(patterns) - 1, int((time.monotonic() - start) / dwell))
            return patterns[k].copy()

    @property
    def is_blank(self) -> bool:
        """Whether the all-zero (safe) pattern is shown."""
        return not self.shown_pattern.any()

    @property
    def running(self) -> bool:
        """Whether a sequence is playing (only ever true with ``realtime``)."""
        with self.lock:
            self._advance()
            return self._run is not None

    def _busy_for(self, seconds: float, since: float | None = None) -> None:
        """``*OPC?`` answers ``seconds`` after ``since`` (monotonic s, default now) in realtime, else at once."""
        now = time.monotonic()
        self._busy_until = (now if since is None else since) + seconds if self.realtime else now
        if self.realtime and self._busy_until > now:
            timer = threading.Timer(self._busy_until - now, self._wake)  # wakes a waiting *OPC? on time
            timer.daemon = True
            timer.start()

    def _wake(self) -> None:
        with self.lock:
            self.changed.notify_all()

    def _show(self, pattern: np.ndarray) -> None:
        if self._run is not None:
            log.info("slm: sequence stopped by a new pattern")
        self._run = None
        self._shown = pattern
        self._busy_for(self.settle_s)
        self.changed.notify_all()
        if self.listener is not None:
            self.listener.on_slm_pattern(_frozen(pattern))

    # -- read-only facts ---------------------------------------------------------------------------------------------

    @scpi("PIXels?")
    def _pixels_q(self, call: Call) -> str:
        return str(self.n_pixels)

    @scpi("LUT:DATA?")
    def _lut_q(self, call: Call) -> Block:
        return Block(self.lut_rad.astype("<f4").tobytes())

    @scpi("LUT:WAVelength?")
    def _lut_wavelength_q(self, call: Call) -> str:
        return _nr3(self.lut_wavelength_m)

    @scpi("SETTle?")
    def _settle_q(self, call: Call) -> str:
        return _nr3(self.settle_s)

    # -- patterns ----------------------------------------------------------------------------------------------------

    @scpi("PATTern[:DATA]")
    def _pattern(self, call: Call) -> None:
        data = call.block(0)
        if len(data) != self.n_pixels:
            code = -223 if len(data) > self.n_pixels else -161
            raise SCPIError(code, f"pattern of {len(data)} bytes, expected {self.n_pixels}")
        self._show(np.frombuffer(data, dtype=np.uint8).copy())

    @scpi("PATTern[:DATA]?")
    def _pattern_q(self, call: Call) -> Block:
        return Block(self.shown_pattern.tobytes())

    @scpi("PATTern:BLANk", nargs=0)
    def _blank(self, call: Call) -> None:
        self._show(np.zeros(self.n_pixels, dtype=np.uint8))

    @scpi("PATTern:BLANk?")
    def _blank_q(self, call: Call) -> str:
        return "1" if self.is_blank else "0"

    # -- sequences ---------------------------------------------------------------------------------------------------

    def _bank(self, call: Call) -> int:
        """The bank the header names: ``SEQ:BANK<n>`` (n = 1|2), or 1 for the plain ``SEQ`` commands."""
        bank = call.suffix
        if not 1 <= bank <= self.n_banks:
            raise SCPIError(-114, f"{call.header}: bank {bank}, the SLM has banks 1 .. {self.n_banks}")
        return bank

    @scpi("SEQuence[:DATA]")
    @scpi("SEQuence:BANK#[:DATA]")
    def _sequence(self, call: Call) -> None:
        bank = self._bank(call)
        data = call.block(0)
        if self.running and self._run_bank == bank:
            raise SCPIError(-221, f"bank {bank} is playing" if call.suffixes else "a sequence is running")
        k, rest = divmod(len(data), self.n_pixels)
        if k == 0 or rest:
            raise SCPIError(-161, f"sequence of {len(data)} bytes is not a whole number of {self.n_pixels}-pixel "
                                  f"patterns")
        if k > self.sequence_max:
            raise SCPIError(-223, f"{k} patterns, at most {self.sequence_max}")
        self.banks[bank - 1] = np.frombuffer(data, dtype=np.uint8).reshape(k, self.n_pixels).copy()

    @scpi("SEQuence:COUNt?")
    @scpi("SEQuence:BANK#:COUNt?")
    def _count_q(self, call: Call) -> str:
        return str(len(self.banks[self._bank(call) - 1]))

    @scpi("SEQuence:BANK?")
    def _bank_q(self, call: Call) -> str:
        return str(self.playing_bank)

    @scpi("SEQuence:MAXimum?")
    def _max_q(self, call: Call) -> str:
        return str(self.sequence_max)

    _dwell = setting("SEQuence:DWELl", "dwell_s", "number", lo=dwell_range_s[0], hi=dwell_range_s[1],
                     default=default_dwell_s, unit="S", fmt=_nr3)
    _trigger_out = setting("TRIGger:OUTPut", "trigger_out", "boolean")

    @scpi("SEQuence:STARt", nargs=0)
    @scpi("SEQuence:BANK#:STARt", nargs=0)
    def _start(self, call: Call) -> None:
        start = time.monotonic()  # the instrument starts on the command; the physics below is the simulation's time
        bank = self._bank(call)
        patterns = self.banks[bank - 1]
        if not len(patterns):
            raise SCPIError(-221, f"no sequence loaded in bank {bank}" if call.suffixes else "no sequence loaded")
        if self.running:
            raise SCPIError(-221, "a sequence is running")
        if self.listener is not None:
            self.listener.on_slm_sequence(_frozen(patterns), self.dwell_s, self.settle_s, self.trigger_out,
                                          start_s=start)
        duration_s = len(patterns) * self.dwell_s
        if self.realtime:
            self._run, self._run_bank = (patterns, start, self.dwell_s), bank
        else:
            self._shown = patterns[-1].copy()
        self._busy_for(duration_s, since=start)
        self.changed.notify_all()

    @scpi("SEQuence:STATe?")
    def _state_q(self, call: Call) -> str:
        return "RUN" if self.running else "IDLE"

    # -- common commands ---------------------------------------------------------------------------------------------

    @scpi("*RST")
    def _rst(self, call: Call) -> None:
        self.reset()
        self.changed.notify_all()
        if self.listener is not None:
            self.listener.on_slm_pattern(_frozen(self._shown))

    @scpi("*OPC?")
    def _opc_query(self, call: Call) -> str:
        call.then_wait(lambda: time.monotonic() >= self._busy_until)
        return "1"
