"""PNN-LAB PS-SLM640: 1-D phase-only spatial light modulator of a 4f pulse shaper, SCPI-style over a serial line.

Line settings: USB-serial, 3,000,000 baud by default, 8 data bits, no parity, 1 stop bit (8N1), flow control
none | RTS/CTS | XON/XOFF (configurable on the instrument; the link must match), terminator ``\\n`` both ways.
Use RTS/CTS or none: the binary blocks carry bytes 0x11/0x13, which an XON/XOFF line swallows. Open it with e.g.::

    link = open_link("/dev/ttyUSB0", name="slm", baud_rate=3_000_000, flow_control="rtscts", timeout_s=2.0)
    link = open_link("ASRL/dev/ttyUSB0::INSTR", name="slm", baud_rate=3_000_000, timeout_s=2.0)   # pyvisa
    slm = PhaseSLM(link, gray_max=200, max_sequence=1024)

Timeouts: every read and write has the link's timeout; uploading a sequence extends it by the line time of the
block (10 bits per byte at ``baud_rate``), ``wait_done`` by the sequence's duration (K * dwell).

Exact command strings (short forms; headers also accept the long forms and any case):

    *IDN?                    PNN-LAB,PS-SLM640,<serial>,<firmware>
    PIX?                     -> 640                  number of pixels (read once and cached)
    LUT:DATA?                -> #41024<256 float32 little-endian>   phase (rad) of gray 0..255 at LUT:WAV?
    LUT:WAV?                 -> 8.0E-07              wavelength the LUT is given for, m
    PATT #3640<640 uint8>    show a pattern (gray levels) at once; the liquid crystal settles in SETT? s
    PATT?                    -> #3640<640 uint8>     the pattern shown
    PATT:BLAN                show the all-zero pattern (the safe state)
    PATT:BLAN?               -> 1|0                  whether the all-zero pattern is shown
    SEQ #<n><K*640><uint8>   load K patterns (row-major), 1 <= K <= SEQ:MAX?; replaces the loaded sequence
    SEQ:COUN?                -> K                    patterns loaded
    SEQ:MAX?                 -> 4096                 largest K per bank (read once and cached)
    SEQ:BANK2 #<n><K*640>... load K patterns into sequence bank 2 (``SEQ:BANK1 #...`` = ``SEQ #...``, bank 1);
                             allowed while the other bank plays
    SEQ:BANK2:COUN?          -> K                    patterns in bank 2
    SEQ:BANK2:STAR           play bank 2 once (``SEQ:STAR`` plays bank 1)
    SEQ:BANK?                -> 0|1|2                the bank playing (0: none)
    SEQ:DWEL 0.01            SEQ:DWEL? -> 1.0E-02    time each pattern is shown, s (1e-3 .. 10)
    SEQ:STAR                 play the sequence once: per pattern show, wait SETT?, pulse the trigger out,
                             keep it for the rest of the dwell; the last pattern stays shown
    SEQ:STAT?                -> RUN|IDLE
    TRIG:OUTP ON|OFF         TRIG:OUTP? -> 1|0       trigger-out pulse per sequence pattern (to the camera)
    SETT?                    -> 5.0E-03              liquid-crystal settling time, s
    *OPC?                    -> 1 once a sequence has played (or a pattern has settled)
    *RST                     blank pattern, sequence cleared, SEQ:DWEL 0.01, TRIG:OUTP ON
    SYST:ERR?                error queue (-114 no such bank, -161 invalid block data, -221 settings conflict:
                             e.g. a load into the bank that plays, -223 too much data)

Double-buffered sequence memory: the SLM holds two banks of ``SEQ:MAX?`` patterns. While bank 1 plays, bank 2 can be
loaded over the serial line (and the other way round); a bank starts only once no sequence plays (``*OPC?``).
``load_sequence(patterns, bank=2)`` and ``start_sequence(bank=2)`` use them; without ``bank`` the driver sends the
plain ``SEQ`` commands (bank 1), as for an SLM with one sequence memory.

Every setting is followed by ``SYST:ERR?`` (see ``drivers.scpi.SCPIInstrument``).

Hardware safety: every pattern and sequence is checked BEFORE any of its bytes is sent: an integer array of shape
[n_pixels] (or [K, n_pixels]), gray levels within [gray_min, gray_max], 1 <= K <= min(max_sequence, SEQ:MAX?), a
bank in ``SEQUENCE_BANKS``.
A refused call raises LimitViolation naming the instrument, the command and the offending pattern/pixel/value;
the checks that need the pixel count or SEQ:MAX? query them first (once per driver).
"""

