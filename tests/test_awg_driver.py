"""Keysight 33500B driver: exact bytes on the wire (real pyvisa-py link to a scripted server) and safety limits."""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Callable

import numpy as np
import pytest

from drivers.awg import Keysight33500B
from drivers.errors import InstrumentReportedError, LimitViolation

AWG_SCRIPT = {
    "SOUR1:VOLT?": "+1.00000000000000E-01", "SOUR1:VOLT:OFFS?": "+0.00000000000000E+00",
    "SOUR2:VOLT?": "+1.00000000000000E-01", "SOUR2:VOLT:OFFS?": "+0.00000000000000E+00",
    "OUTP1?": "0", "OUTP1:LOAD?": "+9.9E+37",
}
SETUP = b"OUTP1:LOAD 50.0\nSYST:ERR?\nSOUR1:VOLT?\nSOUR1:VOLT:OFFS?\n"


@pytest.fixture
def awg_rig(wire_server, wire_link):
    """Factory: ``awg_rig(script=None, **driver_kwargs) -> (server, awg)``."""

    def make(script: dict | None = None, **kwargs) -> tuple:
        server = wire_server({**AWG_SCRIPT, **(script or {})})
        kwargs.setdefault("max_abs_volts", 2.5)
        awg = Keysight33500B(wire_link(server, name="awg", timeout_s=0.5), **kwargs)
        return server, awg

    return make


def sent_by(server, awg: Keysight33500B, call: Callable[[], object]) -> bytes:
    """Bytes the call put on the wire (synchronised by a trailing *OPC? query, which is stripped)."""
    mark = server.mark()
    call()
    awg.wait_opc()
    data = server.since(mark)
    assert data.endswith(b"*OPC?\n")
    return data[:-len(b"*OPC?\n")]


def refused(server, awg: Keysight33500B, call: Callable[[], object]) -> LimitViolation:
    """Assert the call raises LimitViolation and sends nothing at all."""
    mark = server.mark()
    with pytest.raises(LimitViolation) as info:
        call()
    awg.wait_opc()
    assert server.since(mark) == b"*OPC?\n"
    return info.value


def test_construction_sets_load_and_reads_levels(awg_rig) -> None:
    server, awg = awg_rig()
    assert server.since(0) == SETUP
    assert awg.settings == {"amplitude": 0.1, "offset": 0.0}
    assert str(awg.identity) == "Keysight Technologies 33522B (serial MY53400123, firmware 4.00-1.19-2.00-58-00)"


def test_binary_arb_upload_bytes(awg_rig) -> None:
    server, awg = awg_rig()
    samples = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 0.25, -0.25, 1e-6])
    sent = sent_by(server, awg, lambda: awg.upload_arb("PNN_1", samples))
    codes = struct.pack("<8h", 0, 16384, -16384, 32767, -32767, 8192, -8192, 0)
    assert sent == (b"FORM:BORD SWAP\n"
                    b"SOUR1:DATA:VOL:CLE\n"
                    b"SOUR1:DATA:ARB:DAC PNN_1,#216" + codes + b"\n"
                    b"SOUR1:FUNC:ARB PNN_1\n"
                    b"SOUR1:FUNC ARB\nSYST:ERR?\n")


def test_an_error_in_an_upload_names_its_commands(awg_rig) -> None:
    """The error queue is read once after the upload's five commands: an error is raised naming all of them (the
    block by its size)."""
    server, awg = awg_rig({"SYST:ERR?": ['+0,"No error"', '-258,"Media protected"', '+0,"No error"']})  # 1st: setup
    with pytest.raises(InstrumentReportedError) as raised:
        awg.upload_arb("PNN_1", np.zeros(8))
    message = str(raised.value)
    assert "SOUR1:DATA:ARB:DAC PNN_1,#<16 byte block>" in message and "SOUR1:FUNC ARB" in message
    assert "-258" in message


