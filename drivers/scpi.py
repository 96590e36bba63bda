"""SCPI / IEEE 488.2 base: packed sample arrays and the common instrument commands.

Pure helpers (no I/O; binary blocks are in ``drivers.blocks``):
    pack_values(values, dtype, byte_order)    -> raw bytes of a numeric array
    unpack_values(data, dtype, byte_order)    -> numeric array from raw bytes
    format_number(x)                          -> shortest text that reads back as the same float

``SCPIInstrument`` wraps a ``drivers.transport.Link`` and speaks the IEEE 488.2 common commands plus the
SCPI error queue, exactly as the Keysight manuals write them::

    *IDN?   *RST   *OPC?   *CLS   SYST:ERR?  (-> '+0,"No error"' when the queue is empty)

``Control`` declares a simple instrument setting PyMeasure-style: one SCPI header, a unit, a range.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from drivers.errors import (InstrumentError, InstrumentReportedError, InstrumentWasReset, LimitViolation,
                            ProtocolError)

if TYPE_CHECKING:
    from drivers.transport import Link

log = logging.getLogger(__name__)

Dtype = Literal["int8", "uint8", "int16", "uint16", "float32"]
ByteOrder = Literal["little", "big"]

#: Longest error queue drained by ``SCPIInstrument.errors`` (real queues hold 20-30 entries).
MAX_ERROR_READS = 50
ESR_POWER_ON = 128  # IEEE 488.2 event status bit 7: the instrument has (re)started
#: ``check_status``' compound query: the event status register and the first error, replies joined by ``;``
STATUS_QUERY = "*ESR?;:SYST:ERR?"
_ERROR_REPLY = re.compile(r'^\s*([+-]?\d+)\s*,\s*"(.*)"\s*$', re.DOTALL)


# ---------------------------------------------------------------------------------------------------------------
# Packed numeric arrays
# ---------------------------------------------------------------------------------------------------------------

def _numpy_dtype(dtype: Dtype, byte_order: ByteOrder) -> np.dtype:
    if dtype not in ("int8", "uint8", "int16", "uint16", "float32"):
        raise ValueError(f"unsupported sample type {dtype!r}")
    if byte_order not in ("little", "big"):
        raise ValueError(f"byte_order must be 'little' or 'big', got {byte_order!r}")
    return np.dtype(dtype).newbyteorder("<" if byte_order == "little" else ">")


def pack_values(values: np.ndarray | Sequence[float], dtype: Dtype, byte_order: ByteOrder) -> bytes:
    """Raw bytes of ``values`` as ``dtype`` in ``byte_order``.

    Integer types require integral values inside the type's range (no silent wrap-around or rounding);
    all values must be finite.
    """
    target = _numpy_dtype(dtype, byte_order)
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D array of values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("values contain NaN or infinity")
    if target.kind in "iu":
        info = np.iinfo(target)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ValueError(f"values span [{arr.min()}, {arr.max()}], outside the {dtype} range "
                             f"[{info.min}, {info.max}]")
        packed = arr.astype(target)
        if not np.array_equal(packed, arr):  # in range, so only a fraction changes in the cast
            raise ValueError(f"{dtype} values must be integers; round them first")
        return packed.tobytes()
    return arr.astype(target).tobytes()


def unpack_values(data: bytes, dtype: Dtype, byte_order: ByteOrder, *,
                  instrument: str = "instrument", command: str | None = None) -> np.ndarray:
    """Numeric array (native byte order) decoded from raw bytes.

    Raises ProtocolError if the byte count is not a multiple of the item size or a float is not finite.
    """
    source = _numpy_dtype(dtype, byte_order)
    if len(data) % source.itemsize:
        raise ProtocolError(instrument, command, f"{len(data)} bytes is not a whole number of {dtype} values "
                                                 f"({source.itemsize} bytes each)")
    arr = np.frombuffer(data, dtype=source).astype(source.newbyteorder("="))
    if source.kind == "f" and not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ProtocolError(instrument, command, f"{bad} of {arr.size} values are NaN or infinite")
    return arr


def format_number(value: float) -> str:
    """Shortest decimal text that reads back as the same float (e.g. ``1.5``, ``2.5e-07``)."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot send a non-finite number ({value}) to an instrument")
    return repr(value)


# ---------------------------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------------------------

