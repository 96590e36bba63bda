"""Spectroscopy camera: driver bytes on the wire, strict DATA? blocks, limits, and the simulated camera served on a
real pty (pyserial, pyvisa-py ASRL) and on a TCP port (pyserial socket://), fed by a stand-in for the bench."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from drivers.camera import SeriesGeometry, SpectroscopyCamera
from drivers.errors import InstrumentError, InstrumentReportedError, InstrumentTimeout, LimitViolation, ProtocolError
from drivers.transport import open_link
from simulators.instruments import SimSpectroscopyCamera
from common.faults import FaultPlan
from simulators.scpi.pty import PtyServer
from simulators.scpi.tcp import SCPIServer

from conftest import WireReply

# -------------------------------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------------------------------


def block(payload: bytes) -> bytes:
    """A definite-length block with the shortest header, plus the terminator."""
    length = str(len(payload)).encode()
    return b"#" + str(len(length)).encode() + length + payload + b"\n"


def test_frames(n: int, shape: tuple[int, ...], start: int = 0) -> np.ndarray:
    """Deterministic uint16 frames [n, *shape] whose bytes include '\\n' and '#' (binary transparency)."""
    size = math.prod(shape)
    k = np.arange(start, start + n)[:, None] * 37 + np.arange(size)[None, :]
    return (k % 4096).astype(np.uint16).reshape(n, *shape)


test_frames.__test__ = False  # a helper, not a test


@pytest.fixture
def cam_rig(wire_server, wire_link):
    """Factory: ``cam_rig(script=None, timeout_s=0.5, **driver_kwargs) -> (server, camera)`` over a pyvisa-py
    socket to a scripted instrument that records every byte (the bytes are those of the serial line; pyserial's
    ``socket://`` would do too, but its close() sleeps 0.3 s)."""

    def make(script: dict | None = None, timeout_s: float = 0.5, **kwargs) -> tuple:
        server = wire_server({"SENS:SIZE?": "1024,128", **(script or {})})
        camera = SpectroscopyCamera(wire_link(server, name="camera", timeout_s=timeout_s), **kwargs)
        return server, camera

    return make


# -------------------------------------------------------------------------------------------------------------------
# (1) exact bytes on the wire
# -------------------------------------------------------------------------------------------------------------------

def test_settings_and_control_bytes(cam_rig) -> None:
    server, cam = cam_rig({"STAT?": "ARMED", "ACQ:FRAM?": "3", "TEMP?": "-60.0", "KIN:CYCL?": "+2.024E-03"})
    assert cam.sensor_size == (1024, 128) and cam.sensor_size == (1024, 128)  # read once
    cam.set_readout("image", roi=(10, 64, 32, 16))
    cam.set_readout()  # FVB over the full sensor
    cam.exposure_s = 2e-3
    cam.gain = 4
    cam.kinetic_count = 512
    cam.shutter_open = False
    cam.shutter_open = True
    cam.trigger_source = "external"
    cam.trigger_source = "INT"
    cam.start()
    assert cam.frames_acquired() == 3
    assert cam.status() == "ARMED"
    cam.abort()
    assert cam.temperature_c == -60.0
    assert cam.cycle_s == pytest.approx(2.024e-3)
    cam.wait_opc()
    assert server.since(0) == (
        b"SENS:SIZE?\n"
        b"READ:MODE IMAG\nREAD:ROI 10,64,32,16\nSYST:ERR?\n"
        b"READ:MODE FVB\nREAD:ROI 0,1024,0,128\nSYST:ERR?\n"
        b"EXP 0.002\nSYST:ERR?\nGAIN 4\nSYST:ERR?\nKIN:COUN 512\nSYST:ERR?\n"
        b"SHUT CLOS\nSYST:ERR?\nSHUT OPEN\nSYST:ERR?\nTRIG:SOUR EXT\nSYST:ERR?\nTRIG:SOUR INT\nSYST:ERR?\n"
        b"ACQ:STAR\nSYST:ERR?\nACQ:FRAM?\nSTAT?\nACQ:ABOR\nSYST:ERR?\nTEMP?\nKIN:CYCL?\n*OPC?\n")
    assert cam.settings == {"mode": "FVB", "roi": (0, 1024, 0, 128), "exposure_s": 2e-3, "gain": 4,
                            "kinetic_count": 512, "shutter_open": True, "trigger_source": "INT"}


def test_queries_bytes_and_parsing(cam_rig) -> None:
    server, cam = cam_rig({"EXP?": "+1.000000000000000E-03", "GAIN?": "2", "KIN:COUN?": "+16", "SHUT?": "CLOS",
                           "TRIG:SOUR?": "EXT", "READ:MODE?": "IMAG", "READ:ROI?": "0,1024,60,8"})
    assert cam.exposure_s == 1e-3
    assert cam.gain == 2 and cam.electrons_per_count == 2.0
    assert cam.kinetic_count == 16
    assert cam.shutter_open is False
    assert cam.trigger_source == "EXT"
    assert cam.readout() == ("IMAGE", (0, 1024, 60, 8))
    assert server.since(0) == b"EXP?\nGAIN?\nKIN:COUN?\nSHUT?\nTRIG:SOUR?\nREAD:MODE?\nREAD:ROI?\n"


def test_read_series_parses_a_scripted_fvb_block(cam_rig) -> None:
    frames = test_frames(3, (4,))
    server, cam = cam_rig({"STAT?": "READY", "DATA?": block(frames.astype("<u2").tobytes())})
    cam.set_readout("FVB", (100, 4, 0, 128))
    cam.kinetic_count = 3
    cam.start()
    mark = server.mark()
    series = cam.read_series()
    assert server.since(mark) == b"STAT?\nDATA?\n"
    assert series.dtype == np.uint16 and series.shape == (3, 4)
    np.testing.assert_array_equal(series, frames)


def test_read_series_parses_a_scripted_image_block(cam_rig) -> None:
    frames = test_frames(2, (3, 5))
    server, cam = cam_rig({"STAT?": "READY", "DATA?": block(frames.astype("<u2").tobytes())})
    cam.set_readout("IMAGE", (7, 5, 40, 3))
    cam.kinetic_count = 2
    cam.start()
    np.testing.assert_array_equal(cam.read_series(), frames)


def test_acquire_bytes_reads_unknown_geometry_once(cam_rig) -> None:
    frames = test_frames(2, (4,))
    server, cam = cam_rig({"KIN:CYCL?": "+1.004E-03", "READ:MODE?": "FVB", "READ:ROI?": "0,4,0,128",
                           "STAT?": ["ARMED", "READY"], "DATA?": block(frames.astype("<u2").tobytes())})
    np.testing.assert_array_equal(cam.acquire(2, trigger="EXT"), frames)
    assert server.since(0) == (b"TRIG:SOUR EXT\nKIN:COUN 2\nSYST:ERR?\nKIN:CYCL?\nREAD:MODE?\nREAD:ROI?\n"
                               b"ACQ:STAR\nSYST:ERR?\nSTAT?\nSTAT?\nSTAT?\nDATA?\n")
    mark = server.mark()
    cam.acquire(2, timeout_s=1.0)  # geometry now known: no readout queries
    assert server.since(mark) == b"TRIG:SOUR INT\nKIN:COUN 2\nSYST:ERR?\nACQ:STAR\nSYST:ERR?\nSTAT?\nSTAT?\nDATA?\n"


def test_wait_ready_times_out_naming_frames_and_count(cam_rig) -> None:
    server, cam = cam_rig({"STAT?": "ARMED", "ACQ:FRAM?": "1"})
    cam.set_readout("FVB")
    cam.kinetic_count = 3
    cam.trigger_source = "EXT"
    cam.start()
    start = time.monotonic()
    with pytest.raises(InstrumentTimeout) as err:
        cam.wait_ready(0.1)
    assert 0.1 <= time.monotonic() - start < 0.5
    message = str(err.value)
    assert message.startswith("camera, command 'STAT?'") and "1 of 3 frames acquired" in message
    assert "trigger cable" in message
    assert server.since(0).endswith(b"STAT?\nACQ:FRAM?\n")


def test_wait_ready_on_an_idle_camera_and_reading_an_incomplete_series(cam_rig) -> None:
    server, cam = cam_rig({"STAT?": ["IDLE", "ARMED"], "ACQ:FRAM?": "2", "READ:MODE?": "FVB",
                           "READ:ROI?": "0,1024,0,128", "KIN:COUN?": "5"})
    with pytest.raises(InstrumentError, match="camera, command 'STAT\\?': no series is armed \\(status IDLE\\)"):
        cam.wait_ready(1.0)
    mark = server.mark()
    with pytest.raises(InstrumentError, match="'DATA\\?'.*status ARMED.*2 of 5 frames acquired"):
        cam.read_series()
    assert b"DATA?" not in server.since(mark)  # nothing asked that would not be answered


def test_acquire_aborts_a_series_that_times_out(cam_rig) -> None:
    server, cam = cam_rig({"STAT?": "ARMED", "ACQ:FRAM?": "0", "READ:MODE?": "FVB", "READ:ROI?": "0,1024,0,128"})
    with pytest.raises(InstrumentTimeout, match="0 of 4 frames"):
        cam.acquire(4, trigger="EXT", timeout_s=0.05)
    assert server.since(0).endswith(b"ACQ:FRAM?\nACQ:ABOR\nSYST:ERR?\n")


# -------------------------------------------------------------------------------------------------------------------
# (2) malformed DATA? blocks: errors name the camera and the command, nothing is padded
# -------------------------------------------------------------------------------------------------------------------

GOOD = test_frames(3, (4,)).astype("<u2").tobytes()  # 24 bytes
BEYOND_12_BITS = GOOD[:12] + b"\x00\x10" + GOOD[14:]  # frame 1, column 2 holds 4096


@pytest.mark.parametrize("reply, error, message", [
    (block(GOOD + b"\x01\x02"), ProtocolError, "expected 3 frame.*4 columns.* = 24 bytes, the block holds 26 bytes"),
    (block(GOOD[:-2]), ProtocolError, "= 24 bytes, the block holds 22 bytes"),
    (block(GOOD[:-1]), ProtocolError, "the block holds 23 bytes"),
    (b"#9garbage!!\n", ProtocolError, "non-numeric length"),
    (b"ERROR\n", ProtocolError, "expected a binary block"),
    (b"#224" + GOOD + b"XY\n", ProtocolError, "followed by"),
    (WireReply([b"#224" + GOOD[:10]]), InstrumentTimeout, "declared 24 bytes, fewer arrived"),
    (WireReply([b"#224" + GOOD[:10]], close=True), InstrumentError, "24 bytes|connection"),
    (block(BEYOND_12_BITS), ProtocolError, "1 value.* above the 12-bit full scale 4095, first 4096 at frame 1, column 2"),
])
def test_malformed_data_blocks(cam_rig, reply, error: type, message: str) -> None:
    server, cam = cam_rig({"STAT?": "READY", "DATA?": reply}, timeout_s=0.3)
    cam.set_readout("FVB", (0, 4, 0, 128))
    cam.kinetic_count = 3
    cam.start()
    with pytest.raises(error, match=message) as err:
        cam.read_series()
    assert err.value.instrument == "camera" and err.value.command == "DATA?"
    assert str(err.value).startswith("camera, command 'DATA?'")


def test_a_long_series_gets_its_time_on_the_serial_line_on_top_of_the_timeout(cam_rig) -> None:
    """3 x 1024 columns = 6144 bytes = 1.6 s at 38400 baud: the camera may take that long to send them."""
    frames = test_frames(3, (1024,))
    server, cam = cam_rig({"STAT?": "READY", "DATA?": WireReply([block(frames.astype("<u2").tobytes())],
                                                                delay_s=0.5)}, timeout_s=0.3, baud_rate=38400)
    cam.set_readout("FVB", (0, 1024, 0, 128))
    cam.kinetic_count = 3
    cam.start()
    np.testing.assert_array_equal(cam.read_series(), frames)
    assert cam.link.timeout_s == 0.3


def test_the_link_recovers_after_a_block_cut_short(cam_rig) -> None:
    server, cam = cam_rig({"STAT?": "READY", "DATA?": [WireReply([b"#224" + GOOD[:10]]), block(GOOD)]},
                          timeout_s=0.3)
    cam.set_readout("FVB", (0, 4, 0, 128))
    cam.kinetic_count = 3
    cam.start()
    with pytest.raises(InstrumentTimeout):
        cam.read_series()
    np.testing.assert_array_equal(cam.read_series(), test_frames(3, (4,)))  # reading does not clear the series


# -------------------------------------------------------------------------------------------------------------------
# (3) limits: refused before anything is sent
# -------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("attr, value, message", [
    ("exposure_s", 0.0, "outside the allowed range \\[1e-05, 10\\] s"),
    ("exposure_s", 11.0, "outside the allowed range"),
    ("exposure_s", float("nan"), "not finite"),
    ("exposure_s", 0.2, "above the configured limit max_exposure_s = 0.1 s"),
    ("gain", 3, "3 is not one of 1, 2, 4"),
    ("gain", 1.5, "not an integer"),
    ("gain", True, "not an integer"),
    ("kinetic_count", 0, "outside the allowed range \\[1, 10000\\] frames"),
    ("kinetic_count", 10001, "outside the allowed range"),
    ("kinetic_count", 2.5, "not an integer"),
    ("shutter_open", "yes", "not one of"),
    ("trigger_source", "BUS", "not one of"),
])
def test_setting_limits_send_nothing(cam_rig, attr: str, value: object, message: str) -> None:
    server, cam = cam_rig(max_exposure_s=0.1)
    with pytest.raises(LimitViolation, match=message) as err:
        setattr(cam, attr, value)
    assert err.value.instrument == "camera"
    cam.wait_opc()
    assert server.since(0) == b"*OPC?\n"


