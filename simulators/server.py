"""SCPI / IEEE 488.2 server for the simulated instruments.

The protocol core knows nothing about sockets: a transport feeds it bytes and sends back the replies it returns,
so a serial (pty) transport can reuse it unchanged.

- ``MessageReader``   bytes -> program messages: ``\\n`` terminators (``\\r\\n`` tolerated), IEEE 488.2
  definite-length blocks whose payload may hold any byte (``\\n`` included), bounded buffers, resync after garbage.
- ``CommandTree``     header patterns such as ``"[SOURce#:]VOLTage[:AMPLitude]"`` -> handler methods.
- ``SCPIInstrument``  base class of a simulated front panel: commands declared with ``@scpi``, plain settings (a
  command and its query) with ``setting()``, the IEEE 488.2 common commands (``*IDN?``, ``*RST``, ``*CLS``, ``*OPC``,
  ``*OPC?``, ``*WAI``, ``*ESR?``, ...) and ``SYST:ERR?``.
- ``Session``         one client's conversation with an instrument: error queue, status registers, the header path
  of ``;``-joined commands, replies.
- ``SCPIServer``      TCP transport, one thread per client, with fault injection (``FaultPlan``) on the replies.
  pyserial reaches it as ``socket://127.0.0.1:<port>`` too.
- ``PtyServer``       serial transport: the instrument on a pseudo-terminal whose ``/dev/pts/N`` path pyserial opens
  like a USB-serial adapter.

Pattern syntax: a mnemonic is written in its long form with the short form in capitals (``VOLTage``); ``[...]`` is an
optional node; ``#`` after a mnemonic is an optional numeric suffix (default 1: ``CHANnel#`` matches ``CHAN``,
``CHAN2``, ``channel2``); a trailing ``?`` makes the pattern a query. Common commands (``*TRG``) are literal.
Headers are case-insensitive and accept exactly the short or the long form, as SCPI requires.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import random
import re
import select
import socket
import struct
import termios
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------------------
# Reply formatting
# ----------------------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------------------
# Framing: bytes -> program messages
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One program message (terminator stripped); ``blocks`` are the payload spans of its binary blocks."""

    data: bytes
    blocks: tuple[tuple[int, int], ...] = ()


class MessageReader:
    """Splits a byte stream into program messages, honouring definite-length blocks.

    A ``#`` at the start of a parameter (after ``,`` or whitespace) followed by ``<n><n digits>`` announces a block
    of that many bytes, read verbatim. Bounds: a block announcing more than ``max_block_bytes``, or a message growing
    beyond ``max_message_bytes`` without a terminator, yields ``SCPIError(-223)`` and the reader skips to the next
    ``\\n``. A definite block must fit in the message bound too.
    """

    _SPECIAL = re.compile(rb"[\n\"'#]")

    def __init__(self, max_message_bytes: int = 1 << 20, max_block_bytes: int = 1 << 20):
        self.max_message_bytes = max_message_bytes
        self.max_block_bytes = max_block_bytes
        self._buf = bytearray()
        self._start = 0  # start of the message being read
        self._scan = 0  # where scanning resumes
        self._quote: int | None = None  # quote character of an open string
        self._blocks: list[tuple[int, int]] = []  # absolute payload spans in the current message
        self._block: tuple[int, int] | None = None  # payload span being read
        self._discard = False  # skipping to the next terminator

    @property
    def pending_bytes(self) -> int:
        """Bytes held for an unfinished message."""
        return len(self._buf) - self._start

    def clear(self) -> None:
        """Forget the unfinished message (and a block still being read): the line was reset."""
        self._buf.clear()
        self._start = self._scan = 0
        self._quote, self._block, self._blocks, self._discard = None, None, [], False

    def feed(self, data: bytes) -> list[Message | SCPIError]:
        """Add bytes; return the complete messages (and framing errors) in arrival order."""
        self._buf += data
        out: list[Message | SCPIError] = []
        self._drain(out)
        if self._start:
            shift = self._start
            del self._buf[:shift]
            self._start = 0
            self._scan -= shift
            self._blocks = [(a - shift, b - shift) for a, b in self._blocks]
            if self._block is not None:
                self._block = (self._block[0] - shift, self._block[1] - shift)
        return out

    def _drain(self, out: list[Message | SCPIError]) -> None:
        buf = self._buf
        while True:
            if self._discard:
                nl = buf.find(b"\n", self._scan)
                if nl < 0:
                    self._start = self._scan = len(buf)
                    return
                self._start = self._scan = nl + 1
                self._discard = False
                continue
            if self._block is not None:
                if len(buf) < self._block[1]:
                    return
                self._blocks.append(self._block)
                self._scan = self._block[1]
                self._block = None
                continue
            if self._quote is not None:
                q = buf.find(bytes([self._quote]), self._scan)
                # only up to the quote: searching the whole buffer made a megabyte of '""' quadratic (minutes)
                nl = buf.find(b"\n", self._scan, q if q >= 0 else len(buf))
                if q >= 0 and (nl < 0 or q < nl):
                    self._quote = None
                    self._scan = q + 1
                    continue
                if nl < 0:
                    self._scan = len(buf)
                    self._check_overflow(out)
                    return
                self._quote = None  # the terminator ends an unterminated string; the parser reports it
            m = self._SPECIAL.search(buf, self._scan)
            if m is None:
                self._scan = len(buf)
                self._check_overflow(out)
                return
            i = m.start()
            c = buf[i]
            if c == 0x0A:  # \n
                end = i - 1 if i > self._start and buf[i - 1] == 0x0D else i
                data = bytes(buf[self._start:end])
                blocks = tuple((a - self._start, b - self._start) for a, b in self._blocks)
                out.append(Message(data, blocks))
                self._start = self._scan = i + 1
                self._blocks = []
                continue
            if c in (0x22, 0x27):  # quotes
                self._quote = c
                self._scan = i + 1
                continue
            # '#': a block header if it starts a parameter
            if not self._at_parameter_start(i):
                self._scan = i + 1
                continue
            if i + 2 > len(buf):
                self._scan = i
                return  # wait for the digit count
            n = buf[i + 1] - 0x30
            if not 1 <= n <= 9:
                self._scan = i + 1  # '#0' indefinite block or not a block: plain bytes up to the terminator
                continue
            if i + 2 + n > len(buf):
                self._scan = i
                return  # wait for the length digits
            digits = bytes(buf[i + 2:i + 2 + n])
            if not digits.isdigit():
                self._scan = i + 1  # malformed header: left for the parser to report
                continue
            length = int(digits)
            payload = i + 2 + n
            if length > self.max_block_bytes or payload + length - self._start > self.max_message_bytes:
                out.append(SCPIError(-223, f"block of {length} bytes exceeds the limit of {self.max_block_bytes}"))
                self._discard = True
                self._scan = payload
                self._blocks = []
                continue
            self._block = (payload, payload + length)

    def _at_parameter_start(self, i: int) -> bool:
        """Whether the ``#`` at ``i`` begins a parameter: preceded by ``,`` or by whitespace after the header."""
        j = i - 1
        while j >= self._start and self._buf[j] in (0x20, 0x09):
            j -= 1
        if j < self._start:
            return False
        return self._buf[j] == 0x2C or j < i - 1

    def _check_overflow(self, out: list[Message | SCPIError]) -> None:
        if len(self._buf) - self._start > self.max_message_bytes:
            out.append(SCPIError(-223, f"message longer than {self.max_message_bytes} bytes without a terminator"))
            self._discard = True
            self._quote = None
            self._blocks = []


