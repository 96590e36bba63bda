"""Phase SLM: driver bytes on the wire and limit checks, the simulated front panel, serial flow control, and the
driver against the simulator over a real pty (pyserial and pyvisa-py ASRL) and a socket:// URL."""

from __future__ import annotations

import os
import termios
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from drivers.blocks import encode_block
from drivers.errors import InstrumentError, InstrumentReportedError, InstrumentTimeout, LimitViolation, ProtocolError
from drivers.slm import PhaseSLM
from drivers.transport import open_link
from simulators.instruments import SimPhaseSLM
from simulators.scpi import Session
from common.faults import FaultPlan
from simulators.scpi.pty import PtyServer
from simulators.scpi.tcp import SCPIServer

from conftest import WireReply

N = 640
LUT = (2 * np.pi * np.arange(256) / 255).astype("<f4")
#: a pattern whose bytes include the terminator and the XON/XOFF characters
RAMP = (np.arange(N) % 256).astype(np.uint8)

WIRE_SCRIPT = {
    "*IDN?": "PNN-LAB,PS-SLM640,SLM123456,1.0",
    "PIX?": "640",
    "SEQ:MAX?": "4096",
    "LUT:DATA?": encode_block(LUT.tobytes()) + b"\n",
    "LUT:WAV?": "8.0E-07",
    "PATT?": encode_block(RAMP.tobytes()) + b"\n",
    "PATT:BLAN?": "0",
    "SEQ:COUN?": "3",
    "SEQ:DWEL?": "1.0E-02",
    "TRIG:OUTP?": "1",
    "SETT?": "5.0E-03",
    "SEQ:STAT?": ["RUN", "IDLE"],
}


@pytest.fixture
def slm_rig(wire_server, wire_link) -> Callable[..., tuple]:
    """Factory: ``slm_rig(script=None, timeout_s=0.5, serial=False, **driver_kwargs) -> (server, slm)`` over pyvisa-py
    (TCPIP SOCKET) or pyserial (``socket://``; its close takes 0.3 s, so only where the serial path matters)."""

    def make(script: dict | None = None, timeout_s: float = 0.5, serial: bool = False, **kwargs) -> tuple:
        server = wire_server({**WIRE_SCRIPT, **(script or {})})
        return server, PhaseSLM(wire_link(server, name="slm", serial=serial, timeout_s=timeout_s), **kwargs)

    return make


def sequence(k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (k, N)).astype(np.uint8)


# -- exact bytes on the wire ------------------------------------------------------------------------------------------

def test_query_bytes_and_decoding(slm_rig) -> None:
    server, slm = slm_rig()
    assert slm.identity.model == "PS-SLM640" and slm.identity.serial == "SLM123456"
    assert slm.n_pixels == 640 and slm.n_pixels == 640  # read once
    lut = slm.lut()
    assert lut.shape == (256,) and lut.dtype == np.float64
    np.testing.assert_array_equal(lut, LUT)
    assert slm.lut_wavelength_m == 8e-7
    shown = slm.pattern()
    assert shown.dtype == np.uint8
    np.testing.assert_array_equal(shown, RAMP)
    assert slm.is_blank() is False
    assert slm.sequence_count == 3
    assert slm.sequence_max == 4096 and slm.sequence_max == 4096  # read once
    assert slm.dwell_s == 0.01 and slm.trigger_out is True and slm.settle_s == 5e-3
    assert slm.running() is True and slm.running() is False
    assert server.since(0) == (b"*IDN?\nPIX?\nLUT:DATA?\nLUT:WAV?\nPATT?\nPATT:BLAN?\nSEQ:COUN?\nSEQ:MAX?\n"
                               b"SEQ:DWEL?\nTRIG:OUTP?\nSETT?\nSEQ:STAT?\nSEQ:STAT?\n")


