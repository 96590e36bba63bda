"""The command tree: SCPI header patterns -> handler methods, the ``@scpi`` decorator that declares a handler and
``setting()`` that declares a plain setting (a command and its query).

Pattern syntax: a mnemonic is written in its long form with the short form in capitals (``VOLTage``); ``[...]`` is an
optional node; ``#`` after a mnemonic is an optional numeric suffix (default 1: ``CHANnel#`` matches ``CHAN``,
``CHAN2``, ``channel2``); a trailing ``?`` makes the pattern a query. Common commands (``*TRG``) are literal.
Headers are case-insensitive and accept exactly the short or the long form, as SCPI requires.

Handlers receive the instrument and a ``Call`` (``simulators.scpi.session``); this module only stores them.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from simulators.scpi.formats import SCPIError, nr1, nr3

log = logging.getLogger(__name__)


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

    cache_size = 1024  # headers remembered (a program uses a few dozen; hostile input cannot grow it further)

    def __init__(self) -> None:
        self.commands: list[Command] = []
        self._found: dict[tuple, tuple[Command, tuple[int, ...]] | None] = {}

    def add(self, pattern: str, handler: Callable, nargs: int | tuple[int, int | None] | None = None) -> None:
        nodes, query = compile_pattern(pattern)
        if nargs is None:
            nargs = 0 if query or nodes[0].long.startswith("*") else 1
        if isinstance(nargs, int):
            nargs = (nargs, nargs)
        self.commands.append(Command(pattern, nodes, query, handler, nargs))
        self._found.clear()

    def find(self, words: Sequence[tuple[str, str]], query: bool) -> tuple[Command, tuple[int, ...]] | None:
        """The first command whose pattern matches the header, and its suffixes (remembered per header: matching
        every pattern in turn costs ~0.1 ms, and a bench program sends the same few dozen headers again and again)."""
        key = (tuple(words), query)
        try:
            return self._found[key]
        except KeyError:
            pass
        found = None
        for cmd in self.commands:
            if cmd.query == query:
                suffixes = match_nodes(cmd.nodes, words)
                if suffixes is not None:
                    found = cmd, suffixes
                    break
        if len(self._found) >= self.cache_size:
            self._found.clear()
        self._found[key] = found
        return found


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
    the query ``header?`` returns ``reply(attribute)``. ``instrument`` is an ``SCPIInstrument``, ``call`` a ``Call``
    (both in ``simulators.scpi.session``, which builds on this module)."""

    header: str
    attr: str
    parse: Callable[[Any], object]  # Call -> value
    reply: Callable[[object], str]
    per_channel: bool = False

    def owner(self, instrument: Any, call: Any) -> object:
        """The object holding the attribute: the instrument, or the channel the header's suffix names."""
        return instrument._ch(call) if self.per_channel else instrument

    def write(self, instrument: Any, call: Any) -> None:
        value = self.parse(call)  # before the channel: a bad value is reported ahead of a bad suffix
        setattr(self.owner(instrument, call), self.attr, value)

    def read(self, instrument: Any, call: Any) -> str:
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