@pytest.mark.parametrize("mode, roi, message", [
    ("SPECTRUM", None, "not one of FVB, IMAG"),
    ("FVB", (0, 1025, 0, 128), "columns 0..1024, rows 0..127 do not fit the 1024 x 128 sensor"),
    ("IMAGE", (1000, 30, 0, 10), "do not fit"),
    ("IMAGE", (0, 10, 120, 9), "do not fit"),
    ("IMAGE", (-1, 10, 0, 10), "x0 and y0 must be >= 0"),
    ("IMAGE", (0, 0, 0, 10), "width and height >= 1"),
    ("IMAGE", (0, 10, 0), "four integers"),
    ("IMAGE", (0, 10.5, 0, 3), "four integers"),
    ("IMAGE", 5, "four integers"),
])
def test_roi_limits_send_nothing(cam_rig, mode: str, roi: object, message: str) -> None:
    server, cam = cam_rig()
    assert cam.sensor_size == (1024, 128)
    mark = server.mark()
    with pytest.raises(LimitViolation, match=message):
        cam.set_readout(mode, roi)  # type: ignore[arg-type]
    cam.wait_opc()
    assert server.since(mark) == b"*OPC?\n"


def test_a_malformed_roi_is_refused_before_even_asking_the_sensor_size(cam_rig) -> None:
    server, cam = cam_rig()
    with pytest.raises(LimitViolation):
        cam.set_readout("FVB", (0, -5, 0, 128))
    with pytest.raises(LimitViolation):
        cam.acquire(0)
    with pytest.raises(LimitViolation):
        cam.acquire(5, trigger="BUS")
    cam.wait_opc()
    assert server.since(0) == b"*OPC?\n"