def test_settings_in_one_block_share_one_look_at_the_error_queue(awg_rig) -> None:
    """errors_checked_once: the upload's commands and the sample rate, then one SYST:ERR? for all of them; limits
    are still checked before anything is sent."""
    server, awg = awg_rig()

    def upload_and_rate() -> None:
        with awg.errors_checked_once():
            awg.upload_arb("W", np.zeros(8))
            awg.sample_rate = 1e6
    sent = sent_by(server, awg, upload_and_rate)
    assert sent.startswith(b"FORM:BORD SWAP\nSOUR1:DATA:VOL:CLE\nSOUR1:DATA:ARB:DAC W,#216")
    assert sent.endswith(b"SOUR1:FUNC:ARB W\nSOUR1:FUNC ARB\nSOUR1:FUNC:ARB:SRAT 1000000.0\nSYST:ERR?\n")
    assert sent.count(b"SYST:ERR?") == 1
    assert awg.settings["sample_rate"] == 1e6

    def refused_in_block() -> None:
        with awg.errors_checked_once():
            awg.sample_rate = 1e9  # above the limit: nothing sent, and no look at the queue either
    refused(server, awg, refused_in_block)


def test_an_error_in_a_block_names_all_its_commands_and_a_failed_block_reads_nothing(awg_rig) -> None:
    server, awg = awg_rig({"SYST:ERR?": ['+0,"No error"', '-222,"Data out of range"', '+0,"No error"']})
    with pytest.raises(InstrumentReportedError) as raised:
        with awg.errors_checked_once():
            awg.upload_arb("W", np.zeros(8))
            awg.sample_rate = 1e6
    message = str(raised.value)
    assert "SOUR1:FUNC ARB; SOUR1:FUNC:ARB:SRAT 1000000.0" in message and "-222" in message

    def fails_after_a_command() -> None:
        with awg.errors_checked_once():
            awg.sample_rate = 1e6
            raise RuntimeError("the caller's own error")
    mark = server.mark()
    with pytest.raises(RuntimeError, match="the caller's own error"):
        fails_after_a_command()
    awg.wait_opc()
    assert server.since(mark) == b"SOUR1:FUNC:ARB:SRAT 1000000.0\n*OPC?\n"  # the queue is left for the next check
    assert sent_by(server, awg, lambda: setattr(awg, "offset", 0.0)) == b"SOUR1:VOLT:OFFS 0.0\nSYST:ERR?\n"


def test_large_binary_upload_uses_a_six_digit_header(awg_rig) -> None:
    server, awg = awg_rig()
    samples = np.sin(np.linspace(0, 20, 100_000))
    sent = sent_by(server, awg, lambda: awg.upload_arb("BIG", samples))
    start = sent.index(b"#")
    assert sent[start:start + 8] == b"#6200000"
    codes = np.frombuffer(sent[start + 8:start + 8 + 200_000], dtype="<i2")
    np.testing.assert_array_equal(codes, np.round(samples * 32767))


def test_ascii_arb_upload_bytes(awg_rig) -> None:
    server, awg = awg_rig()
    samples = [0.0, 0.5, -0.5, 1.0, -1.0, 0.25, -0.125, 0.1]
    sent = sent_by(server, awg, lambda: awg.upload_arb_ascii("ramp", samples))
    assert sent == (b"SOUR1:DATA:VOL:CLE\n"
                    b"SOUR1:DATA:ARB ramp,0.0,0.5,-0.5,1.0,-1.0,0.25,-0.125,0.1\n"
                    b"SOUR1:FUNC:ARB ramp\nSOUR1:FUNC ARB\nSYST:ERR?\n")


def test_level_output_and_rate_commands_use_the_channel_prefix(awg_rig) -> None:
    server, awg = awg_rig(channel=2)
    assert server.since(0) == SETUP.replace(b"OUTP1", b"OUTP2").replace(b"SOUR1", b"SOUR2")

    def settings() -> None:
        awg.amplitude = 1.5
        awg.offset = -0.25
        awg.sample_rate = 1e6
        awg.output = True
        awg.output = False
    assert sent_by(server, awg, settings) == (b"SOUR2:VOLT 1.5\nSYST:ERR?\nSOUR2:VOLT:OFFS -0.25\nSYST:ERR?\n"
                                              b"SOUR2:FUNC:ARB:SRAT 1000000.0\nSYST:ERR?\n"
                                              b"OUTP2 ON\nSYST:ERR?\nOUTP2 OFF\nSYST:ERR?\n")


