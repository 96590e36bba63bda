"""PNN-LAB SPEC-CCD1024 spectroscopy camera: a 1024 x 128 CCD behind the spectrometer, SCPI-style over serial.

Line settings: serial 8N1, 3,000,000 baud by default (USB-serial adapter, ``DEFAULT_BAUD_RATE``), flow control
none, rtscts or xonxoff as configured on the camera, terminator ``\\n`` both ways. Also reachable as a VISA ASRL
resource (``ASRL/dev/ttyUSB0::INSTR``). Open it with::

    link = open_link("/dev/ttyUSB0", name="camera", baud_rate=DEFAULT_BAUD_RATE, timeout_s=5.0)
    camera = SpectroscopyCamera(link, max_exposure_s=0.1)

Identity ``PNN-LAB,SPEC-CCD1024,<serial>,1.0``. All SCPI rules hold: case-insensitive short or long forms,
``;``-joined commands, the error queue ``SYST:ERR?``, ``*RST *CLS *OPC? *IDN?``. Binary blocks are IEEE 488.2
definite-length (``#<n><length><payload>``).

Command set, as the exact strings this driver sends (long forms in the comments):

    SENS:SIZE?             -> 1024,128      SENSor:SIZE?: columns, rows (read only)
    READ:MODE FVB|IMAG        READ:MODE?    READout:MODE: full vertical binning (one spectrum per frame) or image ROI
    READ:ROI 0,1024,0,128     READ:ROI?     READout:ROI x0,w,y0,h: columns x0..x0+w-1, rows y0..y0+h-1, pixels;
                                            FVB bins ALL rows of the columns; must fit the sensor (else -222)
    EXP 0.001                 EXP?          EXPosure: exposure time, s (1e-5 .. 10)
    GAIN 1|2|4                GAIN?         preamp gain: 4, 2, 1 electrons per count
    SHUT OPEN|CLOS            SHUT?         SHUTter OPEN|CLOSed: internal shutter (closed: dark frames)
    TRIG:SOUR INT|EXT         TRIG:SOUR?    TRIGger:SOURce INTernal|EXTernal
    KIN:COUN 10               KIN:COUN?     KINetic:COUNt: frames in a kinetic series, 1 .. 10000
    KIN:CYCL?              -> 2.0E-03       KINetic:CYCLe?: exposure + readout, s: the minimum external trigger period
    ACQ:STAR                                ACQuisition:STARt: arm; INT takes the series at once (back to back),
                                            EXT takes one frame per trigger pulse until KIN:COUN frames are in
    ACQ:ABOR                                ACQuisition:ABORt: stop, discard
    ACQ:FRAM?              -> 3             ACQuisition:FRAMes?: frames acquired so far in this series
    STAT?                  -> IDLE|ARMED|READY   STATus? (READY: the series is complete and can be read)
    DATA?                  -> #<block>      the series as uint16 little-endian, frames x w (FVB) or frames x h x w
                                            (IMAGE), row-major; only when READY (else error -230 and NO reply);
                                            reading does not clear it
    DATA:NEXT?             -> #<block>      the frames of the current series acquired since the last DATA:NEXT?
                                            (oldest first), laid out as by DATA?, while the series goes on (ARMED)
                                            or once it is READY; ``#10`` if none is new; IDLE: error -230, NO reply
    TEMP?                  -> -60.0         TEMPerature?: sensor temperature, deg C
    *OPC?                  -> 1             once the series is READY (at once if IDLE)

Units: seconds, deg C, ADC counts (12-bit, 0 .. 4095, bias about 100 counts, delivered as uint16). Readout time:
FVB 1 ms + 1 us per ROI column; IMAGE 1 ms + 1 us per ROI pixel. A trigger arriving while the previous frame is
still exposed or read out is missed (the series then stays ARMED). ``*RST``: FVB, full-sensor ROI, EXP 1e-3,
GAIN 1, SHUT OPEN, TRIG:SOUR INT, KIN:COUN 1, IDLE. The simulated camera refuses settings and a second ACQ:STAR
while a series is ARMED (-221 "Settings conflict"): ``abort()`` first; and a series larger than its on-board memory
(64 Mi pixels) at ACQ:STAR (-225 "Out of memory").

The driver checks every value (exposure range and ``max_exposure_s``, gain, count, ROI against the sensor) BEFORE
sending; a refused call raises LimitViolation and sends nothing. Each setting is followed by ``SYST:ERR?``.
``start()`` records the series geometry (mode, ROI, frame count) the driver knows, and ``read_series`` requires the
``DATA?`` block to hold exactly that many bytes: anything else is a ProtocolError, never padded or truncated.
``wait_ready`` polls ``STAT?`` (every 2 .. 50 ms) rather than holding the line with ``*OPC?``: it can then report
how many frames arrived, and the camera still answers ``ACQ:ABOR`` after a timeout.

Read-out during a series (``read_new_frames``): the camera keeps the frames it has taken in its buffer and
``DATA:NEXT?`` sends those not sent yet while the later exposures go on, so the serial line's read-out of a long
kinetic series overlaps its acquisition instead of following it. The driver counts the frames it has received: a
block that is not whole frames, or holds more frames than the series has left, is a ProtocolError. A lost reply
loses its frames (the camera counts them as sent): the caller must then measure the whole series again.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from drivers.errors import InstrumentError, InstrumentTimeout, LimitViolation, ProtocolError
from drivers.blocks import preview
from drivers.scpi import SCPIInstrument, Control, check_choice, check_range, unpack_values
from drivers.transport import Link

log = logging.getLogger(__name__)

Mode = Literal["FVB", "IMAGE"]
Status = Literal["IDLE", "ARMED", "READY"]
Roi = tuple[int, int, int, int]  # x0, w, y0, h (pixels)

DEFAULT_BAUD_RATE = 3_000_000
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
ADC_MAX_COUNTS = 4095  # 12-bit ADC full scale
EXPOSURE_MIN_S, EXPOSURE_MAX_S = 1e-5, 10.0
KINETIC_COUNT_MAX = 10_000
GAINS = (1, 2, 4)
ELECTRONS_PER_COUNT_AT_GAIN_1 = 4.0
STATUSES: tuple[Status, ...] = ("IDLE", "ARMED", "READY")
_MODES = {"FVB": "FVB", "IMAG": "IMAG", "IMAGE": "IMAG"}
_MODE_NAMES: dict[str, Mode] = {"FVB": "FVB", "IMAG": "IMAGE", "IMAGE": "IMAGE"}
_TRIGGERS = {"INT": "INT", "INTERNAL": "INT", "EXT": "EXT", "EXTERNAL": "EXT"}
_POLL_MIN_S, _POLL_MAX_S = 0.002, 0.05


def _as_int(value: Any) -> int | None:
    """``value`` as an int if it is an integer (int, numpy integer or integral float; not bool), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


