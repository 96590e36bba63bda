"""Serial transport: ``PtyServer`` puts an instrument on a pseudo-terminal whose ``/dev/pts/N`` path pyserial (or a
VISA ASRL resource) opens like a USB-serial adapter; ``PtyStream`` is the instrument's end of that serial cable.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import struct
import termios
import threading
import time
import tty
from typing import Callable

from common.faults import FaultPlan
from simulators.scpi.faults import FaultInjector
from simulators.scpi.session import Session
from simulators.scpi.stream import serve_stream

log = logging.getLogger(__name__)


def _packet_mode(master_fd: int) -> bool:
    """Put a pty master in packet mode (TIOCPKT), where the client's flushes show up; False where unsupported."""
    try:
        fcntl.ioctl(master_fd, termios.TIOCPKT, struct.pack("i", 1))
        return True
    except (AttributeError, OSError):
        return False


class PtyStream:
    """``ByteStream`` over the master side of a pseudo-terminal: the instrument's end of a serial cable. With
    ``baud_rate`` (realtime benches) bytes arrive and replies leave no faster than the line carries them: 10 bits per
    byte (8N1).

    A serial line has no connection state; with no client on the other end, reads just time out. A client (re)opening
    the port resets the line instead: pyserial flushes its input on open, which the master sees in packet mode. What a
    previous client left behind is then dropped: its unfinished message (``on_line_reset``, e.g. an unterminated
    command or a block announcing more bytes than it sent), the replies nobody read (and those still being written),
    and a command still waiting for the instrument (``alive`` is False until the next read).
    """

    BITS_PER_BYTE = 10  # start bit, 8 data bits, stop bit
    INPUT_BUFFER_BYTES = 1 << 16  # client input held while a reply waits for room; beyond, it overruns (is lost)

    def __init__(self, master_fd: int, baud_rate: float | None = None, stop: threading.Event | None = None):
        self.fd = master_fd
        self.baud_rate = baud_rate
        self.stop = stop or threading.Event()
        self.on_line_reset: Callable[[], None] = lambda: None  # the server's: forget the unfinished message
        os.set_blocking(master_fd, False)  # a full line must not block the server past its stop
        self._packets = _packet_mode(master_fd)
        self._early = bytearray()  # input read while writing or checking ``alive``, returned by the next read
        self._reset = False  # the line was reset since the last read

    def _take(self) -> bytes | None:
        """Read the master once: the client's bytes, or None (nothing, or a status change such as a line reset)."""
        data = os.read(self.fd, 65536)
        if not self._packets or not data:
            return data or None
        if data[0] == termios.TIOCPKT_DATA:
            return data[1:] or None
        if data[0] & termios.TIOCPKT_FLUSHREAD:
            log.debug("pty: line reset by the client")
            self._reset = True
            self._early.clear()  # arrived before the reset
            self.on_line_reset()
        return None

    def _poll_input(self, timeout_s: float = 0.0) -> None:
        """Take input that is waiting (so a line reset is seen while a reply waits for room)."""
        ready, _, _ = select.select([self.fd], [], [], timeout_s)
        if not ready:
            return
        try:
            data = self._take()
        except OSError:
            return
        if data and len(self._early) + len(data) > self.INPUT_BUFFER_BYTES:
            log.warning("pty: input buffer overrun, %d bytes lost", len(data))  # a client that writes, never reads
        elif data:
            self._early += data

    def read(self, timeout_s: float) -> bytes | None:
        self._reset = False
        if self._early:
            data: bytes | None = bytes(self._early)
            self._early.clear()
        else:
            ready, _, _ = select.select([self.fd], [], [], timeout_s)
            if not ready:
                return None
            try:
                data = self._take()
            except BlockingIOError:
                return None
            except OSError:  # EIO: nobody holds the other end open right now
                time.sleep(timeout_s)
                return None
        if data and self.baud_rate:  # the line delivers them one after another
            time.sleep(len(data) * self.BITS_PER_BYTE / self.baud_rate)
        return data

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        # paced: each slice of about 10 ms of line time is released only once the line could have carried it
        step = max(1, int(self.baud_rate / self.BITS_PER_BYTE * 0.01)) if self.baud_rate else len(view)
        self._poll_input()  # a client that opened the port since this reply's command came gets none of it
        while view and not self._reset:
            if self.baud_rate:
                time.sleep(min(step, len(view)) * self.BITS_PER_BYTE / self.baud_rate)
            try:
                sent = os.write(self.fd, view[:step])
            except BlockingIOError:  # the line is full (nobody reading): wait for room unless the server stops
                if self.stop.is_set():
                    return
                readable, _, _ = select.select([self.fd], [self.fd], [], 0.1)
                if readable:  # hostile client: asks for a long reply and leaves; the next one resets the line
                    self._poll_input()
                continue
            view = view[sent:]

    def alive(self) -> bool:
        """False once a new client has reset the line (the one that sent the pending command is gone)."""
        self._poll_input()
        return not self._reset

    def close(self) -> None:
        """The server owns the pty; a finished conversation leaves it open."""


class PtyServer:
    """An instrument on a pseudo-terminal: ``port`` is a ``/dev/pts/N`` path that pyserial (or a VISA ASRL resource)
    opens exactly like a USB-serial adapter. One conversation at a time, as on a real serial port.

    Args:
        handler_factory: makes the instrument's ``Session``.
        name: for logs and the thread name.
        faults: fault injection on the replies (default: none).
        baud_rate: pace the replies at this line speed, bit/s (realtime benches); None: as fast as the pty goes.
    """

    def __init__(self, handler_factory: Callable[[], Session], name: str = "serial", faults: FaultPlan | None = None,
                 baud_rate: float | None = None):
        self.handler_factory = handler_factory
        self.baud_rate = baud_rate
        self.name = name
        self.injector = FaultInjector(faults, serial_line=True)
        self._stop = threading.Event()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing, no CR/LF translation: bytes pass as they are
        self.port = os.ttyname(self._slave)  # the server keeps this end open, so the path outlives each client
        self._thread = threading.Thread(target=self._serve, name=f"{name}-pty", daemon=True)
        self._thread.start()
        log.info("%s: serving SCPI on %s", name, self.port)

    @property
    def resource(self) -> str:
        return self.port

    def _serve(self) -> None:
        stream = PtyStream(self._master, self.baud_rate, self._stop)
        while not self._stop.is_set():
            try:
                session = self.injector.wrap(self.handler_factory(), self.name)
                stream.on_line_reset = session.reader.clear  # a client opening the port starts on a clean line
                serve_stream(stream, session, self._stop, self.name)  # "dropped": the next conversation starts
            except Exception:  # noqa: BLE001 - never let a client's bytes take the instrument down
                log.exception("%s: conversation failed", self.name)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop serving, join the thread and release the pty."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("%s: pty thread did not stop", self.name)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
        log.info("%s: closed", self.name)

    def __enter__(self) -> "PtyServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
