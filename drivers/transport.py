"""Links to instruments: VISA resources through pyvisa, serial ports and pyserial URLs through pyserial.

``open_link(resource, name=...)`` picks the backend from the resource string:

* VISA (``ResourceManager(visa_library)``, ``"@py"`` = pyvisa-py):
  ``TCPIP0::192.168.1.10::5025::SOCKET``, ``TCPIP0::host::INSTR``, ``USB0::...::INSTR``, ``GPIB0::7::INSTR``,
  ``ASRL/dev/ttyUSB0::INSTR``;
* pyserial (``serial.serial_for_url``): ``/dev/ttyUSB0``, ``/dev/pts/5``, ``COM3``, ``socket://127.0.0.1:1234``,
  ``loop://``, ``rfc2217://...``.

Serial lines (ports, ``ASRL`` resources) take ``baud_rate`` and ``flow_control``: ``"none"``, ``"rtscts"``
(hardware handshake) or ``"xonxoff"`` (software handshake: the operating system's serial driver consumes the bytes
0x11/0x13 it receives as XON/XOFF, and an 0x13 pauses sending, so it suits text-only protocols, not binary blocks).

Both give the same ``Link`` API. Failures are translated into ``drivers.errors`` naming the instrument and the
command: a timeout becomes InstrumentTimeout, a closed or reset connection ConnectionLost, a malformed binary
block ProtocolError. After a timeout the next command first discards any late reply still in the input buffer,
so replies cannot get out of step. Links never reconnect on their own (instrument state may have been lost);
callers decide when to call ``reconnect()``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Literal

import pyvisa
import pyvisa.constants
import serial

from drivers.errors import ConnectionLost, InstrumentError, InstrumentTimeout, NotConnected, ProtocolError
from drivers.blocks import block_digit_count, block_length, encode_block, preview
from drivers.resources import is_placeholder, is_serial_resource, is_visa_resource

log = logging.getLogger(__name__)

_VISA_CHUNK_BYTES = 1 << 18  # block payloads are read in chunks of this size (progress is counted per chunk)
_BULK_WRITE_BYTES = 1 << 16  # pyvisa-py: a write longer than this goes onto the socket in one piece (VisaLink._send)
_QUIET_S = 0.05  # a serial line silent this long has finished sending a stale reply, s
_DRAIN_LIMIT_S = 10.0  # longest wait for a stale reply to end (1 MB of frames at 3 Mbaud take 3.5 s), s

FlowControl = Literal["none", "rtscts", "xonxoff"]
#: serial handshake -> pyvisa ASRL attribute value (VI_ATTR_ASRL_FLOW_CNTRL)
_VISA_FLOW: dict[str, pyvisa.constants.ControlFlow] = {
    "none": pyvisa.constants.ControlFlow.none,
    "rtscts": pyvisa.constants.ControlFlow.rts_cts,
    "xonxoff": pyvisa.constants.ControlFlow.xon_xoff,
}


class _ByteCounter:
    """pyvisa ``monitoring_interface``: counts the bytes that arrived so far."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, size: int) -> None:
        self.n += size


