"""Typed instrument errors. Every message names the instrument and the command that was sent."""

from __future__ import annotations


class InstrumentError(Exception):
    """Base class: something went wrong talking to an instrument.

    Attributes:
        instrument: human-readable instrument name (e.g. ``"awg (Keysight 33522B)"``).
        command: the command that was being sent or queried, if any.
    """

    def __init__(self, instrument: str, command: str | None, message: str):
        self.instrument = instrument
        self.command = command
        self.detail = message
        where = f"{instrument}" + (f", command {command!r}" if command else "")
        super().__init__(f"{where}: {message}")


class InstrumentTimeout(InstrumentError):
    """The instrument did not answer within the link's timeout."""


class InstrumentReportedError(InstrumentError):
    """The instrument's error queue (SYST:ERR?) reported one or more errors."""

    def __init__(self, instrument: str, command: str | None, errors: list[tuple[int, str]]):
        self.errors = errors
        text = "; ".join(f"{code},\"{msg}\"" for code, msg in errors)
        super().__init__(instrument, command, f"instrument reported error(s): {text}")


class InstrumentWasReset(InstrumentError):
    """The instrument reset itself (the power-on bit of ``*ESR?``): the settings it was given are lost."""


class ProtocolError(InstrumentError):
    """A reply could not be parsed: garbled text, short or malformed binary block, non-finite values."""


class LimitViolation(InstrumentError):
    """A value was refused by the driver before sending because it lies outside configured limits."""


class ConnectionLost(InstrumentError):
    """The link dropped and could not be re-established within the reconnect budget."""


class NotConnected(ConnectionLost):
    """The instrument could not be reached when its link was opened: nothing was ever sent to it."""


class NotMadeSafe(InstrumentError):
    """Switching an output off (or blanking the SLM) failed on the way out: the instrument may still be driving."""