def check_range(instrument: str, command: str, value: float, low: float | None, high: float | None,
                unit: str = "") -> float:
    """Return ``value`` as a float if ``low <= value <= high``, else raise LimitViolation (nothing is sent)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise LimitViolation(instrument, command, f"value {value!r} is not a number") from None
    if not math.isfinite(value):
        raise LimitViolation(instrument, command, f"value {value} {unit} is not finite")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else _readable(low)
        hi = "+inf" if high is None else _readable(high)
        raise LimitViolation(instrument, command, f"value {_readable(value)} {unit} is outside the allowed range "
                                                  f"[{lo}, {hi}] {unit}".rstrip())
    return value


def _readable(x: float) -> str:
    """Integers without exponent (1000000), other numbers in %g form (2.5e-07)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e12 else f"{x:g}"


def check_choice(instrument: str, command: str, value: str, choices: dict[str, str]) -> str:
    """Map a user keyword (case-insensitive, long or short form) to its SCPI short form, or raise LimitViolation."""
    token = choices.get(str(value).upper())
    if token is None:
        allowed = ", ".join(sorted(set(choices.values())))
        raise LimitViolation(instrument, command, f"{value!r} is not one of {allowed}")
    return token


class Control:
    """A declared instrument setting, PyMeasure-style: SCPI header, unit, range, optional extra check.

    ``command`` may contain ``{ch}``, filled from the instrument's ``channel``. Reading sends ``<command>?``
    and parses a float; writing checks ``low <= value <= high`` and ``check(instrument, value, command)``
    BEFORE sending ``<command> <value>``. The last value read or written is kept in
    ``instrument.settings[<attribute name>]`` so other checks can combine settings without a round trip.
    """

    def __init__(self, command: str, doc: str, *, unit: str, low: float | None = None, high: float | None = None,
                 check: Callable[[Any, float, str], None] | None = None):
        self.command, self.unit, self.low, self.high, self.check = command, unit, low, high, check
        self.__doc__ = doc
        self.attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    def __get__(self, instrument: SCPIInstrument | None, owner: type | None = None) -> Any:
        if instrument is None:
            return self
        value = instrument.query_float(self.command.format(**instrument.command_fields()) + "?")
        instrument.settings[self.attr] = value
        return value

    def __set__(self, instrument: SCPIInstrument, value: float) -> None:
        header = self.command.format(**instrument.command_fields())
        value = check_range(instrument.name, f"{header} {value}", value, self.low, self.high, self.unit)
        command = f"{header} {format_number(value)}"
        if self.check is not None:
            self.check(instrument, value, command)
        instrument.write(command)
        instrument.settings[self.attr] = value


# ---------------------------------------------------------------------------------------------------------------
# The common-command instrument
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """The four ``*IDN?`` fields."""

    manufacturer: str
    model: str
    serial: str
    firmware: str

    def __str__(self) -> str:
        return f"{self.manufacturer} {self.model} (serial {self.serial}, firmware {self.firmware})"


def parse_identity(reply: str, *, instrument: str = "instrument") -> Identity:
    """Parse ``manufacturer,model,serial,firmware``; anything else raises ProtocolError."""
    fields = [f.strip() for f in reply.strip().split(",", 3)]
    if len(fields) != 4 or not fields[0] or not fields[1] or not all(f.isprintable() for f in fields):
        raise ProtocolError(instrument, "*IDN?", f"expected 'manufacturer,model,serial,firmware', got {reply!r}")
    return Identity(*fields)


def parse_error(reply: str, *, instrument: str = "instrument") -> tuple[int, str]:
    """Parse one ``SYST:ERR?`` reply such as ``-113,"Undefined header"``."""
    match = _ERROR_REPLY.match(reply)
    if match is None:
        raise ProtocolError(instrument, "SYST:ERR?", f"expected '<code>,\"<message>\"', got {reply!r}")
    return int(match.group(1)), match.group(2)