def test_constructor_checks_the_exposure_limit(wire_server, wire_link) -> None:
    link = wire_link(wire_server(), name="camera")
    for bad in (0.0, 20.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="max_exposure_s"):
            SpectroscopyCamera(link, max_exposure_s=bad)  # type: ignore[arg-type]


def test_series_geometry() -> None:
    fvb = SeriesGeometry("FVB", (0, 1024, 0, 128), 512)
    image = SeriesGeometry("IMAGE", (10, 50, 60, 8), 3)
    assert fvb.shape == (512, 1024) and fvb.nbytes == 512 * 1024 * 2
    assert image.shape == (3, 8, 50) and image.nbytes == 2400


# -------------------------------------------------------------------------------------------------------------------
# (4) end to end: the simulated camera on a pty (pyserial, pyvisa-py ASRL) and on TCP (pyserial socket://)
# -------------------------------------------------------------------------------------------------------------------

class FakeBench:
    """Stands in for the optical bench: supplies deterministic frames for internally triggered series."""

    def __init__(self, ready_in_s: float = 0.0):
        self.ready_in_s = ready_in_s
        self.camera: SimSpectroscopyCamera | None = None
        self.calls: list[int] = []

    def frame_shape(self) -> tuple[int, ...]:
        cam = self.camera
        assert cam is not None
        return (cam.rows[1], cam.columns[1]) if cam.mode == "IMAGE" else (cam.columns[1],)

    def on_camera_internal(self, n_frames: int) -> None:
        assert self.camera is not None
        self.calls.append(n_frames)
        self.camera.capture(test_frames(n_frames, self.frame_shape()), ready_in_s=self.ready_in_s)