class Link(ABC):
    """A message link to one instrument; the same API for VISA and serial backends.

    Attributes:
        resource: what was opened (VISA resource string, port or pyserial URL).
        name: human-readable instrument name used in every error message.
    """

    def __init__(self, resource: str, name: str, timeout_s: float, read_termination: str, write_termination: str,
                 reconnect_attempts: int, reconnect_backoff_s: float):
        self.resource = resource
        self.name = name
        self._timeout_s = float(timeout_s)
        self._read_term = read_termination
        self._write_term = write_termination
        self._reconnect_attempts = reconnect_attempts
        self._reconnect_backoff_s = reconnect_backoff_s
        self._lock = threading.RLock()
        self._stale_input = False
        self._last_command: str | None = None

    # -- backend primitives ------------------------------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None:
        """Open the connection (raising the backend's own exceptions)."""

    @abstractmethod
    def _close(self) -> None:
        """Close the connection (raising the backend's own exceptions)."""

    @abstractmethod
    def _send(self, data: bytes) -> None:
        """Send all of ``data``."""

    @abstractmethod
    def _receive_line(self) -> bytes:
        """Receive one message up to and excluding the read termination."""

    @abstractmethod
    def _receive_exact(self, count: int) -> bytes:
        """Receive exactly ``count`` bytes (binary data, terminators not special)."""

    @abstractmethod
    def _discard_input(self) -> None:
        """Drop whatever has arrived and not been read yet."""

    @abstractmethod
    def _apply_timeout(self) -> None:
        """Push ``self._timeout_s`` to the backend."""

    @abstractmethod
    def _translated(self, cmd: str | None) -> AbstractContextManager[None]:
        """Context turning the backend's exceptions into drivers.errors (InstrumentTimeout, ConnectionLost)."""

    # -- public API --------------------------------------------------------------------------------------------
    @property
    def timeout_s(self) -> float:
        """Timeout of one read or write, s."""
        return self._timeout_s

    @timeout_s.setter
    def timeout_s(self, value: float) -> None:
        self._timeout_s = float(value)
        with self._translated(None):
            self._apply_timeout()

    @property
    def last_command(self) -> str | None:
        """The last command or query sent (for error messages)."""
        return self._last_command

    @contextmanager
    def extended_timeout(self, extra_s: float) -> Iterator[None]:
        """Lengthen the timeout by ``extra_s`` (s) inside the block, e.g. by the time a long block takes on a
        serial line."""
        previous = self.timeout_s
        self.timeout_s = previous + extra_s
        try:
            yield
        finally:
            self.timeout_s = previous

    def write(self, cmd: str) -> None:
        """Send one command followed by the write termination."""
        self._write((cmd + self._write_term).encode("ascii"), cmd)

    def write_raw(self, data: bytes) -> None:
        """Send bytes exactly as given."""
        self._write(data, preview(data))

    def _write(self, data: bytes, cmd: str) -> None:
        with self._lock, self._translated(cmd):
            self._flush_stale()
            log.debug("%s <- %s", self.name, cmd if len(cmd) < 200 else cmd[:200] + "...")
            self._last_command = cmd
            self._send(data)

    def write_block(self, prefix: str, payload: bytes) -> None:
        """Send ``prefix`` + IEEE 488.2 block of ``payload`` + write termination as one write."""
        data = prefix.encode("ascii") + encode_block(payload) + self._write_term.encode("ascii")
        self._write(data, f"{prefix}#<{len(payload)} byte block>")

    def read(self) -> str:
        """Read one text reply, without its termination and surrounding whitespace."""
        with self._lock, self._translated(self._last_command):
            return self._receive_line().decode("latin-1").strip()

    def query(self, cmd: str) -> str:
        """Send ``cmd`` and return the reply text, stripped."""
        with self._lock:
            self.write(cmd)
            return self.read()

    def read_raw_block(self) -> bytes:
        """Read one definite-length block ``#<n><len><payload>`` plus its trailing terminator; return the payload.

        Reads exactly the declared length however it is split in transit. Raises ProtocolError on a bad
        header or terminator, InstrumentTimeout if the data stops before the declared length.
        """
        cmd = self._last_command
        with self._lock, self._translated(cmd):
            try:
                n = block_digit_count(self._receive_exact(2), instrument=self.name, command=cmd)
                size = block_length(self._receive_exact(n), instrument=self.name, command=cmd)
            except ProtocolError:
                self._stale_input = True  # the rest of this garbled reply is still on its way
                raise
            payload = self._receive_block_payload(size, cmd)
            end = self._receive_exact(len(self._read_term)) if self._read_term else b""
        if end != self._read_term.encode("ascii"):
            self._stale_input = True
            raise ProtocolError(self.name, cmd, f"binary block of {size} bytes is followed by {preview(end)} "
                                                f"instead of the terminator {self._read_term!r}")
        return payload

    def _receive_block_payload(self, size: int, cmd: str | None) -> bytes:
        """Receive the ``size``-byte payload of a block (backends may report short blocks more precisely)."""
        return self._receive_exact(size)

    def query_block(self, cmd: str) -> bytes:
        """Send ``cmd`` and read the binary block it returns (payload only)."""
        with self._lock:
            self.write(cmd)
            return self.read_raw_block()

    def reconnect(self) -> None:
        """Close and reopen the connection: ``reconnect_attempts`` tries, backoff doubling from
        ``reconnect_backoff_s``. Raises ConnectionLost naming the instrument if every attempt fails."""
        with self._lock:
            try:
                self._close()
            except Exception as err:  # a dead connection often fails to close cleanly
                log.debug("%s: closing before reconnect: %s", self.name, err)
            last: Exception | None = None
            for attempt in range(max(1, self._reconnect_attempts)):
                if attempt:
                    time.sleep(self._reconnect_backoff_s * 2 ** (attempt - 1))
                try:
                    self._open()
                    self._stale_input = True  # a serial device may still be sending the reply that was cut off
                    log.info("%s: reconnected to %s (attempt %d)", self.name, self.resource, attempt + 1)
                    return
                except Exception as err:
                    last = err
                    log.warning("%s: reconnect attempt %d to %s failed: %s", self.name, attempt + 1,
                                self.resource, err)
            raise ConnectionLost(self.name, None, f"could not reconnect to {self.resource} after "
                                                  f"{max(1, self._reconnect_attempts)} attempts: {last}")

    def close(self) -> None:
        """Close the connection."""
        with self._lock, self._translated(None):
            self._close()

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush_stale(self) -> None:
        if self._stale_input:
            self._discard_input()
            self._stale_input = False

    def _timed_out(self, cmd: str | None, detail: str = "") -> InstrumentTimeout:
        self._stale_input = True
        return InstrumentTimeout(self.name, cmd, f"no complete reply within {self._timeout_s:g} s "
                                                 f"on {self.resource}{detail}")

    def _lost(self, cmd: str | None, err: Exception) -> ConnectionLost:
        return ConnectionLost(self.name, cmd, f"connection to {self.resource} lost ({err}); "
                                              f"check cable/network and power, then reconnect")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.resource}>"


