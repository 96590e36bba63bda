"""Transport links and the SCPI base, over real pyvisa-py and pyserial connections to a scripted TCP server."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest

from drivers.blocks import decode_block, encode_block
from drivers.errors import (ConnectionLost, InstrumentReportedError, InstrumentTimeout, InstrumentWasReset,
                            ProtocolError)
from drivers.scpi import Identity, SCPIInstrument, format_number, pack_values, unpack_values
from drivers.transport import SerialLink, VisaLink, open_link
from conftest import WireReply

# --- pure helpers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload, encoded", [
    (b"", b"#10"),
    (b"hello", b"#15hello"),
    (b"x" * 10, b"#210" + b"x" * 10),
    (b"\n" * 123, b"#3123" + b"\n" * 123),
])
def test_encode_block_uses_the_shortest_header(payload: bytes, encoded: bytes) -> None:
    assert encode_block(payload) == encoded
    assert decode_block(encoded) == payload
    assert decode_block(encoded + b"\n") == payload


@pytest.mark.parametrize("data", [b"", b"15hello", b"#0hello\n", b"#a5hello", b"#2x5hello", b"#3",
                                  b"#15hel", b"#15hello!!"])
def test_decode_block_is_strict(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_block(data, instrument="scope", command=":WAV:DATA?")


def test_pack_and_unpack_values() -> None:
    assert pack_values(np.array([1, -2]), "int16", "little") == struct.pack("<2h", 1, -2)
    assert pack_values(np.array([1, -2]), "int16", "big") == struct.pack(">2h", 1, -2)
    assert pack_values(np.array([0.5]), "float32", "big") == struct.pack(">f", 0.5)
    np.testing.assert_array_equal(unpack_values(struct.pack("<3H", 0, 1, 65535), "uint16", "little"),
                                  [0, 1, 65535])
    np.testing.assert_array_equal(unpack_values(struct.pack(">2f", 1.5, -2.0), "float32", "big"), [1.5, -2.0])
    for bad in (np.array([40000]), np.array([0.5]), np.array([np.nan])):
        with pytest.raises(ValueError):
            pack_values(bad, "int16", "little")
    with pytest.raises(ProtocolError, match="whole number"):
        unpack_values(b"\x00\x01\x02", "int16", "little")
    with pytest.raises(ProtocolError, match="NaN"):
        unpack_values(struct.pack("<f", float("nan")), "float32", "little")


def test_format_number_is_lossless() -> None:
    for value in (1.5, 0.1, 250e6, 1e-6, 1 / 3, -0.0):
        assert float(format_number(value)) == value
    with pytest.raises(ValueError):
        format_number(float("inf"))


def test_open_link_rejects_unknown_resources() -> None:
    with pytest.raises(ValueError, match="cannot tell how to open"):
        open_link("my-awg", name="awg")


# --- VISA link (pyvisa-py) ---------------------------------------------------------------------------------------


def test_visa_link_write_query_and_block_bytes(wire_server, wire_link) -> None:
    server = wire_server({"*IDN?": "ACME,X1,007,1.0"})
    link = wire_link(server, name="awg")
    assert isinstance(link, VisaLink) and link.name == "awg" and link.resource == server.visa_resource
    link.write("OUTP1 ON")
    assert link.query("*IDN?") == "ACME,X1,007,1.0"
    link.write_block("DATA:ARB:DAC A,", b"\x01\n\x02\x00")
    link.write_raw(b"RAW\n")
    assert link.query("*OPC?") == "1"
    assert server.since(0) == b"OUTP1 ON\n*IDN?\nDATA:ARB:DAC A,#14\x01\n\x02\x00\nRAW\n*OPC?\n"


def test_block_in_several_segments_is_reassembled(wire_server, wire_link) -> None:
    payload = bytes(range(256)) * 40  # contains b"\n" and b"#"
    block = b"#8%08d" % len(payload) + payload + b"\n"
    server = wire_server({":WAV:DATA?": WireReply([block[:1], block[1:7], block[7:3000], block[3000:]],
                                                  delay_s=0.02)})
    link = wire_link(server, name="scope")
    assert link.query_block(":WAV:DATA?") == payload
    assert link.query("*OPC?") == "1"  # nothing left over in the input buffer


def test_large_block_full_of_newlines_then_lines_split_at_the_termination(wire_server, wire_link) -> None:
    """A record of several read chunks, 0x0A in every other byte: read whole, and afterwards a reply holding two
    lines still splits at the termination character (it is off only while the block's payload is read)."""
    payload = b"\n\x01" * 400_000
    block = b"#6%06d" % len(payload) + payload + b"\n"
    server = wire_server({":WAV:DATA?": block, "TWO?": "first\nsecond"})
    link = wire_link(server, name="scope")
    assert link.query_block(":WAV:DATA?") == payload
    assert link.query("TWO?") == "first"
    assert link.read() == "second"


def test_a_large_block_goes_out_exactly_and_a_peer_that_stops_reading_times_out(wire_server, wire_link) -> None:
    """A write over 64 KiB goes onto pyvisa-py's socket in one piece (not 4 KiB at a time): the same bytes arrive,
    and an instrument that stops taking them gives InstrumentTimeout within the link's timeout, not a hang."""
    payload = bytes(range(256)) * 8192  # 2 MB, with newlines and '#' in it
    server = wire_server()
    link = wire_link(server, name="awg")
    link.write_block("DATA:ARB:DAC A,", payload)
    assert link.query("*OPC?") == "1"
    assert server.since(0) == b"DATA:ARB:DAC A," + encode_block(payload) + b"\n*OPC?\n"

    deaf = socket.create_server(("127.0.0.1", 0))  # connections complete in the backlog, nothing is ever read
    try:
        stuck = open_link(f"TCPIP0::127.0.0.1::{deaf.getsockname()[1]}::SOCKET", name="awg", timeout_s=0.3)
        start = time.monotonic()
        with pytest.raises(InstrumentTimeout, match="awg, command 'DATA:ARB:DAC A,#<64000000 byte block>': a "
                                                    "64000026-byte write did not complete within 0.3 s"):
            stuck.write_block("DATA:ARB:DAC A,", bytes(64_000_000))
        assert time.monotonic() - start < 3.0
        stuck.close()
    finally:
        deaf.close()


@pytest.mark.parametrize("reply", [b"-113,\"Undefined header\"\n", b"#0abc\n", b"#4x12abcd\n"])
def test_garbled_block_header_is_a_protocol_error(wire_server, wire_link, reply: bytes) -> None:
    server = wire_server({":WAV:DATA?": reply})
    link = wire_link(server, name="scope", timeout_s=0.5)
    with pytest.raises(ProtocolError) as info:
        link.query_block(":WAV:DATA?")
    assert "scope" in str(info.value) and ":WAV:DATA?" in str(info.value)
    assert link.query("*OPC?") == "1"  # the rest of the garbled reply was discarded


def test_wrong_terminator_after_block_is_a_protocol_error(wire_server, wire_link) -> None:
    server = wire_server({":WAV:DATA?": b"#13abcX\n"})
    link = wire_link(server, name="scope", timeout_s=0.5)
    with pytest.raises(ProtocolError, match="followed by b'X'"):
        link.query_block(":WAV:DATA?")


@pytest.mark.parametrize("serial", [False, True])
def test_short_block_then_hang_up_names_instrument_and_command(wire_server, wire_link, serial: bool) -> None:
    server = wire_server({":WAV:DATA?": WireReply([b"#800002000" + b"\x00" * 100], close=True)})
    link = wire_link(server, name="scope", serial=serial, timeout_s=0.5)
    with pytest.raises((ProtocolError, InstrumentTimeout, ConnectionLost)) as info:
        link.query_block(":WAV:DATA?")
    assert "scope" in str(info.value) and ":WAV:DATA?" in str(info.value)


def test_short_block_then_silence_reports_declared_length(wire_server, wire_link) -> None:
    server = wire_server({":WAV:DATA?": b"#800002000" + b"\x00" * 100})
    link = wire_link(server, name="scope", timeout_s=0.3)
    with pytest.raises(InstrumentTimeout, match="declared 2000 bytes"):
        link.query_block(":WAV:DATA?")


@pytest.mark.parametrize("serial", [False, True])
def test_silent_instrument_times_out_within_the_timeout(wire_server, wire_link, serial: bool) -> None:
    server = wire_server({"MEAS?": None})
    link = wire_link(server, name="awg", serial=serial, timeout_s=0.3)
    start = time.monotonic()
    with pytest.raises(InstrumentTimeout) as info:
        link.query("MEAS?")
    assert time.monotonic() - start < 2.0
    assert "awg" in str(info.value) and "MEAS?" in str(info.value)


def test_late_reply_after_a_timeout_is_discarded(wire_server, wire_link) -> None:
    server = wire_server({"SLOW?": WireReply([b"late\n"], delay_s=0.4), "FAST?": "fast"})
    link = wire_link(server, timeout_s=0.2)
    with pytest.raises(InstrumentTimeout):
        link.query("SLOW?")
    time.sleep(0.4)
    assert link.query("FAST?") == "fast"


def test_a_command_after_a_timeout_and_a_hang_up_does_not_hang(wire_server, wire_link) -> None:
    """The instrument closes the connection instead of answering: the link times out, and the next command (which
    first discards late input) must end promptly. pyvisa-py's own flush spins for ever on a closed socket."""
    server = wire_server({"MEAS?": WireReply([], close=True)})
    link = wire_link(server, name="awg", timeout_s=0.3)
    with pytest.raises(InstrumentTimeout, match="awg, command 'MEAS\\?'"):
        link.query("MEAS?")
    outcome: list = []

    def next_commands() -> None:
        try:
            for _ in range(100):  # the first writes may still be accepted by the local TCP stack
                link.write("OUTP1 OFF")
                time.sleep(0.01)
        except ConnectionLost as err:
            outcome.append(err)

    worker = threading.Thread(target=next_commands, daemon=True)
    start = time.monotonic()
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "the command after the hang-up never returned"
    assert time.monotonic() - start < 5
    assert outcome and "awg, command 'OUTP1 OFF'" in str(outcome[0])
    link.reconnect()
    assert link.query("*OPC?") == "1"


def test_timeout_property_changes_the_link_timeout(wire_server, wire_link) -> None:
    link = wire_link(wire_server({"MEAS?": None}), timeout_s=5.0)
    link.timeout_s = 0.2
    assert link.timeout_s == 0.2
    start = time.monotonic()
    with pytest.raises(InstrumentTimeout):
        link.query("MEAS?")
    assert time.monotonic() - start < 2.0


def test_writing_to_a_reset_or_closed_visa_link_is_connection_lost(wire_server, wire_link) -> None:
    server = wire_server({"BYE?": WireReply([b"bye\n"], close=True)})
    link = wire_link(server, name="awg")
    assert link.query("BYE?") == "bye"
    with pytest.raises(ConnectionLost, match="awg, command 'OUTP1 OFF': connection to .* lost"):
        for _ in range(100):  # the first writes may still be accepted by the local TCP stack
            link.write("OUTP1 OFF")
            time.sleep(0.01)
    link.close()
    with pytest.raises(ConnectionLost, match="awg, command '\\*IDN\\?'"):
        link.query("*IDN?")


def test_reconnect_after_the_instrument_hung_up(wire_server, wire_link) -> None:
    server = wire_server({"BYE?": WireReply([b"bye\n"], close=True)})
    link = wire_link(server)
    assert link.query("BYE?") == "bye"
    link.reconnect()
    assert link.query("*OPC?") == "1"
    assert server.connections == 2


# --- serial link (pyserial socket://) ------------------------------------------------------------------------------


def test_serial_link_bytes_query_and_block(wire_server, wire_link) -> None:
    payload = b"\x00\n\x01" * 700
    server = wire_server({"FRAME?": WireReply([b"#42100" + payload[:1000], payload[1000:] + b"\n"], delay_s=0.02)})
    link = wire_link(server, name="camera", serial=True)
    assert isinstance(link, SerialLink)
    link.write("EXP 0.01")
    assert link.query("*IDN?").startswith("Keysight")
    assert link.query_block("FRAME?") == payload
    link.write_block("LUT ", b"\x05\x06")
    assert link.query("*OPC?") == "1"
    assert server.since(0) == b"EXP 0.01\n*IDN?\nFRAME?\nLUT #12\x05\x06\n*OPC?\n"


def test_serial_link_keeps_what_arrived_past_a_reply_line(wire_server, wire_link) -> None:
    """Replies are read as they arrive, not a byte at a time: a line, a second line and a block that come in one
    burst are each read in turn, and a timeout or a discard drops what is left."""
    server = wire_server({"BURST?": WireReply([b"first\nsecond\n#15a\nb\nc\n"]), "HALF?": WireReply([b"half"])})
    link = wire_link(server, name="slm", serial=True, timeout_s=0.2)
    assert link.query("BURST?") == "first"
    assert link.read() == "second"
    assert link.read_raw_block() == b"a\nb\nc"
    with pytest.raises(InstrumentTimeout, match="slm.*HALF\\?.*partial reply b'half'"):
        link.query("HALF?")
    assert link.query("*OPC?") == "1"  # the partial reply is gone with the timeout


def test_serial_link_drops_the_rest_of_a_frame_still_arriving_after_a_timeout(wire_server, wire_link) -> None:
    """A timeout mid-frame: the camera keeps sending the frame; those bytes must not answer the next query."""
    payload = bytes(range(256)) * 4 + b"\n" * 24  # contains newlines, as a frame does
    block = b"#41048" + payload + b"\n"
    chunks = [block[i:i + 64] for i in range(0, len(block), 64)]
    server = wire_server({"DATA?": WireReply(chunks, delay_s=0.02), "FAST?": "fast"})
    link = wire_link(server, name="camera", serial=True, timeout_s=0.1)
    with pytest.raises(InstrumentTimeout, match="camera.*DATA\\?"):
        link.query_block("DATA?")
    assert link.query("FAST?") == "fast"  # at once: no sleep for the frame to finish
    assert link.query("*OPC?") == "1"


def test_serial_link_hang_up_is_connection_lost_and_reconnect_fails_cleanly(wire_server, wire_link) -> None:
    server = wire_server({"BYE?": WireReply([b"by"], close=True)})
    link = wire_link(server, name="slm", serial=True, timeout_s=0.5, reconnect_backoff_s=0.01)
    with pytest.raises(ConnectionLost, match="slm.*BYE\\?"):
        link.query("BYE?")
    server.stop()
    with pytest.raises(ConnectionLost, match="slm: could not reconnect .* after 3 attempts"):
        link.reconnect()


# --- SCPIInstrument ------------------------------------------------------------------------------------------------


def test_write_raises_the_reported_error(wire_server, wire_link) -> None:
    server = wire_server({"SYST:ERR?": ['-113,"Undefined header"', '+0,"No error"']})
    dev = SCPIInstrument(wire_link(server), name="awg")
    with pytest.raises(InstrumentReportedError) as info:
        dev.write("SOUR1:FOO 1")
    message = str(info.value)
    assert "awg" in message and "SOUR1:FOO 1" in message and "-113" in message
    assert info.value.errors == [(-113, "Undefined header")]
    assert server.since(0) == b"SOUR1:FOO 1\nSYST:ERR?\nSYST:ERR?\n"
    dev.write("SOUR1:VOLT 1")  # queue is empty again
    dev.write("SOUR1:VOLT 2", check=False)
    dev.wait_opc()
    assert server.since(0).endswith(b"SOUR1:VOLT 1\nSYST:ERR?\nSOUR1:VOLT 2\n*OPC?\n")


def test_check_status_asks_event_status_and_first_error_in_one_query(wire_server, wire_link) -> None:
    server = wire_server({"*ESR?;:SYST:ERR?": ['+0;+0,"No error"', '+0;-222,"Data out of range"',
                                              '+128;+0,"No error"', '+0;garbage', 'hello'],
                          "SYST:ERR?": ['-221,"Settings conflict"', '+0,"No error"']})
    dev = SCPIInstrument(wire_link(server), name="awg")
    dev.check_status()  # nothing happened: one round trip
    assert server.since(0) == b"*ESR?;:SYST:ERR?\n"
    mark = server.mark()
    with pytest.raises(InstrumentReportedError) as info:
        dev.check_status()  # an error: the rest of the queue is drained, every error reported
    assert info.value.errors == [(-222, "Data out of range"), (-221, "Settings conflict")]
    assert server.since(mark) == b"*ESR?;:SYST:ERR?\nSYST:ERR?\nSYST:ERR?\n"
    dev.settings["sample_rate"] = 1e6
    with pytest.raises(InstrumentWasReset, match="awg"):
        dev.check_status()  # the power-on bit: what the driver remembers is gone with the instrument's state
    assert dev.settings == {}
    for _ in range(2):  # a garbled error entry, then a reply without the second part
        with pytest.raises(ProtocolError, match="awg"):
            dev.check_status()


def test_errors_drains_a_bounded_queue(wire_server, wire_link) -> None:
    dev = SCPIInstrument(wire_link(wire_server({"SYST:ERR?": '-350,"Queue overflow"'})))
    assert dev.errors() == [(-350, "Queue overflow")] * 50


def test_identity_reset_clear_and_numbers(wire_server, wire_link) -> None:
    server = wire_server({"FREQ?": "+1.00000000000000E+03", "COUNT?": "+8", "BAD?": "hello"})
    dev = SCPIInstrument(wire_link(server, name="awg"))
    assert dev.idn() == Identity("Keysight Technologies", "33522B", "MY53400123", "4.00-1.19-2.00-58-00")
    assert dev.query_float("FREQ?") == 1000.0
    assert dev.query_int("COUNT?") == 8
    with pytest.raises(ProtocolError, match="awg.*BAD\\?.*expected a number"):
        dev.query_float("BAD?")
    dev.reset()
    dev.clear()
    dev.wait_opc(timeout_s=0.5)
    assert dev.link.timeout_s == 1.0
    assert server.since(0).endswith(b"*RST\n*OPC?\n*CLS\n*OPC?\n")


@pytest.mark.parametrize("reply", ["garbage", "ACME,,1,2", ""])
def test_identity_garbage_is_a_protocol_error(wire_server, wire_link, reply: str) -> None:
    dev = SCPIInstrument(wire_link(wire_server({"*IDN?": reply})), name="scope")
    with pytest.raises(ProtocolError, match="scope.*IDN"):
        dev.idn()