def test_burst_trigger_and_queries(awg_rig) -> None:
    server, awg = awg_rig({"SOUR1:FUNC:ARB:SRAT?": "+2.50000000000000E+08"})

    def burst() -> None:
        awg.configure_burst(n_cycles=1, trigger_source="BUS")
        awg.trigger()
        awg.continuous()
    assert sent_by(server, awg, burst) == (b"SOUR1:BURS:MODE TRIG\nSYST:ERR?\nSOUR1:BURS:NCYC 1\nSYST:ERR?\n"
                                           b"TRIG1:SOUR BUS\nSYST:ERR?\nSOUR1:BURS:STAT ON\nSYST:ERR?\n"
                                           b"*TRG\nSYST:ERR?\nSOUR1:BURS:STAT OFF\nSYST:ERR?\n")
    assert awg.sample_rate == 250e6
    assert awg.output is False
    assert awg.load == "INF"


def test_high_z_load_doubles_the_instrument_limits(awg_rig) -> None:
    server, awg = awg_rig(load_ohm="INF", max_abs_volts=100.0)
    assert server.since(0).startswith(b"OUTP1:LOAD INF\n")
    assert awg.amplitude_limits_vpp() == (2e-3, 20.0)
    awg.amplitude = 16.0  # beyond 10 Vpp but fine into High-Z
    assert "instrument limit 10 V" in str(refused(server, awg, lambda: setattr(awg, "offset", 3.0)))


def test_amplitude_beyond_the_safety_limit_is_refused(awg_rig) -> None:
    server, awg = awg_rig(max_abs_volts=1.0)
    err = refused(server, awg, lambda: setattr(awg, "amplitude", 2.5))
    assert "awg" in str(err) and "SOUR1:VOLT 2.5" in str(err) and "max_abs_volts = 1 V" in str(err)
    refused(server, awg, lambda: setattr(awg, "amplitude", 12.0))  # also beyond the 10 Vpp instrument limit
    refused(server, awg, lambda: setattr(awg, "amplitude", 1e-4))  # below 1 mVpp
    refused(server, awg, lambda: setattr(awg, "amplitude", float("nan")))


def test_amplitude_and_offset_are_checked_together(awg_rig) -> None:
    server, awg = awg_rig(max_abs_volts=1.0)
    awg.offset = 0.8
    err = refused(server, awg, lambda: setattr(awg, "amplitude", 1.0))
    assert "peaks at |offset| + Vpp/2 = 1.3 V" in str(err)
    awg.amplitude = 0.4
    refused(server, awg, lambda: setattr(awg, "offset", -0.9))
    refused(server, awg, lambda: awg.set_levels(2.0, 0.1))
    sent = sent_by(server, awg, lambda: awg.set_levels(1.8, 0.0))  # offset first: never peaks above the limit
    assert sent == b"SOUR1:VOLT:OFFS 0.0\nSYST:ERR?\nSOUR1:VOLT 1.8\nSYST:ERR?\n"


def test_unsafe_levels_found_at_start_switch_the_output_off(awg_rig) -> None:
    server, awg = awg_rig({"SOUR1:VOLT?": "+1.0E+01", "SOUR1:VOLT:OFFS?": "+2.0E+00"}, max_abs_volts=2.0)
    assert server.since(0) == SETUP + b"OUTP1 OFF\nSYST:ERR?\n"
    refused(server, awg, lambda: setattr(awg, "output", True))
    refused(server, awg, lambda: setattr(awg, "amplitude", 1.0))  # offset 2 V alone reaches the limit
    sent = sent_by(server, awg, lambda: awg.set_levels(1.0, 0.5))  # amplitude first: shrinking
    assert sent == b"SOUR1:VOLT 1.0\nSYST:ERR?\nSOUR1:VOLT:OFFS 0.5\nSYST:ERR?\n"
    assert sent_by(server, awg, lambda: setattr(awg, "output", True)) == b"OUTP1 ON\nSYST:ERR?\n"