_CLOSING_QUOTE = {b'"': re.compile(b'"'), b"'": re.compile(b"'")}
_HEADER_END = re.compile(rb"[ \t\r]")
MAX_HEADER_BYTES = 256  # longest program header accepted
MAX_MESSAGE_SEPARATORS = 10_000  # most ';' and quotes in one program message


def count_outside(data: bytes, blocks: Sequence[tuple[int, int]], chars: bytes, lo: int = 0,
                  hi: int | None = None) -> int:
    """How many of the bytes ``chars`` lie in ``data[lo:hi]`` outside block payloads (quoted strings included)."""
    hi = len(data) if hi is None else hi
    total, pos = 0, lo
    for a, b in [s for s in blocks if lo <= s[0] and s[1] <= hi] + [(hi, hi)]:
        total += sum(data.count(c, pos, a) for c in chars)
        pos = b
    return total


def split_outside(data: bytes, blocks: Sequence[tuple[int, int]], sep: bytes, lo: int = 0,
                  hi: int | None = None) -> list[tuple[int, int]]:
    """Spans of ``data[lo:hi]`` between the ``sep`` bytes that lie outside quoted strings and block payloads."""
    hi = len(data) if hi is None else hi
    inner = [b for b in blocks if lo <= b[0] and b[1] <= hi]
    plain = not inner and b'"' not in data[lo:hi] and b"'" not in data[lo:hi]
    if plain:  # fast path (e.g. a million comma-separated values)
        spans, start = [], lo
        while True:
            k = data.find(sep, start, hi)
            if k < 0:
                spans.append((start, hi))
                return spans
            spans.append((start, k))
            start = k + 1
    token = re.compile(b"[" + re.escape(sep) + b"\"']")
    spans, start, pos, quote, bi = [], lo, lo, None, 0
    while True:
        limit = inner[bi][0] if bi < len(inner) else hi
        m = (_CLOSING_QUOTE[quote] if quote else token).search(data, pos, limit)
        if m is None:
            if bi < len(inner):
                pos = inner[bi][1]
                bi += 1
                continue
            break
        pos = m.end()
        if quote:
            quote = None
        elif m.group() in (b'"', b"'"):
            quote = m.group()
        else:
            spans.append((start, m.start()))
            start = m.end()
    spans.append((start, hi))
    return spans


# ----------------------------------------------------------------------------------------------------------------------
# Command patterns
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    short: str
    long: str
    optional: bool
    suffix: bool

    def accepts(self, word: str, digits: str) -> bool:
        return word in (self.short, self.long) and (self.suffix or not digits)


_PATTERN_NODE = re.compile(r"\[:?(?P<opt>\*?[A-Za-z]+#?):?\]|:?(?P<req>\*?[A-Za-z]+#?)")
_HEADER_WORD = re.compile(r"(\*?[A-Z][A-Z_]*?)(\d*)")


def compile_pattern(pattern: str) -> tuple[tuple[_Node, ...], bool]:
    """``"[SOURce#:]VOLTage[:AMPLitude]?"`` -> (nodes, is_query)."""
    query = pattern.endswith("?")
    body = pattern[:-1] if query else pattern
    nodes, pos = [], 0
    for m in _PATTERN_NODE.finditer(body):
        if m.start() != pos:
            raise ValueError(f"bad SCPI pattern {pattern!r} at {pos}")
        pos = m.end()
        word = m["opt"] or m["req"]
        suffix = word.endswith("#")
        word = word.rstrip("#")
        short = "".join(c for c in word if c.isupper() or c == "*") if any(c.islower() for c in word) else word
        nodes.append(_Node(short.upper(), word.upper(), m["opt"] is not None, suffix))
    if pos != len(body) or not nodes:
        raise ValueError(f"bad SCPI pattern {pattern!r}")
    return tuple(nodes), query


def match_nodes(nodes: Sequence[_Node], words: Sequence[tuple[str, str]]) -> tuple[int, ...] | None:
    """Match header words ``[(mnemonic, suffix digits), ...]`` against pattern nodes.

    Returns the numeric suffix of each ``#`` node in pattern order (1 where omitted), or None if no match.
    """

    def rec(i: int, j: int) -> tuple[int, ...] | None:
        if i == len(nodes):
            return () if j == len(words) else None
        node = nodes[i]
        if j < len(words) and node.accepts(*words[j]):
            rest = rec(i + 1, j + 1)
            if rest is not None:
                return ((int(words[j][1]) if words[j][1] else 1),) + rest if node.suffix else rest
        if node.optional:
            rest = rec(i + 1, j)
            if rest is not None:
                return (1,) + rest if node.suffix else rest
        return None

    return rec(0, 0)


