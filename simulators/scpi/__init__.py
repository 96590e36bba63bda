"""SCPI / IEEE 488.2 for the simulated instruments, one module per concern; each builds only on those above it:

- ``formats``   ``SCPIError`` and the error queue's messages, NR1/NR3 numbers, ``Block`` and ``Reply``,
  ``parse_number`` (SCPI suffixes such as ``mV``, ``kHz``).
- ``reader``    ``MessageReader``: bytes -> program messages (terminators, definite-length blocks, bounds, resync);
  ``split_outside`` splits outside quoted strings and blocks.
- ``commands``  ``CommandTree``: header patterns (``"[SOURce#:]VOLTage[:AMPLitude]"``) -> handlers; the ``@scpi`` and
  ``setting()`` declarations.
- ``session``   the protocol core, free of sockets: ``SCPIInstrument`` (a front panel and the common commands),
  ``Session`` (one client's conversation: error queue, status registers, replies) and ``Call`` (what a handler sees).
- ``faults``    ``FaultInjector`` (drawing the faults of a ``common.faults.FaultPlan``) and
  ``FaultySession``, a session whose replies suffer the injected faults.
- ``stream``    ``serve_stream``: one client's conversation over a ``ByteStream``, the loop every transport runs.
- ``tcp``       ``SCPIServer``: TCP, one thread per client (VISA ``TCPIP0::host::port::SOCKET`` or ``socket://``).
- ``pty``       ``PtyServer``: a serial line on a pseudo-terminal (``/dev/pts/N``).

The names a simulated instrument is written with are re-exported here; servers and faults live in their modules.
"""

from simulators.scpi.commands import Setting, scpi, setting
from simulators.scpi.formats import Block, Reply, SCPIError, nr1, nr3, parse_number
from simulators.scpi.session import Call, SCPIInstrument, Session

__all__ = ["Block", "Call", "Reply", "SCPIError", "SCPIInstrument", "Session", "Setting", "nr1", "nr3",
           "parse_number", "scpi", "setting"]
