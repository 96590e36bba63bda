"""Physical setups: each turns a batch of inputs x and control parameters theta into outputs y
by driving real (or simulated) instruments. See ``PhysicalSystem``."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from drivers.errors import LimitViolation


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