@pytest.fixture
def bench() -> FakeBench:
    fake = FakeBench()
    fake.camera = SimSpectroscopyCamera(listener=fake, seed=7)
    return fake


@contextmanager
def _serve(camera: SimSpectroscopyCamera, kind: str, faults: FaultPlan | None = None,
           timeout_s: float = 2.0) -> Iterator[SpectroscopyCamera]:
    server: PtyServer | SCPIServer
    if kind == "socket":
        server = SCPIServer(camera.session, name="camera-tcp", faults=faults)
        resource = f"socket://127.0.0.1:{server.port}"
    else:
        server = PtyServer(camera.session, name="camera-pty", faults=faults)
        resource = server.port if kind == "pyserial" else f"ASRL{server.port}::INSTR"
    try:
        link = open_link(resource, name="camera", timeout_s=timeout_s, baud_rate=3_000_000)
        try:
            yield SpectroscopyCamera(link)
        finally:
            link.close()
    finally:
        server.close()


@pytest.fixture(params=["pyserial", "pyvisa", "socket"])
def driver(request, bench: FakeBench) -> Iterator[SpectroscopyCamera]:
    """The driver on a real link to the simulated camera: /dev/pts/N by pyserial, ASRL/dev/pts/N::INSTR by
    pyvisa-py, or socket:// to an SCPIServer."""
    assert bench.camera is not None
    with _serve(bench.camera, request.param) as drv:
        yield drv