class SCPIInstrument:
    """An instrument speaking IEEE 488.2 common commands and the SCPI error queue over a ``Link``.

    With ``check_errors`` (default) every ``write`` is followed by draining ``SYST:ERR?``, and any error the
    instrument reports raises InstrumentReportedError naming the command. Queries are not followed by a check:
    a query the instrument rejects produces no reply and ends in InstrumentTimeout.
    """

    def __init__(self, link: Link, name: str | None = None, check_errors: bool = True):
        self.link = link
        self.name = name or link.name
        self.check_errors = check_errors
        #: last value read or written per declared ``Control`` (see ``Control``)
        self.settings: dict[str, Any] = {}
        self._identity: Identity | None = None
        self._unchecked: list[str] | None = None  # commands sent in an ``errors_checked_once`` block

    def command_fields(self) -> dict[str, Any]:
        """Values substituted into ``Control`` command templates (e.g. ``{ch}``)."""
        return {}

    # -- raw traffic ------------------------------------------------------------------------------------------
    def write(self, cmd: str, check: bool | None = None) -> None:
        """Send a setting; then, if checking, raise InstrumentReportedError for anything in the error queue."""
        self.link.write(cmd)
        self._check(cmd, check)

    def write_block(self, prefix: str, payload: bytes, check: bool | None = None) -> None:
        """Send ``prefix`` + a binary block of ``payload`` as one message, then check the error queue."""
        self.link.write_block(prefix, payload)
        self._check(f"{prefix}#<{len(payload)} byte block>", check)

    def write_all(self, commands: Sequence[str | tuple[str, bytes]], check: bool | None = None) -> None:
        """Send several settings, then check the error queue once (errors name all of them). A ``(prefix, payload)``
        item is sent as ``write_block`` sends it."""
        names = []
        for cmd in commands:
            if isinstance(cmd, tuple):
                prefix, payload = cmd
                self.link.write_block(prefix, payload)
                names.append(f"{prefix}#<{len(payload)} byte block>")
            else:
                self.link.write(cmd)
                names.append(cmd)
        self._check("; ".join(names), check)

    def apply(self, settings: dict[str, float | str]) -> None:
        """Send ``<header> <value>`` for each setting (words as given, integers as integers, other numbers as
        decimals), check the error queue once, and remember each value under its header in ``settings`` for
        ``verify_settings`` to read back. For setters that take several values at once; a single value is better
        declared as a ``Control``. Headers must contain a colon (``:TIM:RANG``)."""
        def text(value: float | str) -> str:
            return value if isinstance(value, str) else str(value) if isinstance(value, int) else format_number(value)

        self.write_all([f"{header} {text(value)}" for header, value in settings.items()])
        self.settings.update(settings)

    def _check(self, cmd: str, check: bool | None) -> None:
        if not (self.check_errors if check is None else check):
            return
        if self._unchecked is not None:  # in an errors_checked_once block: checked when it ends
            self._unchecked.append(cmd)
            return
        errors = self.errors()
        if errors:
            raise InstrumentReportedError(self.name, cmd, errors)

    @contextmanager
    def errors_checked_once(self) -> Iterator[None]:
        """Read the error queue once, when the block ends, for every setting written in it (``write``,
        ``write_all``, ``Control``s): one round trip instead of one per setting. Each value is still checked against
        its limits before a byte is sent; an error the instrument reports names all the commands of the block. If the
        block raises, nothing is read: the queue is left for the next check. Only for settings whose order of
        checking does not matter: a setter that must see its own error before the next command (a level the next
        one relies on) belongs outside. Nested blocks are checked by the outermost."""
        if self._unchecked is not None:
            yield
            return
        self._unchecked = []
        try:
            yield
            sent = self._unchecked
        finally:
            self._unchecked = None
        if sent:
            self._check("; ".join(sent), True)

    def query(self, cmd: str) -> str:
        """Send a query and return the reply without surrounding whitespace."""
        return self.link.query(cmd)

    def query_float(self, cmd: str) -> float:
        """Query a number (SCPI NR1/NR2/NR3, e.g. ``+1.00000000000000E+06``)."""
        reply = self.query(cmd)
        try:
            return float(reply)
        except ValueError:
            raise ProtocolError(self.name, cmd, f"expected a number, got {reply!r}") from None

    def query_int(self, cmd: str) -> int:
        """Query an integer (``+1``, ``0``; an integral float such as ``8.0E+00`` is accepted)."""
        value = self.query_float(cmd)
        if not value.is_integer():
            raise ProtocolError(self.name, cmd, f"expected an integer, got {value!r}")
        return int(value)

    # -- IEEE 488.2 common commands -----------------------------------------------------------------------------
    @property
    def identity(self) -> Identity:
        """``*IDN?`` of the instrument, read once and cached."""
        if self._identity is None:
            self._identity = self.idn()
        return self._identity

    def idn(self) -> Identity:
        """``*IDN?`` parsed into manufacturer, model, serial number and firmware."""
        return parse_identity(self.query("*IDN?"), instrument=self.name)

    def reset(self) -> None:
        """``*RST`` (factory default state) then ``*OPC?`` to wait until it is done. The remembered ``settings`` are
        forgotten: the instrument no longer holds them."""
        self.settings.clear()
        self.link.write("*RST")
        self.wait_opc()

    def clear(self) -> None:
        """``*CLS``: clear the status registers and the error queue."""
        self.link.write("*CLS")

    def wait_opc(self, timeout_s: float | None = None) -> None:
        """``*OPC?``: block until all pending operations are complete (up to ``timeout_s``, s)."""
        previous = self.link.timeout_s
        if timeout_s is not None:
            self.link.timeout_s = timeout_s
        try:
            reply = self.query("*OPC?")
        finally:
            if timeout_s is not None:
                self.link.timeout_s = previous
        if reply.lstrip("+") != "1":
            raise ProtocolError(self.name, "*OPC?", f"expected '1', got {reply!r}")

    def errors(self) -> list[tuple[int, str]]:
        """Drain the error queue with ``SYST:ERR?``: every ``(code, message)`` until ``+0,"No error"``."""
        return self._drain_errors([])

    def _drain_errors(self, found: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """``found`` (errors already read from the queue) and the rest of the queue, read with ``SYST:ERR?``."""
        for _ in range(MAX_ERROR_READS - len(found)):
            code, message = parse_error(self.query("SYST:ERR?"), instrument=self.name)
            if code == 0:
                return found
            log.warning("%s reported error %d,%r", self.name, code, message)
            found.append((code, message))
        log.warning("%s: error queue still not empty after %d reads", self.name, MAX_ERROR_READS)
        return found

    def was_reset(self) -> bool:
        """``*ESR?`` (which clears it): has the instrument (re)started since the last look (power-on bit)?"""
        return self._power_on(self.query_int("*ESR?"))

    def _power_on(self, event_status: int) -> bool:
        """Whether an event status register value holds the power-on bit. If so, the remembered ``settings`` are
        forgotten: they are lost on the instrument too."""
        if event_status & ESR_POWER_ON:
            self.settings.clear()
            return True
        return False

    def check_status(self) -> None:
        """After a measurement: did anything happen to the instrument meanwhile? Reads ``*ESR?`` and the first entry
        of the error queue in one compound query (``*ESR?;:SYST:ERR?``, one round trip), then drains the rest of the
        queue if it held anything.

        Raises InstrumentWasReset if it reset itself since the last check (power-on bit: apply the settings again),
        InstrumentReportedError if its error queue holds errors.
        """
        before = self.link.last_command
        reply = self.query(STATUS_QUERY)
        esr, separator, first = reply.partition(";")
        if not separator or not re.fullmatch(r"\s*[+-]?\d+\s*", esr):
            raise ProtocolError(self.name, STATUS_QUERY,
                                f"expected '<event status>;<code>,\"<message>\"', got {reply!r}")
        reset = self._power_on(int(esr))
        code, message = parse_error(first, instrument=self.name)
        errors = []
        if code != 0:
            log.warning("%s reported error %d,%r", self.name, code, message)
            errors = self._drain_errors([(code, message)])
        if reset:
            raise InstrumentWasReset(self.name, STATUS_QUERY, "the instrument reset itself (power-on bit set): the "
                                                              "settings it was given are lost")
        if errors:
            raise InstrumentReportedError(self.name, f"SYST:ERR? (after {before!r})", errors)

    def verify_settings(self, rel_tol: float = 1e-3) -> None:
        """Read back every setting this driver has applied (``settings``: declared Controls, and headers sent by
        ``apply``) and compare, e.g. after a reconnect or a reset. InstrumentError naming the first setting the
        instrument does not hold."""
        for key, applied in list(self.settings.items()):
            control = getattr(type(self), key, None)
            if isinstance(control, Control):
                query, actual = control.command.format(**self.command_fields()) + "?", getattr(self, key)
            elif ":" in key:  # a header sent by apply() (a Control's attribute name has no colon)
                query = key + "?"
                actual = self.query(query) if isinstance(applied, str) else self.query_float(query)
                actual = actual.upper() if isinstance(actual, str) else actual
            else:
                continue  # settings kept by other means (ROI, waveform names, ...): their commands check them
            same = (math.isclose(actual, applied, rel_tol=rel_tol, abs_tol=1e-12)
                    if isinstance(applied, (int, float)) and isinstance(actual, float) else actual == applied)
            if not same:
                raise InstrumentError(self.name, query, f"reads back {actual!r}, {applied!r} was applied")

    def close(self) -> None:
        """Close the link."""
        self.link.close()

    def __enter__(self) -> SCPIInstrument:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