def parse_header(token: str) -> tuple[list[tuple[str, str]], bool, bool]:
    """``":SOUR1:VOLT?"`` -> ([("SOUR", "1"), ("VOLT", "")], absolute, query). Raises -102 / -113."""
    query = token.endswith("?")
    body = token[:-1] if query else token
    absolute = body.startswith(":")
    if absolute:
        body = body[1:]
    if not body or "?" in body:
        raise SCPIError(-102, f"header {token!r}")
    words = []
    for part in body.split(":"):
        if not part:
            raise SCPIError(-102, f"empty node in header {token!r}")
        m = _HEADER_WORD.fullmatch(part.upper())
        if m is None:
            raise SCPIError(-113, f"header {token!r}")
        words.append((m[1], m[2]))
    if any(w.startswith("*") for w, _ in words) and (len(words) > 1 or absolute):
        raise SCPIError(-102, f"header {token!r}")
    return words, absolute, query


@dataclass(frozen=True)
class Command:
    """One registered header pattern and its handler ``fn(instrument, call) -> reply or None``."""

    pattern: str
    nodes: tuple[_Node, ...]
    query: bool
    handler: Callable
    nargs: tuple[int, int | None]


class CommandTree:
    """The command set of an instrument: header patterns -> handlers."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def add(self, pattern: str, handler: Callable, nargs: int | tuple[int, int | None] | None = None) -> None:
        nodes, query = compile_pattern(pattern)
        if nargs is None:
            nargs = 0 if query or nodes[0].long.startswith("*") else 1
        if isinstance(nargs, int):
            nargs = (nargs, nargs)
        self.commands.append(Command(pattern, nodes, query, handler, nargs))

    def find(self, words: Sequence[tuple[str, str]], query: bool) -> tuple[Command, tuple[int, ...]] | None:
        for cmd in self.commands:
            if cmd.query == query:
                suffixes = match_nodes(cmd.nodes, words)
                if suffixes is not None:
                    return cmd, suffixes
        return None


def scpi(pattern: str, nargs: int | tuple[int, int | None] | None = None) -> Callable:
    """Declare a method of an ``SCPIInstrument`` as the handler of ``pattern`` (stackable).

    ``nargs``: number of parameters, or (min, max) with max None for unbounded; default 0 for queries and
    common commands, 1 otherwise.
    """

    def deco(fn: Callable) -> Callable:
        fn._scpi = getattr(fn, "_scpi", ()) + ((pattern, nargs),)  # type: ignore[attr-defined]
        return fn

    return deco


@dataclass(frozen=True)
class Setting:
    """A plain setting (see ``setting()``): the command ``header`` stores ``parse(call)`` in the attribute ``attr``,
    the query ``header?`` returns ``reply(attribute)``."""

    header: str
    attr: str
    parse: Callable[["Call"], object]
    reply: Callable[[object], str]
    per_channel: bool = False

    def owner(self, instrument: "SCPIInstrument", call: "Call") -> object:
        """The object holding the attribute: the instrument, or the channel the header's suffix names."""
        return instrument._ch(call) if self.per_channel else instrument

    def write(self, instrument: "SCPIInstrument", call: "Call") -> None:
        value = self.parse(call)  # before the channel: a bad value is reported ahead of a bad suffix
        setattr(self.owner(instrument, call), self.attr, value)

    def read(self, instrument: "SCPIInstrument", call: "Call") -> str:
        return self.reply(getattr(self.owner(instrument, call), self.attr))


def setting(header: str, attr: str, kind: str = "choice", *, choices: Sequence[str] = (), lo: float = -math.inf,
            hi: float = math.inf, default: float | None = None, unit: str = "",
            fmt: Callable[[float], str] = nr3, per_channel: bool = False) -> Setting:
    """Declare a plain setting of an ``SCPIInstrument``, as a class attribute: the command ``header`` parses its one
    parameter into the attribute ``attr`` and the query ``header?`` returns it. For example::

        _sweep = setting(":TRIGger:SWEep", "trigger_sweep", choices=("AUTO", "NORMal"))
        _range = setting(":TIMebase:RANGe", "time_range_s", "number", lo=50e-9, hi=500.0, unit="S")

    - ``"choice"`` (the default): one of ``choices``, in short or long form (``"NORMal"``: NORM or NORMAL); the
      query returns the short form (``NORM``).
    - ``"boolean"``: ON, OFF or a number (0 is OFF); the query returns ``1`` or ``0``.
    - ``"number"``: a number in [lo, hi] with an optional ``unit`` suffix (MIN, MAX: lo, hi; DEF: ``default``); the
      query returns ``fmt(value)``, by default ``nr3`` (``+1.000000000000000E+00``).
    - ``"integer"``: as ``"number"``, rounded; the query returns ``nr1`` (``+8``).

    A bad parameter queues the error ``Call`` raises (-109, -104, -222, -224); the setting is then unchanged.

    ``per_channel``: the attribute belongs to the channel the header's suffix names, ``instrument._ch(call)``.
    A command with side effects or checks beyond the parse of its parameter is written with ``@scpi`` instead.
    """
    if kind == "choice":
        if not choices:
            raise ValueError(f"setting {header!r}: a choice needs its choices")
        return Setting(header, attr, lambda call: call.choice(0, choices), str, per_channel)
    if kind == "boolean":
        return Setting(header, attr, lambda call: call.boolean(0), lambda on: "1" if on else "0", per_channel)
    if kind == "number":
        return Setting(header, attr, lambda call: call.number(0, lo=lo, hi=hi, default=default, unit=unit), fmt,
                       per_channel)
    if kind == "integer":
        return Setting(header, attr, lambda call: call.integer(0, lo=lo, hi=hi, default=default, unit=unit), nr1,
                       per_channel)
    raise ValueError(f"setting {header!r}: unknown kind {kind!r} (choice, boolean, number or integer)")


# ----------------------------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------------------------

# digits before and after the point are unambiguous: with ``\d+\.?\d*`` a long run of digits that did not match
# (``1111...1!``) backtracked quadratically, a minute for 40 kB
_NUMBER = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z/%]*)")
_MULTIPLIERS = {"": 1.0, "EX": 1e18, "PE": 1e15, "T": 1e12, "G": 1e9, "MA": 1e6, "K": 1e3, "M": 1e-3, "U": 1e-6,
                "N": 1e-9, "P": 1e-12, "F": 1e-15, "A": 1e-18}
_BLOCK_HEADER = re.compile(rb"\s*#[1-9]\d+\s*")


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


class BlockParam(bytes):
    """The payload of a binary block parameter."""