def test_e2e_internal_series(driver: SpectroscopyCamera, bench: FakeBench) -> None:
    cam = bench.camera
    assert driver.idn().model == "SPEC-CCD1024" and driver.identity.serial == cam.serial
    assert driver.sensor_size == (1024, 128)
    assert -61.0 < driver.temperature_c < -59.0
    driver.set_readout("FVB", (100, 300, 20, 10))
    driver.exposure_s = 2e-3
    driver.gain = 2
    driver.shutter_open = False
    series = driver.acquire(5)
    assert bench.calls == [5]
    assert series.shape == (5, 300) and series.dtype == np.uint16
    np.testing.assert_array_equal(series, test_frames(5, (300,)))
    assert b"\n" in series.astype("<u2").tobytes()  # payload bytes that look like terminators pass through
    # what the bench reads off the front panel
    assert (cam.mode, cam.columns, cam.rows) == ("FVB", (100, 300), (0, 128))  # FVB bins every row
    assert (cam.exposure_s, cam.electrons_per_count, cam.shutter_open) == (2e-3, 2.0, False)
    assert cam.cycle_s == pytest.approx(2e-3 + 1e-3 + 300e-6)
    assert driver.cycle_s == pytest.approx(cam.cycle_s)
    assert driver.status() == "READY" and driver.frames_acquired() == 5
    np.testing.assert_array_equal(driver.read_series(), series)  # reading does not clear it
    assert driver.errors() == []


def test_e2e_external_series_fed_by_capture(driver: SpectroscopyCamera, bench: FakeBench) -> None:
    cam = bench.camera
    driver.set_readout("FVB", (0, 64, 0, 128))
    driver.trigger_source = "EXT"
    driver.kinetic_count = 4
    assert cam.wants_frames() == 0
    driver.start()
    assert bench.calls == [] and driver.status() == "ARMED" and cam.wants_frames() == 4
    frames = test_frames(6, (64,))
    assert cam.capture(frames[:1]) == 1
    assert driver.frames_acquired() == 1 and driver.status() == "ARMED" and cam.wants_frames() == 3
    assert cam.capture(frames[1:]) == 3  # the camera ignores triggers once it has its frames
    assert cam.wants_frames() == 0 and cam.capture(frames[:1]) == 0
    driver.wait_ready(1.0)
    np.testing.assert_array_equal(driver.read_series(), frames[:4])


def test_e2e_image_mode(driver: SpectroscopyCamera, bench: FakeBench) -> None:
    driver.set_readout("IMAGE", (10, 50, 60, 8))
    series = driver.acquire(3)
    assert series.shape == (3, 8, 50)
    assert (bench.camera.mode, bench.camera.rows) == ("IMAGE", (60, 8))
    np.testing.assert_array_equal(series, test_frames(3, (8, 50)))


