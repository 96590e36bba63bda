"""Physical setups: each turns a batch of inputs x and control parameters theta into outputs y
by driving real (or simulated) instruments. See ``PhysicalSystem``."""

from __future__ import annotations

from typing import Annotated, Protocol, runtime_checkable

import torch
from pydantic import AfterValidator
from pyvisa import rname
from torch import Tensor


from drivers.errors import LimitViolation
from drivers.transport import _SERIAL_PORT, _SERIAL_URL, _is_visa  # open_link's rules for telling links apart


@runtime_checkable
class PhysicalSystem(Protocol):
    """The physical-layer contract (DESIGN.md).

    ``forward(x, theta)`` maps x [B, n_inputs] in [-1, 1] and theta [n_params] (shared by the batch)
    or [B, n_params] to y [B, n_outputs]. ``param_bounds`` is the safe range of theta: (low, high),
    each [n_params]; it is enforced before anything reaches hardware.
    """

    n_inputs: int
    n_params: int
    n_outputs: int
    param_bounds: tuple[Tensor, Tensor]

    def forward(self, x: Tensor, theta: Tensor) -> Tensor: ...


def check_batch(instrument: str, x: Tensor, theta: Tensor, n_inputs: int, param_bounds: tuple[Tensor, Tensor]) -> None:
    """Refuse a batch before anything reaches the hardware: x must be [B, n_inputs], finite, in [-1, 1]; θ finite and
    inside ``param_bounds``. Raises LimitViolation naming ``instrument``."""
    if x.dim() != 2 or x.shape[1] != n_inputs:
        raise LimitViolation(instrument, None, f"inputs must have shape [B, {n_inputs}], got {list(x.shape)}")
    if not torch.isfinite(x).all() or x.abs().max() > 1.0 + 1e-6:
        raise LimitViolation(instrument, None, f"inputs must lie in [-1, 1]; got [{x.min():.3g}, {x.max():.3g}]")
    low, high = (b.double() for b in param_bounds)
    if not torch.isfinite(theta).all() or (theta < low - 1e-6).any() or (theta > high + 1e-6).any():
        raise LimitViolation(instrument, None, "parameters outside param_bounds; refusing to drive the device")


# ---------------------------------------------------------------------------------------------------------------
# Validation helpers for the setups' configuration sections


def check_resource(resource: str) -> str:
    """Refuse a resource string that ``drivers.transport.open_link`` cannot open: a VISA resource must parse
    (``TCPIP0::host::5025::SOCKET`` with a port 1-65535, ``ASRL/dev/ttyUSB0::INSTR``, ...); anything else must be a
    serial port (``/dev/...``, ``COMn``) or a pyserial URL (``socket://host:port``)."""
    if not resource.strip():
        raise ValueError("is empty; give a VISA resource, a serial port or a pyserial URL")
    if _is_visa(resource):
        try:
            parsed = rname.parse_resource_name(resource)
        except rname.InvalidResourceName as err:
            raise ValueError(f"not a valid VISA resource: {err}") from None
        port = getattr(parsed, "port", None)
        if isinstance(parsed, rname.TCPIPSocket) and not (str(port).isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{resource!r}: the port must be a number from 1 to 65535, got {port!r}")
        return resource
    if _SERIAL_URL.match(resource) or _SERIAL_PORT.match(resource):
        return resource
    raise ValueError(f"cannot tell how to open {resource!r}; expected a VISA resource ('TCPIP0::host::5025::SOCKET', "
                     f"'USB0::...::INSTR', 'ASRL/dev/ttyUSB0::INSTR'), a serial port ('/dev/ttyUSB0', 'COM3') or a "
                     f"pyserial URL ('socket://host:port')")


Resource = Annotated[str, AfterValidator(check_resource)]
"""A resource string that ``open_link`` can open (checked when the experiment file is loaded)."""