def _pyvisa_py_session(inst: pyvisa.resources.MessageBasedResource) -> object | None:
    """pyvisa-py's session object behind a resource (None with other VISA libraries)."""
    return getattr(inst.visalib, "sessions", {}).get(inst.session)


def _pyvisa_py_socket(inst: pyvisa.resources.MessageBasedResource) -> socket.socket | None:
    """The TCP socket behind a pyvisa-py SOCKET resource (None with other VISA libraries)."""
    sock = getattr(_pyvisa_py_session(inst), "interface", None)
    return sock if isinstance(sock, socket.socket) else None


def _set_tcp_nodelay(inst: pyvisa.resources.MessageBasedResource, name: str) -> None:
    """Switch off Nagle's algorithm on a VISA TCP socket: through the standard VISA attribute where the VISA
    library supports it, else (pyvisa-py) on the session's socket itself."""
    try:
        inst.set_visa_attribute(pyvisa.constants.ResourceAttribute.tcpip_nodelay, True)
        return
    except Exception as err:  # noqa: BLE001 - backends raise their own types; falling back is always safe
        log.debug("%s: VI_ATTR_TCPIP_NODELAY not supported (%s); trying the socket", name, err)
    sock = _pyvisa_py_socket(inst)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _check_connected(inst: pyvisa.resources.MessageBasedResource) -> None:
    """Raise the socket's pending error (a refused or unreachable connection): pyvisa-py opens a TCP socket without
    waiting for the connection to succeed, so without this the first command would report it as a lost connection."""
    sock = _pyvisa_py_socket(inst)
    if sock is not None:
        problem = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if problem:
            inst.close()
            raise OSError(problem, os.strerror(problem))


def _unchunk_pyvisa_py(inst: pyvisa.resources.MessageBasedResource) -> socket.socket | None:
    """Let pyvisa-py move large transfers in large pieces; return its socket (None with other VISA libraries).

    pyvisa-py reads and writes TCP data 4 KiB at a time, each piece after a select() call: a 1 MB scope record took
    256 reads, a 1.6 MB waveform 400 writes, a few ms of Python per transfer. Its reads are raised here to
    ``_VISA_CHUNK_BYTES`` per system call; large writes go straight onto the returned socket (``VisaLink._send``).
    The bytes on the wire are the same.
    """
    session = _pyvisa_py_session(inst)
    sock = _pyvisa_py_socket(inst)
    if sock is None or not isinstance(getattr(session, "max_recv_size", None), int):
        return None
    session.max_recv_size = _VISA_CHUNK_BYTES  # type: ignore[union-attr]
    return sock


def _drain_serial_input(waiting: Callable[[], int], discard: Callable[[], None], limit_s: float) -> None:
    """Drop a serial port's input until the line has been quiet for ``_QUIET_S`` (at most ``limit_s``).

    Resetting the input buffer drops only the bytes already received; an instrument that is still sending a long
    reply (a frame cut off by a timeout) keeps sending, and those bytes would answer the next query.
    """
    deadline = time.monotonic() + limit_s
    discard()
    while time.monotonic() < deadline:
        time.sleep(_QUIET_S)
        if not waiting():
            return
        discard()
    log.warning("serial input still arriving after %.1f s of draining", limit_s)


