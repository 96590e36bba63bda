"""The message reader: a received byte stream -> SCPI program messages, and splitting a message into its units and
parameters outside quoted strings and block payloads.

- Messages end at ``\\n`` (``\\r\\n`` tolerated).
- IEEE 488.2 definite-length blocks (``#<n><n digits><payload>``) are read verbatim: the payload may hold any byte,
  ``\\n`` included.
- Buffers are bounded (a message or block beyond the limit is an error, -223) and the reader resynchronises at the
  next terminator after garbage.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Sequence

from simulators.scpi.formats import SCPIError

log = logging.getLogger(__name__)


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