class IntegerControl(Control):
    """An integer setting: sent as ``<command> <n>`` (no decimal point), read back as an int.

    ``choices`` restricts the value to a set (e.g. gains 1, 2, 4); ``low``/``high`` to a range.
    """

    def __init__(self, command: str, doc: str, *, unit: str, low: int | None = None, high: int | None = None,
                 choices: Sequence[int] | None = None):
        super().__init__(command, doc, unit=unit, low=low, high=high)
        self.choices = tuple(choices) if choices else None

    def __get__(self, instrument: SCPIInstrument | None, owner: type | None = None) -> Any:
        if instrument is None:
            return self
        value = instrument.query_int(self.command.format(**instrument.command_fields()) + "?")
        instrument.settings[self.attr] = value
        return value

    def encode(self, instrument: SCPIInstrument, value: Any) -> tuple[str, int]:
        """The command for ``value`` and the value as an int; LimitViolation if it is not allowed."""
        header = self.command.format(**instrument.command_fields())
        n = _as_int(value)
        if n is None:
            raise LimitViolation(instrument.name, f"{header} {value!r}", f"{value!r} is not an integer")
        if self.choices is not None and n not in self.choices:
            raise LimitViolation(instrument.name, f"{header} {n}",
                                 f"{n} is not one of {', '.join(map(str, self.choices))}")
        check_range(instrument.name, f"{header} {n}", n, self.low, self.high, self.unit)
        return f"{header} {n}", n

    def __set__(self, instrument: SCPIInstrument, value: Any) -> None:
        command, n = self.encode(instrument, value)
        instrument.write(command)
        instrument.settings[self.attr] = n