class Call:
    """One command as a handler sees it: its numeric suffixes and parameters, with typed accessors.

    Accessors raise ``SCPIError`` (-109 missing, -104 wrong type, -222 out of range, -224 illegal value).
    """

    def __init__(self, session: "Session", header: str, suffixes: tuple[int, ...], parts: list[bytes]):
        self.session = session
        self.header = header
        self.suffixes = suffixes
        self.parts = parts
        self.wait_for: Callable[[], bool] | None = None

    @property
    def suffix(self) -> int:
        """The first numeric suffix of the header (the channel), 1 if omitted."""
        return self.suffixes[0] if self.suffixes else 1

    def __len__(self) -> int:
        return len(self.parts)

    def raw(self, i: int) -> bytes:
        if i >= len(self.parts):
            raise SCPIError(-109, f"{self.header}: parameter {i + 1}")
        return self.parts[i]

    def is_block(self, i: int) -> bool:
        return i < len(self.parts) and isinstance(self.parts[i], BlockParam)

    def block(self, i: int = 0) -> bytes:
        part = self.raw(i)
        if not isinstance(part, BlockParam):
            raise SCPIError(-104, f"{self.header}: parameter {i + 1} is not a binary block")
        return bytes(part)

    def text(self, i: int = 0) -> str:
        """Character or string data, quotes removed."""
        part = self.raw(i)
        if isinstance(part, BlockParam):
            raise SCPIError(-104, f"{self.header}: unexpected binary block")
        s = part.decode("latin-1")
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
            return s[1:-1].replace(s[0] * 2, s[0])
        if not s:
            raise SCPIError(-102, f"{self.header}: empty parameter {i + 1}")
        return s

    def number(self, i: int = 0, *, lo: float = -math.inf, hi: float = math.inf, default: float | None = None,
               unit: str = "", minimum: float | None = None, maximum: float | None = None) -> float:
        """A number in [lo, hi]; ``MIN``/``MAX`` give ``minimum``/``maximum`` (default lo/hi), ``DEF`` ``default``."""
        word = self.text(i).upper()
        if word in ("MIN", "MINIMUM"):
            return lo if minimum is None else minimum
        if word in ("MAX", "MAXIMUM"):
            return hi if maximum is None else maximum
        if word in ("DEF", "DEFAULT") and default is not None:
            return default
        value = parse_number(word, unit)
        if not lo <= value <= hi:
            raise SCPIError(-222, f"{self.header}: {value:g} outside [{lo:g}, {hi:g}]")
        return value

    def integer(self, i: int = 0, **kwargs: float | None) -> int:
        return int(round(self.number(i, **kwargs)))  # type: ignore[arg-type]

    def boolean(self, i: int = 0) -> bool:
        word = self.text(i).upper()
        if word == "ON":
            return True
        if word == "OFF":
            return False
        try:
            return round(parse_number(word)) != 0
        except SCPIError:
            raise SCPIError(-224, f"{self.header}: {word!r} is not ON|OFF|1|0") from None

    def choice(self, i: int, options: Sequence[str]) -> str:
        """One of ``options`` (SCPI mixed case, e.g. ``"CENTer"``); returns its short form in capitals."""
        word = self.text(i).upper()
        for option in options:
            short, long = mnemonic_forms(option)
            if word in (short, long):
                return short
        raise SCPIError(-224, f"{self.header}: {word!r} not in {'|'.join(options)}")

    def then_wait(self, predicate: Callable[[], bool]) -> None:
        """Hold this client's next command until ``predicate()`` (evaluated under the instrument lock) is true."""
        self.wait_for = predicate


# ----------------------------------------------------------------------------------------------------------------------
# Instruments and sessions
# ----------------------------------------------------------------------------------------------------------------------


class SCPIInstrument:
    """Base class of a simulated front panel.

    Subclasses set ``idn``, declare handlers with ``@scpi`` and plain settings with ``setting()``, override
    ``reset()`` and, if settings are per channel, ``_ch()``. Handlers run under
    ``self.lock`` (shared by the instruments of one bench); a handler that changes state others wait on calls
    ``self.changed.notify_all()``.
    """

    idn = "SIMULATED,INSTRUMENT,0,0"
    max_message_bytes = 1 << 20
    max_block_bytes = 1 << 20
    error_queue_size = 20
    commands: CommandTree

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        tree = CommandTree()
        seen: set[str] = set()
        for klass in cls.__mro__:
            for name in vars(klass):
                if name in seen:
                    continue
                seen.add(name)
                fn = getattr(cls, name, None)
                if isinstance(fn, Setting):
                    tree.add(fn.header, fn.write)
                    tree.add(fn.header + "?", fn.read)
                for pattern, nargs in getattr(fn, "_scpi", ()):
                    tree.add(pattern, fn, nargs)
        cls.commands = tree

    def __init__(self, lock: threading.RLock | None = None):
        self.lock = lock if lock is not None else threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.powered_on = False  # power-on event not yet read by *ESR? (set by a spontaneous reset)

    def reset(self) -> None:
        """``*RST``: back to the power-on settings."""

    def _ch(self, call: Call) -> object:
        """The settings of the channel the header's suffix names (for ``setting(..., per_channel=True)``)."""
        raise SCPIError(-114, f"channel {call.suffix}")

    def session(self) -> "Session":
        """A new client conversation (the ``handler_factory`` of ``SCPIServer``)."""
        return Session(self)

    def command_list(self) -> list[str]:
        return [c.pattern for c in self.commands.commands]

    # -- IEEE 488.2 common commands and the SCPI error queue ---------------------------------------------------------

    @scpi("*IDN?")
    def _idn(self, call: Call) -> str:
        return self.idn

    @scpi("*RST")
    def _rst(self, call: Call) -> None:
        self.reset()
        self.changed.notify_all()

    @scpi("*CLS")
    def _cls(self, call: Call) -> None:
        call.session.clear_status()
        self.powered_on = False

    @scpi("*OPC")
    def _opc(self, call: Call) -> None:
        call.session.esr |= 1

    @scpi("*OPC?")
    def _opc_query(self, call: Call) -> str:
        return "1"

    @scpi("*WAI")
    def _wai(self, call: Call) -> None:
        """Commands run one after another, so nothing is ever pending here."""

    @scpi("*ESR?")
    def _esr(self, call: Call) -> str:
        value, call.session.esr = call.session.esr, 0
        if self.powered_on:  # the power-on bit belongs to the instrument, whichever connection reads it first
            value, self.powered_on = value | 128, False
        return nr1(value)

    @scpi("*ESE", nargs=1)
    def _ese(self, call: Call) -> None:
        call.session.ese = call.integer(0, lo=0, hi=255)

    @scpi("*ESE?")
    def _ese_query(self, call: Call) -> str:
        return nr1(call.session.ese)

    @scpi("*STB?")
    def _stb(self, call: Call) -> str:
        s = call.session
        return nr1((4 if s.errors else 0) | (32 if s.esr & s.ese else 0))

    @scpi("*TST?")
    def _tst(self, call: Call) -> str:
        return nr1(0)

    @scpi("SYSTem:ERRor[:NEXT]?")
    def _syst_err(self, call: Call) -> str:
        code, message = call.session.errors.popleft() if call.session.errors else (0, ERROR_MESSAGES[0])
        return f'{code:+d},"{message}"'

    @scpi("SYSTem:VERSion?")
    def _syst_version(self, call: Call) -> str:
        return "1999.0"


