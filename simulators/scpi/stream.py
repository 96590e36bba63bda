"""Serving a conversation over a byte stream: the loop that every transport (TCP, pseudo-terminal) runs per client.

A transport wraps its link as a ``ByteStream`` and hands it with the client's session to ``serve_stream``, which
feeds the session what arrives and writes back the replies it returns. The session may be wrapped (e.g. by
``simulators.scpi.faults.FaultySession``); the loop only knows that a session can end the conversation by raising
``ConnectionDropped``.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable, Protocol

from simulators.scpi.formats import Reply
from simulators.scpi.session import ConnectionDropped

log = logging.getLogger(__name__)


class ByteStream(Protocol):
    """A bidirectional byte link: a TCP socket (``SocketStream``) or a pseudo-terminal (``PtyStream``)."""

    def read(self, timeout_s: float) -> bytes | None:
        """Up to 64 KiB; None if nothing arrived within ``timeout_s``; b"" once the peer has closed."""

    def write(self, data: bytes) -> None: ...

    def alive(self) -> bool:
        """False once the peer has closed (must not consume data)."""

    def close(self) -> None: ...


class Conversation(Protocol):
    """What ``serve_stream`` needs of a session: a ``Session``, or a wrapper around one."""

    stopping: threading.Event
    peer_alive: Callable[[], bool]

    def feed(self, data: bytes) -> Iterable[Reply]: ...


def serve_stream(stream: ByteStream, session: Conversation, stop: threading.Event, name: str = "scpi") -> str:
    """Run one client's conversation until it disconnects, the session drops it, or ``stop`` is set. Returns why it
    ended: ``"closed"`` (by the client), ``"dropped"`` (by the session: ``ConnectionDropped``) or ``"stopped"``."""
    session.stopping = stop
    session.peer_alive = stream.alive
    try:
        while not stop.is_set():
            data = stream.read(0.2)
            if data is None:
                continue
            if not data:
                return "closed"
            for reply in session.feed(data):
                stream.write(reply.data)
        return "stopped"
    except ConnectionDropped as err:
        log.debug("%s: connection dropped: %s", name, err)
        return "dropped"
    except OSError as err:
        log.debug("%s: connection ended: %s", name, err)
        return "closed"
    finally:
        stream.close()