@pytest.mark.parametrize("serial", [False, True])
def test_setting_bytes_with_block_headers(slm_rig, serial: bool) -> None:
    server, slm = slm_rig(serial=serial)
    seq = np.stack([RAMP, 255 - RAMP, np.zeros(N, np.uint8)])
    slm.show(RAMP)
    slm.blank()
    slm.load_sequence(seq)
    slm.dwell_s = 0.02
    slm.trigger_out = False
    slm.trigger_out = True
    assert slm.start_sequence() == pytest.approx(0.06)
    slm.wait_done()
    slm.reset()
    slm.clear()
    expected = (b"PIX?\nPATT #3640" + RAMP.tobytes() + b"\nSYST:ERR?\n"
                b"PATT:BLAN\nSYST:ERR?\n"
                b"SEQ:MAX?\nSEQ #41920" + seq.tobytes() + b"\nSYST:ERR?\n"
                b"SEQ:DWEL 0.02\nSYST:ERR?\n"
                b"TRIG:OUTP OFF\nSYST:ERR?\nTRIG:OUTP ON\nSYST:ERR?\n"
                b"SETT?\nSEQ:STAR\nSYST:ERR?\n*OPC?\n"
                b"*RST\n*OPC?\n*CLS\n")
    assert server.since(0, expect_len=len(expected)) == expected


def test_start_reads_what_it_does_not_know(slm_rig) -> None:
    server, slm = slm_rig()
    assert slm.start_sequence() == pytest.approx(0.03)  # 3 patterns of 10 ms, as the instrument reports
    assert server.since(0) == b"SEQ:COUN?\nSEQ:DWEL?\nSETT?\nSEQ:STAR\nSYST:ERR?\n"


def test_wait_done_waits_for_the_sequence_then_restores_the_timeout(slm_rig) -> None:
    server, slm = slm_rig({"*OPC?": WireReply([b"1\n"], delay_s=0.35)}, timeout_s=0.2)
    slm.load_sequence(sequence(3))
    slm.dwell_s = 0.1
    slm.start_sequence()  # 0.3 s: *OPC? may take 0.3 s + the link's 0.2 s
    slm.wait_done()
    assert slm.link.timeout_s == 0.2
    slm.show(RAMP)  # a single pattern: only the link's own timeout
    with pytest.raises(InstrumentTimeout, match=r"slm, command '\*OPC\?'"):
        slm.wait_done()
    assert slm.link.timeout_s == 0.2


def test_a_sequence_upload_gets_the_line_time_on_top_of_the_timeout(slm_rig) -> None:
    """3 patterns = 1920 bytes = 0.5 s at 38400 baud: the instrument may take that long before it answers."""
    server, slm = slm_rig({"SYST:ERR?": WireReply([b'+0,"No error"\n'], delay_s=0.4)}, timeout_s=0.2,
                          baud_rate=38400)
    slm.load_sequence(sequence(3))
    assert slm.link.timeout_s == 0.2


def test_an_explicit_wait_timeout_names_the_slm(slm_rig) -> None:
    server, slm = slm_rig({"*OPC?": None})
    with pytest.raises(InstrumentTimeout, match=r"slm, command '\*OPC\?': no complete reply within 0.1 s"):
        slm.wait_done(timeout_s=0.1)


@pytest.mark.parametrize("script, call, message", [
    ({"LUT:DATA?": encode_block(LUT[:255].tobytes()) + b"\n"}, "lut", "expected 256 float32 values, got 255"),
    ({"LUT:DATA?": encode_block(b"\x00" * 1023) + b"\n"}, "lut", "not a whole number of float32"),
    ({"PATT?": encode_block(bytes(639)) + b"\n"}, "pattern", "pattern block holds 639 bytes, expected 640"),
    ({"SEQ:STAT?": "BUSY"}, "running", "expected RUN or IDLE"),
    ({"PATT:BLAN?": "2"}, "is_blank", "expected 0 or 1"),
    ({"PIX?": "0"}, "pattern", "expected a positive integer"),
])
def test_malformed_replies_are_protocol_errors(slm_rig, script: dict, call: str, message: str) -> None:
    server, slm = slm_rig(script)
    with pytest.raises(ProtocolError, match=message) as info:
        getattr(slm, call)()
    assert info.value.instrument == "slm"


# -- limits: refused before anything is sent --------------------------------------------------------------------------

