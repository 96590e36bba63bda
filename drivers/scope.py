"""Keysight InfiniiVision oscilloscopes (DSOX1102G, DSOX3000 series), SCPI over LAN socket 5025.

Exact command strings (channel 1 shown; values formatted losslessly):

    :CHAN1:SCAL 0.5   :CHAN1:OFFS 0.0   :CHAN1:COUP DC|AC   :CHAN1:PROB 10.0   :CHAN1:DISP 1|0   :CHAN1:RANG 4.0
    :TIM:RANG 0.001   :TIM:POS 0.0      :TIM:REF LEFT|CENT|RIGH
    :TRIG:MODE EDGE   :TRIG:EDGE:SOUR EXT|CHAN1|LINE|WGEN   :TRIG:EDGE:LEV 1.0   :TRIG:EDGE:SLOP POS|NEG|EITH|ALT
    :ACQ:TYPE NORM|AVER|HRES|PEAK       :ACQ:COUN 16
    :RUN   :STOP   :SING   :DIG CHAN1   :AER?   :TER?   :OPER:COND? (bit 3, value 8 = running)
    :WAV:SOUR CHAN1   :WAV:FORM WORD|BYTE|ASC   :WAV:BYT LSBF (WORD)   :WAV:UNS ON (WORD, BYTE)
    :WAV:POIN:MODE RAW   :WAV:POIN 1000   :WAV:PRE?   :WAV:DATA?

Settings sent together (one ``set_*`` call) are followed by one ``SYST:ERR?`` check. ``read_waveform`` sends its
``:WAV`` settings only when they differ from the last transfer's (the scope keeps them; a reset forgets them).
``:WAV:DATA?`` answers an IEEE 488.2 block with an ``#8`` + 8-digit header; in ASC format the block holds
comma-separated volts.
Waveform scaling follows the preamble: volts = (code - yreference) * yincrement + yorigin and
t = (i - xreference) * xincrement + xorigin, in seconds relative to the trigger.

Overlapping read-out with acquisition (issue 14, point 3): this driver reads a record after the acquisition is done
(``:DIG`` or ``:SING``, then ``:WAV:DATA?``); whether an InfiniiVision can send one record while it acquires the next:
not verified. Segmented memory (many triggered records in one acquisition, read afterwards) exists on the 1000
X-Series: the DSOX1204A/G user's guide lists segmented acquisitions (re-armed about 19 us after each segment); for
the DSOX1102G itself not verified, nor whether it needs a licence. This driver does not use it: the electronic and
mechanical setups record a whole batch as one single-shot record of one waveform, so segments would add trigger
re-arms, not overlap; and on the realtime electronic bench the instruments already account for 0.96 of a PAT
epoch's wall time (experiments/results_speed.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from drivers.errors import InstrumentTimeout, LimitViolation, ProtocolError
from drivers.scpi import SCPIInstrument, check_choice, check_range, unpack_values
from drivers.transport import Link

log = logging.getLogger(__name__)

WaveformFormat = Literal["WORD", "BYTE", "ASC"]

N_CHANNELS = 4
RUN_BIT = 8  # :OPER:COND? bit 3: the acquisition system is running
ACQ_COUNT_MIN, ACQ_COUNT_MAX = 2, 65536
_POLL_MIN_S, _POLL_MAX_S = 0.002, 0.01  # s: a record is picked up at most 10 ms after it is done

_COUPLINGS = {"DC": "DC", "AC": "AC"}
_REFERENCES = {"LEFT": "LEFT", "CENT": "CENT", "CENTER": "CENT", "RIGH": "RIGH", "RIGHT": "RIGH"}
_SLOPES = {"POS": "POS", "POSITIVE": "POS", "NEG": "NEG", "NEGATIVE": "NEG", "EITH": "EITH", "EITHER": "EITH",
           "ALT": "ALT", "ALTERNATE": "ALT"}
_TRIGGER_SOURCES = {"EXT": "EXT", "EXTERNAL": "EXT", "LINE": "LINE", "WGEN": "WGEN",
                    **{f"{p}{n}": f"CHAN{n}" for n in range(1, N_CHANNELS + 1) for p in ("CHAN", "CHANNEL")}}
_ACQ_TYPES = {"NORM": "NORM", "NORMAL": "NORM", "AVER": "AVER", "AVERAGE": "AVER", "HRES": "HRES",
              "HRESOLUTION": "HRES", "PEAK": "PEAK"}
_WAVE_FORMATS = {"WORD": "WORD", "BYTE": "BYTE", "ASC": "ASC", "ASCII": "ASC", "ASCI": "ASC"}
#: key in ``settings`` of the waveform-transfer commands last applied (no colon: ``verify_settings`` skips it)
_TRANSFER = "waveform_transfer"
#: :WAV:PRE? field 1 (format) and field 2 (acquisition type) codes
_PRE_FORMATS = {0: "BYTE", 1: "WORD", 4: "ASC"}
_PRE_TYPES = {0: "NORM", 1: "PEAK", 2: "AVER", 3: "HRES"}


@dataclass(frozen=True)
class Preamble:
    """``:WAV:PRE?``: how waveform codes map to time (s) and voltage (V)."""

    format: str  # BYTE, WORD or ASC
    acquisition_type: str  # NORM, PEAK, AVER or HRES
    points: int
    count: int  # averages (1 unless AVER)
    x_increment_s: float
    x_origin_s: float  # time of point x_reference relative to the trigger
    x_reference: float
    y_increment_v: float
    y_origin_v: float
    y_reference: float


@dataclass(frozen=True)
class Waveform:
    """One channel's record: ``t`` [N] s relative to the trigger, ``volts`` [N] V."""

    channel: int
    t: np.ndarray
    volts: np.ndarray
    preamble: Preamble