class KeywordControl(Control):
    """A setting with named values: ``tokens`` maps what the user passes (strings case-insensitive) to the SCPI
    token sent; ``values`` maps the tokens the instrument answers to the value returned."""

    def __init__(self, command: str, doc: str, *, tokens: Mapping[Any, str], values: Mapping[str, Any]):
        super().__init__(command, doc, unit="")
        self.tokens = {(k.upper() if isinstance(k, str) else k): v for k, v in tokens.items()}
        self.values = {k.upper(): v for k, v in values.items()}

    def __get__(self, instrument: SCPIInstrument | None, owner: type | None = None) -> Any:
        if instrument is None:
            return self
        query = self.command.format(**instrument.command_fields()) + "?"
        reply = instrument.query(query).strip().upper()
        if reply not in self.values:
            raise ProtocolError(instrument.name, query, f"expected one of {', '.join(self.values)}, got {reply!r}")
        instrument.settings[self.attr] = self.values[reply]
        return self.values[reply]

    def encode(self, instrument: SCPIInstrument, value: Any) -> tuple[str, Any]:
        """The command for ``value`` and the value as the instrument will report it; LimitViolation if unknown."""
        header = self.command.format(**instrument.command_fields())
        key = value.upper() if isinstance(value, str) else value
        try:
            token = self.tokens.get(key)
        except TypeError:  # unhashable
            token = None
        if token is None:
            raise LimitViolation(instrument.name, f"{header} {value!r}",
                                 f"{value!r} is not one of {', '.join(map(repr, self.tokens))}")
        return f"{header} {token}", self.values[token]

    def __set__(self, instrument: SCPIInstrument, value: Any) -> None:
        command, stored = self.encode(instrument, value)
        instrument.write(command)
        instrument.settings[self.attr] = stored