@pytest.mark.parametrize("method, values, message", [
    ("show", RAMP.astype(float), "PATT': gray levels must be an integer array .* got dtype float64"),
    ("show", RAMP > 0, "got dtype bool"),
    ("show", RAMP[None, :], r"expected an array of shape \[n_pixels\], got shape \(1, 640\)"),
    ("show", np.where(np.arange(N) == 5, 201, 10), r"PATT': pixel 5 has gray level 201, outside the allowed range "
                                                   r"\[10, 200\] \(1 value\(s\) out of range in all\)"),
    ("show", np.full(N, 10, np.int16) - 11 * (np.arange(N) == 7), "pixel 7 has gray level -1"),
    ("load_sequence", RAMP, r"SEQ': expected an array of shape \[K, n_pixels\], got shape \(640,\)"),
    ("load_sequence", np.zeros((0, N), np.uint8), "the sequence holds no patterns"),
    ("load_sequence", np.full((9, N), 20, np.uint8), "9 patterns exceed the safety limit max_sequence = 8"),
    ("load_sequence", np.where(np.arange(2 * N).reshape(2, N) == N + 3, 255, 20),
     r"SEQ': pattern 1, pixel 3 has gray level 255, outside the allowed range \[10, 200\]"),
])
def test_limits_are_checked_before_anything_is_sent(slm_rig, method: str, values: np.ndarray, message: str) -> None:
    server, slm = slm_rig(gray_min=10, gray_max=200, max_sequence=8)
    with pytest.raises(LimitViolation, match=message) as info:
        getattr(slm, method)(values)
    assert info.value.instrument == "slm"
    time.sleep(0.05)
    assert server.since(0) == b""  # not one byte, not even PIX?


def test_pixel_count_and_instrument_sequence_limit_are_checked_before_the_block(slm_rig) -> None:
    server, slm = slm_rig({"SEQ:MAX?": "4"})
    with pytest.raises(LimitViolation, match=r"slm, command 'PATT': 639 pixels per pattern, the SLM has 640"):
        slm.show(RAMP[:-1])
    with pytest.raises(LimitViolation, match=r"slm, command 'SEQ': 5 patterns exceed the instrument's SEQ:MAX\? = 4"):
        slm.load_sequence(sequence(5))
    time.sleep(0.05)
    assert server.since(0) == b"PIX?\nSEQ:MAX?\n"  # the facts the checks need, no pattern bytes


def test_starting_without_a_sequence_is_refused(slm_rig) -> None:
    server, slm = slm_rig({"SEQ:COUN?": "0"})
    with pytest.raises(LimitViolation, match="slm, command 'SEQ:STAR': no sequence is loaded"):
        slm.start_sequence()
    assert server.since(0) == b"SEQ:COUN?\n"


def test_dwell_range_and_constructor_limits(slm_rig) -> None:
    server, slm = slm_rig()
    for bad in (5e-4, 11.0, float("nan")):
        with pytest.raises(LimitViolation, match="slm, command 'SEQ:DWEL"):
            slm.dwell_s = bad
    assert server.since(0) == b""
    link = slm.link
    for kwargs in ({"gray_min": 100, "gray_max": 50}, {"gray_max": 256}, {"gray_min": -1}, {"gray_max": 2.5},
                   {"max_sequence": 0}, {"max_sequence": 1.5}):
        with pytest.raises(ValueError, match="slm: "):
            PhaseSLM(link, **kwargs)


# -- the simulated front panel -----------------------------------------------------------------------------------------

def ask(session: Session, text: bytes) -> list[bytes]:
    return [reply.data for reply in session.feed(text)]


