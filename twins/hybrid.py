"""Hybrid twin: a physics twin plus a neural residual, y = physics(x, θ) + residual(x, θ).

The physics twin carries what the lab notebook knows (and extrapolates sensibly to new inputs); the residual, typically
a ``TemporalConvTwin`` for the time-multiplexed setups, learns what the physics leaves out, fitted to the physics
twin's residuals with the physics part frozen (``fit_hybrid``). Any twin works as either part (the electronic or the
mechanical physics twin, a neural twin), as long as their widths agree.

Artifacts: ``config()`` nests each part's own ``{"kind": ..., "config": ...}``, and the constructor accepts such
dicts as well as modules, so ``twins.artifact.load_twin`` rebuilds the hybrid with ``HybridTwin(**config)`` and
loads both parts' weights from the one state dict (keys ``physics.*`` and ``residual.*``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from twins.registry import register_twin, twin_class
from twins.data import TwinData
from twins.fit import FitReport, _predict, fit_twin, nmse


def _build(part: nn.Module | Mapping[str, Any], name: str) -> nn.Module:
    if isinstance(part, nn.Module):
        return part
    if isinstance(part, Mapping) and isinstance(part.get("kind"), str) and isinstance(part.get("config"), Mapping):
        return twin_class(part["kind"])(**part["config"])
    raise TypeError(f"{name} must be a twin module or a dict {{'kind': str, 'config': dict}}, "
                    f"got {type(part).__name__}")


def _float_dtype(module: nn.Module) -> torch.dtype | None:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


@register_twin
class HybridTwin(nn.Module):
    """y = physics(x, θ) + residual(x, θ): x [B, n_inputs], θ [B, n_params] or [n_params] -> y [B, n_outputs].

    Args:
        physics: a twin module, or ``{"kind": ..., "config": ...}`` to build one (as stored in an artifact).
        residual: the same for the residual twin; its widths must equal the physics twin's.
    The residual runs in its own dtype (e.g. float32 for a neural twin) whatever the dtype of x.
    """

    kind = "hybrid"

    def __init__(self, physics: nn.Module | Mapping[str, Any], residual: nn.Module | Mapping[str, Any]):
        super().__init__()
        self.physics = _build(physics, "physics")
        self.residual = _build(residual, "residual")
        widths = {name: (m.n_inputs, m.n_params, m.n_outputs) for name, m in (("physics", self.physics),
                                                                               ("residual", self.residual))}
        if widths["physics"] != widths["residual"]:
            raise ValueError(f"physics and residual twins differ in (n_inputs, n_params, n_outputs): {widths}")
        self.n_inputs, self.n_params, self.n_outputs = widths["physics"]

    def config(self) -> dict:
        return {name: {"kind": part.kind, "config": part.config()}
                for name, part in (("physics", self.physics), ("residual", self.residual))}

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        dtype = _float_dtype(self.residual) or x.dtype
        correction = self.residual(x.to(dtype), theta.to(dtype)).to(x.dtype)
        return self.physics(x, theta) + correction

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, physics={self.physics.kind!r}, residual={self.residual.kind!r}"


def fit_hybrid(physics: nn.Module, residual: nn.Module | Callable[[int, int, int], nn.Module], train: TwinData,
               val: TwinData, **fit_kwargs: Any) -> tuple[HybridTwin, FitReport]:
    """Fit a neural residual to a (fitted) physics twin's errors, the physics part frozen; return the hybrid twin.

    The residual is fitted with ``twins.fit.fit_twin`` on the data sets (x, θ, y - physics(x, θ)), so its input and
    output standardisation (``normalise=True``, the default) is set from the residuals, not from the raw outputs.
    Fit the physics twin first (``fit_twin(physics, ...)``) if its constants are not fitted yet.

    Args:
        physics: the physics twin (left unchanged; its ``requires_grad`` flags are restored afterwards).
        residual: the residual twin, or a factory ``(n_inputs, n_params, n_outputs) -> twin``, e.g.
            ``lambda i, p, o: TemporalConvTwin(i, p, o, channels=16)``.
        train, val: measured samples, as for ``fit_twin``.
        fit_kwargs: passed to ``fit_twin`` (epochs, lr, batch_size, seed, patience, threads, progress, ...).
    Returns:
        The hybrid twin (eval mode) and a ``FitReport`` whose NMSEs are the hybrid's on the outputs y (the
        epochs and timing are the residual fit's).
    """
    start = time.perf_counter()
    if not isinstance(residual, nn.Module):
        residual = residual(physics.n_inputs, physics.n_params, physics.n_outputs)
    flags = [p.requires_grad for p in physics.parameters()]
    physics.requires_grad_(False)
    was_training = physics.training
    physics.eval()
    try:
        targets = [TwinData(d.x, d.theta, d.y - _physics_outputs(physics, d), dict(d.metadata)) for d in (train, val)]
        report = fit_twin(residual, targets[0], targets[1], **fit_kwargs)
    finally:
        for p, flag in zip(physics.parameters(), flags):
            p.requires_grad_(flag)
        physics.train(was_training)
    hybrid = HybridTwin(physics, residual).eval()
    errors = []
    for data in (train, val):
        x, theta, y = (torch.as_tensor(a) for a in (data.x, data.theta, data.y))
        errors.append(nmse(_predict(hybrid, x, theta).to(y.dtype), y))
    return hybrid, FitReport(train_nmse=errors[0], val_nmse=errors[1], epochs_run=report.epochs_run,
                             best_epoch=report.best_epoch, seconds=time.perf_counter() - start)


@torch.no_grad()
def _physics_outputs(physics: nn.Module, data: TwinData, chunk: int = 256) -> np.ndarray:
    dtype = _float_dtype(physics) or torch.float32
    x, theta = torch.as_tensor(data.x).to(dtype), torch.as_tensor(data.theta).to(dtype)
    return torch.cat([physics(x[i:i + chunk], theta[i:i + chunk]) for i in range(0, len(x), chunk)]).float().numpy()