def _drain_by_reading(inst: pyvisa.resources.MessageBasedResource, limit_s: float) -> None:
    """Read and drop a VISA resource's input until nothing has arrived for ``_QUIET_S`` (at most ``limit_s``).

    Not viFlush: pyvisa-py's TCP flush reads for as long as the socket is readable, and a socket the instrument has
    closed is readable for ever (each read returns no bytes), so the flush would spin at 100 % CPU and never return.
    A read with a short timeout ends in both cases; a closed connection then shows on the next command.
    """
    saved_ms = inst.timeout
    inst.timeout = _QUIET_S * 1000.0
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            try:
                inst.visalib.read(inst.session, 1 << 16)
            except pyvisa.errors.VisaIOError as err:
                if err.error_code == pyvisa.constants.StatusCode.error_timeout:
                    return
                raise
        log.warning("%s: input still arriving after %.1f s of draining", inst.resource_name, limit_s)
    finally:
        inst.timeout = saved_ms


class VisaLink(Link):
    """A pyvisa message-based resource (TCPIP SOCKET/INSTR, USB, GPIB, ASRL)."""

    def __init__(self, resource: str, name: str, *, visa_library: str, baud_rate: int,
                 flow_control: FlowControl = "none", **kw: object):
        super().__init__(resource, name, **kw)  # type: ignore[arg-type]
        self._visa_library = visa_library
        self._baud_rate = baud_rate
        self._flow_control = flow_control
        self._inst: pyvisa.resources.MessageBasedResource | None = None
        self._socket: socket.socket | None = None  # pyvisa-py's TCP socket, for large writes (see _send)

    def _open(self) -> None:
        rm = pyvisa.ResourceManager(self._visa_library)
        inst = rm.open_resource(self.resource, open_timeout=int(self._timeout_s * 1000))
        if not isinstance(inst, pyvisa.resources.MessageBasedResource):
            inst.close()
            raise ValueError(f"{self.resource} is not a message-based VISA resource")
        inst.read_termination = self._read_term or None
        inst.write_termination = ""  # Link.write appends the termination itself
        if self.resource.upper().startswith("ASRL"):
            inst.baud_rate = self._baud_rate  # type: ignore[attr-defined]
            inst.flow_control = _VISA_FLOW[self._flow_control]  # type: ignore[attr-defined]
        if self.resource.upper().startswith("TCPIP") and self.resource.upper().endswith("SOCKET"):
            # send each command at once (no Nagle): a setting followed by SYST:ERR? would otherwise wait for the
            # instrument's delayed ACK, up to 40 ms per pair
            _set_tcp_nodelay(inst, self.name)
            _check_connected(inst)
            self._socket = _unchunk_pyvisa_py(inst)
        self._inst = inst
        self._apply_timeout()

    def _close(self) -> None:
        self._socket = None
        if self._inst is not None:
            inst, self._inst = self._inst, None
            inst.close()

    def _resource(self) -> pyvisa.resources.MessageBasedResource:
        if self._inst is None:
            raise pyvisa.errors.InvalidSession()
        return self._inst

    def _apply_timeout(self) -> None:
        if self._inst is not None:
            self._inst.timeout = self._timeout_s * 1000.0  # ms

    def _send(self, data: bytes) -> None:
        inst = self._resource()
        if self._socket is None or len(data) <= _BULK_WRITE_BYTES:
            inst.write_raw(data)
            return
        # pyvisa-py would send this in 4 KiB pieces, each after a select(): one sendall on its socket instead,
        # bounded by the link's timeout (pyvisa-py's own write waits without one)
        self._socket.settimeout(self._timeout_s)
        try:
            self._socket.sendall(data)
        except TimeoutError:
            self._stale_input = True
            raise InstrumentTimeout(self.name, self._last_command,
                                    f"a {len(data)}-byte write did not complete within {self._timeout_s:g} s on "
                                    f"{self.resource}: the instrument stopped taking data part-way; reconnect "
                                    f"before the next command") from None
        finally:
            self._socket.setblocking(True)  # as pyvisa-py keeps it

    def _receive_line(self) -> bytes:
        data = self._resource().read_raw()
        term = self._read_term.encode("ascii")
        return data[:-len(term)] if term and data.endswith(term) else data

    def _receive_exact(self, count: int) -> bytes:
        return self._resource().read_bytes(count, break_on_termchar=False)

    def _receive_block_payload(self, size: int, cmd: str | None) -> bytes:
        """The payload, read with the termination character switched off: binary data holds 0x0A bytes, and each one
        would otherwise end a low-level read early (correct, but one read per newline in the data)."""
        counter = _ByteCounter()
        inst = self._resource()
        termchar = pyvisa.constants.ResourceAttribute.termchar_enabled
        inst.set_visa_attribute(termchar, pyvisa.constants.VI_FALSE)
        try:
            return inst.read_bytes(size, chunk_size=_VISA_CHUNK_BYTES, break_on_termchar=False,
                                   monitoring_interface=counter)
        except pyvisa.errors.VisaIOError as err:
            if err.error_code == pyvisa.constants.StatusCode.error_timeout:
                got = f" ({counter.n} read)" if counter.n else ""
                raise self._timed_out(cmd, f": binary block declared {size} bytes, fewer arrived before the "
                                           f"data stopped{got}") from None
            raise
        finally:
            if self._inst is inst and self._read_term:
                inst.set_visa_attribute(termchar, pyvisa.constants.VI_TRUE)

    def _discard_input(self) -> None:
        inst = self._resource()
        discard = pyvisa.constants.BufferOperation.discard_read_buffer
        if self.resource.upper().startswith("ASRL"):
            _drain_serial_input(lambda: inst.bytes_in_buffer, lambda: inst.flush(discard),
                                max(_DRAIN_LIMIT_S, self._timeout_s))
        else:
            _drain_by_reading(inst, max(_DRAIN_LIMIT_S, self._timeout_s))

    @contextmanager
    def _translated(self, cmd: str | None) -> Iterator[None]:
        try:
            yield
        except pyvisa.errors.InvalidSession as err:
            raise self._lost(cmd, err) from None
        except pyvisa.errors.VisaIOError as err:
            if err.error_code == pyvisa.constants.StatusCode.error_timeout:
                raise self._timed_out(cmd) from None
            if err.error_code in (pyvisa.constants.StatusCode.error_connection_lost,
                                  pyvisa.constants.StatusCode.error_io,
                                  pyvisa.constants.StatusCode.error_invalid_object):
                raise self._lost(cmd, err) from None
            raise InstrumentError(self.name, cmd, f"VISA error on {self.resource}: {err}") from None
        except OSError as err:  # pyvisa-py lets socket errors (reset, broken pipe) through
            raise self._lost(cmd, err) from None