def test_simulator_scpi_forms_errors_and_reset() -> None:
    sim = SimPhaseSLM(seed=3)
    assert SimPhaseSLM(seed=3).idn == sim.idn != SimPhaseSLM(seed=4).idn
    assert sim.idn.startswith("PNN-LAB,PS-SLM640,") and sim.idn.endswith(",1.0")
    s = sim.session()
    assert ask(s, b"pixels?;:SEQuence:MAXimum?;:seq:coun?\n") == [b"640;4096;0\n"]
    assert ask(s, b"LUT:WAVelength?;:SETTLE?;:SEQ:DWELL?;:TRIGGER:OUTPUT?\n") == [b"8.0E-07;5.0E-03;1.0E-02;1\n"]
    assert ask(s, b"lut:data?\n") == [b"#41024" + LUT.tobytes() + b"\n"]
    assert ask(s, b"PATTERN:DATA #3640" + RAMP.tobytes() + b"\n") == []
    assert ask(s, b"patt:data?\n") == [b"#3640" + RAMP.tobytes() + b"\n"] and not sim.is_blank
    for bad, code in ((b"PATT #3639" + bytes(639), b"-161"), (b"PATT #3641" + bytes(641), b"-223"),
                      (b"PATT 0", b"-104"), (b"SEQ #3700" + bytes(700), b"-161"), (b"SEQ #10", b"-161"),
                      (b"SEQ:STAR", b"-221"), (b"SEQ:DWEL 20", b"-222"), (b"PATT:BLAN 1", b"-108")):
        ask(s, bad + b"\n")
        assert ask(s, b"SYST:ERR?\n")[0].startswith(code), bad[:12]
    np.testing.assert_array_equal(sim.shown_pattern, RAMP)  # refused blocks changed nothing
    ask(s, b"SEQUENCE:DATA #41280" + sequence(2).tobytes() + b"\n:SEQ:DWEL MIN;:TRIG:OUTP OFF\n")
    assert ask(s, b"SEQ:COUN?;DWEL?;:TRIG:OUTP?\n") == [b"2;1.0E-03;0\n"]
    assert ask(s, b"SEQ:STAR;STAT?;*OPC?\n") == [b"IDLE;1\n"]  # not realtime: played at once
    np.testing.assert_array_equal(sim.shown_pattern, sequence(2)[-1])
    ask(s, b"*RST\n")
    assert ask(s, b"PATT:BLAN?;:SEQ:COUN?;DWEL?;:TRIG:OUTP?;:SYST:ERR?\n") == [b'1;0;1.0E-02;1;+0,"No error"\n']
    assert sim.is_blank and sim.sequence.shape == (0, N)


def test_simulator_realtime_sequence_and_settling() -> None:
    sim = SimPhaseSLM(realtime=True)
    with PtyServer(sim.session, name="slm-sim") as pty:
        slm = PhaseSLM(open_link(pty.port, name="slm", baud_rate=3_000_000, timeout_s=1.0))
        try:
            seq = sequence(5)
            slm.load_sequence(seq)
            slm.dwell_s = 0.2  # 1 s in all: time enough for the checks below while it plays, on a loaded machine
            start = time.perf_counter()
            assert slm.start_sequence() == pytest.approx(1.0)
            assert slm.running() and sim.running
            assert any((slm.pattern() == row).all() for row in seq)  # the pattern shown at that moment
            with pytest.raises(InstrumentReportedError, match="-221"):
                slm.load_sequence(seq)  # not while it plays
            slm.wait_done()
            assert 1.0 <= time.perf_counter() - start < 3.0
            assert not slm.running()
            np.testing.assert_array_equal(slm.pattern(), seq[-1])
            start = time.perf_counter()
            slm.show(RAMP)
            slm.wait_done()
            assert time.perf_counter() - start >= 0.005  # the LC settles in 5 ms
            slm.start_sequence()
            slm.blank()  # stops the sequence: the safe state wins
            assert not slm.running() and slm.is_blank()
        finally:
            slm.close()


# -- the bench's listener ---------------------------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.sequences: list[tuple[np.ndarray, float, float, bool]] = []
        self.starts: list[float] = []
        self.patterns: list[np.ndarray] = []

    def on_slm_sequence(self, patterns: np.ndarray, dwell_s: float, settle_s: float, trigger_out: bool, *,
                        start_s: float) -> None:
        self.sequences.append((patterns, dwell_s, settle_s, trigger_out))
        self.starts.append(start_s)

    def on_slm_pattern(self, pattern: np.ndarray) -> None:
        self.patterns.append(pattern)