def test_e2e_data_before_ready_is_error_230_and_no_reply(driver: SpectroscopyCamera) -> None:
    link = driver.link
    link.write("DATA?")
    assert link.query("SYST:ERR?") == '-230,"Data corrupt or stale"'  # the next reply is the error, not a block
    with pytest.raises(InstrumentError, match="no complete series to read \\(status IDLE\\)"):
        driver.read_series()
    driver.trigger_source = "EXT"
    driver.start()
    link.write("DATA?")
    assert link.query("SYST:ERR?") == '-230,"Data corrupt or stale"'
    driver.abort()
    assert driver.status() == "IDLE"


def test_e2e_realtime_series_counts_frames_in_and_opc_waits() -> None:
    fake = FakeBench(ready_in_s=0.2)
    fake.camera = SimSpectroscopyCamera(listener=fake)
    with _serve(fake.camera, "pyserial") as drv:
        drv.set_readout("FVB", (0, 16, 0, 128))
        drv.kinetic_count = 6
        start = time.monotonic()
        drv.start()
        seen = []
        while drv.status() == "ARMED":
            seen.append(drv.frames_acquired())
            time.sleep(0.03)
        elapsed = time.monotonic() - start
        assert elapsed >= 0.2
        assert seen == sorted(seen) and seen[0] < 6 and all(0 <= n <= 6 for n in seen)
        drv.start()
        drv.wait_opc(timeout_s=2.0)  # *OPC? answers once the series is READY
        assert time.monotonic() - start >= 0.4 and drv.status() == "READY"


def test_e2e_scpi_forms_errors_and_reset(bench: FakeBench) -> None:
    with _serve(bench.camera, "pyserial") as drv:
        q = drv.link.query
        drv.link.write("readout:mode image;:READOUT:ROI 1,2,3,4;:EXPosure 5 ms;:gain 4;:SHUTter closed")
        assert q("READ:MODE?;ROI?") == "IMAG;1,2,3,4"
        assert (q("EXP?"), q("GAIN?"), q("SHUT?")) == ("+5.000000000000000E-03", "4", "CLOS")
        assert drv.errors() == []
        for bad, code in [("READ:ROI 0,1025,0,1", -222), ("READ:ROI 0,1.5,0,1", -224), ("READ:ROI 1,2", -109),
                          ("GAIN 3", -224), ("EXP 20", -222), ("KIN:COUN 0", -222), ("KIN:CYCL 1", -113),
                          ("TRIG:SOUR BUS", -224), ("READ:MODE SPEC", -224)]:
            drv.link.write(bad)
            assert [c for c, _ in drv.errors()] == [code], bad
        drv.link.write("READ:MODE IMAG;:READ:ROI 0,1024,0,128;:KIN:COUN 10000")
        drv.link.write("ACQ:STAR")
        assert drv.errors() == [(-225, "Out of memory")] and drv.status() == "IDLE"
        drv.reset()
        assert drv.readout() == ("FVB", (0, 1024, 0, 128))
        assert (drv.exposure_s, drv.gain, drv.shutter_open, drv.trigger_source, drv.kinetic_count) == \
            (1e-3, 1, True, "INT", 1)
        assert drv.status() == "IDLE"


def test_e2e_settings_are_refused_while_armed(bench: FakeBench) -> None:
    with _serve(bench.camera, "pyserial") as drv:
        drv.trigger_source = "EXT"
        drv.start()
        with pytest.raises(InstrumentReportedError, match='-221,"Settings conflict"'):
            drv.exposure_s = 0.01
        with pytest.raises(InstrumentReportedError, match="-221"):
            drv.start()
        drv.abort()
        drv.exposure_s = 0.01
        assert drv.exposure_s == 0.01


def test_e2e_wait_ready_times_out_without_triggers(bench: FakeBench) -> None:
    with _serve(bench.camera, "pyserial") as drv:
        drv.set_readout("FVB")
        drv.trigger_source = "EXT"
        drv.kinetic_count = 3
        drv.start()
        bench.camera.capture(test_frames(1, (1024,)))
        with pytest.raises(InstrumentTimeout, match="camera.*1 of 3 frames acquired"):
            drv.wait_ready(0.1)


def test_a_standalone_camera_takes_bias_frames() -> None:
    camera = SimSpectroscopyCamera()
    with _serve(camera, "pyserial") as drv:
        drv.set_readout("FVB", (0, 8, 0, 128))
        np.testing.assert_array_equal(drv.acquire(2), np.full((2, 8), 100, np.uint16))


