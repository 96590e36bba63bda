"""SCPI errors and data formats: the error queue's entries, NR1/NR3 numbers, IEEE 488.2 definite-length blocks,
response messages and numeric parameters with SCPI suffixes.

An error goes into an instrument's error queue as ``<code>,"<message>"`` with the standard message for its code
(-100..-199 command errors, -200..-299 execution errors, -300.. device-specific errors). Numbers go out as Keysight
instruments send them (``+1.000000000000000E+00``, ``+8``); a binary block is ``#<n><n length digits><payload>``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Sequence

log = logging.getLogger(__name__)

ERROR_MESSAGES: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -101: "Invalid character",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -112: "Program mnemonic too long",
    -113: "Undefined header",
    -114: "Header suffix out of range",
    -131: "Invalid suffix",
    -161: "Invalid block data",
    -200: "Execution error",
    -211: "Trigger ignored",
    -221: "Settings conflict",
    -222: "Data out of range",
    -223: "Too much data",
    -224: "Illegal parameter value",
    -225: "Out of memory",
    -230: "Data corrupt or stale",
    -350: "Queue overflow",
}


class SCPIError(Exception):
    """An error that goes into the instrument's error queue as ``<code>,"<message>"``.

    ``detail`` is logged, not sent: the queue holds the standard message, as the drivers expect.
    """

    def __init__(self, code: int, detail: str = "", message: str | None = None):
        self.code = code
        self.message = message or ERROR_MESSAGES.get(code, "Device-specific error")
        self.detail = detail
        super().__init__(f'{code:+d},"{self.message}"' + (f" ({detail})" if detail else ""))

    def esr_bit(self) -> int:
        """The IEEE 488.2 event status bit this error sets: CME 32, EXE 16, DDE 8, QYE 4."""
        if -199 <= self.code <= -100:
            return 32
        if -299 <= self.code <= -200:
            return 16
        if -499 <= self.code <= -400:
            return 4
        return 8


# -- replies -----------------------------------------------------------------------------------------------------------

def nr3(value: float, digits: int = 15) -> str:
    """SCPI NR3 number as Keysight instruments send it: ``+1.000000000000000E+00``; infinity is 9.9E+37."""
    if math.isinf(value):  # formatted by hand: 9.9e37 is not exact in binary
        return ("-" if value < 0 else "+") + "9.9".ljust(digits + 2, "0") + "E+37"
    return f"{value:+.{digits}E}"


def nr1(value: int) -> str:
    """SCPI NR1 integer with an explicit sign (``+0``, ``-3``)."""
    return f"{int(value):+d}"


@dataclass(frozen=True)
class Block:
    """An IEEE 488.2 definite-length block reply; ``digits`` fixes the length field's width (None: as short as fits)."""

    payload: bytes
    digits: int | None = None

    def encode(self) -> bytes:
        length = str(len(self.payload))
        if self.digits is not None:
            length = length.zfill(self.digits)
        return b"#" + str(len(length)).encode() + length.encode() + self.payload


@dataclass(frozen=True)
class Reply:
    """One response message (terminator included); ``block`` is the span of a binary block payload in ``data``."""

    data: bytes
    block: tuple[int, int] | None = None

    @classmethod
    def join(cls, parts: Sequence[str | Block]) -> "Reply":
        """Responses to the queries of one program message, ``;``-separated and ``\\n``-terminated."""
        out = bytearray()
        span = None
        for k, part in enumerate(parts):
            if k:
                out += b";"
            if isinstance(part, Block):
                encoded = part.encode()
                if span is None:
                    start = len(out) + len(encoded) - len(part.payload)
                    span = (start, start + len(part.payload))
                out += encoded
            else:
                out += part.encode("latin-1")
        out += b"\n"
        return cls(bytes(out), span)


# -- numeric parameters ------------------------------------------------------------------------------------------------

# digits before and after the point are unambiguous: with ``\d+\.?\d*`` a long run of digits that did not match
# (``1111...1!``) backtracked quadratically, a minute for 40 kB
_NUMBER = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z/%]*)")
_MULTIPLIERS = {"": 1.0, "EX": 1e18, "PE": 1e15, "T": 1e12, "G": 1e9, "MA": 1e6, "K": 1e3, "M": 1e-3, "U": 1e-6,
                "N": 1e-9, "P": 1e-12, "F": 1e-15, "A": 1e-18}


def parse_number(text: str, unit: str = "") -> float:
    """A decimal number with an optional SCPI suffix: ``"100 mV"``, ``"1.5kHz"``, ``"2e-3"`` (unit: ``"V"``).

    Multipliers are case-insensitive as in SCPI (``M`` = milli, ``MA`` = mega), except ``MHZ`` and ``MOHM`` (mega).
    Raises -104 for non-numbers and -131 for unknown suffixes.
    """
    m = _NUMBER.fullmatch(text.strip())
    if m is None:
        raise SCPIError(-104, f"not a number: {text[:40]!r}")
    value = float(m[1])
    suffix = m[2].upper()
    if not suffix:
        return value
    unit = unit.upper()
    if unit in ("HZ", "OHM") and suffix == "M" + unit:
        return value * 1e6
    prefix = suffix[:-len(unit)] if unit and suffix.endswith(unit) else suffix
    if prefix not in _MULTIPLIERS:
        raise SCPIError(-131, f"suffix {m[2]!r}")
    return value * _MULTIPLIERS[prefix]


def mnemonic_forms(option: str) -> tuple[str, str]:
    """``"CENTer"`` -> (``"CENT"``, ``"CENTER"``)."""
    short = "".join(c for c in option if c.isupper() or c.isdigit()) if any(c.islower() for c in option) else option
    return short.upper(), option.upper()