def test_listener_receives_exactly_what_was_sent() -> None:
    bench = Recorder()
    sim = SimPhaseSLM(listener=bench)
    with PtyServer(sim.session, name="slm-sim") as pty:
        slm = PhaseSLM(open_link(pty.port, name="slm", baud_rate=3_000_000, timeout_s=1.0))
        try:
            slm.show(RAMP)
            slm.blank()
            seq = sequence(7)
            slm.load_sequence(seq)
            slm.dwell_s = 0.004
            slm.trigger_out = False
            before = time.monotonic()
            slm.start_sequence()
            slm.wait_done()
            with pytest.raises(InstrumentReportedError):
                slm.write_block("PATT ", bytes(100))  # refused: not shown, not reported to the bench
            slm.reset()
        finally:
            slm.close()
    assert len(bench.sequences) == 1
    patterns, dwell, settle, trigger = bench.sequences[0]
    assert patterns.dtype == np.uint8 and patterns.shape == (7, N) and not patterns.flags.writeable
    np.testing.assert_array_equal(patterns, seq)
    assert (dwell, settle, trigger) == (0.004, 5e-3, False)
    assert before <= bench.starts[0] <= time.monotonic()  # the monotonic time the sequence started
    assert len(bench.patterns) == 3  # PATT, PATT:BLAN, *RST
    np.testing.assert_array_equal(bench.patterns[0], RAMP)
    assert not bench.patterns[1].any() and not bench.patterns[2].any()
    assert all(p.dtype == np.uint8 and p.shape == (N,) for p in bench.patterns)


# -- end to end over a real pty (pyserial, pyvisa-py ASRL) and a socket:// URL ----------------------------------------

@pytest.fixture(params=["pty", "asrl", "socket"])
def sim_slm(request) -> Iterator[tuple[SimPhaseSLM, PhaseSLM]]:
    sim = SimPhaseSLM(seed=11)
    if request.param == "socket":
        server: PtyServer | SCPIServer = SCPIServer(sim.session, name="slm-sim")
        resource = f"socket://127.0.0.1:{server.port}"
    else:
        server = PtyServer(sim.session, name="slm-sim")
        resource = server.port if request.param == "pty" else f"ASRL{server.port}::INSTR"
    slm = PhaseSLM(open_link(resource, name="slm", baud_rate=3_000_000, timeout_s=1.0))
    try:
        yield sim, slm
    finally:
        slm.close()
        server.close()


def test_driver_against_the_simulator(sim_slm) -> None:
    sim, slm = sim_slm
    assert str(slm.identity.serial) in sim.idn and slm.identity.model == "PS-SLM640"
    assert slm.n_pixels == N and slm.sequence_max == 4096
    np.testing.assert_array_equal(slm.lut(), sim.lut_rad)
    np.testing.assert_allclose(slm.lut(), 2 * np.pi * np.arange(256) / 255, rtol=1e-6)
    assert slm.lut_wavelength_m == 8e-7 and slm.settle_s == 5e-3
    assert slm.is_blank()
    slm.show(RAMP)
    np.testing.assert_array_equal(slm.pattern(), RAMP)
    assert not slm.is_blank() and not sim.is_blank
    slm.blank()
    assert slm.is_blank() and sim.is_blank
    seq = sequence(4, seed=5)
    slm.load_sequence(seq)
    slm.dwell_s = 0.002
    slm.trigger_out = False
    assert (slm.sequence_count, slm.dwell_s, slm.trigger_out) == (4, 0.002, False)
    slm.start_sequence()
    slm.wait_done()
    assert not slm.running()
    np.testing.assert_array_equal(slm.pattern(), seq[-1])
    # a block of the wrong length, as a faulty third-party client would send it: queued error, pattern unchanged
    with pytest.raises(InstrumentReportedError, match=r"slm, command 'PATT #<639 byte block>'.*-161") as info:
        slm.write_block("PATT ", bytes(639))
    assert info.value.errors == [(-161, "Invalid block data")]
    slm.link.write_block("SEQ ", bytes(N + 1))
    slm.link.write_block("PATT ", bytes(N + 1))
    assert slm.errors() == [(-161, "Invalid block data"), (-223, "Too much data")]
    np.testing.assert_array_equal(slm.pattern(), seq[-1])
    assert slm.sequence_count == 4
    slm.reset()
    assert slm.is_blank() and slm.sequence_count == 0 and slm.dwell_s == 0.01 and slm.trigger_out


# -- a serial frame cut short -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("visa", [False, True])
def test_a_block_cut_short_on_the_serial_line_is_an_error_not_padding(visa: bool) -> None:
    sim = SimPhaseSLM()
    with PtyServer(sim.session, name="slm-sim", faults=FaultPlan(short_block=1.0, seed=3)) as pty:
        slm = PhaseSLM(open_link(f"ASRL{pty.port}::INSTR" if visa else pty.port, name="slm", timeout_s=0.3))
        try:
            with pytest.raises(InstrumentError) as info:
                slm.lut()
            assert slm.is_blank()  # text replies are whole; the late bytes of the broken reply were discarded
        finally:
            slm.close()
    assert isinstance(info.value, InstrumentTimeout)
    message = str(info.value)
    assert "slm" in message and "LUT:DATA?" in message
    assert ("declared 1024 bytes, fewer arrived" if visa else "expected 1024 bytes, only") in message