class Session:
    """One client's conversation with an instrument (protocol core: bytes in, ``Reply`` objects out).

    Per session: the error queue (``error_queue_size`` deep; overflow replaces the newest entry by -350), the event
    status register, and the header path for ``;``-joined commands. A transport may set ``peer_alive`` and
    ``stopping`` so that a command waiting on the instrument (e.g. ``:DIGitize``) gives up when the client leaves.
    """

    def __init__(self, instrument: SCPIInstrument):
        self.instrument = instrument
        self.reader = MessageReader(instrument.max_message_bytes, instrument.max_block_bytes)
        self.errors: deque[tuple[int, str]] = deque()
        self.esr = 0
        self.ese = 0
        self.peer_alive: Callable[[], bool] = lambda: True
        self.stopping = threading.Event()

    # -- status ------------------------------------------------------------------------------------------------------

    def push_error(self, error: SCPIError) -> None:
        log.debug("%s: %s", type(self.instrument).__name__, error)
        if len(self.errors) >= self.instrument.error_queue_size:
            self.errors[-1] = (-350, ERROR_MESSAGES[-350])
        else:
            self.errors.append((error.code, error.message))
        self.esr |= error.esr_bit()

    def clear_status(self) -> None:
        self.errors.clear()
        self.esr = 0

    def power_on_reset(self) -> None:
        """The instrument resets itself (a brown-out, a firmware watchdog): power-on settings, the error queue
        cleared, the power-on bit (128) of the event status register set."""
        with self.instrument.lock:
            self.instrument._rst(None)  # what *RST does (settings, the instrument's listeners), unasked
            self.instrument.powered_on = True
        self.errors.clear()

    # -- processing --------------------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> Iterator[Reply]:
        """Process received bytes; yield a reply for each program message that produced one."""
        for item in self.reader.feed(data):
            if isinstance(item, SCPIError):
                self.push_error(item)
                continue
            reply = self.execute(item)
            if reply is not None:
                yield reply

    def execute(self, message: Message) -> Reply | None:
        """Run the ``;``-separated commands of one program message; join the query responses."""
        data = message.data
        responses: list[str | Block] = []
        path: list[tuple[str, str]] = []
        # hostile input: a megabyte of ';' or quotes would be millions of units or strings to split and run (a minute
        # of CPU, gigabytes of spans); no real program message comes near the limit
        if count_outside(data, message.blocks, b";\"'") > MAX_MESSAGE_SEPARATORS:
            self.push_error(SCPIError(-223, f"more than {MAX_MESSAGE_SEPARATORS} ';' or quotes in one message"))
            return None
        for lo, hi in split_outside(data, message.blocks, b";"):
            try:
                if not data[lo:hi].strip():
                    continue  # empty line or empty unit (e.g. a trailing ';')
                response = self._execute_unit(data, message.blocks, lo, hi, path)
                if response is not None:
                    responses.append(response)
            except SCPIError as err:
                self.push_error(err)
                if -199 <= err.code <= -100:
                    break  # a command error discards the rest of the message
            except Exception:  # noqa: BLE001 - a simulator bug must not kill the connection
                log.exception("%s: internal error on %r", type(self.instrument).__name__, data[lo:hi][:80])
                self.push_error(SCPIError(-200, "internal simulator error"))
        return Reply.join(responses) if responses else None

    def _execute_unit(self, data: bytes, blocks: Sequence[tuple[int, int]], lo: int, hi: int,
                      path: list[tuple[str, str]]) -> str | Block | None:
        while lo < hi and data[lo] in b" \t\r":
            lo += 1
        space = _HEADER_END.search(data, lo, hi)
        end = space.start() if space else hi
        if end - lo > MAX_HEADER_BYTES:  # hostile input: a megabyte header, or a suffix of digits int() refuses
            raise SCPIError(-112, f"header of {end - lo} bytes")
        token = data[lo:end].decode("latin-1")
        if not re.fullmatch(r"[A-Za-z0-9_:*?]+", token):
            raise SCPIError(-102, f"header {token[:40]!r}")
        words, absolute, query = parse_header(token)
        common = words[0][0].startswith("*")
        full = words if (absolute or common) else path + words
        found = self.instrument.commands.find(full, query)
        if found is None:
            raise SCPIError(-113, f"header {token!r}")
        if not common:
            path[:] = full[:-1]
        cmd, suffixes = found
        n_max = cmd.nargs[1]
        if n_max is not None and count_outside(data, blocks, b",", end, hi) > n_max:  # before splitting millions
            raise SCPIError(-108, f"{token} takes at most {n_max} parameter(s)")
        parts = self._parameters(data, blocks, end, hi)
        n_min, n_max = cmd.nargs
        if len(parts) < n_min:
            raise SCPIError(-109, f"{token} needs {n_min} parameter(s)")
        if n_max is not None and len(parts) > n_max:
            raise SCPIError(-108, f"{token} takes at most {n_max} parameter(s)")
        call = Call(self, token, suffixes, parts)
        inst = self.instrument
        with inst.lock:
            response = cmd.handler(inst, call)
        if call.wait_for is not None:
            self.wait_until(call.wait_for)
        return response

    @staticmethod
    def _parameters(data: bytes, blocks: Sequence[tuple[int, int]], lo: int, hi: int) -> list[bytes]:
        if not data[lo:hi].strip():
            return []
        inner = [s for s in blocks if lo <= s[0] and s[1] <= hi]
        spans = split_outside(data, inner, b",", lo, hi)
        if not inner:  # fast path: plain text parameters (e.g. a million ASCII values)
            return [data[a:b].strip() for a, b in spans]
        parts: list[bytes] = []
        for a, b in spans:
            block = next((s for s in inner if a <= s[0] and s[1] <= b), None)
            if block is None:
                parts.append(data[a:b].strip())
                continue
            if not _BLOCK_HEADER.fullmatch(data[a:block[0]]) or data[block[1]:b].strip():
                raise SCPIError(-161, "malformed block parameter")
            parts.append(BlockParam(data[block[0]:block[1]]))
        return parts

    def wait_until(self, predicate: Callable[[], bool]) -> bool:
        """Block this client until ``predicate()`` holds; False if the client left or the server is stopping."""
        changed = self.instrument.changed
        with changed:
            while not predicate():
                if self.stopping.is_set() or not self.peer_alive():
                    return False
                changed.wait(0.05)
        return True