class SerialLink(Link):
    """A pyserial port or URL (``/dev/ttyUSB0``, ``COM3``, ``socket://host:port``, ``loop://``)."""

    def __init__(self, resource: str, name: str, *, baud_rate: int, flow_control: FlowControl = "none",
                 **kw: object):
        super().__init__(resource, name, **kw)  # type: ignore[arg-type]
        self._baud_rate = baud_rate
        self._flow_control = flow_control
        self._port: serial.SerialBase | None = None
        self._received = bytearray()  # bytes read from the port beyond the last reply line (see _receive_line)

    def _open(self) -> None:
        self._received.clear()
        self._port = serial.serial_for_url(self.resource, baudrate=self._baud_rate, timeout=self._timeout_s,
                                           write_timeout=self._timeout_s, rtscts=self._flow_control == "rtscts",
                                           xonxoff=self._flow_control == "xonxoff")

    def _close(self) -> None:
        self._received.clear()
        if self._port is not None:
            port, self._port = self._port, None
            port.close()

    def _serial(self) -> serial.SerialBase:
        if self._port is None or not self._port.is_open:
            raise serial.PortNotOpenError()
        return self._port

    def _apply_timeout(self) -> None:
        if self._port is not None:
            self._port.timeout = self._timeout_s
            self._port.write_timeout = self._timeout_s

    def _send(self, data: bytes) -> None:
        port = self._serial()
        port.write(data)
        port.flush()

    def _receive_line(self) -> bytes:
        """One reply line. Like pyserial's ``read_until`` (each wait for a byte up to the timeout, no further wait
        once the timeout has passed since the start), but it takes whatever has arrived at once instead of a byte
        per call; bytes past the terminator are kept for the next read."""
        term, port, buffer = self._read_term.encode("ascii"), self._serial(), self._received
        deadline = time.monotonic() + self._timeout_s
        while (end := buffer.find(term)) < 0:
            chunk = port.read(max(1, port.in_waiting)) if time.monotonic() < deadline else b""
            if not chunk:
                data = bytes(buffer)
                buffer.clear()
                raise self._timed_out(self._last_command, f" (partial reply {preview(data)})" if data else "")
            buffer += chunk
        line = bytes(buffer[:end])
        del buffer[:end + len(term)]
        return line

    def _receive_exact(self, count: int) -> bytes:
        buffer = self._received
        data = bytes(buffer[:count])
        del buffer[:count]
        if len(data) < count:
            data += self._serial().read(count - len(data))
        if len(data) < count:
            raise self._timed_out(self._last_command, f": expected {count} bytes, only {len(data)} arrived "
                                                      f"({preview(data)})")
        return data

    def _discard_input(self) -> None:
        self._received.clear()
        port = self._serial()
        _drain_serial_input(lambda: port.in_waiting, port.reset_input_buffer, max(_DRAIN_LIMIT_S, self._timeout_s))

    @contextmanager
    def _translated(self, cmd: str | None) -> Iterator[None]:
        try:
            yield
        except serial.SerialTimeoutException as err:  # write timeout
            raise self._timed_out(cmd, f" (write: {err})") from None
        except (serial.SerialException, OSError) as err:
            raise self._lost(cmd, err) from None