# -- serial flow control in the transport ------------------------------------------------------------------------------

def _termios_flags(port: str) -> tuple[bool, bool]:
    """(RTS/CTS, XON/XOFF) as the tty itself has them now."""
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        iflag, _, cflag, *_ = termios.tcgetattr(fd)
    finally:
        os.close(fd)
    return bool(cflag & termios.CRTSCTS), bool(iflag & termios.IXON and iflag & termios.IXOFF)


@pytest.mark.parametrize("flow_control, flags", [("none", (False, False)), ("rtscts", (True, False)),
                                                 ("xonxoff", (False, True))])
def test_flow_control_reaches_the_serial_port(flow_control: str, flags: tuple[bool, bool]) -> None:
    sim = SimPhaseSLM()
    with PtyServer(sim.session, name="slm-sim") as pty:
        for resource in (pty.port, f"ASRL{pty.port}::INSTR"):  # pyserial, and pyvisa-py's ASRL resource
            link = open_link(resource, name="slm", timeout_s=1.0, flow_control=flow_control)  # type: ignore[arg-type]
            try:
                assert _termios_flags(pty.port) == flags, resource
                assert link.query("*IDN?") == sim.idn
                if flow_control != "xonxoff":  # XON/XOFF eats bytes 0x11/0x13: binary blocks need none or RTS/CTS
                    slm = PhaseSLM(link)
                    slm.show(RAMP)
                    np.testing.assert_array_equal(slm.pattern(), RAMP)
            finally:
                link.close()


def test_unknown_flow_control_is_refused() -> None:
    with pytest.raises(ValueError, match="slm: flow_control must be one of none, rtscts, xonxoff, got 'dsrdtr'"):
        open_link("loop://", name="slm", flow_control="dsrdtr")  # type: ignore[arg-type]


# -- the double-buffered sequence memory: two banks, one loaded while the other plays ------------------------------

def test_bank_command_bytes(slm_rig) -> None:
    server, slm = slm_rig({"SEQ:BANK2:COUN?": "3", "SEQ:BANK?": "2"})
    seq = np.stack([RAMP, 255 - RAMP, np.zeros(N, np.uint8)])
    slm.load_sequence(seq, bank=2)
    slm.load_sequence(seq[:1], bank=1)
    assert slm.start_sequence(bank=2) == pytest.approx(0.03)  # 3 patterns of 10 ms, dwell read from the SLM
    slm.wait_done()
    assert slm.start_sequence(bank=1) == pytest.approx(0.01)  # counts known from the uploads: no SEQ:COUN?
    assert slm.bank_count(2) == 3 and slm.playing_bank() == 2
    expected = (b"PIX?\nSEQ:MAX?\nSEQ:BANK2 #41920" + seq.tobytes() + b"\nSYST:ERR?\n"
                b"SEQ:BANK1 #3640" + RAMP.tobytes() + b"\nSYST:ERR?\n"
                b"SEQ:DWEL?\nSETT?\nSEQ:BANK2:STAR\nSYST:ERR?\n*OPC?\n"
                b"SEQ:BANK1:STAR\nSYST:ERR?\nSEQ:BANK2:COUN?\nSEQ:BANK?\n")
    assert server.since(0, expect_len=len(expected)) == expected


def test_a_bank_start_reads_the_count_it_does_not_know(slm_rig) -> None:
    server, slm = slm_rig({"SEQ:BANK2:COUN?": "0"})
    with pytest.raises(LimitViolation, match=r"slm, command 'SEQ:BANK2:STAR': no sequence is loaded "
                                             r"\(SEQ:BANK2:COUN\? is 0\)"):
        slm.start_sequence(bank=2)
    assert server.since(0) == b"SEQ:BANK2:COUN?\n"


