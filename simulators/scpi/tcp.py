"""TCP transport: ``SCPIServer`` serves an instrument on a raw socket (like an instrument's LAN port 5025), one thread
per client, with fault injection (``FaultPlan``) on the replies. pyserial reaches it as ``socket://127.0.0.1:<port>``
too (a serial instrument over TCP).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from typing import Callable

from common.faults import FaultPlan
from simulators.scpi.faults import FaultInjector
from simulators.scpi.session import Session
from simulators.scpi.stream import serve_stream

log = logging.getLogger(__name__)

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class SocketStream:
    """``ByteStream`` over a connected TCP socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def read(self, timeout_s: float) -> bytes | None:
        ready, _, _ = select.select([self.sock], [], [], timeout_s)
        if not ready:
            return None
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError):
            return b""
        if _QUICKACK is not None:
            # Acknowledge at once, as instruments' network stacks do: with Linux's delayed ACK, a client that sends
            # a command and then a query in two writes (Nagle) would wait 40 ms for each such pair.
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass
        return data

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def alive(self) -> bool:
        try:
            ready, _, _ = select.select([self.sock], [], [], 0)
            return not ready or self.sock.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class SCPIServer:
    """A raw-socket SCPI server (like an instrument's LAN port 5025): one thread per client, at most ``max_clients``
    at once (a further connection is closed at once, so that a flood of connections cannot exhaust threads).

    Args:
        handler_factory: makes the ``Session`` of a new client (e.g. ``instrument.session``).
        host, port: where to listen (port 0: a free port, see ``.port``).
        name: for logs and thread names.
        faults: fault injection on this server's replies (default: none).
        serial_url: ``resource`` is the pyserial URL ``socket://host:port`` (a serial instrument reached over TCP)
            instead of a VISA SOCKET resource.
        max_clients: connections served at once.
    """

    def __init__(self, handler_factory: Callable[[], Session], host: str = "127.0.0.1", port: int = 0,
                 name: str = "scpi", faults: FaultPlan | None = None, serial_url: bool = False, max_clients: int = 16):
        self.handler_factory = handler_factory
        self.max_clients = max_clients
        self.serial_url = serial_url
        self.name = name
        self.injector = FaultInjector(faults)
        self._stop = threading.Event()
        self._listener = socket.create_server((host, port))
        self.host, self.port = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()  # wakes the accept loop on close()
        self._clients: dict[threading.Thread, socket.socket] = {}
        self._clients_lock = threading.Lock()
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True)
        self._accept_thread.start()
        log.info("%s: serving SCPI on %s:%d", name, self.host, self.port)

    @property
    def resource(self) -> str:
        """The VISA resource string of this server, e.g. ``TCPIP0::127.0.0.1::45123::SOCKET``, or its pyserial URL
        ``socket://127.0.0.1:45123`` (``serial_url``)."""
        if self.serial_url:
            return f"socket://{self.host}:{self.port}"
        return f"TCPIP0::{self.host}::{self.port}::SOCKET"

    @property
    def client_count(self) -> int:
        with self._clients_lock:
            return len(self._clients)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._listener, self._wake_r], [], [], 1.0)
                if self._listener not in ready:
                    continue
                conn, addr = self._listener.accept()
            except (OSError, ValueError):
                break
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve_client, args=(conn, addr),
                                      name=f"{self.name}-client-{addr[1]}", daemon=True)
            with self._clients_lock:
                if self._stop.is_set():
                    conn.close()
                    break
                if len(self._clients) >= self.max_clients:
                    log.warning("%s: refused %s: %d clients are connected already", self.name, addr,
                                len(self._clients))
                    conn.close()
                    continue
                self._clients[thread] = conn
            thread.start()

    def _serve_client(self, conn: socket.socket, addr: tuple) -> None:
        log.debug("%s: client %s connected", self.name, addr)
        try:
            session = self.injector.wrap(self.handler_factory(), self.name)
            serve_stream(SocketStream(conn), session, self._stop, self.name)
        except Exception:  # noqa: BLE001 - never let a client take the server down
            log.exception("%s: client %s failed", self.name, addr)
        finally:
            with self._clients_lock:
                self._clients.pop(threading.current_thread(), None)
            log.debug("%s: client %s disconnected", self.name, addr)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, disconnect every client and join all threads (a second call does nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake_w.send(b"x")
        self._accept_thread.join(timeout_s)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        with self._clients_lock:
            clients = list(self._clients.items())
        for _, conn in clients:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread, _ in clients:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("%s: client thread %s did not stop", self.name, thread.name)
        log.info("%s: closed", self.name)

    def __enter__(self) -> "SCPIServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