from __future__ import annotations

import logging

import numpy as np

from drivers.errors import LimitViolation, ProtocolError
from drivers.scpi import Control, SCPIInstrument, unpack_values
from drivers.transport import Link

log = logging.getLogger(__name__)

GRAY_LEVELS = 256
DWELL_MIN_S, DWELL_MAX_S = 1e-3, 10.0
DEFAULT_BAUD_RATE = 3_000_000
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
SEQUENCE_BANKS = (1, 2)  # the banks of the double-buffered sequence memory


class PhaseSLM(SCPIInstrument):
    """A PS-SLM640 phase modulator (pattern display, pattern sequences with a trigger out).

    Args:
        link: open serial link (see the module docstring for the line settings).
        name: instrument name for messages.
        gray_min, gray_max: safety limits on the gray levels sent, 0 <= gray_min <= gray_max <= 255.
        max_sequence: safety limit on the patterns per sequence (None: only the instrument's SEQ:MAX?).
        baud_rate: line speed, bit/s, used only to budget the upload time of a sequence.
        check_errors: follow every setting by ``SYST:ERR?``.
    """

    dwell_s = Control("SEQ:DWEL", "Time each pattern of a sequence is shown, s (1e-3 .. 10).", unit="s",
                      low=DWELL_MIN_S, high=DWELL_MAX_S)
    banks = SEQUENCE_BANKS

    def __init__(self, link: Link, *, name: str = "slm", gray_min: int = 0, gray_max: int = 255,
                 max_sequence: int | None = None, baud_rate: float = DEFAULT_BAUD_RATE, check_errors: bool = True):
        super().__init__(link, name=name, check_errors=check_errors)
        for label, value in (("gray_min", gray_min), ("gray_max", gray_max)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < GRAY_LEVELS:
                raise ValueError(f"{name}: {label} must be an integer gray level 0..{GRAY_LEVELS - 1}, got {value!r}")
        if gray_min > gray_max:
            raise ValueError(f"{name}: gray_min {gray_min} is above gray_max {gray_max}")
        if max_sequence is not None and (isinstance(max_sequence, bool) or int(max_sequence) != max_sequence
                                         or max_sequence < 1):
            raise ValueError(f"{name}: max_sequence must be None or a positive integer, got {max_sequence!r}")
        if not baud_rate > 0:
            raise ValueError(f"{name}: baud_rate must be positive, got {baud_rate!r}")
        self.gray_min, self.gray_max = int(gray_min), int(gray_max)
        self.max_sequence = None if max_sequence is None else int(max_sequence)
        self.baud_rate = float(baud_rate)
        self._n_pixels: int | None = None
        self._sequence_max: int | None = None
        self._playing_s = 0.0  # duration of the sequence last started and not yet waited for, s

    # -- instrument facts ----------------------------------------------------------------------------------------
    @property
    def n_pixels(self) -> int:
        """Number of pixels (``PIX?``, read once and cached)."""
        if self._n_pixels is None:
            self._n_pixels = self._positive_int("PIX?")
        return self._n_pixels

    @property
    def sequence_max(self) -> int:
        """Largest number of patterns in a sequence (``SEQ:MAX?``, read once and cached)."""
        if self._sequence_max is None:
            self._sequence_max = self._positive_int("SEQ:MAX?")
        return self._sequence_max

    def _positive_int(self, query: str) -> int:
        value = self.query_int(query)
        if value < 1:
            raise ProtocolError(self.name, query, f"expected a positive integer, got {value}")
        return value

    def lut(self) -> np.ndarray:
        """The gray-to-phase lookup table (``LUT:DATA?``): phase (rad) of gray 0..255 at ``lut_wavelength_m``,
        float [256]."""
        payload = self.link.query_block("LUT:DATA?")
        phase = unpack_values(payload, "float32", "little", instrument=self.name, command="LUT:DATA?")
        if phase.size != GRAY_LEVELS:
            raise ProtocolError(self.name, "LUT:DATA?", f"expected {GRAY_LEVELS} float32 values, got {phase.size}")
        return phase.astype(np.float64)

    @property
    def lut_wavelength_m(self) -> float:
        """Wavelength the LUT is given for, m (``LUT:WAV?``)."""
        return self.query_float("LUT:WAV?")

    @property
    def settle_s(self) -> float:
        """Liquid-crystal settling time, s (``SETT?``)."""
        value = self.query_float("SETT?")
        self.settings["settle_s"] = value
        return value

    # -- single patterns ---------------------------------------------------------------------------------------------
    def show(self, pattern: np.ndarray) -> None:
        """Show ``pattern`` (integer gray levels [n_pixels]) at once (``PATT #3640...``); it settles in
        ``settle_s``. Checked against the limits before anything is sent."""
        data = self._checked(pattern, "PATT", sequence=False)
        self.write_block("PATT ", data.tobytes())
        self._playing_s = 0.0

    def pattern(self) -> np.ndarray:
        """The pattern shown now (``PATT?``), uint8 [n_pixels]."""
        n = self.n_pixels
        payload = self.link.query_block("PATT?")
        if len(payload) != n:
            raise ProtocolError(self.name, "PATT?", f"pattern block holds {len(payload)} bytes, expected {n}")
        return np.frombuffer(payload, dtype=np.uint8).copy()

    def blank(self) -> None:
        """Show the all-zero pattern, the safe state (``PATT:BLAN``)."""
        self.write("PATT:BLAN")
        self._playing_s = 0.0

    def is_blank(self) -> bool:
        """Whether the all-zero pattern is shown (``PATT:BLAN?``)."""
        return self._flag("PATT:BLAN?")

    def _flag(self, query: str) -> bool:
        value = self.query_int(query)
        if value not in (0, 1):
            raise ProtocolError(self.name, query, f"expected 0 or 1, got {value}")
        return bool(value)

    # -- sequences -------------------------------------------------------------------------------------------------
    def _bank_header(self, bank: int | None, command: str) -> str:
        """``SEQ`` (bank None: the plain commands, bank 1) or ``SEQ:BANK<n>``; LimitViolation for another bank."""
        if bank is None:
            return "SEQ"
        if isinstance(bank, bool) or bank not in SEQUENCE_BANKS:
            raise LimitViolation(self.name, f"SEQ:BANK{bank}{command}", f"bank {bank!r} is not one of "
                                                                         f"{', '.join(map(str, SEQUENCE_BANKS))}")
        return f"SEQ:BANK{int(bank)}"

    @staticmethod
    def _count_key(bank: int | None) -> str:
        """Where ``settings`` keeps the pattern count of ``bank`` (bank 1 is the plain sequence)."""
        return "sequence_count" if bank in (None, 1) else f"sequence_count_bank{bank}"

    def load_sequence(self, patterns: np.ndarray, bank: int | None = None) -> None:
        """Load ``patterns`` (integer gray levels [K, n_pixels]) as the sequence (``SEQ #<n><K*n>...``), or into
        sequence bank ``bank`` (``SEQ:BANK<n> #...``, while the other bank may play), replacing what it held.
        Checked against the limits before anything is sent; the link's timeout is extended by the block's line time."""
        header = self._bank_header(bank, "")
        data = self._checked(patterns, header, sequence=True)
        with self.link.extended_timeout(data.nbytes * BITS_PER_BYTE / self.baud_rate):
            self.write_block(f"{header} ", data.tobytes())
        self.settings[self._count_key(bank)] = int(data.shape[0])
        log.debug("%s: loaded a sequence of %d patterns%s", self.name, data.shape[0],
                  "" if bank is None else f" into bank {bank}")

    @property
    def sequence_count(self) -> int:
        """Patterns in the loaded sequence (``SEQ:COUN?``)."""
        return self.bank_count(None)

    def bank_count(self, bank: int | None) -> int:
        """Patterns in sequence bank ``bank`` (``SEQ:BANK<n>:COUN?``; None: ``SEQ:COUN?``)."""
        value = self.query_int(f"{self._bank_header(bank, ':COUN?')}:COUN?")
        self.settings[self._count_key(bank)] = value
        return value

    def playing_bank(self) -> int:
        """The bank whose sequence plays now, 1 or 2; 0 when none plays (``SEQ:BANK?``)."""
        value = self.query_int("SEQ:BANK?")
        if value not in (0, *SEQUENCE_BANKS):
            raise ProtocolError(self.name, "SEQ:BANK?", f"expected 0, 1 or 2, got {value}")
        return value

    @property
    def trigger_out(self) -> bool:
        """Whether the trigger output pulses once per sequence pattern (``TRIG:OUTP ON|OFF``)."""
        return self._flag("TRIG:OUTP?")

    @trigger_out.setter
    def trigger_out(self, on: bool) -> None:
        self.write(f"TRIG:OUTP {'ON' if on else 'OFF'}")

    def start_sequence(self, bank: int | None = None) -> float:
        """Play the loaded sequence once (``SEQ:STAR``), or sequence bank ``bank`` (``SEQ:BANK<n>:STAR``); returns
        its duration K * dwell, s. No sequence may be playing (``wait_done`` first).

        Reads the pattern count, dwell and settling time first if this driver does not know them yet.
        """
        header = self._bank_header(bank, ":STAR")
        count = self.settings.get(self._count_key(bank))
        if count is None:
            count = self.bank_count(bank)
        if count < 1:
            raise LimitViolation(self.name, f"{header}:STAR", f"no sequence is loaded ({header}:COUN? is 0); "
                                                              f"call load_sequence() first")
        dwell = self.settings.get("dwell_s")
        if dwell is None:
            dwell = self.dwell_s
        settle = self.settings.get("settle_s")
        if settle is None:
            settle = self.settle_s
        if dwell < settle:
            log.warning("%s: dwell %g s is shorter than the settling time %g s: patterns change before they "
                        "have settled", self.name, dwell, settle)
        self.write(f"{header}:STAR")
        self._playing_s = count * dwell
        return self._playing_s

    def running(self) -> bool:
        """Whether a sequence is playing (``SEQ:STAT?``)."""
        reply = self.query("SEQ:STAT?").upper()
        if reply not in ("RUN", "IDLE"):
            raise ProtocolError(self.name, "SEQ:STAT?", f"expected RUN or IDLE, got {reply!r}")
        return reply == "RUN"

    def wait_done(self, timeout_s: float | None = None) -> None:
        """Block until the sequence has played or the last pattern has settled (``*OPC?``).

        Args:
            timeout_s: how long to wait, s; None: the duration of the sequence started last plus the link's
                timeout.
        """
        if timeout_s is None:
            timeout_s = self._playing_s + self.link.timeout_s
        self.wait_opc(timeout_s)
        self._playing_s = 0.0

    # -- common ----------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """``*RST`` (blank pattern, no sequence, dwell 0.01 s, trigger out on), then ``*OPC?``."""
        super().reset()
        self.settings.clear()
        self._playing_s = 0.0

    # -- limits ----------------------------------------------------------------------------------------------------
    def _checked(self, values: np.ndarray, command: str, *, sequence: bool) -> np.ndarray:
        """``values`` as a C-contiguous uint8 array if it passes every limit, else LimitViolation (nothing sent)."""
        arr = np.asarray(values)
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise LimitViolation(self.name, command, f"gray levels must be an integer array (e.g. uint8), got dtype "
                                                     f"{arr.dtype}; convert phases to gray levels and round first")
        shape = "[K, n_pixels]" if sequence else "[n_pixels]"
        if arr.ndim != (2 if sequence else 1):
            raise LimitViolation(self.name, command, f"expected an array of shape {shape}, got shape {arr.shape}")
        if sequence:
            if arr.shape[0] < 1:
                raise LimitViolation(self.name, command, "the sequence holds no patterns")
            if self.max_sequence is not None and arr.shape[0] > self.max_sequence:
                raise LimitViolation(self.name, command, f"{arr.shape[0]} patterns exceed the safety limit "
                                                         f"max_sequence = {self.max_sequence}")
        bad = (arr < self.gray_min) | (arr > self.gray_max)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            place = f"pattern {where[0]}, pixel {where[1]}" if sequence else f"pixel {where[0]}"
            raise LimitViolation(self.name, command, f"{place} has gray level {int(arr[where])}, outside the allowed "
                                                     f"range [{self.gray_min}, {self.gray_max}] "
                                                     f"({int(bad.sum())} value(s) out of range in all)")
        if arr.shape[-1] != self.n_pixels:
            raise LimitViolation(self.name, command, f"{arr.shape[-1]} pixels per pattern, the SLM has "
                                                     f"{self.n_pixels} (expected shape {shape})")
        if sequence and arr.shape[0] > self.sequence_max:
            raise LimitViolation(self.name, command, f"{arr.shape[0]} patterns exceed the instrument's SEQ:MAX? "
                                                     f"= {self.sequence_max}")
        return np.ascontiguousarray(arr, dtype=np.uint8)
