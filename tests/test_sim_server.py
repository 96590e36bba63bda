"""SCPI protocol core and TCP server of the simulators: parsing, error queue, robustness, fault injection."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from simulators.scpi import Block, Call, SCPIError, SCPIInstrument, Session, nr3, parse_number, scpi
from simulators.scpi.commands import compile_pattern, match_nodes, parse_header
from common.faults import FaultPlan
from simulators.scpi.reader import MessageReader, split_outside
from simulators.scpi.tcp import SCPIServer


class Toy(SCPIInstrument):
    """A two-channel test instrument with a few typical commands."""

    idn = "PNN-LAB,TOY,0001,1.0"
    max_block_bytes = 4096
    max_message_bytes = 8192

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.volt = {1: 1.0, 2: 1.0}
        self.time_range = 1e-3
        self.position = 0.0
        self.mode = "NORM"
        self.blocks: dict[str, bytes] = {}

    def _channel(self, call: Call) -> int:
        if call.suffix not in self.volt:
            raise SCPIError(-114)
        return call.suffix

    @scpi("[SOURce#:]VOLTage[:AMPLitude]")
    def _volt(self, call: Call) -> None:
        ch = self._channel(call)
        self.volt[ch] = call.number(0, lo=1e-3, hi=10.0, default=0.1, unit="V")

    @scpi("[SOURce#:]VOLTage[:AMPLitude]?")
    def _volt_q(self, call: Call) -> str:
        return nr3(self.volt[self._channel(call)])

    @scpi(":TIMebase:RANGe")
    def _range(self, call: Call) -> None:
        self.time_range = call.number(0, lo=1e-9, hi=10.0, unit="S")

    @scpi(":TIMebase:RANGe?")
    def _range_q(self, call: Call) -> str:
        return nr3(self.time_range)

    @scpi(":TIMebase:POSition")
    def _pos(self, call: Call) -> None:
        self.position = call.number(0, lo=-10.0, hi=10.0, unit="S")

    @scpi(":TIMebase:POSition?")
    def _pos_q(self, call: Call) -> str:
        return nr3(self.position)

    @scpi("ACQuire:MODE")
    def _mode(self, call: Call) -> None:
        self.mode = call.choice(0, ("NORMal", "AVERage"))

    @scpi("DATA:BLOCk", nargs=2)
    def _block(self, call: Call) -> None:
        self.blocks[call.text(0)] = call.block(1)

    @scpi("DATA:BLOCk?", nargs=1)
    def _block_q(self, call: Call) -> Block:
        return Block(self.blocks.get(call.text(0), b""), digits=8)


def run(session: Session, text: str | bytes) -> list[bytes]:
    data = text.encode() if isinstance(text, str) else text
    return [r.data for r in session.feed(data)]


def errors(session: Session) -> list[str]:
    out = []
    while True:
        reply = run(session, "SYST:ERR?\n")[0].decode().strip()
        if reply.startswith("+0"):
            return out
        out.append(reply)


@pytest.fixture
def toy() -> Toy:
    return Toy()


@pytest.fixture
def session(toy: Toy) -> Session:
    return toy.session()


# -- patterns and headers ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("header, suffixes", [
    ("SOURce1:VOLTage:AMPLitude", (1,)), ("SOUR2:VOLT:AMPL", (2,)), ("sour2:volt", (2,)), ("VOLT", (1,)),
    ("voltage:ampl", (1,)), ("SOURCE:VOLTAGE", (1,)),
])
def test_pattern_matches_short_long_optional_and_suffix(header: str, suffixes: tuple[int, ...]) -> None:
    nodes, query = compile_pattern("[SOURce#:]VOLTage[:AMPLitude]")
    words, _, _ = parse_header(header)
    assert not query
    assert match_nodes(nodes, words) == suffixes


@pytest.mark.parametrize("header", ["VOLTA", "SOURC:VOLT", "VOLT2", "AMPL", "VOLT:AMPL:AMPL", "SOUR:SOUR:VOLT"])
def test_pattern_rejects_partial_forms_and_misplaced_suffixes(header: str) -> None:
    nodes, _ = compile_pattern("[SOURce#:]VOLTage[:AMPLitude]")
    assert match_nodes(nodes, parse_header(header)[0]) is None


def test_pattern_query_and_common_commands() -> None:
    nodes, query = compile_pattern("SYSTem:ERRor[:NEXT]?")
    assert query and match_nodes(nodes, parse_header("SYST:ERR:NEXT?")[0]) == ()
    nodes, query = compile_pattern("*IDN?")
    assert query and match_nodes(nodes, parse_header("*idn?")[0]) == ()


@pytest.mark.parametrize("text, unit, value", [
    ("1", "", 1.0), ("-2.5e-3", "V", -2.5e-3), ("100 mV", "V", 0.1), ("100MV", "V", 0.1), ("2 ms", "S", 2e-3),
    ("1.5kHz", "HZ", 1.5e3), ("3 MHz", "HZ", 3e6), ("2MA", "", 2e6), ("5 us", "S", 5e-6), ("+.5", "", 0.5),
])
def test_parse_number_with_engineering_suffixes(text: str, unit: str, value: float) -> None:
    assert parse_number(text, unit) == pytest.approx(value)


@pytest.mark.parametrize("text, code", [("abc", -104), ("1.2.3", -104), ("", -104), ("1 parsec", -131)])
def test_parse_number_errors(text: str, code: int) -> None:
    with pytest.raises(SCPIError) as err:
        parse_number(text, "V")
    assert err.value.code == code


def test_split_outside_respects_quotes_and_blocks() -> None:
    data = b'A "x;y",\'p,q\';B #13;,\n;C'
    payload = data.index(b"#13") + 3
    spans = split_outside(data, [(payload, payload + 3)], b";")
    assert [data[a:b] for a, b in spans] == [b'A "x;y",\'p,q\'', b"B #13;,\n", b"C"]


# -- sessions ----------------------------------------------------------------------------------------------------------

def test_idn_and_case_insensitive_short_long_forms(session: Session, toy: Toy) -> None:
    assert run(session, "*IDN?\n") == [b"PNN-LAB,TOY,0001,1.0\n"]
    run(session, "sour2:volt 2.5\n")
    run(session, ":SOURce1:VOLTage:AMPLitude 250 mV\r\n")
    assert toy.volt == {1: 0.25, 2: 2.5}
    assert run(session, "SOUR2:VOLT?\n") == [b"+2.500000000000000E+00\n"]
    assert errors(session) == []


def test_semicolons_with_relative_headers_and_joined_replies(session: Session, toy: Toy) -> None:
    run(session, ":TIM:RANG 2e-3;POS 1e-4\n")
    assert (toy.time_range, toy.position) == (2e-3, 1e-4)
    assert run(session, ":TIM:RANG?;POS?;*IDN?\n") == [b"+2.000000000000000E-03;+1.000000000000000E-04;"
                                                        b"PNN-LAB,TOY,0001,1.0\n"]
    run(session, ":TIM:RANG 3e-3;:VOLT 3\n")  # a leading ':' goes back to the root
    assert (toy.time_range, toy.volt[1]) == (3e-3, 3.0)
    run(session, ":TIM:RANG 4e-3;VOLT 4\n")  # relative to TIMebase: TIM:VOLT does not exist
    assert toy.time_range == 4e-3 and toy.volt[1] == 3.0
    assert errors(session) == ['-113,"Undefined header"']


def test_min_max_def(session: Session, toy: Toy) -> None:
    run(session, "VOLT MAX\n")
    assert toy.volt[1] == 10.0
    run(session, "VOLT min\n")
    assert toy.volt[1] == 1e-3
    run(session, "VOLT DEF\n")
    assert toy.volt[1] == 0.1


@pytest.mark.parametrize("command, error", [
    ("FOO:BAR 1", '-113,"Undefined header"'),
    ("VOLT abc", '-104,"Data type error"'),
    ("VOLT 11", '-222,"Data out of range"'),
    ("VOLT 1 parsec", '-131,"Invalid suffix"'),
    ("SOUR3:VOLT 1", '-114,"Header suffix out of range"'),
    ("VOLT", '-109,"Missing parameter"'),
    ("VOLT 1,2", '-108,"Parameter not allowed"'),
    ("ACQ:MODE PEAK", '-224,"Illegal parameter value"'),
    ("VOLT::AMPL 1", '-102,"Syntax error"'),
    ("*IDN", '-113,"Undefined header"'),
])
def test_errors_go_to_the_queue_and_leave_settings_unchanged(session: Session, toy: Toy, command: str,
                                                             error: str) -> None:
    before = (dict(toy.volt), toy.mode)
    assert run(session, command + "\n") == []
    assert errors(session) == [error]
    assert (toy.volt, toy.mode) == before


def test_unknown_query_gets_no_reply_and_next_query_is_answered(session: Session) -> None:
    assert run(session, "FOO?\n") == []
    assert run(session, "*IDN?\n") == [b"PNN-LAB,TOY,0001,1.0\n"]
    assert errors(session) == ['-113,"Undefined header"']


def test_status_registers_and_cls(session: Session) -> None:
    assert run(session, "*ESR?\n") == [b"+0\n"]
    run(session, "FOO\n")
    run(session, "VOLT 99\n")
    assert run(session, "*ESR?\n") == [b"+48\n"]  # command error (32) + execution error (16)
    assert run(session, "*ESR?\n") == [b"+0\n"]
    run(session, "*OPC\n")
    assert run(session, "*ESR?;*OPC?\n") == [b"+1;1\n"]
    run(session, "*CLS\n")
    assert errors(session) == []


def test_error_queue_overflow(session: Session, toy: Toy) -> None:
    run(session, "FOO\n" * (toy.error_queue_size + 5))
    found = errors(session)
    assert len(found) == toy.error_queue_size
    assert found[-1] == '-350,"Queue overflow"'


def test_rst_resets_the_instrument(session: Session, toy: Toy) -> None:
    run(session, "VOLT 5;*RST\n")
    assert toy.volt[1] == 1.0


def test_empty_lines_whitespace_and_garbage(session: Session) -> None:
    assert run(session, "\n\r\n   \n;;\n") == []
    assert errors(session) == []
    run(session, bytes(range(256)) + b"\n\x00\xff\xfe\n")
    assert errors(session)  # garbage is reported...
    assert run(session, "*IDN?\n") == [b"PNN-LAB,TOY,0001,1.0\n"]  # ...and the session carries on


def test_binary_block_with_newlines_fed_byte_by_byte(session: Session, toy: Toy) -> None:
    payload = b"\n\r;,#\"'\n" * 8
    message = b"DATA:BLOC abc,#2" + str(len(payload)).encode() + payload + b"\n*IDN?\n"
    replies = []
    for i in range(len(message)):
        replies += run(session, message[i:i + 1])
    assert toy.blocks == {"abc": payload}
    assert replies == [b"PNN-LAB,TOY,0001,1.0\n"]
    assert run(session, "DATA:BLOC? abc\n") == [b"#8000000" + str(len(payload)).encode() + payload + b"\n"]
    assert errors(session) == []


def test_lying_block_header_is_rejected_and_reader_resyncs(session: Session, toy: Toy) -> None:
    assert run(session, b"DATA:BLOC x,#9999999999\x00\x01\n*IDN?\n") == [b"PNN-LAB,TOY,0001,1.0\n"]
    assert errors(session) == ['-223,"Too much data"']
    assert toy.blocks == {}


def test_short_block_waits_for_its_bytes_then_completes(session: Session, toy: Toy) -> None:
    assert run(session, b"DATA:BLOC y,#210abc\n") == []  # 4 of 10 bytes: still inside the block
    assert run(session, b"defghi\n*IDN?\n") == [b"PNN-LAB,TOY,0001,1.0\n"]
    assert toy.blocks == {"y": b"abc\ndefghi"}
    run(session, b"DATA:BLOC w,#13abcd\n")  # bytes after the block: malformed
    assert errors(session) == ['-161,"Invalid block data"']
    assert "w" not in toy.blocks


def test_unterminated_line_is_bounded(session: Session, toy: Toy) -> None:
    for _ in range(10):
        run(session, b"X" * 4096)
    assert session.reader.pending_bytes <= toy.max_message_bytes
    assert run(session, b"still the same line\n*IDN?\n") == [b"PNN-LAB,TOY,0001,1.0\n"]
    assert errors(session) == ['-223,"Too much data"']


def test_malformed_block_headers_are_errors_not_hangs(session: Session) -> None:
    for bad in (b"DATA:BLOC a,#\n", b"DATA:BLOC a,#x12\n", b"DATA:BLOC a,#0abc\n", b"DATA:BLOC a,#3ab\n"):
        run(session, bad)
    assert run(session, b"\n*IDN?\n")[-1] == b"PNN-LAB,TOY,0001,1.0\n"


def test_message_reader_tolerates_crlf_and_splits_messages() -> None:
    reader = MessageReader()
    out = reader.feed(b"A 1\r\nB 2\nC")
    assert [m.data for m in out] == [b"A 1", b"B 2"]
    assert [m.data for m in reader.feed(b"\n")] == [b"C"]


# -- TCP server --------------------------------------------------------------------------------------------------------

class Client:
    """A raw-socket client, as a third-party script would use."""

    def __init__(self, server: SCPIServer, timeout_s: float = 2.0):
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout_s)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def query(self, text: str) -> str:
        self.send(text.encode() + b"\n")
        return self.readline().decode()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(toy: Toy):
    srv = SCPIServer(toy.session, name="toy")
    yield srv
    srv.close()


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("toy-")]


def test_server_answers_many_concurrent_clients(server: SCPIServer) -> None:
    assert server.resource == f"TCPIP0::127.0.0.1::{server.port}::SOCKET"
    results: list[bool] = []

    def worker(k: int) -> None:
        c = Client(server)
        ok = True
        for _ in range(20):
            ok &= c.query("*IDN?") == "PNN-LAB,TOY,0001,1.0"
        c.send(f"VOLT {100 + k}\n".encode())  # out of range: an error in this client's queue only
        ok &= c.query("SYST:ERR?") == '-222,"Data out of range"'
        ok &= c.query("SYST:ERR?") == '+0,"No error"'
        c.close()
        results.append(ok)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [True] * 8


def test_server_survives_garbage_unterminated_lines_and_disconnects_mid_block(server: SCPIServer) -> None:
    other = Client(server)
    bad = Client(server)
    bad.send(bytes(range(256)) * 4 + b"\n" + b"VOLT 1")  # garbage, then an unterminated command
    bad.close()
    mid_block = Client(server)
    mid_block.send(b"DATA:BLOC z,#41000" + b"\n" * 300)  # disconnect 700 bytes short
    mid_block.close()
    liar = Client(server)
    liar.send(b"DATA:BLOC z,#9999999999\n")
    assert liar.query("*IDN?") == "PNN-LAB,TOY,0001,1.0"
    assert liar.query("SYST:ERR?") == '-223,"Too much data"'
    assert other.query("*IDN?") == "PNN-LAB,TOY,0001,1.0"
    assert other.query("SYST:ERR?") == '+0,"No error"'  # error queues are per client
    liar.close()
    other.close()
    deadline = time.monotonic() + 2
    while server.client_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.client_count == 0  # client threads end when their clients leave


def test_a_flood_of_connections_is_capped_and_the_server_serves_on(toy: Toy) -> None:
    """Beyond ``max_clients`` a connection is closed at once (no thread for it); once a client leaves, the next
    connection is served again."""
    srv = SCPIServer(toy.session, name="toy", max_clients=3)
    try:
        clients = [Client(srv) for _ in range(3)]
        assert all(c.query("*IDN?") == "PNN-LAB,TOY,0001,1.0" for c in clients)
        extra = Client(srv)
        with pytest.raises((ConnectionError, OSError)):
            extra.query("*IDN?")
        extra.close()
        assert srv.client_count == 3 and len(_server_threads()) == 1 + 3  # the accept loop and one per client
        clients.pop().close()
        deadline = time.monotonic() + 2
        while srv.client_count > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        again = Client(srv)
        assert again.query("*IDN?") == "PNN-LAB,TOY,0001,1.0"
        for c in clients + [again]:
            c.close()
    finally:
        srv.close()


def test_close_joins_all_threads_even_with_connected_clients(toy: Toy) -> None:
    srv = SCPIServer(toy.session, name="toy")
    clients = [Client(srv) for _ in range(3)]
    assert clients[0].query("*IDN?")
    clients[1].send(b"DATA:BLOC z,#41000abc")  # stuck in a block
    srv.close()
    assert _server_threads() == []
    with pytest.raises((ConnectionError, OSError)):
        clients[2].query("*IDN?")
    for c in clients:
        c.close()


@pytest.mark.parametrize("plan, check", [
    (FaultPlan(latency=1.0, latency_s=0.2), "latency"),
    (FaultPlan(no_reply=1.0), "no_reply"),
    (FaultPlan(drop_connection=1.0), "drop"),
    (FaultPlan(garble_block=1.0, seed=3), "garble"),
    (FaultPlan(short_block=1.0, seed=3), "short"),
])
def test_fault_injection(toy: Toy, plan: FaultPlan, check: str) -> None:
    payload = bytes(range(256)) * 16
    toy.blocks["p"] = payload
    with SCPIServer(toy.session, name="toy", faults=plan) as srv:
        c = Client(srv, timeout_s=0.5)
        start = time.monotonic()
        if check == "latency":
            assert c.query("*IDN?") == "PNN-LAB,TOY,0001,1.0"
            assert time.monotonic() - start >= 0.2
        elif check == "no_reply":
            with pytest.raises(socket.timeout):
                c.query("*IDN?")
        elif check == "drop":
            with pytest.raises(ConnectionError):
                c.query("*IDN?")
        else:
            c.send(b"DATA:BLOC? p\n")
            header = b""
            while len(header) < 10:
                header += c.sock.recv(10 - len(header))
            assert header == b"#800004096"
            body = b""
            try:
                while len(body) < 4097:
                    chunk = c.sock.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            except socket.timeout:
                pass
            if check == "garble":
                assert len(body) == 4097 and body[:-1] != payload
            else:
                assert len(body) < 4097
        c.close()


def test_injected_instrument_error_reaches_the_error_queue(toy: Toy) -> None:
    with SCPIServer(toy.session, name="toy", faults=FaultPlan(error=1.0)) as srv:
        c = Client(srv)
        assert c.query("VOLT?") == nr3(1.0)  # the reply itself is intact
        assert c.query("SYST:ERR?") == '-300,"Device-specific error"'
        assert srv.injector.counts["error"] >= 1
        c.close()


def test_injected_reset_loses_the_settings_and_sets_the_power_on_bit(toy: Toy) -> None:
    with SCPIServer(toy.session, name="toy", faults=FaultPlan(reset=1.0)) as srv:
        c = Client(srv)
        c.send(b"VOLT 2.5\n")
        assert c.query("VOLT?") == nr3(2.5)  # answered, then the instrument resets itself
        assert int(c.query("*ESR?")) & 128  # power-on bit: a driver can tell its settings are gone
        assert toy.volt[1] == 1.0  # (checked after the next reply: the reset follows the reply it came with)
        c.close()


def test_a_stuck_instrument_ignores_everything_for_a_while_then_answers(toy: Toy) -> None:
    plan = FaultPlan(stuck=1.0, stuck_s=0.4)
    with SCPIServer(toy.session, name="toy", faults=plan) as srv:
        c = Client(srv, timeout_s=0.2)
        with pytest.raises(socket.timeout):
            c.query("*IDN?")
        c.send(b"VOLT 3\n")  # ignored while frozen
        time.sleep(0.5)
        assert srv.injector.counts["stuck"] == 1
        srv.injector.set_plan(FaultPlan())
        assert c.query("VOLT?") == nr3(1.0)
        c.close()


def test_an_unplugged_serial_line_loses_what_is_sent_then_comes_back(toy: Toy) -> None:
    from drivers.errors import InstrumentTimeout
    from drivers.transport import open_link
    from simulators.scpi.pty import PtyServer

    with PtyServer(toy.session, name="toy-serial", faults=FaultPlan(drop_connection=1.0, unplug_s=0.5)) as pty:
        with open_link(pty.port, name="slm", timeout_s=0.2) as link:
            with pytest.raises(InstrumentTimeout, match="slm.*IDN"):
                link.query("*IDN?")
            link.write("VOLT 4")  # lost: the cable is out
            assert pty.injector.counts["drop_connection"] == 1
            pty.injector.set_plan(FaultPlan())
            time.sleep(0.6)
            assert link.query("VOLT?") == nr3(1.0)


def test_every_kind_of_fault_at_one_rate() -> None:
    plan = FaultPlan.every_kind(0.01, seed=4)
    assert all(getattr(plan, kind) == 0.01 for kind in FaultPlan.KINDS) and plan.seed == 4


def test_fault_plan_validates_probabilities() -> None:
    with pytest.raises(ValueError):
        FaultPlan(latency=1.5)
    assert FaultPlan() == FaultPlan(seed=0)


# -- serial transports: a pseudo-terminal and pyserial's socket:// URL -------------------------------------------------

def test_an_instrument_on_a_pty_is_opened_by_pyserial_like_a_usb_serial_adapter(toy: Toy) -> None:
    import serial

    from drivers.transport import open_link
    from simulators.scpi.pty import PtyServer

    with PtyServer(toy.session, name="toy-serial") as pty:
        assert pty.port.startswith("/dev/pts/")
        with serial.Serial(pty.port, baudrate=115200, timeout=2) as port:
            port.write(b"*IDN?\n")
            assert port.readline() == toy.idn.encode() + b"\n"  # no echo, no CR/LF translation
            port.write(b"syst:err?\n")
            assert port.readline() == b'+0,"No error"\n'
        # the port outlives a client, as a real one does: the project's own serial link opens it next
        for resource in (pty.port, f"ASRL{pty.port}::INSTR"):  # pyserial directly, and pyvisa-py's ASRL resource
            link = open_link(resource, name="toy", timeout_s=2.0)
            try:
                assert link.query("*IDN?") == toy.idn
            finally:
                link.close()
    assert not [t for t in threading.enumerate() if t.name == "toy-serial-pty"]  # joined on close


def test_pyserial_reaches_a_tcp_instrument_through_a_socket_url(server: SCPIServer, toy: Toy) -> None:
    import serial

    with serial.serial_for_url(f"socket://127.0.0.1:{server.port}", timeout=2) as port:
        port.write(b"*IDN?\n")
        assert port.readline() == toy.idn.encode() + b"\n"


def test_a_frame_cut_short_on_a_serial_line_is_reported_not_padded(toy: Toy) -> None:
    """A block whose header announces more bytes than arrive (a cable pulled mid-frame): the serial link waits its
    timeout, then names the instrument, the command and how much arrived."""
    from drivers.errors import InstrumentTimeout
    from drivers.transport import open_link
    from simulators.scpi.pty import PtyServer

    toy.blocks["FRAME"] = bytes(range(256)) * 8
    with PtyServer(toy.session, name="toy-serial", faults=FaultPlan(short_block=1.0, seed=3)) as pty:
        link = open_link(pty.port, name="camera", timeout_s=0.5)
        try:
            with pytest.raises(InstrumentTimeout) as err:
                link.query_block("DATA:BLOC? FRAME")
        finally:
            link.close()
    message = str(err.value)
    assert "camera" in message and "DATA:BLOC? FRAME" in message
    assert "expected 2048 bytes, only" in message


def test_a_paced_pty_sends_no_faster_than_its_baud_rate(toy: Toy) -> None:
    from drivers.transport import open_link
    from simulators.scpi.pty import PtyServer

    toy.blocks["FRAME"] = bytes(1000)
    with PtyServer(toy.session, name="toy-serial", baud_rate=38400) as pty:
        link = open_link(pty.port, name="camera", timeout_s=5.0)
        try:
            start = time.perf_counter()
            assert link.query_block("DATA:BLOC? FRAME") == bytes(1000)
            elapsed = time.perf_counter() - start
        finally:
            link.close()
    assert elapsed >= 1011 * 10 / 38400 * 0.95  # header, payload and terminator at 10 bits per byte: >= 0.25 s


def test_a_paced_pty_takes_in_no_faster_than_its_baud_rate(toy: Toy) -> None:
    from drivers.transport import open_link
    from simulators.scpi.pty import PtyServer

    payload = bytes(range(256)) * 4  # an upload of 1024 bytes, e.g. a pattern
    with PtyServer(toy.session, name="toy-serial", baud_rate=38400) as pty:
        link = open_link(pty.port, name="slm", timeout_s=5.0)
        try:
            start = time.perf_counter()
            link.write_block("DATA:BLOC UPLOAD,", payload)
            assert link.query("*OPC?") == "1"  # answered only once the upload has been read off the line
            elapsed = time.perf_counter() - start
        finally:
            link.close()
    assert toy.blocks["UPLOAD"] == payload
    assert elapsed >= (len(payload) + 20) * 10 / 38400 * 0.95  # >= 0.27 s


def test_a_pty_server_closes_while_a_reply_nobody_reads_fills_the_line(toy: Toy) -> None:
    """A client asks for a frame larger than the pty's buffer and walks away: the server must still stop."""
    import serial

    from simulators.scpi.pty import PtyServer

    toy.blocks["FRAME"] = bytes(4 << 20)  # 4 MiB: far beyond the kernel's pty buffer
    pty = PtyServer(toy.session, name="toy-serial")
    with serial.Serial(pty.port, baudrate=115200, timeout=1) as port:
        port.write(b"DATA:BLOC? FRAME\n")
        time.sleep(0.3)  # the server is now blocked on a full line
    start = time.perf_counter()
    pty.close(timeout_s=5.0)
    assert time.perf_counter() - start < 2.0
    assert not [t for t in threading.enumerate() if t.name == "toy-serial-pty"]