# ----------------------------------------------------------------------------------------------------------------------
# Fault injection
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultPlan:
    """Faults injected into an instrument's conversation; each probability is drawn per reply (0 = never).

    latency: the reply is delayed by ``latency_s`` seconds. no_reply: the reply is never sent. drop_connection: the
    connection is closed instead of replying (TCP); on a serial line the cable is pulled for ``unplug_s`` seconds
    (nothing goes either way). garble_block: a few bytes of a binary block payload are corrupted. short_block: a binary
    block payload is cut short (its header still announces the full length). error: an instrument error
    (``-300,"Device-specific error"``) goes into the error queue. reset: the instrument resets itself after the reply
    (settings lost, as after a brown-out; the power-on bit of ``*ESR?`` is set). stuck: the instrument freezes (a hung
    acquisition): the reply and everything for the next ``stuck_s`` seconds is ignored.
    """

    seed: int = 0
    latency: float = 0.0
    latency_s: float = 0.5
    no_reply: float = 0.0
    drop_connection: float = 0.0
    garble_block: float = 0.0
    short_block: float = 0.0
    error: float = 0.0
    reset: float = 0.0
    stuck: float = 0.0
    stuck_s: float = 1.0
    unplug_s: float = 0.5
    max_faults: int | None = None  # stop injecting after this many faults (None: no limit)

    KINDS = ("latency", "no_reply", "drop_connection", "garble_block", "short_block", "error", "reset", "stuck")

    def __post_init__(self) -> None:
        for name in self.KINDS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FaultPlan.{name} is a probability in [0, 1], got {getattr(self, name)}")
        for name in ("latency_s", "stuck_s", "unplug_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"FaultPlan.{name} must be >= 0 s, got {getattr(self, name)}")

    @classmethod
    def every_kind(cls, rate: float, seed: int = 0) -> "FaultPlan":
        """Every kind of fault, each with probability ``rate`` per reply."""
        return cls(seed=seed, **{name: rate for name in cls.KINDS})


@dataclass(frozen=True)
class FaultAction:
    """What the transport does with one reply."""

    delay_s: float
    data: bytes | None  # None: send nothing
    drop_connection: bool = False
    error: bool = False  # push an instrument error into the queue
    reset: bool = False  # the instrument resets itself after replying
    stuck_s: float = 0.0  # ignore everything for this long (the reply included)


class FaultInjector:
    """Draws the faults of a ``FaultPlan`` reply by reply, reproducibly from its seed (thread-safe); ``counts`` holds
    how many of each kind were injected."""

    def __init__(self, plan: FaultPlan | None):
        self._lock = threading.Lock()
        self.set_plan(plan)

    def set_plan(self, plan: FaultPlan | None) -> None:
        """Inject ``plan`` from now on: its seed restarts the draws, the counts start from zero."""
        with self._lock:
            self.plan = plan or FaultPlan()
            self._rng = random.Random(self.plan.seed)
            self.counts: dict[str, int] = {name: 0 for name in FaultPlan.KINDS}
            self.frozen_until = 0.0  # monotonic time until which the instrument ignores everything (``stuck``)

    def _count(self, kind: str) -> None:
        self.counts[kind] += 1
        log.info("fault injected: %s", kind)

    @property
    def injected(self) -> int:
        return sum(self.counts.values())

    def apply(self, reply: Reply) -> FaultAction:
        p = self.plan
        with self._lock:
            if p.max_faults is not None and self.injected >= p.max_faults:
                return FaultAction(0.0, reply.data)
            r = [self._rng.random() for _ in range(8)]
            delay = p.latency_s if r[0] < p.latency else 0.0
            if delay:
                self._count("latency")
            if r[5] < p.stuck:
                self._count("stuck")
                return FaultAction(0.0, None, stuck_s=p.stuck_s)
            if r[1] < p.drop_connection:
                self._count("drop_connection")
                return FaultAction(delay, None, drop_connection=True)
            if r[2] < p.no_reply:
                self._count("no_reply")
                return FaultAction(delay, None)
            data = reply.data
            if reply.block is not None and reply.block[1] > reply.block[0]:
                a, b = reply.block
                if r[3] < p.garble_block:
                    self._count("garble_block")
                    garbled = bytearray(data)
                    for _ in range(max(1, (b - a) // 1000)):
                        garbled[self._rng.randrange(a, b)] ^= self._rng.randrange(1, 256)
                    data = bytes(garbled)
                if r[4] < p.short_block:
                    self._count("short_block")
                    data = data[:self._rng.randrange(a, b)]
            error, reset = r[6] < p.error, r[7] < p.reset
            if error:
                self._count("error")
            if reset:
                self._count("reset")
            return FaultAction(delay, data, error=error, reset=reset)


# ----------------------------------------------------------------------------------------------------------------------
# Transports
# ----------------------------------------------------------------------------------------------------------------------


class ByteStream(Protocol):
    """A bidirectional byte link: a TCP socket (``SocketStream``) or a pseudo-terminal (``PtyStream``)."""

    def read(self, timeout_s: float) -> bytes | None:
        """Up to 64 KiB; None if nothing arrived within ``timeout_s``; b"" once the peer has closed."""

    def write(self, data: bytes) -> None: ...

    def alive(self) -> bool:
        """False once the peer has closed (must not consume data)."""

    def close(self) -> None: ...


INJECTED_ERROR = SCPIError(-300, "injected fault")


def serve_stream(stream: ByteStream, session: Session, injector: FaultInjector, stop: threading.Event,
                 name: str = "scpi") -> str:
    """Run one client's conversation until it disconnects, a fault drops it, or ``stop`` is set. Returns why it
    ended: ``"closed"`` (by the client), ``"dropped"`` (a fault) or ``"stopped"``."""
    session.stopping = stop
    session.peer_alive = stream.alive
    try:
        while not stop.is_set():
            data = stream.read(0.2)
            if data is None:
                continue
            if not data:
                return "closed"
            if time.monotonic() < injector.frozen_until:  # a stuck instrument: whichever connection asks
                continue
            for reply in session.feed(data):
                action = injector.apply(reply)
                if action.stuck_s:
                    log.info("%s: fault injected: frozen for %.3g s", name, action.stuck_s)
                    injector.frozen_until = time.monotonic() + action.stuck_s
                    break  # the rest of this message is ignored as well
                if action.delay_s and stop.wait(action.delay_s):
                    return "stopped"
                if action.drop_connection:
                    log.info("%s: fault injected: dropping the connection", name)
                    return "dropped"
                if action.error:
                    session.push_error(INJECTED_ERROR)
                if action.data is not None:
                    stream.write(action.data)
                if action.reset:
                    log.info("%s: fault injected: the instrument resets itself", name)
                    session.power_on_reset()
        return "stopped"
    except OSError as err:
        log.debug("%s: connection ended: %s", name, err)
        return "closed"
    finally:
        stream.close()


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class SocketStream:
    """``ByteStream`` over a connected TCP socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def read(self, timeout_s: float) -> bytes | None:
        ready, _, _ = select.select([self.sock], [], [], timeout_s)
        if not ready:
            return None
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError):
            return b""
        if _QUICKACK is not None:
            # Acknowledge at once, as instruments' network stacks do: with Linux's delayed ACK, a client that sends
            # a command and then a query in two writes (Nagle) would wait 40 ms for each such pair.
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass
        return data

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def alive(self) -> bool:
        try:
            ready, _, _ = select.select([self.sock], [], [], 0)
            return not ready or self.sock.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class SCPIServer:
    """A raw-socket SCPI server (like an instrument's LAN port 5025): one thread per client, at most ``max_clients``
    at once (a further connection is closed at once, so that a flood of connections cannot exhaust threads).

    Args:
        handler_factory: makes the ``Session`` of a new client (e.g. ``instrument.session``).
        host, port: where to listen (port 0: a free port, see ``.port``).
        name: for logs and thread names.
        faults: fault injection on this server's replies (default: none).
        serial_url: ``resource`` is the pyserial URL ``socket://host:port`` (a serial instrument reached over TCP)
            instead of a VISA SOCKET resource.
        max_clients: connections served at once.
    """

    def __init__(self, handler_factory: Callable[[], Session], host: str = "127.0.0.1", port: int = 0,
                 name: str = "scpi", faults: FaultPlan | None = None, serial_url: bool = False, max_clients: int = 16):
        self.handler_factory = handler_factory
        self.max_clients = max_clients
        self.serial_url = serial_url
        self.name = name
        self.injector = FaultInjector(faults)
        self._stop = threading.Event()
        self._listener = socket.create_server((host, port))
        self.host, self.port = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()  # wakes the accept loop on close()
        self._clients: dict[threading.Thread, socket.socket] = {}
        self._clients_lock = threading.Lock()
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True)
        self._accept_thread.start()
        log.info("%s: serving SCPI on %s:%d", name, self.host, self.port)

    @property
    def resource(self) -> str:
        """The VISA resource string of this server, e.g. ``TCPIP0::127.0.0.1::45123::SOCKET``, or its pyserial URL
        ``socket://127.0.0.1:45123`` (``serial_url``)."""
        if self.serial_url:
            return f"socket://{self.host}:{self.port}"
        return f"TCPIP0::{self.host}::{self.port}::SOCKET"

    @property
    def client_count(self) -> int:
        with self._clients_lock:
            return len(self._clients)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._listener, self._wake_r], [], [], 1.0)
                if self._listener not in ready:
                    continue
                conn, addr = self._listener.accept()
            except (OSError, ValueError):
                break
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve_client, args=(conn, addr),
                                      name=f"{self.name}-client-{addr[1]}", daemon=True)
            with self._clients_lock:
                if self._stop.is_set():
                    conn.close()
                    break
                if len(self._clients) >= self.max_clients:
                    log.warning("%s: refused %s: %d clients are connected already", self.name, addr,
                                len(self._clients))
                    conn.close()
                    continue
                self._clients[thread] = conn
            thread.start()

    def _serve_client(self, conn: socket.socket, addr: tuple) -> None:
        log.debug("%s: client %s connected", self.name, addr)
        try:
            serve_stream(SocketStream(conn), self.handler_factory(), self.injector, self._stop, self.name)
        except Exception:  # noqa: BLE001 - never let a client take the server down
            log.exception("%s: client %s failed", self.name, addr)
        finally:
            with self._clients_lock:
                self._clients.pop(threading.current_thread(), None)
            log.debug("%s: client %s disconnected", self.name, addr)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, disconnect every client and join all threads (a second call does nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake_w.send(b"x")
        self._accept_thread.join(timeout_s)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        with self._clients_lock:
            clients = list(self._clients.items())
        for _, conn in clients:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread, _ in clients:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("%s: client thread %s did not stop", self.name, thread.name)
        log.info("%s: closed", self.name)

    def __enter__(self) -> "SCPIServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _packet_mode(master_fd: int) -> bool:
    """Put a pty master in packet mode (TIOCPKT), where the client's flushes show up; False where unsupported."""
    try:
        fcntl.ioctl(master_fd, termios.TIOCPKT, struct.pack("i", 1))
        return True
    except (AttributeError, OSError):
        return False


class PtyStream:
    """``ByteStream`` over the master side of a pseudo-terminal: the instrument's end of a serial cable. With
    ``baud_rate`` (realtime benches) bytes arrive and replies leave no faster than the line carries them: 10 bits per
    byte (8N1).

    A serial line has no connection state; with no client on the other end, reads just time out. A client (re)opening
    the port resets the line instead: pyserial flushes its input on open, which the master sees in packet mode. What a
    previous client left behind is then dropped: its unfinished message (``on_line_reset``, e.g. an unterminated
    command or a block announcing more bytes than it sent), the replies nobody read (and those still being written),
    and a command still waiting for the instrument (``alive`` is False until the next read).
    """

    BITS_PER_BYTE = 10  # start bit, 8 data bits, stop bit
    INPUT_BUFFER_BYTES = 1 << 16  # client input held while a reply waits for room; beyond, it overruns (is lost)

    def __init__(self, master_fd: int, baud_rate: float | None = None, stop: threading.Event | None = None):
        self.fd = master_fd
        self.baud_rate = baud_rate
        self.stop = stop or threading.Event()
        self.on_line_reset: Callable[[], None] = lambda: None  # the server's: forget the unfinished message
        os.set_blocking(master_fd, False)  # a full line must not block the server past its stop
        self._packets = _packet_mode(master_fd)
        self._early = bytearray()  # input read while writing or checking ``alive``, returned by the next read
        self._reset = False  # the line was reset since the last read

    def _take(self) -> bytes | None:
        """Read the master once: the client's bytes, or None (nothing, or a status change such as a line reset)."""
        data = os.read(self.fd, 65536)
        if not self._packets or not data:
            return data or None
        if data[0] == termios.TIOCPKT_DATA:
            return data[1:] or None
        if data[0] & termios.TIOCPKT_FLUSHREAD:
            log.debug("pty: line reset by the client")
            self._reset = True
            self._early.clear()  # arrived before the reset
            self.on_line_reset()
        return None

    def _poll_input(self, timeout_s: float = 0.0) -> None:
        """Take input that is waiting (so a line reset is seen while a reply waits for room)."""
        ready, _, _ = select.select([self.fd], [], [], timeout_s)
        if not ready:
            return
        try:
            data = self._take()
        except OSError:
            return
        if data and len(self._early) + len(data) > self.INPUT_BUFFER_BYTES:
            log.warning("pty: input buffer overrun, %d bytes lost", len(data))  # a client that writes, never reads
        elif data:
            self._early += data

    def read(self, timeout_s: float) -> bytes | None:
        self._reset = False
        if self._early:
            data: bytes | None = bytes(self._early)
            self._early.clear()
        else:
            ready, _, _ = select.select([self.fd], [], [], timeout_s)
            if not ready:
                return None
            try:
                data = self._take()
            except BlockingIOError:
                return None
            except OSError:  # EIO: nobody holds the other end open right now
                time.sleep(timeout_s)
                return None
        if data and self.baud_rate:  # the line delivers them one after another
            time.sleep(len(data) * self.BITS_PER_BYTE / self.baud_rate)
        return data

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        # paced: each slice of about 10 ms of line time is released only once the line could have carried it
        step = max(1, int(self.baud_rate / self.BITS_PER_BYTE * 0.01)) if self.baud_rate else len(view)
        self._poll_input()  # a client that opened the port since this reply's command came gets none of it
        while view and not self._reset:
            if self.baud_rate:
                time.sleep(min(step, len(view)) * self.BITS_PER_BYTE / self.baud_rate)
            try:
                sent = os.write(self.fd, view[:step])
            except BlockingIOError:  # the line is full (nobody reading): wait for room unless the server stops
                if self.stop.is_set():
                    return
                readable, _, _ = select.select([self.fd], [self.fd], [], 0.1)
                if readable:  # hostile client: asks for a long reply and leaves; the next one resets the line
                    self._poll_input()
                continue
            view = view[sent:]

    def alive(self) -> bool:
        """False once a new client has reset the line (the one that sent the pending command is gone)."""
        self._poll_input()
        return not self._reset

    def close(self) -> None:
        """The server owns the pty; a finished conversation leaves it open."""


class PtyServer:
    """An instrument on a pseudo-terminal: ``port`` is a ``/dev/pts/N`` path that pyserial (or a VISA ASRL resource)
    opens exactly like a USB-serial adapter. One conversation at a time, as on a real serial port.

    Args:
        handler_factory: makes the instrument's ``Session``.
        name: for logs and the thread name.
        faults: fault injection on the replies (default: none).
        baud_rate: pace the replies at this line speed, bit/s (realtime benches); None: as fast as the pty goes.
    """

    def __init__(self, handler_factory: Callable[[], Session], name: str = "serial", faults: FaultPlan | None = None,
                 baud_rate: float | None = None):
        self.handler_factory = handler_factory
        self.baud_rate = baud_rate
        self.name = name
        self.injector = FaultInjector(faults)
        self._stop = threading.Event()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing, no CR/LF translation: bytes pass as they are
        self.port = os.ttyname(self._slave)  # the server keeps this end open, so the path outlives each client
        self._thread = threading.Thread(target=self._serve, name=f"{name}-pty", daemon=True)
        self._thread.start()
        log.info("%s: serving SCPI on %s", name, self.port)

    @property
    def resource(self) -> str:
        return self.port

    def _serve(self) -> None:
        stream = PtyStream(self._master, self.baud_rate, self._stop)
        while not self._stop.is_set():
            try:
                session = self.handler_factory()
                stream.on_line_reset = session.reader.clear  # a client opening the port starts on a clean line
                ended = serve_stream(stream, session, self.injector, self._stop, self.name)
            except Exception:  # noqa: BLE001 - never let a client's bytes take the instrument down
                log.exception("%s: conversation failed", self.name)
                continue
            if ended == "dropped":  # the cable is pulled: what is sent meanwhile is lost
                deadline = time.monotonic() + self.injector.plan.unplug_s
                while time.monotonic() < deadline and not self._stop.is_set():
                    stream.read(min(0.05, max(0.0, deadline - time.monotonic())))

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop serving, join the thread and release the pty."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("%s: pty thread did not stop", self.name)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
        log.info("%s: closed", self.name)

    def __enter__(self) -> "PtyServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