@pytest.mark.parametrize("bank", [0, 3, True, "2", 1.5])
def test_a_bank_the_slm_does_not_have_is_refused_before_anything_is_sent(slm_rig, bank) -> None:
    server, slm = slm_rig()
    for call in (lambda: slm.load_sequence(sequence(2), bank=bank), lambda: slm.start_sequence(bank=bank),
                 lambda: slm.bank_count(bank)):
        with pytest.raises(LimitViolation, match=r"slm, command 'SEQ:BANK.*': bank .* is not one of 1, 2"):
            call()
    assert server.since(0) == b""


def test_simulator_banks_scpi_forms_and_errors() -> None:
    sim = SimPhaseSLM(seed=3)
    s = sim.session()
    one, two = sequence(2, seed=1), sequence(3, seed=2)
    assert ask(s, b"SEQ:BANK2 #41920" + two.tobytes() + b"\n") == []
    assert ask(s, b"SEQuence:BANK1:DATA #41280" + one.tobytes() + b"\n") == []
    assert ask(s, b"SEQ:BANK2:COUN?;:SEQ:BANK1:COUN?;:SEQ:COUN?;:SEQ:BANK?\n") == [b"3;2;2;0\n"]
    np.testing.assert_array_equal(sim.sequence, one)  # the plain SEQ commands are bank 1
    np.testing.assert_array_equal(sim.banks[1], two)
    assert ask(s, b"seq:bank2:star;*OPC?\n") == [b"1\n"]  # not realtime: played at once
    np.testing.assert_array_equal(sim.shown_pattern, two[-1])
    for bad, code in ((b"SEQ:BANK3 #3640" + bytes(640), b"-114"), (b"SEQ:BANK3:STAR", b"-114"),
                      (b"SEQ:BANK2 #3700" + bytes(700), b"-161"), (b"SEQ:BANK2 0", b"-104")):
        ask(s, bad + b"\n")
        assert ask(s, b"SYST:ERR?\n")[0].startswith(code), bad[:14]
    np.testing.assert_array_equal(sim.banks[1], two)  # refused blocks changed nothing
    ask(s, b"*RST\n")
    assert ask(s, b"SEQ:BANK1:COUN?;:SEQ:BANK2:COUN?\n") == [b"0;0\n"]
    ask(s, b"SEQ:BANK2:STAR\n")
    assert ask(s, b"SYST:ERR?\n")[0].startswith(b"-221")  # an empty bank does not start


def test_simulator_loads_one_bank_while_the_other_plays() -> None:
    """Realtime: bank 2 takes a new sequence while bank 1 plays; bank 1 and a second start are refused meanwhile;
    once bank 1 is done, bank 2 plays its own patterns and the bench hears of each start."""
    bench = Recorder()
    sim = SimPhaseSLM(listener=bench, realtime=True)
    with PtyServer(sim.session, name="slm-sim") as pty:
        slm = PhaseSLM(open_link(pty.port, name="slm", baud_rate=3_000_000, timeout_s=1.0))
        try:
            one, two = sequence(5, seed=1), sequence(4, seed=2)
            slm.load_sequence(one, bank=1)
            slm.dwell_s = 0.2  # 1 s: time enough for the checks below while it plays, on a loaded machine
            slm.start_sequence(bank=1)
            slm.load_sequence(two, bank=2)  # while bank 1 plays
            assert slm.playing_bank() == 1 and sim.running
            with pytest.raises(InstrumentReportedError, match=r"'SEQ:BANK1 .*-221"):
                slm.load_sequence(two, bank=1)  # not the bank that plays
            with pytest.raises(InstrumentReportedError, match=r"'SEQ:BANK2:STAR'.*-221"):
                slm.start_sequence(bank=2)  # one sequence at a time: no queued start
            np.testing.assert_array_equal(sim.banks[0], one)
            slm.wait_done()
            assert slm.playing_bank() == 0
            slm.start_sequence(bank=2)
            assert slm.playing_bank() == 2
            assert any((slm.pattern() == row).all() for row in two)
            slm.blank()  # stops it: the safe state wins
            assert slm.playing_bank() == 0 and slm.is_blank()
        finally:
            slm.close()
    assert [len(p) for p, *_ in bench.sequences] == [5, 4]
    np.testing.assert_array_equal(bench.sequences[1][0], two)
    assert bench.starts[1] - bench.starts[0] >= 5 * 0.2  # bank 2 started after bank 1 had played
