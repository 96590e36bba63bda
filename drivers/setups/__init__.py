"""Physical setups: each turns a batch of inputs x and control parameters theta into outputs y
by driving real (or simulated) instruments. See ``PhysicalSystem``."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


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