def test_a_speaker_awg_refuses_any_dc_offset(awg_rig) -> None:
    server, awg = awg_rig(max_abs_volts=1.0, max_abs_offset_volts=0.0)
    err = refused(server, awg, lambda: setattr(awg, "offset", 0.01))
    assert "offset 0.01 V refused: no DC offset is allowed" in str(err) and err.command == "SOUR1:VOLT:OFFS 0.01"
    refused(server, awg, lambda: awg.set_levels(0.2, -0.001))
    assert sent_by(server, awg, lambda: awg.set_levels(0.2, 0.0)) == b"SOUR1:VOLT:OFFS 0.0\nSYST:ERR?\nSOUR1:VOLT 0.2\nSYST:ERR?\n"


def test_an_offset_found_at_start_on_a_speaker_awg_switches_the_output_off(awg_rig) -> None:
    server, awg = awg_rig({"SOUR1:VOLT:OFFS?": "+5.0E-02"}, max_abs_volts=1.0, max_abs_offset_volts=0.0)
    assert server.since(0) == SETUP + b"OUTP1 OFF\nSYST:ERR?\n"
    refused(server, awg, lambda: setattr(awg, "output", True))


@pytest.mark.parametrize("rate", [300e6, 0.0, -1.0, float("inf")])
def test_sample_rate_out_of_range_is_refused(awg_rig, rate: float) -> None:
    server, awg = awg_rig()
    err = refused(server, awg, lambda: setattr(awg, "sample_rate", rate))
    assert "SOUR1:FUNC:ARB:SRAT" in str(err)


@pytest.mark.parametrize("name, samples, message", [
    ("W", np.zeros(17), "outside the allowed range \\[8, 16\\] points"),
    ("W", np.zeros(7), "outside the allowed range"),
    ("W", np.array([0.0] * 7 + [np.nan]), "NaN"),
    ("W", np.array([0.0] * 7 + [1.01]), "outside \\[-1, 1\\]"),
    ("W", np.zeros((2, 8)), "1-D"),
    ("9lives", np.zeros(8), "arb name"),
    ("x,y", np.zeros(8), "arb name"),
])
def test_bad_waveforms_are_refused(awg_rig, name: str, samples: np.ndarray, message: str) -> None:
    server, awg = awg_rig(memory_points=16)
    for upload in (awg.upload_arb, awg.upload_arb_ascii):
        err = refused(server, awg, lambda: upload(name, samples))
        assert err.instrument == "awg"
        assert re.search(message, str(err))


def test_reported_error_names_the_command(awg_rig) -> None:
    server, awg = awg_rig({"SYST:ERR?": ['+0,"No error"', '-222,"Data out of range"', '+0,"No error"']})
    with pytest.raises(InstrumentReportedError, match="awg, command 'SOUR1:VOLT:OFFS 0.5'.*-222"):
        awg.offset = 0.5


def test_context_manager_switches_output_off_even_after_an_error(awg_rig) -> None:
    server, awg = awg_rig()
    with pytest.raises(RuntimeError):
        with awg:
            raise RuntimeError("training crashed")
    assert server.since(0, expect_len=len(SETUP) + 20) == SETUP + b"OUTP1 OFF\nSYST:ERR?\n"


def test_output_off_on_a_dead_link_logs_and_does_not_raise(awg_rig, caplog) -> None:
    server, awg = awg_rig()
    awg.link.timeout_s = 0.2
    server.stop()
    with caplog.at_level(logging.ERROR, logger="drivers.awg"):
        assert awg.output_off() is False
    assert "could not switch output 1 off" in caplog.text
