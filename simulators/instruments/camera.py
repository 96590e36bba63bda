"""Simulated spectroscopy CCD camera PNN-LAB SPEC-CCD1024 (1024 x 128 pixels, 12-bit ADC) on a serial line.

Identity ``PNN-LAB,SPEC-CCD1024,<serial>,1.0`` (the serial number is drawn from the seed). Commands (short form in
capitals, case-insensitive, ``;``-joined; every setting is also a query):

================================================  =====================================================================
``SENSor:SIZE?``                                  ``1024,128``: columns, rows
``READout:MODE FVB|IMAGe``                        full vertical binning (one spectrum per frame) or image ROI;
                                                  query -> ``FVB|IMAG``
``READout:ROI <x0>,<w>,<y0>,<h>``                 columns x0..x0+w-1, rows y0..y0+h-1 (FVB bins ALL rows of the
                                                  columns); integers that fit the sensor, else -222;
                                                  query -> ``x0,w,y0,h``
``EXPosure <s>``                                  exposure time, 1e-5 .. 10 s; query in NR3
``GAIN 1|2|4``                                    preamp gain: 4, 2, 1 electrons per count; query -> ``1|2|4``
``SHUTter OPEN|CLOSed``                           internal shutter (closed: dark frames); query -> ``OPEN|CLOS``
``TRIGger:SOURce INTernal|EXTernal``              query -> ``INT|EXT``
``KINetic:COUNt <n>``                             frames in a kinetic series, 1 .. 10000; query -> ``<n>``
``KINetic:CYCLe?``                                exposure + readout time, s (read only): the minimum trigger period
``ACQuisition:STARt``                             arm: INTernal takes the series at once, EXTernal one frame per trigger
``ACQuisition:ABORt``                             stop and discard the series (IDLE)
``ACQuisition:FRAMes?``                           frames acquired so far in this series
``STATus?``                                       ``IDLE|ARMED|READY`` (READY: the series is complete)
``DATA?``                                         the series: IEEE block of uint16 little-endian, frames x w (FVB) or
                                                  frames x h x w (IMAGE), row-major; only when READY, else -230 and no
                                                  reply; reading does not clear it
``DATA:NEXT?``                                    the frames of the current series acquired since the last
                                                  ``DATA:NEXT?`` (oldest first; ARMED or READY), laid out as by
                                                  ``DATA?``; an empty block ``#10`` if none is new; IDLE: -230 and no
                                                  reply. ``ACQ:STAR`` starts the count again
``TEMPerature?``                                  sensor temperature, deg C (about -60.0)
``*OPC?``                                         ``1`` once the series is READY (at once when IDLE or READY)
================================================  =====================================================================

Readout time: FVB 1 ms + 1 us per ROI column, IMAGE 1 ms + 1 us per ROI pixel; ``KIN:CYCL?`` = exposure + readout.
``*RST``: FVB, full-sensor ROI, EXP 1e-3, GAIN 1, SHUT OPEN, TRIG:SOUR INT, KIN:COUN 1, IDLE (series discarded).

State machine and the bench: ``ACQ:STAR`` (IDLE or READY -> ARMED) discards the previous series. With the internal
trigger it calls ``listener.on_camera_internal(n_frames)``, whose job is to ``capture`` the frames; with no listener
the camera takes bias frames (100 counts everywhere), at once or, with ``realtime``, in KIN:COUN x ``cycle_s``. With
the external trigger the bench asks ``wants_frames()`` and calls ``capture(frames, ready_in_s)`` for the triggers the
camera saw (a trigger arriving while the previous frame is still exposed or read out is the bench's to drop, using
``cycle_s``). The series becomes READY when ``KIN:COUN`` frames are in, not before ``ready_in_s`` from the last
``capture`` (realtime benches); meanwhile ``ACQ:FRAM?`` counts the frames in as if they arrived evenly over that time
(from ``start_s``, when the bench says the triggers began), and ``DATA:NEXT?`` hands out only those.

Reading during a series: the frames already taken sit in the camera's buffer and ``DATA:NEXT?`` sends them while the
later exposures of the series go on (the frame-by-frame read-out of spectroscopy CCDs' kinetic series), so a long
series' read-out over the serial line can overlap its acquisition. The line time is the same as for ``DATA?``.

Deviations from a real camera (documented limits of the simulation): while ARMED, settings and a second
``ACQ:STAR`` are refused with -221 "Settings conflict" (abort first); a series larger than the on-board memory
(64 Mi pixels, 128 MiB) is refused at ``ACQ:STAR`` with -225; there is no cooler control, no vertical shift speed,
no accumulation or binning other than FVB; ``*OPC?`` on an external series that never gets its triggers holds the
client until the client leaves (poll ``STAT?`` instead).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from simulators.scpi import Block, Call, SCPIError, SCPIInstrument, Setting, nr3, scpi, setting

log = logging.getLogger(__name__)

COLUMNS, ROWS = 1024, 128
EXPOSURE_RANGE_S = (1e-5, 10.0)
MAX_KINETIC_COUNT = 10_000
GAINS = (1, 2, 4)
ELECTRONS_PER_COUNT_AT_GAIN_1 = 4.0
READOUT_BASE_S = 1e-3
READOUT_PER_PIXEL_S = 1e-6
BIAS_COUNTS = 100
MAX_SERIES_PIXELS = 1 << 26  # on-board memory: 64 Mi pixels of 2 bytes
TEMPERATURE_C = -60.0


class CameraListener(Protocol):
    """The bench: supplies the frames of an internally triggered series (by calling ``camera.capture``)."""

    def on_camera_internal(self, n_frames: int) -> None: ...


@dataclass(frozen=True)
class _Batch:
    """Frames handed over by one ``capture``: they appear evenly between ``start`` and ``end`` (monotonic s)."""

    start: float
    end: float
    count: int

    def visible(self, now: float) -> int:
        if now >= self.end:
            return self.count
        if now <= self.start:
            return 0
        return int(self.count * (now - self.start) / (self.end - self.start))


def _when_idle(spec: Setting) -> Setting:
    """The same setting, refused with -221 while a series is ARMED (checked before its parameter is parsed)."""
    parse = spec.parse

    def guarded(call: Call) -> object:
        camera = call.session.instrument
        assert isinstance(camera, SimSpectroscopyCamera)
        camera._require_not_armed(call)
        return parse(call)

    return dataclasses.replace(spec, parse=guarded)


def _parse_gain(call: Call) -> int:
    value = call.number(0)
    if value not in GAINS:
        raise SCPIError(-224, f"{call.header}: gain {value:g} is not 1, 2 or 4")
    return int(value)


class SimSpectroscopyCamera(SCPIInstrument):
    """Front panel of the SPEC-CCD1024 spectroscopy camera (see the module docstring for the command set).

    Args:
        lock: shared with the other instruments of the bench (handlers and ``capture`` run under it).
        listener: the bench (``on_camera_internal``); None: internal series are bias frames.
        seed: draws the serial number and the temperature readings.
        realtime: a series the camera takes on its own (internal trigger, no listener) lasts its physical time,
            ``KIN:COUN`` x ``cycle_s`` (the bench passes ``ready_in_s`` for the frames it supplies).
    """

    columns_total = COLUMNS
    rows_total = ROWS
    error_queue_size = 30

    def __init__(self, lock: threading.RLock | None = None, listener: CameraListener | None = None, seed: int = 0,
                 realtime: bool = False):
        super().__init__(lock)
        self.listener = listener
        self.realtime = realtime
        rng = random.Random(seed)
        self.serial = f"SC{rng.randrange(100000, 1000000)}"
        self.idn = f"PNN-LAB,SPEC-CCD1024,{self.serial},1.0"
        self._temperature_rng = np.random.default_rng(rng.randrange(1 << 32))
        self.reset()

    def reset(self) -> None:
        self.readout_mode = "FVB"  # "FVB" | "IMAG" (SCPI short form)
        self.roi: tuple[int, int, int, int] = (0, COLUMNS, 0, ROWS)  # x0, w, y0, h
        self.exposure_s = 1e-3
        self.gain = 1
        self.shutter = "OPEN"  # "OPEN" | "CLOS"
        self.trigger_source = "INT"  # "INT" | "EXT"
        self.kinetic_count = 1
        self._state = "IDLE"
        self._series_shape: tuple[int, ...] = ()  # frame shape of the armed series: (w,) or (h, w)
        self._series_count = 0
        self._chunks: list[np.ndarray] = []
        self._batches: list[_Batch] = []
        self._captured = 0
        self._data: bytes | None = None
        self._sent = 0  # frames handed out by DATA:NEXT?

    # -- what the bench reads ------------------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """Readout mode: ``"FVB"`` or ``"IMAGE"``."""
        return "IMAGE" if self.readout_mode == "IMAG" else "FVB"

    @property
    def columns(self) -> tuple[int, int]:
        """Columns read out: (first, count)."""
        return self.roi[0], self.roi[1]

    @property
    def rows(self) -> tuple[int, int]:
        """Rows read out: (first, count); FVB bins all rows of the sensor, IMAGE reads the ROI rows."""
        return (self.roi[2], self.roi[3]) if self.mode == "IMAGE" else (0, ROWS)

    @property
    def electrons_per_count(self) -> float:
        """Photoelectrons per ADC count at the present gain (4, 2, 1 for gain 1, 2, 4)."""
        return ELECTRONS_PER_COUNT_AT_GAIN_1 / self.gain

    @property
    def shutter_open(self) -> bool:
        return self.shutter == "OPEN"

    @property
    def readout_s(self) -> float:
        """Readout time of one frame, s."""
        x0, w, y0, h = self.roi
        return READOUT_BASE_S + READOUT_PER_PIXEL_S * (w * h if self.mode == "IMAGE" else w)

    @property
    def cycle_s(self) -> float:
        """Exposure + readout: the shortest time between two frames, s."""
        return self.exposure_s + self.readout_s

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one frame with the present settings: (w,) for FVB, (h, w) for IMAGE."""
        x0, w, y0, h = self.roi
        return (h, w) if self.mode == "IMAGE" else (w,)

    @property
    def status(self) -> str:
        """``"IDLE"``, ``"ARMED"`` or ``"READY"`` (an armed series turns READY once its last frame is in)."""
        with self.lock:
            self._advance()
            return self._state

    def frames_acquired(self) -> int:
        """Frames of the current series acquired so far."""
        with self.lock:
            now, total = time.monotonic(), 0
            for batch in self._batches:  # in order: a later capture's frames follow all earlier ones
                seen = batch.visible(now)
                total += seen
                if seen < batch.count:
                    break
            return total

    def wants_frames(self) -> int:
        """How many more frames an ARMED external-trigger series takes (0 otherwise)."""
        with self.lock:
            if self._state != "ARMED" or self.trigger_source != "EXT":
                return 0
            return self._series_count - self._captured

    def capture(self, frames: np.ndarray, ready_in_s: float = 0.0, start_s: float | None = None) -> int:
        """Add frames (uint16 ``[K, w]`` in FVB, ``[K, h, w]`` in IMAGE) to the ARMED series.

        Frames beyond the series' count are dropped (the camera ignores triggers once it has its frames). The
        series turns READY when complete, but not before ``ready_in_s`` s after ``start_s`` (monotonic s, when the
        first of these frames' triggers came; default now, and never later than now). Returns the frames taken.
        """
        frames = np.asarray(frames)
        with self.lock:
            if self._state != "ARMED":
                log.debug("camera: frames %s offered while %s; ignored", frames.shape, self._state)
                return 0
            if frames.dtype != np.uint16 or frames.shape[1:] != self._series_shape:
                expected = ", ".join(["K", *map(str, self._series_shape)])
                raise ValueError(f"camera: expected uint16 frames of shape [{expected}] ({self.mode}), got "
                                 f"{frames.dtype} {frames.shape}")
            take = min(len(frames), self._series_count - self._captured)
            if take < len(frames):
                log.debug("camera: %d extra frame(s) ignored", len(frames) - take)
            if take:
                now = time.monotonic()
                begin = now if start_s is None else min(now, float(start_s))
                self._chunks.append(frames[:take].copy())
                self._batches.append(_Batch(begin, begin + max(0.0, float(ready_in_s)), take))
                self._captured += take
            self._advance()
            self.changed.notify_all()
            return take

    # -- state machine -------------------------------------------------------------------------------------------------

    def _advance(self) -> None:
        """ARMED -> READY once all frames are in and their time has come."""
        if self._state != "ARMED" or self._captured < self._series_count:
            return
        if time.monotonic() < max(b.end for b in self._batches):
            return
        series = np.concatenate(self._chunks) if self._chunks else np.zeros((0, *self._series_shape), np.uint16)
        self._data = series.astype("<u2", copy=False).tobytes()
        self._chunks = [series]
        self._state = "READY"
        self.changed.notify_all()
        log.debug("camera: series of %d frame(s) ready", self._series_count)

    def _require_not_armed(self, call: Call) -> None:
        if self.status == "ARMED":
            raise SCPIError(-221, f"{call.header}: a series is being acquired; ACQ:ABOR first")

    def _discard(self) -> None:
        self._state = "IDLE"
        self._chunks, self._batches, self._captured, self._data = [], [], 0, None
        self._sent = 0  # frames handed out by DATA:NEXT?

    def _frames(self, first: int, end: int) -> np.ndarray:
        """Frames ``first`` .. ``end - 1`` of the series (all captured), uint16 [end - first, *frame shape]."""
        parts, offset = [], 0
        for chunk in self._chunks:
            lo, hi = max(first, offset), min(end, offset + len(chunk))
            if lo < hi:
                parts.append(chunk[lo - offset:hi - offset])
            offset += len(chunk)
        return np.concatenate(parts) if parts else np.zeros((0, *self._series_shape), np.uint16)

    # -- readout settings ----------------------------------------------------------------------------------------------

    @scpi("SENSor:SIZE?")
    def _size_q(self, call: Call) -> str:
        return f"{COLUMNS},{ROWS}"

    _mode = _when_idle(setting("READout:MODE", "readout_mode", choices=("FVB", "IMAGe")))

    @scpi("READout:ROI", nargs=4)
    def _roi(self, call: Call) -> None:
        self._require_not_armed(call)
        values = []
        for i in range(4):
            v = call.number(i)
            if not v.is_integer():
                raise SCPIError(-224, f"{call.header}: {v:g} is not an integer")
            values.append(int(v))
        x0, w, y0, h = values
        if x0 < 0 or w < 1 or x0 + w > COLUMNS or y0 < 0 or h < 1 or y0 + h > ROWS:
            raise SCPIError(-222, f"{call.header}: ROI {values} does not fit the {COLUMNS} x {ROWS} sensor")
        self.roi = (x0, w, y0, h)

    @scpi("READout:ROI?")
    def _roi_q(self, call: Call) -> str:
        return ",".join(str(v) for v in self.roi)

    _exposure = _when_idle(setting("EXPosure", "exposure_s", "number", lo=EXPOSURE_RANGE_S[0],
                                   hi=EXPOSURE_RANGE_S[1], unit="S"))
    _gain = _when_idle(Setting("GAIN", "gain", _parse_gain, str))
    _shutter = _when_idle(setting("SHUTter", "shutter", choices=("OPEN", "CLOSed")))
    _trigger = _when_idle(setting("TRIGger:SOURce", "trigger_source", choices=("INTernal", "EXTernal")))
    _count = _when_idle(Setting("KINetic:COUNt", "kinetic_count",
                                lambda call: call.integer(0, lo=1, hi=MAX_KINETIC_COUNT), str))

    @scpi("KINetic:CYCLe?")
    def _cycle_q(self, call: Call) -> str:
        return nr3(self.cycle_s)

    @scpi("TEMPerature?")
    def _temperature_q(self, call: Call) -> str:
        return f"{TEMPERATURE_C + 0.03 * self._temperature_rng.standard_normal():.1f}"

    # -- acquisition ---------------------------------------------------------------------------------------------------

    @scpi("ACQuisition:STARt", nargs=0)
    def _start(self, call: Call) -> None:
        self._require_not_armed(call)
        shape = self.frame_shape
        pixels = self.kinetic_count * int(np.prod(shape))
        if pixels > MAX_SERIES_PIXELS:
            raise SCPIError(-225, f"series of {pixels} pixels exceeds the memory of {MAX_SERIES_PIXELS}")
        self._discard()
        self._state = "ARMED"
        self._series_shape = shape
        self._series_count = self.kinetic_count
        self.changed.notify_all()
        log.debug("camera: armed for %d frame(s) of %s, trigger %s", self._series_count, shape, self.trigger_source)
        if self.trigger_source == "INT":
            if self.listener is not None:
                self.listener.on_camera_internal(self._series_count)
            else:
                self.capture(np.full((self._series_count, *shape), BIAS_COUNTS, np.uint16),
                             ready_in_s=self._series_count * self.cycle_s if self.realtime else 0.0)

    @scpi("ACQuisition:ABORt", nargs=0)
    def _abort(self, call: Call) -> None:
        self._discard()
        self.changed.notify_all()

    @scpi("ACQuisition:FRAMes?")
    def _frames_q(self, call: Call) -> str:
        return str(self.frames_acquired())

    @scpi("STATus?")
    def _status_q(self, call: Call) -> str:
        return self.status

    @scpi("DATA?")
    def _data_q(self, call: Call) -> Block | None:
        state = self.status
        if state != "READY" or self._data is None:
            call.session.push_error(SCPIError(-230, f"DATA? while {state}"))
            return None
        return Block(self._data)

    @scpi("DATA:NEXT?")
    def _next_q(self, call: Call) -> Block | None:
        state = self.status
        if state == "IDLE":
            call.session.push_error(SCPIError(-230, "DATA:NEXT? while IDLE"))
            return None
        first, end = self._sent, self.frames_acquired()
        self._sent = max(first, end)
        return Block(self._frames(first, end).astype("<u2", copy=False).tobytes())

    @scpi("*OPC?")
    def _opc_query(self, call: Call) -> str:
        call.then_wait(lambda: self.status != "ARMED")
        return "1"
