"""Shared pytest fixtures."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from drivers.errors import InstrumentError

log = logging.getLogger(__name__)


# -----------------------------------------------------------------------------------------------------------------
# wire_server: a scripted TCP instrument that records every byte it receives (driver protocol tests)
# -----------------------------------------------------------------------------------------------------------------

@dataclass
class WireReply:
    """A scripted answer: ``chunks`` sent one by one with ``delay_s`` before each; ``close`` hangs up after."""

    chunks: list[bytes]
    delay_s: float = 0.0
    close: bool = False


WIRE_DEFAULT_SCRIPT: dict[str, Any] = {
    "SYST:ERR?": '+0,"No error"',
    "*OPC?": "1",
    "*IDN?": "Keysight Technologies,33522B,MY53400123,4.00-1.19-2.00-58-00",
}


def split_wire_messages(buf: bytes) -> tuple[list[bytes], bytes]:
    """Split a received byte stream into newline-terminated messages, skipping over IEEE 488.2 blocks
    (whose payload may contain newlines). Returns the complete messages and the unfinished rest."""
    messages, start, i = [], 0, 0
    while i < len(buf):
        if buf[i:i + 1] == b"#":
            if i + 1 >= len(buf):
                break
            if buf[i + 1:i + 2] in b"123456789":
                n = buf[i + 1] - 48
                if i + 2 + n > len(buf):
                    break
                end = i + 2 + n + int(buf[i + 2:i + 2 + n])
                if end > len(buf):
                    break
                i = end
                continue
        if buf[i:i + 1] == b"\n":
            messages.append(buf[start:i])
            start = i + 1
        i += 1
    return messages, buf[start:]


class WireServer:
    """A fake instrument on 127.0.0.1: records all bytes received, answers queries (messages ending in ``?``)
    from ``script``: exact query text -> str (sent + ``\\n``), bytes (sent as is), WireReply, None (no answer),
    a list (answers in turn, the last one repeats) or a callable(query) returning one of these."""

    def __init__(self, script: dict[str, Any] | None = None):
        self.script: dict[str, Any] = {**WIRE_DEFAULT_SCRIPT, **(script or {})}
        self.received = bytearray()
        self.messages: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.02)  # the accept loop checks _stopped this often
        self._stopped = threading.Event()
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def visa_resource(self) -> str:
        return f"TCPIP0::127.0.0.1::{self.port}::SOCKET"

    @property
    def serial_url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def mark(self) -> int:
        """Position in the received stream, for ``since``."""
        with self._lock:
            return len(self.received)

    def since(self, mark: int, expect_len: int | None = None, timeout_s: float = 2.0) -> bytes:
        """Bytes received after ``mark``; with ``expect_len``, waits until at least that many arrived."""
        deadline = time.monotonic() + timeout_s
        while expect_len is not None and self.mark() - mark < expect_len and time.monotonic() < deadline:
            time.sleep(0.005)
        with self._lock:
            return bytes(self.received[mark:])

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)
        self._listener.close()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        pending = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                conn.close()
                return
            with self._lock:
                self.received.extend(data)
            messages, pending = split_wire_messages(pending + data)
            for message in messages:
                with self._lock:
                    self.messages.append(message)
                if not self._answer(conn, message.strip().decode("latin-1")):
                    return

    def _lookup(self, query: str) -> Any:
        entry = self.script.get(query)
        if isinstance(entry, list):
            entry = entry.pop(0) if len(entry) > 1 else entry[0]
        return entry(query) if callable(entry) else entry

    def _answer(self, conn: socket.socket, message: str) -> bool:
        """Send the scripted answer; False once the connection was closed."""
        if not message.endswith("?"):
            return True
        reply = self._lookup(message)
        if reply is None:
            return True
        if isinstance(reply, str):
            reply = WireReply([reply.encode("latin-1") + b"\n"])
        elif isinstance(reply, bytes):
            reply = WireReply([reply])
        try:
            for chunk in reply.chunks:
                time.sleep(reply.delay_s)
                conn.sendall(chunk)
            if reply.close:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
                return False
        except OSError:
            return False
        return True


@pytest.fixture
def wire_server() -> Iterator[Callable[..., WireServer]]:
    """Factory: ``wire_server(script)`` starts a WireServer, stopped after the test."""
    servers: list[WireServer] = []

    def start(script: dict[str, Any] | None = None) -> WireServer:
        servers.append(WireServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def wire_link() -> Iterator[Callable[..., Any]]:
    """Factory: ``wire_link(server, name=..., serial=False, **open_link_kwargs)`` opens a real pyvisa-py (or
    pyserial ``socket://``) link to a WireServer; closed after the test."""
    from drivers.transport import open_link

    links = []

    def connect(server: WireServer, *, name: str = "dut", serial: bool = False, **kwargs: Any):
        kwargs.setdefault("timeout_s", 1.0)
        links.append(open_link(server.serial_url if serial else server.visa_resource, name=name, **kwargs))
        return links[-1]

    yield connect
    for link in links:
        try:
            link.close()
        except InstrumentError as err:  # Link.close turns the backends' errors (OSError included) into these
            log.warning("closing %s after the test: %s", link.name, err)
