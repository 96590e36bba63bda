"""Keysight InfiniiVision driver: exact bytes on the wire, waveform decoding and polling, over real pyvisa-py."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from drivers.errors import (ConnectionLost, InstrumentError, InstrumentReportedError, InstrumentTimeout,
                            InstrumentWasReset, LimitViolation, ProtocolError)
from drivers.scope import KeysightInfiniiVision, parse_preamble

from conftest import WireReply

XINC, XORIG, XREF = 1e-6, -2e-6, 0
YINC, YORIG, YREF = 1e-4, 0.5, 32768


def preamble(fmt: int, points: int, yref: float = YREF) -> str:
    """A :WAV:PRE? reply as the scope writes it."""
    return (f"+{fmt},+0,+{points},+1,+{XINC:.6E},{XORIG:+.6E},+{XREF},+{YINC:.6E},+{YORIG:.6E},+{yref}")


def block8(payload: bytes) -> bytes:
    """The '#8' + 8-digit header the InfiniiVision scopes send, plus the terminator."""
    return b"#8%08d" % len(payload) + payload + b"\n"


@pytest.fixture
def scope_rig(wire_server, wire_link):
    """Factory: ``scope_rig(script=None, **driver_kwargs) -> (server, scope)``."""

    def make(script: dict | None = None, timeout_s: float = 0.5, **kwargs) -> tuple:
        server = wire_server(script)
        scope = KeysightInfiniiVision(wire_link(server, name="scope", timeout_s=timeout_s), **kwargs)
        return server, scope

    return make


def test_setup_commands_bytes(scope_rig) -> None:
    server, scope = scope_rig()
    scope.set_channel(1, scale_v_per_div=0.5, offset_v=0.0, coupling="dc", probe=10, display=True)
    scope.set_channel(2, display=False)
    scope.set_range(2, 4.0)
    scope.set_timebase(1e-3, position_s=2e-4, reference="CENTER")
    scope.set_edge_trigger(source="EXT", level_v=1.0, slope="POS")
    scope.set_edge_trigger(source=2, level_v=-0.25, slope="negative")
    scope.set_acquisition(type="AVER", count=16)
    scope.run()
    scope.stop()
    scope.digitize([1, 2])
    scope.wait_opc()
    assert server.since(0) == (
        b":CHAN1:SCAL 0.5\n:CHAN1:OFFS 0.0\n:CHAN1:COUP DC\n:CHAN1:PROB 10.0\n:CHAN1:DISP 1\nSYST:ERR?\n"
        b":CHAN2:DISP 0\nSYST:ERR?\n"
        b":CHAN2:RANG 4.0\nSYST:ERR?\n"
        b":TIM:RANG 0.001\n:TIM:POS 0.0002\n:TIM:REF CENT\nSYST:ERR?\n"
        b":TRIG:MODE EDGE\n:TRIG:EDGE:SOUR EXT\n:TRIG:EDGE:LEV 1.0\n:TRIG:EDGE:SLOP POS\nSYST:ERR?\n"
        b":TRIG:MODE EDGE\n:TRIG:EDGE:SOUR CHAN2\n:TRIG:EDGE:LEV -0.25\n:TRIG:EDGE:SLOP NEG\nSYST:ERR?\n"
        b":ACQ:TYPE AVER\n:ACQ:COUN 16\nSYST:ERR?\n"
        b":RUN\nSYST:ERR?\n:STOP\nSYST:ERR?\n:DIG CHAN1,CHAN2\nSYST:ERR?\n*OPC?\n")


def test_verify_settings_reads_back_what_the_setters_applied(scope_rig) -> None:
    """After a reconnect or a reset the setup calls verify_settings: one query per setting applied, numbers compared
    as numbers, words as words; a setting the scope does not hold is an error naming its query and both values."""
    script = {":CHAN1:SCAL?": "+5.00000E-01", ":CHAN1:COUP?": "DC", ":CHAN1:DISP?": "1",
              ":TIM:RANG?": "+1.00000E-03", ":TIM:POS?": "+2.00000E-04", ":TIM:REF?": "CENT"}
    server, scope = scope_rig(script)
    scope.set_channel(1, scale_v_per_div=0.5, coupling="dc", display=True)
    scope.set_timebase(1e-3, position_s=2e-4, reference="CENTER")
    start = len(server.since(0))
    scope.verify_settings()
    assert server.since(start) == (b":CHAN1:SCAL?\n:CHAN1:COUP?\n:CHAN1:DISP?\n"
                                   b":TIM:RANG?\n:TIM:POS?\n:TIM:REF?\n")
    server.script[":TIM:REF?"] = "LEFT"  # e.g. a reset the power-on bit did not reveal
    with pytest.raises(InstrumentError, match=r"scope, command ':TIM:REF\?': reads back 'LEFT', 'CENT' was applied"):
        scope.verify_settings()


def test_word_waveform_bytes_and_scaling(scope_rig) -> None:
    codes = [0, 32768, 65535, 100, 40000]
    server, scope = scope_rig({":WAV:PRE?": preamble(1, 5),
                               ":WAV:DATA?": block8(struct.pack("<5H", *codes))})
    wave = scope.read_waveform(1, points=5, fmt="WORD")
    assert server.since(0) == (b":WAV:SOUR CHAN1\n:WAV:FORM WORD\n:WAV:BYT LSBF\n:WAV:UNS ON\n"
                               b":WAV:POIN:MODE RAW\n:WAV:POIN 5\nSYST:ERR?\n:WAV:PRE?\n:WAV:DATA?\n")
    np.testing.assert_allclose(wave.volts, (np.array(codes) - YREF) * YINC + YORIG)
    np.testing.assert_allclose(wave.t, np.arange(5) * XINC + XORIG)
    assert wave.channel == 1 and wave.preamble.points == 5 and wave.preamble.format == "WORD"
    assert wave.volts[1] == pytest.approx(0.5)


def test_byte_waveform_bytes_and_scaling(scope_rig) -> None:
    server, scope = scope_rig({":WAV:PRE?": preamble(0, 4, yref=128),
                               ":WAV:DATA?": block8(bytes([0, 128, 255, 10]))})
    wave = scope.read_waveform(2, points=4, fmt="BYTE")
    assert server.since(0) == (b":WAV:SOUR CHAN2\n:WAV:FORM BYTE\n:WAV:UNS ON\n"
                               b":WAV:POIN:MODE RAW\n:WAV:POIN 4\nSYST:ERR?\n:WAV:PRE?\n:WAV:DATA?\n")
    np.testing.assert_allclose(wave.volts, (np.array([0, 128, 255, 10]) - 128) * YINC + YORIG)


def test_transfer_settings_are_sent_again_only_when_they_change(scope_rig) -> None:
    """The scope keeps its :WAV settings, so a second record of the same shape costs two queries; other points, a
    reset (``*RST``, or the power-on bit seen by ``check_status``) or a preamble that disagrees send them again."""
    server, scope = scope_rig({":WAV:PRE?": preamble(0, 4, yref=128), ":WAV:DATA?": block8(bytes([0, 128, 255, 10])),
                               "*ESR?;:SYST:ERR?": '+128;+0,"No error"'})
    settings = b":WAV:SOUR CHAN2\n:WAV:FORM BYTE\n:WAV:UNS ON\n:WAV:POIN:MODE RAW\n:WAV:POIN 4\nSYST:ERR?\n"
    transfer = b":WAV:PRE?\n:WAV:DATA?\n"
    first = scope.read_waveform(2, points=4, fmt="BYTE")
    mark = server.mark()
    again = scope.read_waveform(2, points=4, fmt="BYTE")
    assert server.since(mark) == transfer
    np.testing.assert_array_equal(again.volts, first.volts)
    mark = server.mark()
    scope.read_waveform(2, points=3, fmt="BYTE")  # the preamble says 4 points: only the request differs here
    assert server.since(mark) == settings.replace(b"POIN 4", b"POIN 3") + transfer
    scope.reset()
    mark = server.mark()
    scope.read_waveform(2, points=4, fmt="BYTE")
    assert server.since(mark) == settings + transfer
    with pytest.raises(InstrumentWasReset):
        scope.check_status()
    mark = server.mark()
    scope.read_waveform(2, points=4, fmt="BYTE")
    assert server.since(mark) == settings + transfer
    with pytest.raises(ProtocolError, match="format BYTE, requested WORD"):
        scope.read_waveform(2, points=4, fmt="WORD")
    mark = server.mark()
    scope.read_waveform(2, points=4, fmt="BYTE")
    assert server.since(mark) == settings + transfer


def test_ascii_waveform_comes_inside_a_block(scope_rig) -> None:
    server, scope = scope_rig({":WAV:PRE?": preamble(4, 3),
                               ":WAV:DATA?": block8(b"-1.25000E-01,+0.00000E+00,+2.50000E-02")})
    wave = scope.read_waveform(1, points=3, fmt="ascii")
    assert server.since(0).startswith(b":WAV:SOUR CHAN1\n:WAV:FORM ASC\n:WAV:POIN:MODE RAW\n")
    np.testing.assert_allclose(wave.volts, [-0.125, 0.0, 0.025])


@pytest.mark.parametrize("script, message", [
    ({":WAV:PRE?": preamble(1, 5), ":WAV:DATA?": block8(struct.pack("<4H", 1, 2, 3, 4))},
     "preamble announced 5 points, the data block holds 4"),
    ({":WAV:PRE?": preamble(1, 2), ":WAV:DATA?": block8(b"\x00\x01\x02")}, "whole number of uint16"),
    ({":WAV:PRE?": preamble(0, 5), ":WAV:DATA?": block8(b"\x00" * 5)}, "format BYTE, requested WORD"),
    ({":WAV:PRE?": "+1,+0,+5", ":WAV:DATA?": block8(b"")}, "cannot parse the waveform preamble"),
    ({":WAV:PRE?": preamble(1, 2), ":WAV:DATA?": b"#9garbage!!\n"}, "non-numeric length"),
])
def test_malformed_waveforms_are_protocol_errors(scope_rig, script: dict, message: str) -> None:
    server, scope = scope_rig(script)
    with pytest.raises(ProtocolError, match=message) as info:
        scope.read_waveform(1, points=5)
    assert info.value.instrument == "scope"


def test_ascii_garbage_is_a_protocol_error(scope_rig) -> None:
    server, scope = scope_rig({":WAV:PRE?": preamble(4, 2), ":WAV:DATA?": block8(b"1.0,,2.0")})
    with pytest.raises(ProtocolError, match="scope, command ':WAV:DATA\\?': ASCII waveform data"):
        scope.read_waveform(1, points=2, fmt="ASC")


def test_short_data_block_names_scope_and_command(scope_rig) -> None:
    server, scope = scope_rig({":WAV:PRE?": preamble(1, 1000),
                               ":WAV:DATA?": WireReply([b"#800002000" + b"\x00" * 10], close=True)},
                              timeout_s=0.3)
    with pytest.raises((InstrumentTimeout, ConnectionLost, ProtocolError)) as info:
        scope.read_waveform(1, points=1000)
    assert "scope" in str(info.value) and ":WAV:DATA?" in str(info.value)


def test_too_many_points_is_refused_before_sending(scope_rig) -> None:
    server, scope = scope_rig(max_points=1000)
    with pytest.raises(LimitViolation, match=":WAV:POIN.*1001 points.*\\[1, 1000\\]"):
        scope.read_waveform(1, points=1001)
    with pytest.raises(LimitViolation, match="channel must be 1..4"):
        scope.read_waveform(5, points=10)
    with pytest.raises(LimitViolation, match="WORD"):
        scope.read_waveform(1, points=10, fmt="FLOAT")
    scope.wait_opc()
    assert server.since(0) == b"*OPC?\n"


def test_arm_wait_and_trigger_polling(scope_rig) -> None:
    server, scope = scope_rig({":AER?": ["0", "0", "1"], ":OPER:COND?": ["+8", "+8", "+40", "+32"],
                               ":TER?": ["+1", "+0"]})
    scope.arm_single(timeout_s=1.0)
    scope.wait_complete(timeout_s=1.0)
    assert scope.triggered() is True and scope.triggered() is False
    # not armed at the first look: the error queue is read (:SING was taken), then the polling goes on
    assert server.since(0) == (b":SING\n:AER?\nSYST:ERR?\n:AER?\n:AER?\n"
                               b":OPER:COND?\n:OPER:COND?\n:OPER:COND?\n:OPER:COND?\n:TER?\n:TER?\n")


def test_a_scope_armed_at_once_costs_one_round_trip(scope_rig) -> None:
    server, scope = scope_rig({":AER?": "1"})
    scope.arm_single(timeout_s=1.0)
    assert server.since(0) == b":SING\n:AER?\n"


def test_a_refused_single_is_reported_at_once_naming_it(scope_rig) -> None:
    server, scope = scope_rig({":AER?": "0", "SYST:ERR?": ['-221,"Settings conflict"', '+0,"No error"']})
    start = time.monotonic()
    with pytest.raises(InstrumentReportedError, match=":SING.*-221.*Settings conflict"):
        scope.arm_single(timeout_s=5.0)
    assert time.monotonic() - start < 2.0  # not after the arm's timeout
    assert server.since(0) == b":SING\n:AER?\nSYST:ERR?\nSYST:ERR?\n"


def test_wait_complete_times_out_naming_the_scope(scope_rig) -> None:
    server, scope = scope_rig({":OPER:COND?": "+8"})
    start = time.monotonic()
    with pytest.raises(InstrumentTimeout, match="scope, command ':OPER:COND\\?'.*did not complete within 0.2 s"):
        scope.wait_complete(timeout_s=0.2)
    assert 0.2 <= time.monotonic() - start < 1.5


def test_parse_preamble_fields() -> None:
    pre = parse_preamble("+1,+2,+62500,+16,+1.60000000E-08,-5.00000000E-04,+0,+3.05175781E-05,"
                         "+0.00000000E+00,+32768")
    assert (pre.format, pre.acquisition_type, pre.points, pre.count) == ("WORD", "AVER", 62500, 16)
    assert pre.x_origin_s == -5e-4 and pre.y_reference == 32768
