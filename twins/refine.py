"""Fine-tuning a fitted twin on new device measurements, mixed with the data it was fitted on.

Used by online refinement (``orchestrator.refine``): a few Adam steps on minibatches that draw ``mix_fraction`` of
their samples from the original twin data (so the twin does not forget the rest of the input space) and the rest from
the recent measurements. The loss is the mean squared error in units of a fixed per-output spread (as in
``twins.fit.fit_twin``); the twin's own input/output standardisation is left as it is.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from twins.data import TwinData
from twins.fit import nmse

log = logging.getLogger(__name__)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter or buffer (float32 if none)."""
    return next((t.dtype for t in model.state_dict().values() if t.is_floating_point()), torch.float32)


def _tensors(data: TwinData, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(torch.as_tensor(getattr(data, name)).to(dtype) for name in ("x", "theta", "y"))  # type: ignore


@torch.no_grad()
def twin_nmse(model: nn.Module, data: TwinData) -> float:
    """The twin's NMSE on ``data`` (``twins.fit.nmse``)."""
    x, theta, y = _tensors(data, model_dtype(model))
    model.eval()
    return nmse(model(x, theta).to(y.dtype), y)


def fine_tune(model: nn.Module, recent: TwinData, original: TwinData | None, *, steps: int, batch_size: int,
              lr: float, mix_fraction: float, scale: Tensor, seed: int) -> float:
    """Fine-tune all of ``model``'s floating-point parameters in place for ``steps`` Adam steps.

    Args:
        model: a fitted twin; its parameters are made trainable (call it on a copy of the twin in use).
        recent: the new measurements (x [N, n], θ [N, p], y [N, o]).
        original: the data the twin was fitted on, or None (then every sample comes from ``recent``).
        batch_size: samples per step, ``round(batch_size * mix_fraction)`` of them from ``original``.
        scale: per-output spread [o] (or a scalar) in which the squared error is measured.
        seed: seeds the draws of the minibatches.
    Returns:
        The mean loss of the last step (in units of ``scale``, squared).
    """
    params = [p for p in model.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    if not params:
        return 0.0
    dtype = model_dtype(model)
    new = _tensors(recent, dtype)
    old = _tensors(original, dtype) if original is not None and len(original) else None
    n_old = round(batch_size * mix_fraction) if old is not None else 0
    n_new = max(1, batch_size - n_old)
    scale = scale.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    loss = torch.zeros(())
    for _ in range(steps):
        pick = torch.randint(len(new[0]), (n_new,), generator=gen)
        parts = [tuple(t[pick] for t in new)]
        if n_old:
            pick = torch.randint(len(old[0]), (n_old,), generator=gen)
            parts.append(tuple(t[pick] for t in old))
        x, theta, y = (torch.cat(ts) for ts in zip(*parts))
        loss = torch.mean(((model(x, theta) - y) / scale) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())