def test_the_bench_api_rejects_frames_of_the_wrong_shape() -> None:
    camera = SimSpectroscopyCamera()
    camera.trigger_source = "EXT"
    camera.kinetic_count = 2
    session = camera.session()
    list(session.feed(b"ACQ:STAR\n"))
    assert camera.status == "ARMED" and camera.wants_frames() == 2
    with pytest.raises(ValueError, match="expected uint16 frames of shape \\[K, 1024\\]"):
        camera.capture(np.zeros((1, 1000), np.uint16))
    with pytest.raises(ValueError):
        camera.capture(np.zeros((1, 1024), np.float64))
    assert camera.capture(np.zeros((2, 1024), np.uint16)) == 2 and camera.status == "READY"


# -------------------------------------------------------------------------------------------------------------------
# (5) a serial line dropped mid-frame
# -------------------------------------------------------------------------------------------------------------------

def test_a_frame_cut_short_on_the_pty_is_reported_not_padded(bench: FakeBench) -> None:
    faults = FaultPlan(short_block=1.0, seed=3)
    with _serve(bench.camera, "pyserial", faults=faults, timeout_s=0.3) as drv:
        drv.set_readout("FVB", (0, 256, 0, 128))
        drv.kinetic_count = 4
        drv.start()
        drv.wait_ready(1.0)
        with pytest.raises(InstrumentTimeout) as err:
            drv.read_series()
        message = str(err.value)
        assert message.startswith("camera, command 'DATA?'") and "expected 2048 bytes, only" in message
        assert drv.status() == "READY"  # the link resynchronises: the late bytes are discarded
        assert drv.frames_acquired() == 4


def test_capture_from_another_thread_wakes_a_waiting_opc(bench: FakeBench) -> None:
    with _serve(bench.camera, "pyserial") as drv:
        drv.set_readout("FVB", (0, 32, 0, 128))
        drv.trigger_source = "EXT"
        drv.kinetic_count = 2
        drv.start()
        timer = threading.Timer(0.1, bench.camera.capture, args=(test_frames(2, (32,)),))
        timer.start()
        try:
            start = time.monotonic()
            drv.wait_opc(timeout_s=2.0)
            assert time.monotonic() - start >= 0.09
        finally:
            timer.join()
        np.testing.assert_array_equal(drv.read_series(), test_frames(2, (32,)))


# -------------------------------------------------------------------------------------------------------------------
# (5) read-out during a series: DATA:NEXT? hands out the frames taken since the last read, while later ones are taken
# -------------------------------------------------------------------------------------------------------------------

def test_read_new_frames_bytes_and_counting(cam_rig) -> None:
    frames = test_frames(3, (4,))
    server, cam = cam_rig({"READ:MODE?": "FVB", "READ:ROI?": "0,4,0,128", "KIN:COUN?": "3",
                           "DATA:NEXT?": [block(frames[:2].astype("<u2").tobytes()), block(b""),
                                          block(frames[2:].astype("<u2").tobytes())]})
    cam.start()
    first, none, last = cam.read_new_frames(), cam.read_new_frames(), cam.read_new_frames()
    assert server.since(0) == (b"READ:MODE?\nREAD:ROI?\nKIN:COUN?\nACQ:STAR\nSYST:ERR?\n"
                               b"DATA:NEXT?\nDATA:NEXT?\nDATA:NEXT?\n")
    assert first.dtype == none.dtype == last.dtype == np.uint16
    assert (first.shape, none.shape, last.shape) == ((2, 4), (0, 4), (1, 4))
    np.testing.assert_array_equal(np.concatenate([first, none, last]), frames)
    assert cam.frames_read == 3
    cam.start()  # a new series: the count starts again
    assert cam.frames_read == 0


def test_read_new_frames_of_an_image_series(cam_rig) -> None:
    frames = test_frames(2, (3, 5))
    server, cam = cam_rig({"DATA:NEXT?": block(frames.astype("<u2").tobytes())})
    cam.set_readout("IMAGE", (7, 5, 40, 3))
    cam.kinetic_count = 2
    cam.start()
    np.testing.assert_array_equal(cam.read_new_frames(), frames)


