"""The protocol core: a simulated front panel (``SCPIInstrument``) and one client's conversation with it
(``Session``). It knows nothing about sockets: a transport feeds a session the bytes it receives and sends back the
replies it returns, so the TCP and the serial (pty) transports share it unchanged.

- ``SCPIInstrument``  base class of a simulated front panel: commands declared with ``@scpi``, plain settings (a
  command and its query) with ``setting()``, the IEEE 488.2 common commands (``*IDN?``, ``*RST``, ``*CLS``, ``*OPC``,
  ``*OPC?``, ``*WAI``, ``*ESR?``, ...) and ``SYST:ERR?``.
- ``Session``         one client's conversation with an instrument: error queue, status registers, the header path
  of ``;``-joined commands, replies.
- ``Call``            one command as its handler sees it: numeric suffixes and typed parameters.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import deque
from typing import Callable, Iterator, Sequence

from simulators.scpi.commands import CommandTree, Setting, parse_header, scpi
from simulators.scpi.formats import ERROR_MESSAGES, Block, Reply, SCPIError, mnemonic_forms, nr1, parse_number
from simulators.scpi.reader import Message, MessageReader, count_outside, split_outside

log = logging.getLogger(__name__)

_HEADER_END = re.compile(rb"[ \t\r]")
MAX_HEADER_BYTES = 256  # longest program header accepted
MAX_MESSAGE_SEPARATORS = 10_000  # most ';' and quotes in one program message
_BLOCK_HEADER = re.compile(rb"\s*#[1-9]\d+\s*")


class ConnectionDropped(Exception):
    """Raised by a session (e.g. a fault-injecting wrapper) to make its transport end the conversation at once, as
    if the link had been dropped."""


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