def open_link(resource: str, *, name: str, visa_library: str = "@py", timeout_s: float = 10.0,
              read_termination: str = "\n", write_termination: str = "\n", baud_rate: int = 115200,
              flow_control: FlowControl = "none", reconnect_attempts: int = 3,
              reconnect_backoff_s: float = 0.2) -> Link:
    """Open a link to an instrument.

    Args:
        resource: VISA resource string (contains ``::``), serial port (``/dev/...``, ``COMn``) or pyserial URL.
        name: instrument name used in logs and error messages (e.g. ``"awg"``).
        visa_library: pyvisa backend, ``"@py"`` for pyvisa-py, ``""`` for the system VISA (NI, Keysight).
        timeout_s: timeout of one read or write, s.
        read_termination / write_termination: message terminators (SOCKET and serial links need them).
        baud_rate: serial speed, bit/s (serial ports and ASRL resources only).
        flow_control: serial handshake ``"none"``, ``"rtscts"`` or ``"xonxoff"`` (serial ports and ASRL resources
            only; pyserial URLs such as ``socket://`` ignore it). With XON/XOFF the OS consumes bytes 0x11/0x13 in
            replies, so it suits text-only protocols, not binary blocks.
        reconnect_attempts / reconnect_backoff_s: budget of ``Link.reconnect()``; backoff doubles, s.

    Raises:
        ValueError: the resource string is not recognised.
        ConnectionLost: the connection could not be opened.
    """
    common = dict(timeout_s=timeout_s, read_termination=read_termination, write_termination=write_termination,
                  reconnect_attempts=reconnect_attempts, reconnect_backoff_s=reconnect_backoff_s)
    link: Link
    if flow_control not in _VISA_FLOW:
        raise ValueError(f"{name}: flow_control must be one of {', '.join(_VISA_FLOW)}, got {flow_control!r}")
    if is_placeholder(resource):
        raise NotConnected(name, None, f"{resource} is a placeholder, not an address: set the {name}'s resource "
                                       f"string in the experiment file")
    if not read_termination and (resource.upper().endswith("::SOCKET") or not is_visa_resource(resource)):
        raise ValueError(f"{name}: {resource} needs a read_termination (raw sockets and serial ports have no "
                         f"end-of-message signal)")
    if is_visa_resource(resource):
        link = VisaLink(resource, name, visa_library=visa_library, baud_rate=baud_rate, flow_control=flow_control,
                        **common)
    elif is_serial_resource(resource):
        link = SerialLink(resource, name, baud_rate=baud_rate, flow_control=flow_control, **common)
    else:
        raise ValueError(f"{name}: cannot tell how to open {resource!r}; expected a VISA resource "
                         f"('TCPIP0::host::5025::SOCKET', 'USB0::...::INSTR', 'ASRL/dev/ttyUSB0::INSTR'), "
                         f"a serial port ('/dev/ttyUSB0', 'COM3') or a pyserial URL ('socket://host:port')")
    try:
        link._open()
    except Exception as err:
        raise NotConnected(name, None, f"could not connect to {name} at {resource}: {err}; check the resource "
                                       f"string, the cable or network and that the instrument is on") from err
    log.info("%s: opened %s", name, resource)
    return link