@pytest.mark.parametrize("payload, message", [
    (test_frames(2, (4,)).astype("<u2").tobytes()[:-2], r"14 bytes is not whole frames of 8 bytes"),
    (test_frames(4, (4,)).astype("<u2").tobytes(), r"32 bytes is not whole frames of 8 bytes, at most 3"),
    (np.array([[1, 2, 3, 4096]], "<u2").tobytes(), (r"above the 12-bit full scale 4095, first 4096 at frame 0, "
                                                    r"column 3")),
])
def test_malformed_new_frames_are_protocol_errors(cam_rig, payload: bytes, message: str) -> None:
    server, cam = cam_rig({"DATA:NEXT?": block(payload)})
    cam.set_readout("FVB", (0, 4, 0, 128))
    cam.kinetic_count = 3
    cam.start()
    with pytest.raises(ProtocolError, match=rf"camera, command 'DATA:NEXT\?': .*{message}"):
        cam.read_new_frames()
    assert cam.frames_read == 0  # nothing of a bad block is counted


def test_read_new_frames_needs_a_series_started_by_the_driver(cam_rig) -> None:
    server, cam = cam_rig()
    with pytest.raises(LimitViolation, match=r"camera, command 'DATA:NEXT\?': no series started by this driver"):
        cam.read_new_frames()
    assert server.since(0) == b""


def test_e2e_new_frames_while_the_series_goes_on(driver: SpectroscopyCamera, bench: FakeBench) -> None:
    cam = bench.camera
    driver.set_readout("FVB", (0, 32, 0, 128))
    driver.trigger_source = "EXT"
    driver.kinetic_count = 5
    driver.start()
    frames = test_frames(5, (32,))
    assert driver.read_new_frames().shape == (0, 32)  # armed, nothing taken yet
    cam.capture(frames[:2])
    np.testing.assert_array_equal(driver.read_new_frames(), frames[:2])
    assert driver.status() == "ARMED" and driver.read_new_frames().shape == (0, 32)  # each frame is sent once
    cam.capture(frames[2:])
    assert driver.status() == "READY"
    np.testing.assert_array_equal(driver.read_new_frames(), frames[2:])
    assert driver.read_new_frames().shape == (0, 32) and driver.frames_read == 5
    np.testing.assert_array_equal(driver.read_series(), frames)  # DATA? still holds the whole series
    driver.start()
    cam.capture(frames[3:])
    np.testing.assert_array_equal(driver.read_new_frames(), frames[3:])  # a new series: its own frames only
    driver.abort()
    driver.link.write("DATA:NEXT?")
    assert driver.link.query("SYST:ERR?") == '-230,"Data corrupt or stale"'  # IDLE: an error, no block
    assert driver.errors() == []


def test_e2e_new_frames_are_those_taken_by_now() -> None:
    """Frames of a realtime capture appear one by one over its time: half of it gone, half of them can be read."""
    fake = FakeBench()
    fake.camera = cam = SimSpectroscopyCamera(listener=fake, realtime=True)
    with _serve(cam, "pyserial") as drv:
        drv.set_readout("FVB", (0, 16, 0, 128))
        drv.trigger_source = "EXT"
        drv.kinetic_count = 4
        drv.start()
        frames = test_frames(4, (16,))
        cam.capture(frames, ready_in_s=1000.0, start_s=time.monotonic() - 500.0)
        assert drv.frames_acquired() == 2 and drv.status() == "ARMED"
        np.testing.assert_array_equal(drv.read_new_frames(), frames[:2])
        assert drv.read_new_frames().shape == (0, 16)
        drv.abort()


def test_frames_of_later_captures_follow_the_earlier_ones() -> None:
    """A later capture's frames count only once all earlier ones are in (frames are taken in order)."""
    cam = SimSpectroscopyCamera(realtime=True)
    s = cam.session()
    for command in (b"TRIG:SOUR EXT\n", b"READ:ROI 0,8,0,128\n", b"KIN:COUN 4\n", b"ACQ:STAR\n"):
        assert [r.data for r in s.feed(command)] == []
    now = time.monotonic()
    frames = test_frames(4, (8,))
    cam.capture(frames[:2], ready_in_s=1000.0, start_s=now - 500.0)  # 1 of 2 in
    cam.capture(frames[2:], ready_in_s=0.0, start_s=now - 1.0)  # both in, but after the first capture's second
    assert cam.frames_acquired() == 1
    reply = [r.data for r in s.feed(b"DATA:NEXT?\n")]
    assert reply == [b"#216" + frames[:1].astype("<u2").tobytes() + b"\n"]