@dataclass(frozen=True)
class SeriesGeometry:
    """What a kinetic series holds: readout mode, ROI (x0, w, y0, h) and number of frames."""

    mode: Mode
    roi: Roi
    frames: int

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape of the series: (frames, w) for FVB, (frames, h, w) for IMAGE."""
        x0, w, y0, h = self.roi
        return (self.frames, h, w) if self.mode == "IMAGE" else (self.frames, w)

    @property
    def nbytes(self) -> int:
        """Bytes of the ``DATA?`` payload: 2 per pixel value."""
        return 2 * math.prod(self.shape)

    def describe(self) -> str:
        x0, w, y0, h = self.roi
        pixels = f"{h} rows x {w} columns" if self.mode == "IMAGE" else f"{w} columns"
        return f"{self.frames} frame(s) x {pixels} ({self.mode}, ROI {x0},{w},{y0},{h}) x 2 bytes"


class SpectroscopyCamera(SCPIInstrument):
    """The SPEC-CCD1024 spectroscopy camera (see the module docstring for the command set).

    Args:
        link: open link (serial port, ``socket://`` URL or VISA ASRL resource), ``\\n`` terminations.
        name: instrument name for messages.
        max_exposure_s: safety limit on the exposure time, s (1e-5 .. 10), e.g. to keep the CCD out of saturation.
        baud_rate: line speed, bit/s, used only to budget the time a series takes on the line (``DATA?``).
        check_errors: drain ``SYST:ERR?`` after every setting.
    """

    def _check_exposure(self, value: float, command: str) -> None:
        if value > self.max_exposure_s:
            raise LimitViolation(self.name, command, f"exposure {value:g} s is above the configured limit "
                                                     f"max_exposure_s = {self.max_exposure_s:g} s")

    exposure_s = Control("EXP", "Exposure time, s (1e-5 .. 10 s, and at most ``max_exposure_s``).", unit="s",
                         low=EXPOSURE_MIN_S, high=EXPOSURE_MAX_S, check=_check_exposure)
    gain = IntegerControl("GAIN", "Preamp gain 1|2|4: 4, 2, 1 electrons per count.", unit="", choices=GAINS)
    kinetic_count = IntegerControl("KIN:COUN", "Frames in a kinetic series, 1 .. 10000.", unit="frames", low=1,
                                   high=KINETIC_COUNT_MAX)
    shutter_open = KeywordControl("SHUT", "Internal shutter open (True) or closed (False: dark frames).",
                                  tokens={True: "OPEN", False: "CLOS"},
                                  values={"OPEN": True, "CLOS": False, "CLOSED": False})
    trigger_source = KeywordControl("TRIG:SOUR", "Trigger source: ``INT`` (series back to back) or ``EXT`` "
                                                 "(one frame per pulse on the trigger input).",
                                    tokens=_TRIGGERS, values=_TRIGGERS)

    def __init__(self, link: Link, name: str = "camera", max_exposure_s: float = EXPOSURE_MAX_S, *,
                 baud_rate: float = DEFAULT_BAUD_RATE, check_errors: bool = True):
        super().__init__(link, name=name, check_errors=check_errors)
        if not (isinstance(max_exposure_s, (int, float)) and EXPOSURE_MIN_S <= max_exposure_s <= EXPOSURE_MAX_S):
            raise ValueError(f"{name}: max_exposure_s must be in [{EXPOSURE_MIN_S:g}, {EXPOSURE_MAX_S:g}] s, "
                             f"got {max_exposure_s!r}")
        if not baud_rate > 0:
            raise ValueError(f"{name}: baud_rate must be positive, got {baud_rate!r}")
        self.max_exposure_s = float(max_exposure_s)
        self.baud_rate = float(baud_rate)
        self._sensor: tuple[int, int] | None = None
        self._series: SeriesGeometry | None = None
        self._frames_read = 0  # frames of the series received by ``read_new_frames``

    # -- sensor and readout -------------------------------------------------------------------------------------------
    @property
    def sensor_size(self) -> tuple[int, int]:
        """(columns, rows) of the sensor (``SENS:SIZE?``, read once and cached)."""
        if self._sensor is None:
            reply = self.query("SENS:SIZE?")
            fields = [_as_int(_number(f)) for f in reply.split(",")]
            if len(fields) != 2 or any(f is None or f < 1 for f in fields):
                raise ProtocolError(self.name, "SENS:SIZE?", f"expected '<columns>,<rows>', got {reply!r}")
            self._sensor = (fields[0], fields[1])  # type: ignore[assignment]
        return self._sensor

    def set_readout(self, mode: str = "FVB", roi: Sequence[int] | None = None) -> None:
        """Readout mode ``FVB`` (one spectrum per frame, all rows binned) or ``IMAGE``, and the ROI
        ``(x0, w, y0, h)`` in pixels (None: the full sensor). Checked against the sensor size before sending."""
        token = check_choice(self.name, "READ:MODE", mode, _MODES)
        box = None if roi is None else self._check_roi_form(roi)  # before asking the sensor size
        columns, rows = self.sensor_size
        x0, w, y0, h = box = (0, columns, 0, rows) if box is None else box
        command = f"READ:ROI {x0},{w},{y0},{h}"
        if x0 + w > columns or y0 + h > rows:
            raise LimitViolation(self.name, command, f"ROI columns {x0}..{x0 + w - 1}, rows {y0}..{y0 + h - 1} do "
                                                     f"not fit the {columns} x {rows} sensor")
        try:
            self.write_all([f"READ:MODE {token}", command])
        except InstrumentError:
            self.settings.pop("mode", None)
            self.settings.pop("roi", None)
            raise
        self.settings.update(mode=_MODE_NAMES[token], roi=box)

    def _check_roi_form(self, roi: Sequence[int]) -> Roi:
        """``roi`` as four ints with x0, y0 >= 0 and w, h >= 1; LimitViolation otherwise."""
        try:
            values = [_as_int(v) for v in roi]
        except TypeError:
            values = []
        if len(values) != 4 or any(v is None for v in values):
            raise LimitViolation(self.name, "READ:ROI", f"ROI must be four integers (x0, w, y0, h), got {roi!r}")
        x0, w, y0, h = values  # type: ignore[misc]
        if x0 < 0 or y0 < 0 or w < 1 or h < 1:
            raise LimitViolation(self.name, f"READ:ROI {x0},{w},{y0},{h}",
                                 "x0 and y0 must be >= 0 and the width and height >= 1 pixel")
        return x0, w, y0, h

    def readout(self) -> tuple[Mode, Roi]:
        """Readout mode and ROI as the camera reports them (``READ:MODE?``, ``READ:ROI?``)."""
        reply = self.query("READ:MODE?").strip().upper()
        if reply not in _MODE_NAMES:
            raise ProtocolError(self.name, "READ:MODE?", f"expected FVB or IMAG, got {reply!r}")
        mode = _MODE_NAMES[reply]
        text = self.query("READ:ROI?")
        values = [_as_int(_number(f)) for f in text.split(",")]
        if len(values) != 4 or any(v is None for v in values):
            raise ProtocolError(self.name, "READ:ROI?", f"expected 'x0,w,y0,h', got {text!r}")
        roi: Roi = tuple(values)  # type: ignore[assignment]
        self.settings.update(mode=mode, roi=roi)
        return mode, roi

    @property
    def electrons_per_count(self) -> float:
        """Photoelectrons per ADC count at the present gain (4, 2, 1 for gain 1, 2, 4)."""
        gain = self.settings.get("gain")
        return ELECTRONS_PER_COUNT_AT_GAIN_1 / (gain if gain is not None else self.gain)

    @property
    def cycle_s(self) -> float:
        """Exposure + readout time of one frame, s: the shortest external trigger period (``KIN:CYCL?``)."""
        return self.query_float("KIN:CYCL?")

    @property
    def temperature_c(self) -> float:
        """Sensor temperature, deg C (``TEMP?``)."""
        return self.query_float("TEMP?")

    # -- acquisition ------------------------------------------------------------------------------------------------
    def _geometry(self) -> SeriesGeometry:
        """The series geometry from the settings the driver knows; the unknown ones are read from the camera."""
        if "mode" not in self.settings or "roi" not in self.settings:
            self.readout()
        if "kinetic_count" not in self.settings:
            _ = self.kinetic_count
        return SeriesGeometry(self.settings["mode"], self.settings["roi"], self.settings["kinetic_count"])

    def start(self) -> None:
        """``ACQ:STAR``: arm a kinetic series of ``kinetic_count`` frames (INT: taken at once; EXT: one per pulse)."""
        geometry = self._geometry()
        self._series, self._frames_read = None, 0  # a failed start leaves no series this driver could read
        self.write("ACQ:STAR")
        self._series = geometry
        log.debug("%s: series armed: %s", self.name, geometry.describe())

    def abort(self) -> None:
        """``ACQ:ABOR``: stop and discard the series."""
        self.write("ACQ:ABOR")

    def frames_acquired(self) -> int:
        """Frames of the current series acquired so far (``ACQ:FRAM?``)."""
        return self.query_int("ACQ:FRAM?")

    def status(self) -> Status:
        """``STAT?``: ``"IDLE"``, ``"ARMED"`` (acquiring) or ``"READY"`` (complete, can be read)."""
        reply = self.query("STAT?").strip().upper()
        if reply not in STATUSES:
            raise ProtocolError(self.name, "STAT?", f"expected IDLE, ARMED or READY, got {reply!r}")
        return reply  # type: ignore[return-value]

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``STAT?`` until the series is READY (at most ``timeout_s``, s).

        Raises InstrumentTimeout naming the frames acquired so far and the expected count if it does not complete
        (the series is left ARMED: ``abort()`` discards it), InstrumentError if no series is armed (IDLE).
        """
        deadline = time.monotonic() + timeout_s
        pause = _POLL_MIN_S
        while True:
            state = self.status()
            if state == "READY":
                return
            if state == "IDLE":
                raise InstrumentError(self.name, "STAT?", "no series is armed (status IDLE): it was aborted, the "
                                                          "camera was reset, or start() was not called")
            now = time.monotonic()
            if now >= deadline:
                break
            time.sleep(min(pause, deadline - now))
            pause = min(2 * pause, _POLL_MAX_S)
        got = self.frames_acquired()
        expected = self._series.frames if self._series is not None else self.settings.get("kinetic_count", "?")
        hint = ""
        if self.settings.get("trigger_source") == "EXT" and isinstance(expected, int) and got < expected:
            hint = (" (external trigger: check the trigger cable and that the pulses come no faster than "
                    "KIN:CYCL?)")
        raise InstrumentTimeout(self.name, "STAT?", f"series not complete within {timeout_s:g} s: {got} of "
                                                    f"{expected} frames acquired{hint}")

    def read_series(self) -> np.ndarray:
        """The completed series (``DATA?``) as uint16 counts: [frames, w] (FVB) or [frames, h, w] (IMAGE).

        The block must hold exactly the bytes of the series started by ``start()`` (or, if this driver did not
        start it, of the present settings); otherwise ProtocolError. InstrumentError if the series is not READY.
        """
        geometry = self._series if self._series is not None else self._geometry()
        state = self.status()
        if state != "READY":
            detail = (f": {self.frames_acquired()} of {geometry.frames} frames acquired; call wait_ready() first"
                      if state == "ARMED" else "")
            raise InstrumentError(self.name, "DATA?", f"no complete series to read (status {state}){detail}")
        with self.link.extended_timeout(geometry.nbytes * BITS_PER_BYTE / self.baud_rate):
            payload = self.link.query_block("DATA?")
        if len(payload) != geometry.nbytes:
            raise ProtocolError(self.name, "DATA?", f"expected {geometry.describe()} = {geometry.nbytes} bytes, the "
                                                    f"block holds {len(payload)} bytes (starts {preview(payload)})")
        return self._codes(payload, geometry.shape, "DATA?")

    def _codes(self, payload: bytes, shape: tuple[int, ...], command: str) -> np.ndarray:
        """``payload`` as uint16 counts of ``shape``; ProtocolError if a value is beyond the 12-bit ADC."""
        codes = unpack_values(payload, "uint16", "little", instrument=self.name, command=command).reshape(shape)
        if codes.max(initial=0) > ADC_MAX_COUNTS:  # a 12-bit ADC cannot send these: the data are garbled
            bad = np.argwhere(codes > ADC_MAX_COUNTS)[0]
            axes = ("frame", "column") if codes.ndim == 2 else ("frame", "row", "column")
            where = ", ".join(f"{axis} {i}" for axis, i in zip(axes, bad))
            raise ProtocolError(self.name, command, f"{int((codes > ADC_MAX_COUNTS).sum())} value(s) above the "
                                                    f"12-bit full scale {ADC_MAX_COUNTS}, first "
                                                    f"{int(codes[tuple(bad)])} at {where}: the frame data are garbled")
        return codes

    @property
    def frames_read(self) -> int:
        """Frames of the series started last that ``read_new_frames`` has received."""
        return self._frames_read

    def read_new_frames(self) -> np.ndarray:
        """The frames taken since the last call (``DATA:NEXT?``), oldest first, while the series started by
        ``start()`` goes on or once it is complete: uint16 counts [m, w] (FVB) or [m, h, w] (IMAGE), m >= 0.

        Needs a series started by this driver (else LimitViolation, nothing sent). The block must hold whole frames,
        at most those the series has left; otherwise ProtocolError (nothing is padded or cut). An IDLE camera sends
        no reply (error -230): InstrumentTimeout.
        """
        geometry = self._series
        if geometry is None:
            raise LimitViolation(self.name, "DATA:NEXT?", "no series started by this driver: call start() first")
        frame_shape = geometry.shape[1:]
        frame_bytes = 2 * math.prod(frame_shape)
        left = geometry.frames - self._frames_read
        with self.link.extended_timeout(left * frame_bytes * BITS_PER_BYTE / self.baud_rate):
            payload = self.link.query_block("DATA:NEXT?")
        count, rest = divmod(len(payload), frame_bytes)
        if rest or count > left:
            raise ProtocolError(self.name, "DATA:NEXT?", f"a block of {len(payload)} bytes is not whole frames of "
                                                         f"{frame_bytes} bytes, at most {left} (the frames the series "
                                                         f"{geometry.describe()} has left; starts {preview(payload)})")
        codes = self._codes(payload, (count, *frame_shape), "DATA:NEXT?")
        self._frames_read += count
        return codes

    def acquire(self, n: int, trigger: str = "INT", timeout_s: float | None = None) -> np.ndarray:
        """Take a series of ``n`` frames: set the trigger source and count, start, wait, read.

        ``timeout_s`` (s) defaults to twice the series' duration (``n`` x ``KIN:CYCL?``) plus the link timeout;
        with an external trigger the pulses must come within it. On a timeout the series is aborted.
        Returns uint16 counts [n, w] (FVB) or [n, h, w] (IMAGE).
        """
        trigger_cmd, source = type(self).trigger_source.encode(self, trigger)
        count_cmd, count = type(self).kinetic_count.encode(self, n)
        try:
            self.write_all([trigger_cmd, count_cmd])
        except InstrumentError:
            self.settings.pop("trigger_source", None)
            self.settings.pop("kinetic_count", None)
            raise
        self.settings.update(trigger_source=source, kinetic_count=count)
        if timeout_s is None:
            timeout_s = 2.0 * count * self.cycle_s + self.link.timeout_s
        self.start()
        try:
            self.wait_ready(timeout_s)
        except InstrumentError:
            try:
                self.abort()
            except InstrumentError as err:
                log.warning("%s: abort after a failed acquisition failed too: %s", self.name, err)
            raise
        return self.read_series()


def _number(text: str) -> float | None:
    """``text`` as a float, or None."""
    try:
        return float(text)
    except ValueError:
        return None
