"""Resource strings: how ``drivers.transport.open_link`` tells the kinds of instrument link apart.

* a VISA resource contains ``::`` (``TCPIP0::192.168.1.10::5025::SOCKET``, ``USB0::...::INSTR``,
  ``GPIB0::7::INSTR``, ``ASRL/dev/ttyUSB0::INSTR``) and is opened through pyvisa;
* a serial port (``/dev/ttyUSB0``, ``/dev/pts/5``, ``COM3``) matches ``SERIAL_PORT``;
* a pyserial URL (``socket://127.0.0.1:1234``, ``loop://``, ``rfc2217://...``) matches ``SERIAL_URL``;
  ports and URLs are opened through pyserial.

``check_resource`` / ``Resource`` apply the same rules when an experiment file is loaded, so a resource that
``open_link`` could not open is refused before any instrument is touched. A placeholder in angle brackets
(``<your AWG's VISA resource>``, what the shipped experiment files hold) is accepted there, for ``--simulate``, and
refused by ``open_link``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator
from pyvisa import rname

SERIAL_URL = re.compile(r"^[a-z][a-z0-9+]*://", re.IGNORECASE)
SERIAL_PORT = re.compile(r"^(/dev/\S+|COM\d+)$", re.IGNORECASE)


def is_placeholder(resource: str) -> bool:
    """True for a placeholder such as ``<your AWG's VISA resource>`` (in angle brackets): the shipped experiment files
    name no real address, and ``--simulate`` supplies its own. Nothing can be opened at a placeholder."""
    return resource.startswith("<") and resource.endswith(">")


def is_visa_resource(resource: str) -> bool:
    """True for a VISA resource string (it contains ``::``); anything else is for pyserial."""
    return "::" in resource


def is_serial_resource(resource: str) -> bool:
    """True for a serial port (``/dev/...``, ``COMn``) or a pyserial URL (``socket://host:port``)."""
    return bool(SERIAL_URL.match(resource) or SERIAL_PORT.match(resource))


def check_resource(resource: str) -> str:
    """Refuse a resource string that ``drivers.transport.open_link`` cannot open: a VISA resource must parse
    (``TCPIP0::host::5025::SOCKET`` with a port 1-65535, ``ASRL/dev/ttyUSB0::INSTR``, ...); anything else must be a
    serial port (``/dev/...``, ``COMn``) or a pyserial URL (``socket://host:port``)."""
    if not resource.strip():
        raise ValueError("is empty; give a VISA resource, a serial port or a pyserial URL")
    if is_placeholder(resource):
        return resource  # to be set before a real bench is used (orchestrator.experiment_file.require_resources)
    if is_visa_resource(resource):
        try:
            parsed = rname.parse_resource_name(resource)
        except rname.InvalidResourceName as err:
            raise ValueError(f"not a valid VISA resource: {err}") from None
        port = getattr(parsed, "port", None)
        if isinstance(parsed, rname.TCPIPSocket) and not (str(port).isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{resource!r}: the port must be a number from 1 to 65535, got {port!r}")
        return resource
    if is_serial_resource(resource):
        return resource
    raise ValueError(f"cannot tell how to open {resource!r}; expected a VISA resource ('TCPIP0::host::5025::SOCKET', "
                     f"'USB0::...::INSTR', 'ASRL/dev/ttyUSB0::INSTR'), a serial port ('/dev/ttyUSB0', 'COM3') or a "
                     f"pyserial URL ('socket://host:port')")


Resource = Annotated[str, AfterValidator(check_resource)]
"""A resource string that ``open_link`` can open (checked when the experiment file is loaded)."""
