"""What the AWG-and-scope encodings share: values held in time slots, a recorded trace binned into outputs, and the
AWG's EMF per drive unit. Pure tensor and array maths, no instruments."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def emf_per_unit(drive_volts_per_unit: float, load_ohm: float | str, source_ohm: float = 50.0) -> float:
    """AWG EMF (V) per drive unit: the AWG sets ``drive_volts_per_unit`` into its configured load ``load_ohm`` (ohm, or
    ``"INF"`` for High-Z), so the EMF behind its ``source_ohm`` source is larger by (R_load + R_source) / R_load
    (twice at 50 ohm, equal for High-Z)."""
    if load_ohm == "INF":
        return drive_volts_per_unit
    return drive_volts_per_unit * (load_ohm + source_ohm) / load_ohm


def interleave(x: Tensor, theta: Tensor, samples_per_value: int) -> Tensor:
    """x [B, n] and θ [n] or [B, n] -> [B, 2 n spv]: x_1 θ_1 x_2 θ_2 ..., each value held ``samples_per_value``."""
    theta = theta.expand(x.shape[0], -1) if theta.dim() == 1 else theta
    values = torch.stack([x, theta], dim=2).reshape(x.shape[0], -1)
    return values.repeat_interleave(samples_per_value, dim=1)


def bin_outputs(trace: Tensor, n_outputs: int, statistic: str = "mean") -> Tensor:
    """trace [B, T] -> [B, n_outputs]: mean (or root mean square) over n_outputs equal consecutive bins; samples
    beyond the last whole bin are dropped."""
    per_bin = trace.shape[1] // n_outputs
    bins = trace[:, : per_bin * n_outputs].reshape(trace.shape[0], n_outputs, per_bin)
    if statistic == "rms":
        return (bins.square().mean(dim=2) + 1e-12).sqrt()
    return bins.mean(dim=2)


def sample_averages(t: np.ndarray, volts: np.ndarray, n: int, fs: float, delay_s: float) -> np.ndarray:
    """The scope record (t [N] s, volts [N]) averaged over each of n AWG sample periods, the k-th starting at
    k / fs + delay_s. A box average of the piecewise-linear record, exact whatever the scope's point spacing, so
    the result does not depend on how the scope's grid falls against the AWG's (that is, on the batch size).
    Periods outside the record count as 0 V."""
    t = np.concatenate([[t[0] - 1e-12], t, [t[-1] + 1e-12]])
    v = np.concatenate([[0.0], volts, [0.0]])
    integral = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * np.diff(t))])  # V s at each t
    edges = np.arange(n + 1) / fs + delay_s
    return np.diff(np.interp(edges, t, integral)) * fs
