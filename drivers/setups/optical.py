"""The optical setup: a femtosecond pulse shaped by a phase SLM in a 4f pulse shaper, frequency-doubled in a BBO
crystal, and read out by a camera behind a spectrometer (the SHG physical neural network of Wright et al. 2022).

Wiring::

    laser (800 nm) --> 4f pulse shaper with the 1-D phase SLM (serial) --> BBO (SHG) --> spectrometer --> camera (serial)
    SLM trigger out --> camera external trigger

The encoding (x and θ as phases on spectral bins of the SLM, the SH spectrum summed in output bins around the
measured centre, in units of the transform-limited reference) is ``encoding.optical``.

A batch is shown as SLM pattern sequences feeding ONE camera kinetic series: the SLM shows each pattern, waits its
settling time and pulses its trigger out, the camera takes one exposure per pulse.

Pipelined (``instruments.slm.pipeline``, the default): the batch is split into chunks, the first of
``pipeline_chunk`` patterns and each next one as large as the SLM's serial line uploads while the previous one plays
and its frames are read (``chunk_growth``: 2.4 times the previous at 3 Mbaud and optical_vowels' 7.8 ms a pattern;
never smaller than the previous, at most the sequence memory). Chunk j + 1 is uploaded into the SLM's other sequence
bank while chunk j plays, and the camera's frames are read (``DATA:NEXT?``) while the later exposures are taken, so
the serial lines' upload and read-out overlap the patterns' display: the device's own time (settling, exposure, read-out
per pattern) then sets the pace. What is not hidden: the first chunk's upload and the last frames' read-out.
Sequential (``pipeline: false``, for an SLM without sequence banks or a camera without ``DATA:NEXT?``): per
memory-sized chunk, upload, arm the camera, play, wait, read the series, strictly in turn. Either way a failure
anywhere raises at once and the frames read so far are dropped: a batch is measured whole or not at all (PAT's retry
measures it again after ``recover()``).

The simulated bench draws its noise per sequence, so the same patterns split into other chunks get other (equally
distributed) noise; the same chunks give the same numbers pipelined or not.

Calibration on opening (``calibrate_instruments``): the dark frame (shutter closed), the spectrometer offset (the
centroid of the transform-limited SH spectrum against the column the spectrometer's nominal calibration gives
400 nm), and a lookup-table check (the gray level whose phase step gives the least SH power is the pi point).

Safety: gray levels stay inside [gray_min, gray_max] (checked here and in the driver); ``output_off`` blanks the SLM.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from torch import Tensor

from drivers.camera import (ADC_MAX_COUNTS, ELECTRONS_PER_COUNT_AT_GAIN_1, EXPOSURE_MAX_S, EXPOSURE_MIN_S,
                            KINETIC_COUNT_MAX)
from drivers.errors import InstrumentError, InstrumentReportedError, InstrumentTimeout, LimitViolation, ProtocolError
from common.models import FieldError, StrictModel
from drivers.resources import Resource
from drivers.slm import BITS_PER_BYTE
from drivers.setups.base import PhysicalSetup, check_batch, uniform_bounds
from encoding.optical import (OpticalCalibration, OpticalEncoding, bin_edges, centroid_column, gray_levels,
                              output_roi, output_units, output_weights, pixel_slots, slot_values)

log = logging.getLogger(__name__)

CAMERA_GRACE_S = 1.0  # how long the camera may take beyond its cycles to finish a series once the SLM is done, s
SERIAL_SHARE = 0.9  # of a pipelined chunk's display, the part its serial transfers (next upload, frames) may take


class SerialInstrumentConfig(StrictModel):
    """How to reach a serial instrument: a port (``/dev/ttyUSB0``, ``COM3``), a pyserial URL (``socket://host:port``)
    or a VISA ASRL resource (``ASRL/dev/ttyUSB0::INSTR``)."""

    resource: Resource
    visa_library: str = "@py"
    timeout_s: PositiveFloat = 10.0
    baud_rate: PositiveInt = 3_000_000
    flow_control: Literal["none", "rtscts", "xonxoff"] = "none"


class SLMConfig(SerialInstrumentConfig):
    gray_min: int = Field(0, ge=0, le=255, description="lowest gray level ever sent (safety limit)")
    gray_max: int = Field(255, ge=0, le=255, description="highest gray level ever sent (safety limit)")
    max_sequence: PositiveInt | None = Field(None, description="patterns per sequence upload; default the SLM's memory")
    dwell_margin_s: float = Field(5e-4, ge=0, description="extra time per pattern beyond settling + camera cycle, s")
    pipeline: bool = Field(True, description="upload the next chunk of a batch into the SLM's other sequence bank "
                           "while the current one plays, and read the camera's frames while it exposes the next ones "
                           "(needs SEQ:BANK<n> on the SLM and DATA:NEXT? on the camera); false: upload, play and "
                           "read strictly in turn")
    pipeline_chunk: PositiveInt = Field(16, description="patterns in the first chunk of a pipelined batch (its upload "
                                        "is not hidden); each next chunk is as large as the line uploads while the "
                                        "previous one plays and its frames are read, up to the memory")

    @model_validator(mode="after")
    def _ordered(self) -> "SLMConfig":
        if self.gray_min >= self.gray_max:
            field = "gray_min" if "gray_max" not in self.model_fields_set else "gray_max"
            raise FieldError(field, f"gray_min {self.gray_min} must be below gray_max {self.gray_max}")
        return self


class CameraConfig(SerialInstrumentConfig):
    exposure_s: float = Field(1e-3, ge=EXPOSURE_MIN_S, le=EXPOSURE_MAX_S, description="exposure per frame, s")
    max_exposure_s: float = Field(0.1, ge=EXPOSURE_MIN_S, le=EXPOSURE_MAX_S, description="safety limit on the "
                                  "exposure, s (the driver refuses longer ones)")
    gain: Literal[1, 2, 4] = 1
    dark_frames: PositiveInt = Field(32, description="frames averaged for the dark frame and the reference")

    @model_validator(mode="after")
    def _exposure_within_limit(self) -> "CameraConfig":
        if self.exposure_s > self.max_exposure_s:
            field = "max_exposure_s" if "exposure_s" not in self.model_fields_set else "exposure_s"
            raise FieldError(field, f"exposure_s {self.exposure_s:g} s is above the safety limit max_exposure_s "
                                    f"{self.max_exposure_s:g} s")
        return self


class OpticalInstruments(StrictModel):
    slm: SLMConfig
    camera: CameraConfig


# ---------------------------------------------------------------------------------------------------------------
# The setup
# ---------------------------------------------------------------------------------------------------------------

class OpticalSetup(PhysicalSetup):
    """PhysicalSystem: x [B, n] in [-1, 1], θ [n] or [B, n] in param_bounds -> SH spectrum bins y [B, n_outputs]."""

    name = "optical"
    device = "pulse shaper"

    def __init__(self, slm, camera, instruments: OpticalInstruments, encoding: OpticalEncoding, n: int,
                 param_bounds: tuple[float, float] = (-1.0, 1.0)):
        super().__init__()
        self.slm, self.camera = slm, camera
        self.cfg, self.enc = instruments, encoding
        self.n_inputs = self.n_params = n
        self.n_outputs = encoding.n_outputs(n)
        low, high = param_bounds
        if low < -1.0 or high > 1.0:
            raise LimitViolation(slm.name, None, f"theta_bounds {param_bounds} must lie inside [-1, 1]: values "
                                 f"outside map to phases beyond phase_span_rad")
        self.param_bounds = uniform_bounds(n, param_bounds)
        bin_edges(encoding, n)  # raises early when the pixels cannot hold the bins
        self.calibration: OpticalCalibration | None = None
        self.dark_full: np.ndarray | None = None  # dark frame of all sensor columns, counts
        self.dark: np.ndarray | None = None  # dark frame over the ROI, counts [roi count]
        self.reference_spectrum: np.ndarray | None = None  # transform-limited SH spectrum, all columns, counts
        self.lut: np.ndarray | None = None  # the SLM's gray-to-phase table, rad [256] (configure)
        self.lut_sweep: tuple[np.ndarray, np.ndarray] | None = None  # LUT check: gray levels, total SH counts
        self.lut_check: dict = {}
        self.output_weights: Tensor | None = None  # [n_outputs, ROI columns]: each column's share of each output
        self._series: int | None = None  # kinetic count the camera is set to
        self._uploads = 0  # SLM sequence uploads so far (the forward passes' counters take their differences)
        self._dwell = 0.0  # time each pattern of a sequence is shown, s
        self._cycle = 0.0  # the camera's shortest time between triggers, s

    # -- set-up --------------------------------------------------------------------------------------------------
    @property
    def instruments(self) -> tuple:
        return (self.slm, self.camera)

    def configure(self) -> None:
        """Read the SLM's size and lookup table (once: a reset or a reconnect does not change them), check the phase
        range, set the camera and the sequence timing."""
        slm, cam = self.slm, self.camera
        cc = self.cfg.camera
        for inst in (slm, cam):
            inst.clear()  # *CLS: an old power-on bit or error (e.g. a read-out sent to a camera that had reset) must
            # not fail the first batch, nor the abort below
        cam.abort()  # a series left armed by a failed batch refuses new settings
        if self.lut is None:
            self.lut = self._checked_lut()
        slm.blank()
        slm.trigger_out = True
        cam.exposure_s = cc.exposure_s
        cam.gain = cc.gain
        cam.shutter_open = True
        cam.trigger_source = "EXT"
        self._series = None
        # a reconnect goes back to the calibrated columns; before the calibration, the whole sensor
        self._set_roi(self.calibration.roi if self.calibration is not None else (0, cam.sensor_size[0]))

    def _checked_lut(self) -> np.ndarray:
        """The SLM's gray-to-phase table [256] (rad), refused unless the SLM has the encoding's pixel count and the
        table rises strictly and reaches the phase span within gray_min .. gray_max."""
        slm, sc = self.slm, self.cfg.slm
        n_pixels = slm.n_pixels
        if n_pixels != self.enc.shaper.n_pixels:
            raise LimitViolation(slm.name, "PIX?", f"the SLM has {n_pixels} pixels, the encoding expects "
                                 f"{self.enc.shaper.n_pixels}")
        lut = slm.lut()
        if np.any(np.diff(lut) <= 0):
            raise LimitViolation(slm.name, "LUT:DATA?", "the lookup table is not strictly increasing")
        top = float(lut[sc.gray_max])
        if self.enc.phase_span_rad > top + 1e-9 or float(lut[sc.gray_min]) > 1e-9:
            raise LimitViolation(slm.name, "LUT:DATA?", f"phases 0 .. {self.enc.phase_span_rad:.3f} rad need gray "
                                 f"levels outside gray_min {sc.gray_min} .. gray_max {sc.gray_max} (LUT: "
                                 f"{lut[sc.gray_min]:.3f} .. {top:.3f} rad)")
        return lut.astype(np.float64)

    def dwell_s(self) -> float:
        """Time each pattern is shown: LC settling, then the camera's exposure and read-out, plus a margin, s."""
        return self.slm.settle_s + self._cycle + self.cfg.slm.dwell_margin_s

    def _set_roi(self, roi: tuple[int, int]) -> None:
        """Read camera columns roi[0] .. roi[0] + roi[1] - 1 (all rows binned); the pattern dwell follows the camera's
        cycle, which is shorter for fewer columns."""
        rows = self.camera.sensor_size[1]
        self.camera.set_readout("FVB", (roi[0], roi[1], 0, rows))
        self._cycle = self.camera.cycle_s
        self._dwell = self.dwell_s()
        self.slm.dwell_s = self._dwell

    def sequence_room(self) -> int:
        """Patterns per sequence upload."""
        room = self.slm.sequence_max
        return min(room, self.cfg.slm.max_sequence or room)

    def chunk_sizes(self, k: int) -> list[int]:
        """Patterns per sequence when ``k`` patterns are shown pipelined: ``pipeline_chunk``, then each chunk
        ``chunk_growth()`` times the previous (rounded down; never fewer than the previous), at most
        ``sequence_room()``."""
        room, growth = self.sequence_room(), self.chunk_growth()
        size, sizes = min(self.cfg.slm.pipeline_chunk, room), []
        while k > 0:
            sizes.append(min(size, k))
            k -= sizes[-1]
            size = min(room, max(size, int(size * growth)))
        return sizes

    def chunk_growth(self) -> float:
        """How many times the previous chunk the next one may hold. While a chunk plays, the driver uploads the next
        one and reads the camera's frames (one thread, one line after the other): per pattern shown, one frame's
        read-out, and the rest of the display for the upload, of which it uses ``SERIAL_SHARE`` (the remainder is
        for the software around the transfers). Fuller, the frames' read-out overruns the chunk and the SLM waits.
        Below 1 (lines slower than the display) the chunks keep their size: the SLM then waits for each upload."""
        return SERIAL_SHARE * (self._dwell - self._frame_readout_s()) / self._pattern_upload_s()

    def _pattern_upload_s(self) -> float:
        """One pattern over the SLM's serial line, s (``BITS_PER_BYTE`` bits a byte, one byte a pixel)."""
        return self.enc.shaper.n_pixels * BITS_PER_BYTE / self.cfg.slm.baud_rate

    def _frame_readout_s(self) -> float:
        """One spectrum over the camera's serial line, s (two bytes a column of the read-out)."""
        columns = self.calibration.roi[1] if self.calibration else self.camera.sensor_size[0]
        return 2 * columns * BITS_PER_BYTE / self.cfg.camera.baud_rate

    def device_seconds_per_item(self) -> dict[str, float]:
        """The instruments' own time per batch item, s: the SLM showing it (settling, exposure, read-out, margin) and
        the serial lines carrying its pattern and its spectrum (10 bits per byte); pipelined, only the lines' time
        beyond the display's, which the overlap cannot hide."""
        lines = self._pattern_upload_s() + self._frame_readout_s()
        return {"device": self._dwell,
                "serial_lines": max(0.0, lines - self._dwell) if self.cfg.slm.pipeline else lines}

    # -- the physical forward pass --------------------------------------------------------------------------------
    def patterns(self, x: Tensor, theta: Tensor) -> np.ndarray:
        """x [B, n], θ -> SLM gray levels [B, n_pixels] uint8 (rounded; checked against the safety limits)."""
        # the gray level of each bin's value (and the background's), then the pixels: the same numbers as per pixel
        slots = torch.round(gray_levels(slot_values(x, theta, self.enc), self.lut, self.enc.phase_span_rad))
        which = pixel_slots(self.enc, x.shape[1]).numpy()
        shown = slots[:, np.unique(which)]  # every gray level a pixel will show, and only those
        sc = self.cfg.slm
        if shown.min() < sc.gray_min or shown.max() > sc.gray_max:
            raise LimitViolation(self.slm.name, None, f"gray levels {int(shown.min())} .. {int(shown.max())} outside "
                                 f"{sc.gray_min} .. {sc.gray_max}")
        return np.take(slots.numpy().astype(np.uint8), which, axis=1)

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        """Run a batch through the device: pipelined chunks feeding one camera series (``measure_pipelined``), or one
        SLM sequence and one camera series per memory-sized chunk (``measure``); then both instruments' status."""
        if self.calibration is None:
            raise RuntimeError("the optical setup must be calibrated (calibrate_instruments) before a forward pass")
        x, theta = x.detach().double(), theta.detach().double()
        check_batch(self.slm.name, x, theta, self.n_inputs, self.param_bounds)
        gray = self.patterns(x, theta)
        t0, uploads_before = time.perf_counter(), self._uploads
        if self.cfg.slm.pipeline:
            chunks = [self.measure_pipelined(gray[i:i + KINETIC_COUNT_MAX])
                      for i in range(0, len(gray), KINETIC_COUNT_MAX)]
        else:
            room = self.sequence_room()
            chunks = [self.measure(gray[i:i + room]) for i in range(0, len(gray), room)]
        for inst in (self.slm, self.camera):
            inst.check_status()  # a reset or an error during the batch makes its outputs worthless
        self.counters.record(x.shape[0], self._uploads - uploads_before, time.perf_counter() - t0)
        spectra = torch.as_tensor(np.concatenate(chunks) - self.dark)
        return output_units(spectra @ self.output_weights.T, self.enc, self.calibration.reference_mean).float()

    __call__ = forward

    def measure(self, gray: np.ndarray) -> np.ndarray:
        """Show the patterns [K, n_pixels] as one triggered sequence; the camera's spectra [K, columns] (counts)."""
        slm, cam = self.slm, self.camera
        k = len(gray)
        if self._series != k:
            cam.kinetic_count = k
            self._series = k
        self._load_sequence(gray)
        cam.start()
        slm.start_sequence()
        budget = self.cfg.slm.timeout_s + 2 * k * self._dwell
        slm.wait_done(timeout_s=budget)
        # the last frame is read out one camera cycle after the last trigger; longer means triggers were missed
        cam.wait_ready(timeout_s=CAMERA_GRACE_S + 4 * self._cycle)
        frames = cam.read_series()
        if frames.shape[0] != k:
            raise ProtocolError(cam.name, "DATA?", f"expected {k} frames, got {frames.shape[0]}")
        return self._checked_frames(frames)

    def measure_pipelined(self, gray: np.ndarray) -> np.ndarray:
        """Show the patterns [K, n_pixels] (K <= 10,000, one kinetic series) in chunks that alternate between the
        SLM's two sequence banks; the camera's spectra [K, columns] (counts), equal to what ``measure`` gives for the
        same chunks. While chunk j plays: chunk j + 1 is uploaded, then the frames taken so far are read, until
        a few patterns before chunk j ends; then ``*OPC?`` and chunk j + 1 starts."""
        slm, cam = self.slm, self.camera
        k = len(gray)
        sizes = self.chunk_sizes(k)
        starts = np.cumsum([0, *sizes])
        if self._series != k:
            cam.kinetic_count = k
            self._series = k
        frames: list[np.ndarray] = []
        got = 0

        def read(until: float, need: int, poll: float) -> None:  # frames taken so far, until ``need`` or ``until``
            nonlocal got
            while True:
                new = cam.read_new_frames()
                if len(new):
                    frames.append(new)
                    got += len(new)
                now = time.monotonic()
                if got >= need or now >= until:
                    return
                time.sleep(min(until - now, poll))

        with self._naming_missing_commands():
            self._load_sequence(gray[:sizes[0]], bank=1)
            cam.start()
            for j, size in enumerate(sizes):
                bank = 1 + j % 2
                started = time.monotonic()
                ends = started + slm.start_sequence(bank=bank)
                if j + 1 < len(sizes):
                    self._load_sequence(gray[starts[j + 1]:starts[j + 2]], bank=3 - bank)
                # the first read takes the frames shown during the upload, which ``chunk_growth`` leaves time for;
                # later ones carry about three frames each, so that a read started before ``until`` ends in time
                read(until=ends - 3 * self._dwell, need=int(starts[j + 1]), poll=2 * self._dwell)
                slm.wait_done(timeout_s=self.cfg.slm.timeout_s + 2 * size * self._dwell)
            # the last frame is read out one camera cycle after the last trigger; longer means triggers were missed
            grace = CAMERA_GRACE_S + 4 * self._cycle
            read(until=time.monotonic() + grace, need=k, poll=self._cycle / 2)
        if got != k:
            raise InstrumentTimeout(cam.name, "DATA:NEXT?", f"{got} of {k} frames arrived within {grace:g} s of the "
                                                            f"last SLM pattern (external trigger: check the trigger "
                                                            f"cable and that the pulses come no faster than KIN:CYCL?)")
        return self._checked_frames(np.concatenate(frames))

    def _load_sequence(self, gray: np.ndarray, bank: int | None = None) -> None:
        """Upload a sequence of patterns [K, n_pixels] (into ``bank``, if given), counted for the forward's counters."""
        self.slm.load_sequence(gray, bank=bank)
        self._uploads += 1

    @contextlib.contextmanager
    def _naming_missing_commands(self) -> Iterator[None]:
        """An instrument refusing a pipelining command as unknown (-113), or a camera not answering ``DATA:NEXT?``
        (an unknown query has no reply): say how to go without."""
        hint = "set instruments.slm.pipeline: false for instruments without sequence banks or DATA:NEXT?"
        try:
            yield
        except InstrumentTimeout as err:
            if err.command == "DATA:NEXT?":
                raise InstrumentTimeout(err.instrument, err.command, f"{err.detail} (if the camera does not know "
                                                                     f"DATA:NEXT?, {hint})") from err
            raise
        except InstrumentReportedError as err:
            if any(code == -113 for code, _ in err.errors):
                raise InstrumentReportedError(err.instrument, f"{err.command} ({hint})", err.errors) from err
            raise

    def _checked_frames(self, frames: np.ndarray) -> np.ndarray:
        """The spectra [K, columns] as float counts, checked against the calibrated read-out; clipped ones counted."""
        cam = self.camera
        k = len(frames)
        if self.dark is not None and frames.shape[1] != len(self.dark):
            raise InstrumentError(cam.name, "READ:ROI", f"frames of {frames.shape[1]} columns, the calibrated read-out "
                                                        f"has {len(self.dark)}: the camera's ROI was changed")
        saturated = int((frames >= ADC_MAX_COUNTS).any(axis=1).sum())
        if saturated:
            self.counters.clipped_records += saturated
            if self.counters.clipped_records == saturated:
                log.warning("%s: %d of %d spectra reach the 12-bit ADC's full scale (%d counts): outputs are clipped; "
                            "shorten instruments.camera.exposure_s", cam.name, saturated, k, ADC_MAX_COUNTS)
        return frames.astype(np.float64)

    # -- calibration ------------------------------------------------------------------------------------------------
    def average_frames(self, pattern: np.ndarray | None, count: int, shutter_open: bool = True) -> np.ndarray:
        """Mean of ``count`` internally triggered frames with ``pattern`` shown (None: the shutter closed), counts."""
        slm, cam = self.slm, self.camera
        if pattern is not None:
            slm.show(pattern)
            slm.wait_done(timeout_s=self.cfg.slm.timeout_s)
        cam.shutter_open = shutter_open
        try:
            frames = cam.acquire(count, trigger="INT")
        finally:
            cam.shutter_open = True
            cam.trigger_source = "EXT"
            self._series = None
        if frames.max() >= ADC_MAX_COUNTS:
            what = "the reference spectrum" if pattern is not None else "the dark frame (shutter closed)"
            raise LimitViolation(cam.name, "EXP", f"{what} reaches the 12-bit full scale {ADC_MAX_COUNTS} in "
                                 f"{int((frames >= ADC_MAX_COUNTS).any(axis=0).sum())} column(s): a calibration "
                                 f"from clipped frames is wrong; shorten instruments.camera.exposure_s (now "
                                 f"{self.cfg.camera.exposure_s:g} s)" + ("" if pattern is not None else
                                 " or check for light leaks"))
        return frames.astype(np.float64).mean(axis=0)

    def calibrate_instruments(self) -> dict:
        """Dark frame, spectrometer offset and the lookup-table check; sets ``calibration``."""
        cam, enc, cc = self.camera, self.enc, self.cfg.camera
        columns = cam.sensor_size[0]
        n_avg = cc.dark_frames
        flat = np.zeros(enc.shaper.n_pixels, np.uint8)
        self._set_roi((0, columns))
        self.dark_full = self.average_frames(None, n_avg, shutter_open=False)
        spectrum = self.average_frames(flat, n_avg) - self.dark_full
        self.reference_spectrum = spectrum
        offset = centroid_column(spectrum) - enc.spectrometer.center_column
        roi = output_roi(enc, offset, columns)
        reference = output_weights(enc, self.n_outputs, offset, roi) @ spectrum[roi[0]: roi[0] + roi[1]]
        self.adopt_calibration(OpticalCalibration(
            lut=self.lut.tolist(), column_offset=float(offset), roi=roi, reference_mean=float(reference.mean()),
            exposure_s=cc.exposure_s, electrons_per_count=ELECTRONS_PER_COUNT_AT_GAIN_1 / cc.gain))
        self.lut_check = self.check_lut()
        self.slm.blank()
        log.info("optical calibration: spectrometer offset %+.2f columns, ROI %s, reference mean bin %.0f counts; %s",
                 offset, roi, reference.mean(), self.lut_check.get("message", ""))
        return {"column_offset": float(offset), "roi": list(roi), "reference_mean": float(reference.mean()),
                "peak_counts": float(spectrum.max()), "lut_check": self.lut_check}

    def calibration_summary(self) -> dict:
        """The optical calibration (the lookup table shortened) and the LUT check; empty before the calibration ran."""
        if self.calibration is None:
            return {}
        return {"optical": self.calibration.model_dump(mode="json") | {"lut": "(256 values, see instruments)"},
                "lut_check": self.lut_check}

    def reuse_calibration(self, snapshot: dict | None, source: str) -> bool:
        """Read the output bins where ``source`` was measured (the spectrometer offset, the camera columns and the
        reference level are re-measured, with noise, at every opening); False if it was measured with another camera
        exposure or gain, or another SLM lookup table."""
        stored = (snapshot or {}).get("calibration")
        if not stored:
            return True
        calibration = OpticalCalibration(**stored)
        reason = self.mismatch(calibration)
        if reason:
            log.warning("%s was measured with other instrument settings (%s)", source, reason)
            return False
        self.adopt_calibration(calibration)
        log.info("reading the optical outputs as for %s", source)
        return True

    def mismatch(self, calibration: OpticalCalibration) -> str | None:
        """Why data measured under ``calibration`` do not fit the instruments as they are now (exposure, gain, the
        SLM's lookup table), or None if they do. Such data (or a twin fitted to them) must be measured again."""
        cc = self.cfg.camera
        if not math.isclose(calibration.exposure_s, cc.exposure_s, rel_tol=1e-9):
            return f"camera exposure {calibration.exposure_s:g} s then, {cc.exposure_s:g} s now"
        if not math.isclose(calibration.electrons_per_count, ELECTRONS_PER_COUNT_AT_GAIN_1 / cc.gain, rel_tol=1e-9):
            then = ELECTRONS_PER_COUNT_AT_GAIN_1 / calibration.electrons_per_count
            return f"camera gain {then:g} then, {cc.gain} now"
        if len(calibration.lut) != len(self.lut) or not np.allclose(calibration.lut, self.lut, atol=1e-6):
            return "the SLM reports another gray-to-phase lookup table"
        return None

    def adopt_calibration(self, calibration: OpticalCalibration) -> None:
        """Read the outputs with ``calibration`` (offset, columns, reference level): the one just measured, or the one
        a reused twin was fitted with. Needs the dark frame of the whole sensor (``calibrate_instruments``)."""
        if self.dark_full is None:
            raise RuntimeError("measure the dark frame (calibrate_instruments) before adopting a calibration")
        first, count = calibration.roi
        self.calibration = calibration
        self.dark = self.dark_full[first: first + count]
        self.output_weights = torch.as_tensor(output_weights(self.enc, self.n_outputs, calibration.column_offset,
                                                       calibration.roi))
        self._set_roi(calibration.roi)

    def check_lut(self, step: int = 2, block_pixels: int = 32, half_window: int = 48) -> dict:
        """Lookup-table check: alternate blocks of the active pixels between gray 0 and gray g and record the SH
        spectrum S(g). The laser's field is real (no spectral phase), so steps of phase φ and 2π - φ give
        complex-conjugate fields with the same SH spectrum: S is symmetric about the gray level whose phase is π. That
        axis, found as the best mirror symmetry of S over ``half_window`` gray levels, is compared with the SLM table's
        π gray level. Accuracy about 2 gray levels: the fringing between blocks and the phase's change across the
        spectrum break the symmetry slightly (wide blocks keep the first small)."""
        first, end = self.enc.active_pixels
        sc = self.cfg.slm
        grays = np.arange(sc.gray_min, sc.gray_max + 1, step)
        blocks = ((np.arange(self.enc.shaper.n_pixels) - first) // block_pixels) % 2 == 1
        blocks[:first] = blocks[end:] = False
        patterns = np.zeros((len(grays), self.enc.shaper.n_pixels), np.uint8)
        patterns[:, blocks] = grays[:, None]
        spectra = np.concatenate([self.measure(patterns[i:i + self.sequence_room()])
                                  for i in range(0, len(patterns), self.sequence_room())]) - self.dark
        table_pi = float(np.interp(math.pi, self.lut, np.arange(len(self.lut))))
        pi_gray = mirror_axis(grays.astype(float), spectra, half_window)
        self.lut_sweep = (grays, spectra.sum(axis=1))
        if pi_gray is None:
            result = {"pi_gray_measured": None, "pi_gray_table": table_pi, "table_phase_error": None,
                      "message": f"LUT check: gray {sc.gray_min} .. {sc.gray_max} is too narrow to see the pi point"}
            log.warning("%s: %s", self.slm.name, result["message"])
            return result
        error = float(np.interp(pi_gray, np.arange(len(self.lut)), self.lut)) / math.pi - 1
        result = {"pi_gray_measured": pi_gray, "pi_gray_table": table_pi, "table_phase_error": error,
                  "message": f"LUT check: pi at gray {pi_gray:.1f}, the table says {table_pi:.1f} "
                             f"(the table's phase there is off by {100 * error:+.1f} %)"}
        if abs(error) > 0.05:
            log.warning("%s: %s; the physics twin fits the real table", self.slm.name, result["message"])
        return result

    def output_off(self) -> None:
        """Blank the SLM and stop the camera (safe at any time, never raises)."""
        for action in (self.slm.blank, self.camera.abort):
            try:
                action()
            except Exception as err:  # noqa: BLE001 - a failing instrument must not stop the others going safe
                log.warning("making the optical setup safe: %s", err)

    def snapshot(self) -> dict:
        """Instrument identities, settings and the calibration for the run folder."""
        return {"slm": {"identity": str(self.slm.identity), **self.cfg.slm.model_dump()},
                "camera": {"identity": str(self.camera.identity), **self.cfg.camera.model_dump()},
                "encoding": self.enc.model_dump(), "n": self.n_inputs, "n_outputs": self.n_outputs,
                "calibration": self.calibration.model_dump() if self.calibration else None,
                "lut_check": self.lut_check}


def mirror_axis(g: np.ndarray, spectra: np.ndarray, half_window: float) -> float | None:
    """The axis g0 about which the spectra [G, C] measured at the increasing gray levels g [G] are most nearly
    mirror-symmetric over g0 - half_window .. g0 + half_window (quarter-step grid search); None if g spans less than
    two half windows."""
    candidates = np.arange(g[0] + half_window, g[-1] - half_window + 1e-9, 0.25)
    if len(candidates) == 0:
        return None
    d = np.arange(1, half_window + 1, 1.0)

    def at(points: np.ndarray) -> np.ndarray:  # spectra linearly interpolated to fractional gray levels
        k = np.clip(np.searchsorted(g, points) - 1, 0, len(g) - 2)
        w = ((points - g[k]) / (g[k + 1] - g[k]))[:, None]
        return (1 - w) * spectra[k] + w * spectra[k + 1]

    mismatch = [np.mean((at(c + d) - at(c - d)) ** 2) for c in candidates]
    return float(candidates[int(np.argmin(mismatch))])
