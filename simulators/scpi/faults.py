"""Fault injection: what goes wrong with a simulated instrument, drawn reply by reply and reproducibly from a seed.

- ``FaultPlan``      (``common.faults``) the one description of the faults an instrument injects: a probability per
  reply of each kind (``rate`` for every kind at once). The experiment file's ``simulate.faults`` entries are these.
- ``FaultInjector``  draws a plan's faults (thread-safe) and counts them; one per server, shared by its clients.
- ``FaultySession``  wraps a ``Session`` so that its replies pass through the injector. A transport serves it like any
  session and knows nothing about faults; a dropped link reaches it as ``ConnectionDropped``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from common.faults import FaultPlan
from simulators.scpi.formats import Reply, SCPIError
from simulators.scpi.reader import MessageReader
from simulators.scpi.session import ConnectionDropped, Session

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class FaultAction:
    """What ``FaultySession`` does with one reply."""

    delay_s: float
    data: bytes | None  # None: send nothing
    drop_connection: bool = False
    error: bool = False  # push an instrument error into the queue
    reset: bool = False  # the instrument resets itself after replying
    stuck_s: float = 0.0  # ignore everything for this long (the reply included)


class FaultInjector:
    """Draws the faults of a ``FaultPlan`` reply by reply, reproducibly from its seed (thread-safe); ``counts`` holds
    how many of each kind were injected.

    ``serial_line``: drop_connection pulls a serial cable (nothing goes either way for ``unplug_s`` seconds) instead
    of closing a TCP connection.
    """

    def __init__(self, plan: FaultPlan | None, serial_line: bool = False):
        self._lock = threading.Lock()
        self.serial_line = serial_line
        self.unplugged_until = 0.0  # monotonic time until which a pulled serial cable carries nothing
        self.set_plan(plan)

    def set_plan(self, plan: FaultPlan | None) -> None:
        """Inject ``plan`` from now on: its seed restarts the draws, the counts start from zero."""
        with self._lock:
            self.plan = plan if plan is not None else FaultPlan()
            self._probability = self.plan.probabilities()
            self._rng = random.Random(self.plan.seed)
            self.counts: dict[str, int] = {name: 0 for name in FaultPlan.KINDS}
            self.frozen_until = 0.0  # monotonic time until which the instrument ignores everything (``stuck``)

    def _count(self, kind: str) -> None:
        self.counts[kind] += 1
        log.info("fault injected: %s", kind)

    @property
    def injected(self) -> int:
        return sum(self.counts.values())

    def apply(self, reply: Reply) -> FaultAction:
        """Draw what happens to ``reply``: 8 draws per reply (more to garble or cut a block), so that a seed gives the
        same fault sequence."""
        with self._lock:
            p, q = self.plan, self._probability
            if p.max_faults is not None and self.injected >= p.max_faults:
                return FaultAction(0.0, reply.data)
            r = [self._rng.random() for _ in range(8)]
            delay = p.latency_s if r[0] < q["latency"] else 0.0
            if delay:
                self._count("latency")
            if r[5] < q["stuck"]:
                self._count("stuck")
                return FaultAction(0.0, None, stuck_s=p.stuck_s)
            if r[1] < q["drop_connection"]:
                self._count("drop_connection")
                return FaultAction(delay, None, drop_connection=True)
            if r[2] < q["no_reply"]:
                self._count("no_reply")
                return FaultAction(delay, None)
            data = reply.data
            if reply.block is not None and reply.block[1] > reply.block[0]:
                a, b = reply.block
                if r[3] < q["garble_block"]:
                    self._count("garble_block")
                    garbled = bytearray(data)
                    for _ in range(max(1, (b - a) // 1000)):
                        garbled[self._rng.randrange(a, b)] ^= self._rng.randrange(1, 256)
                    data = bytes(garbled)
                if r[4] < q["short_block"]:
                    self._count("short_block")
                    data = data[:self._rng.randrange(a, b)]
            error, reset = r[6] < q["error"], r[7] < q["reset"]
            if error:
                self._count("error")
            if reset:
                self._count("reset")
            return FaultAction(delay, data, error=error, reset=reset)

    def wrap(self, session: Session, name: str = "scpi") -> "FaultySession":
        """``session`` with this injector's faults on its replies (``name`` for logs)."""
        return FaultySession(session, self, name)


INJECTED_ERROR = SCPIError(-300, "injected fault")


class FaultySession:
    """A ``Session`` whose replies pass through a ``FaultInjector``; otherwise it is the session it wraps.

    Per reply the injector's action is carried out: the reply is delayed (latency_s, cut short if the server stops),
    withheld, garbled or cut short; an error is queued; the instrument resets itself after replying. A stuck
    instrument, or a pulled serial cable, ignores whatever arrives meanwhile, on any connection. A dropped link raises
    ``ConnectionDropped`` for the transport to end the conversation.
    """

    def __init__(self, session: Session, injector: FaultInjector, name: str = "scpi"):
        self.session = session
        self.injector = injector
        self.name = name

    # what a transport sets and reads: the wrapped session's own
    @property
    def stopping(self) -> threading.Event:
        return self.session.stopping

    @stopping.setter
    def stopping(self, event: threading.Event) -> None:
        self.session.stopping = event

    @property
    def peer_alive(self) -> Callable[[], bool]:
        return self.session.peer_alive

    @peer_alive.setter
    def peer_alive(self, alive: Callable[[], bool]) -> None:
        self.session.peer_alive = alive

    @property
    def reader(self) -> MessageReader:
        return self.session.reader

    def __getattr__(self, attr: str) -> Any:
        if attr == "session":  # not set yet (e.g. while copied)
            raise AttributeError(attr)
        return getattr(self.session, attr)

    def feed(self, data: bytes) -> Iterator[Reply]:
        """As ``Session.feed``, with the faults drawn for each reply applied."""
        inj = self.injector
        now = time.monotonic()
        if now < inj.frozen_until or now < inj.unplugged_until:  # stuck, or the cable pulled: whoever asks
            return
        session = self.session
        for reply in session.feed(data):
            action = inj.apply(reply)
            if action.stuck_s:
                log.info("%s: fault injected: frozen for %.3g s", self.name, action.stuck_s)
                inj.frozen_until = time.monotonic() + action.stuck_s
                return  # the rest of this message is ignored as well
            if action.delay_s and session.stopping.wait(action.delay_s):
                return  # the server is stopping
            if action.drop_connection:
                log.info("%s: fault injected: dropping the connection", self.name)
                if inj.serial_line:  # the cable is pulled: what is sent meanwhile is lost
                    inj.unplugged_until = time.monotonic() + inj.plan.unplug_s
                raise ConnectionDropped(f"{self.name}: injected fault")
            if action.error:
                session.push_error(INJECTED_ERROR)
            if action.data is not None:
                yield reply if action.data is reply.data else Reply(action.data)
            if action.reset:
                log.info("%s: fault injected: the instrument resets itself", self.name)
                session.power_on_reset()