def parse_preamble(reply: str, *, instrument: str = "scope") -> Preamble:
    """Parse the 10 comma-separated ``:WAV:PRE?`` fields; raise ProtocolError on anything else."""
    fields = reply.strip().split(",")
    try:
        if len(fields) != 10:
            raise ValueError(f"{len(fields)} fields instead of 10")
        fmt, typ, points, count = (int(float(f)) for f in fields[:4])
        x_inc, x_orig, x_ref, y_inc, y_orig, y_ref = (float(f) for f in fields[4:])
        numbers = (x_inc, x_orig, x_ref, y_inc, y_orig, y_ref)
        if fmt not in _PRE_FORMATS or not all(math.isfinite(v) for v in numbers) or points < 0 or x_inc <= 0:
            raise ValueError("values out of range")
    except ValueError as err:
        raise ProtocolError(instrument, ":WAV:PRE?", f"cannot parse the waveform preamble ({err}): "
                                                     f"{reply[:200]!r}") from None
    return Preamble(_PRE_FORMATS[fmt], _PRE_TYPES.get(typ, str(typ)), points, count, *numbers)


class KeysightInfiniiVision(SCPIInstrument):
    """A Keysight InfiniiVision oscilloscope.

    Args:
        link: open link (``TCPIP0::<ip>::5025::SOCKET`` or ``USB0::...::INSTR``).
        name: instrument name for messages.
        max_points: largest record ``read_waveform`` may request, points.
    """

    def __init__(self, link: Link, *, name: str = "scope", max_points: int = 1_000_000, check_errors: bool = True):
        super().__init__(link, name=name, check_errors=check_errors)
        if max_points < 1:
            raise ValueError(f"{name}: max_points must be positive, got {max_points}")
        self.max_points = int(max_points)

    def _channel(self, channel: int, command: str) -> int:
        if isinstance(channel, bool) or channel not in range(1, N_CHANNELS + 1):
            raise LimitViolation(self.name, command, f"channel must be 1..{N_CHANNELS}, got {channel!r}")
        return int(channel)

    # -- vertical, horizontal, trigger, acquisition ----------------------------------------------------------------
    def set_channel(self, channel: int, *, scale_v_per_div: float | None = None, offset_v: float | None = None,
                    coupling: str | None = None, probe: float | None = None, display: bool | None = None) -> None:
        """Set any of: vertical scale (V/div), offset (V), coupling DC|AC, probe attenuation (x), display on/off."""
        head = f":CHAN{self._channel(channel, ':CHAN')}"
        settings: dict[str, float | str] = {}
        if scale_v_per_div is not None:
            settings[f"{head}:SCAL"] = check_range(self.name, f"{head}:SCAL", scale_v_per_div, 1e-4, 1e3, "V/div")
        if offset_v is not None:
            settings[f"{head}:OFFS"] = check_range(self.name, f"{head}:OFFS", offset_v, None, None)
        if coupling is not None:
            settings[f"{head}:COUP"] = check_choice(self.name, f"{head}:COUP", coupling, _COUPLINGS)
        if probe is not None:
            settings[f"{head}:PROB"] = check_range(self.name, f"{head}:PROB", probe, 1e-3, 1e4, "x")
        if display is not None:
            settings[f"{head}:DISP"] = 1 if display else 0
        if settings:
            self.apply(settings)

    def set_range(self, channel: int, range_v: float) -> None:
        """Full-scale vertical range (8 divisions), V."""
        head = f":CHAN{self._channel(channel, ':CHAN')}"
        self.apply({f"{head}:RANG": check_range(self.name, f"{head}:RANG", range_v, 8e-4, 8e3, "V")})
        self.settings.pop(f"{head}:SCAL", None)  # the range sets the scale

    def set_timebase(self, range_s: float, position_s: float = 0.0, reference: str = "LEFT") -> None:
        """Full-scale time range (10 divisions, s), trigger-to-reference delay (s) and reference LEFT|CENT|RIGH."""
        self.apply({":TIM:RANG": check_range(self.name, ":TIM:RANG", range_s, 1e-10, 1e4, "s"),
                    ":TIM:POS": check_range(self.name, ":TIM:POS", position_s, None, None, "s"),
                    ":TIM:REF": check_choice(self.name, ":TIM:REF", reference, _REFERENCES)})

    def set_edge_trigger(self, source: str | int = "EXT", level_v: float = 1.0, slope: str = "POS") -> None:
        """Edge trigger on ``source`` (EXT, LINE, WGEN, CHAN1..4 or a channel number) at ``level_v`` (V)."""
        src = f"CHAN{source}" if isinstance(source, int) else source
        self.apply({":TRIG:MODE": "EDGE",
                    ":TRIG:EDGE:SOUR": check_choice(self.name, ":TRIG:EDGE:SOUR", src, _TRIGGER_SOURCES),
                    ":TRIG:EDGE:LEV": check_range(self.name, ":TRIG:EDGE:LEV", level_v, None, None, "V"),
                    ":TRIG:EDGE:SLOP": check_choice(self.name, ":TRIG:EDGE:SLOP", slope, _SLOPES)})

    def set_acquisition(self, type: str = "NORM", count: int | None = None) -> None:
        """Acquisition type NORM|AVER|HRES|PEAK and, for AVER, the number of averages (2..65536)."""
        settings: dict[str, float | str] = {":ACQ:TYPE": check_choice(self.name, ":ACQ:TYPE", type, _ACQ_TYPES)}
        if count is not None:
            settings[":ACQ:COUN"] = int(check_range(self.name, ":ACQ:COUN", count, ACQ_COUNT_MIN, ACQ_COUNT_MAX,
                                                    "acquisitions"))
        self.apply(settings)

    # -- acquisition control ---------------------------------------------------------------------------------------
    def run(self) -> None:
        """Acquire continuously (``:RUN``)."""
        self.write(":RUN")

    def stop(self) -> None:
        """Stop acquiring (``:STOP``)."""
        self.write(":STOP")

    def arm_single(self, timeout_s: float) -> None:
        """``:SING``, then poll ``:AER?`` until the trigger is armed (at most ``timeout_s``, s). The error queue is
        read only if the first ``:AER?`` finds the trigger not armed yet: a scope that armed took the command."""
        self.write(":SING", check=False)
        if self.query_int(":AER?") == 1:
            return
        self._check(":SING", None)
        self._poll(":AER?", lambda v: v == 1, timeout_s, "the trigger was not armed")

    def digitize(self, channel: int | Sequence[int]) -> None:
        """``:DIG CHAN1[,CHAN2...]``: acquire one record; the scope finishes it before answering anything else."""
        channels = [channel] if isinstance(channel, int) else list(channel)
        sources = ",".join(f"CHAN{self._channel(c, ':DIG')}" for c in channels)
        self.write(f":DIG {sources}")

    def wait_complete(self, timeout_s: float) -> None:
        """Poll ``:OPER:COND?`` until the Run bit (bit 3, value 8) clears: the single acquisition is done."""
        self._poll(":OPER:COND?", lambda v: not v & RUN_BIT, timeout_s, "the acquisition did not complete")

    def triggered(self) -> bool:
        """``:TER?``: whether a trigger occurred since the last query."""
        return self.query_int(":TER?") != 0

    def _poll(self, query: str, done: Callable[[int], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        pause = _POLL_MIN_S
        while True:
            value = self.query_int(query)
            if done(value):
                return
            if time.monotonic() >= deadline:
                raise InstrumentTimeout(self.name, query, f"{what} within {timeout_s:g} s (last reply {value})")
            time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX_S)

    # -- waveform transfer --------------------------------------------------------------------------------------------
    def read_waveform(self, channel: int, points: int, fmt: WaveformFormat = "WORD") -> Waveform:
        """Read ``points`` raw points of ``channel`` as WORD (16-bit), BYTE (8-bit) or ASC (text volts)."""
        ch = self._channel(channel, ":WAV:SOUR")
        if isinstance(points, bool) or int(points) != points:
            raise LimitViolation(self.name, ":WAV:POIN", f"point count must be an integer, got {points!r}")
        points = int(check_range(self.name, ":WAV:POIN", points, 1, self.max_points, "points"))
        form = check_choice(self.name, ":WAV:FORM", fmt, _WAVE_FORMATS)
        cmds = [f":WAV:SOUR CHAN{ch}", f":WAV:FORM {form}"]
        if form == "WORD":
            cmds.append(":WAV:BYT LSBF")
        if form in ("WORD", "BYTE"):
            cmds.append(":WAV:UNS ON")
        cmds += [":WAV:POIN:MODE RAW", f":WAV:POIN {points}"]
        if self.settings.get(_TRANSFER) != cmds:  # the scope keeps them: sent again only when they change
            self.settings.pop(_TRANSFER, None)
            self.write_all(cmds)
            self.settings[_TRANSFER] = cmds
        pre = parse_preamble(self.query(":WAV:PRE?"), instrument=self.name)
        if pre.format != form:
            self.settings.pop(_TRANSFER, None)  # the scope does not hold what was sent: send it all next time
            raise ProtocolError(self.name, ":WAV:PRE?", f"preamble reports format {pre.format}, requested {form}")
        payload = self.link.query_block(":WAV:DATA?")
        volts = self._decode(payload, pre)
        if volts.size != pre.points:
            raise ProtocolError(self.name, ":WAV:DATA?", f"preamble announced {pre.points} points, the data block "
                                                         f"holds {volts.size}")
        t = np.arange(volts.size, dtype=np.float64)  # (k - x_reference) x_increment + x_origin, in place
        t -= pre.x_reference
        t *= pre.x_increment_s
        t += pre.x_origin_s
        log.debug("%s: read %d points of CHAN%d (%s)", self.name, volts.size, ch, form)
        return Waveform(ch, t, volts, pre)

    def _decode(self, payload: bytes, pre: Preamble) -> np.ndarray:
        if pre.format == "ASC":
            return self._parse_ascii(payload)
        dtype = "uint16" if pre.format == "WORD" else "uint8"
        codes = unpack_values(payload, dtype, "little", instrument=self.name, command=":WAV:DATA?")
        volts = codes.astype(np.float64)  # (code - y_reference) y_increment + y_origin, in place
        volts -= pre.y_reference
        volts *= pre.y_increment_v
        volts += pre.y_origin_v
        return volts

    def _parse_ascii(self, payload: bytes) -> np.ndarray:
        text = payload.decode("latin-1").strip().rstrip(",")
        try:
            volts = np.array([float(v) for v in text.split(",")] if text else [], dtype=float)
        except ValueError as err:
            raise ProtocolError(self.name, ":WAV:DATA?", f"ASCII waveform data is not numbers ({err}); starts "
                                                         f"{payload[:40]!r}") from None
        if not np.all(np.isfinite(volts)):
            raise ProtocolError(self.name, ":WAV:DATA?", "ASCII waveform data contains NaN or infinity")
        return volts
