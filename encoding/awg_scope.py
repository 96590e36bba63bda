"""What the AWG-and-scope encodings share: values held in time slots, a recorded trace binned into outputs, and the
AWG's EMF per drive unit. Pure tensor and array maths, no instruments."""

from __future__ import annotations

import numba
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
    if x.device.type == "cpu" and not ((x.requires_grad or theta.requires_grad) and torch.is_grad_enabled()):
        # the same copies in numpy when no gradient is wanted (the drivers): torch spreads a copy of more than 32 k
        # values over its thread pool, and on a 2-core virtual machine waking the pool's threads cost more than the
        # copies (2.5 ms against 0.3 ms for a batch of 64 x 320)
        xs, thetas = x.numpy(force=True), theta.numpy(force=True)
        values = np.empty((*xs.shape, 2), dtype=np.result_type(xs, thetas))
        values[:, :, 0], values[:, :, 1] = xs, thetas
        return torch.from_numpy(np.repeat(values.reshape(xs.shape[0], -1), samples_per_value, axis=1))
    values = torch.stack([x, theta], dim=2).reshape(x.shape[0], -1)
    return values.repeat_interleave(samples_per_value, dim=1)


SHORT_BIN = 16  # samples a bin up to which ``bin_outputs`` adds them one by one


def bin_outputs(trace: Tensor, n_outputs: int, statistic: str = "mean") -> Tensor:
    """trace [B, T] -> [B, n_outputs]: mean (or root mean square) over n_outputs equal consecutive bins; samples
    beyond the last whole bin are dropped."""
    per_bin = trace.shape[1] // n_outputs
    values = trace[:, : per_bin * n_outputs]
    if statistic == "rms":
        values = values.square()
    if per_bin <= SHORT_BIN and not (values.requires_grad and torch.is_grad_enabled()):
        # a reduction over a short last axis is slow in torch (1.4 ms for 512 x 192 bins of 2): add the bins' k-th
        # samples in turn instead (0.2 ms; the same numbers up to rounding, to the bit for 2-4 samples a bin). Not
        # under autograd (the twins), where the extra nodes cost more than they save
        total = values[:, 0::per_bin].clone()
        for k in range(1, per_bin):
            total += values[:, k::per_bin]
        mean = total / per_bin
    else:
        mean = values.reshape(trace.shape[0], n_outputs, per_bin).mean(dim=2)
    return (mean + 1e-12).sqrt() if statistic == "rms" else mean


def delayed(trace: Tensor, samples: Tensor | float) -> Tensor:
    """trace [B, T] delayed by ``samples`` >= 0 (fractional: linear interpolation between samples, zeros shifted in);
    differentiable in both."""
    d = torch.as_tensor(samples, dtype=trace.dtype)
    whole = int(torch.floor(d.detach()))
    frac = d - whole
    t = trace.shape[1]
    early = torch.nn.functional.pad(trace, (whole, 0))[:, :t]      # trace[k - whole]
    late = torch.nn.functional.pad(trace, (whole + 1, 0))[:, :t]   # trace[k - whole - 1]
    return (1 - frac) * early + frac * late


def sample_averages(t: np.ndarray, volts: np.ndarray, n: int, fs: float, delay_s: float) -> np.ndarray:
    """The scope record (t [N] s, increasing; volts [N]) averaged over each of n AWG sample periods, the k-th starting
    at k / fs + delay_s -> [n] V. A box average of the piecewise-linear record, exact whatever the scope's point
    spacing, so the result does not depend on how the scope's grid falls against the AWG's (that is, on the batch
    size). Periods outside the record count as 0 V.

    The record's running integral (trapezoids, V s) is interpolated linearly at the period edges and differenced;
    the record is padded with 0 V one picosecond beyond each end. Compiled, one pass over the record and the edges
    that stores neither the padded record nor its integral: 1.1 ms on a 1 M-point record, against 15.6 ms for
    ``np.cumsum`` and ``np.interp`` (the same numbers to the last bit)."""
    t = np.ascontiguousarray(t, dtype=np.float64)
    volts = np.ascontiguousarray(volts, dtype=np.float64)
    if t.ndim != 1 or t.shape != volts.shape or t.size == 0:
        raise ValueError(f"expected t and volts of one equal, non-zero length, got {t.shape} and {volts.shape}")
    return _box_averages(t, volts, int(n), float(fs), float(delay_s))


@numba.njit(cache=True, nogil=True)
def _box_averages(t, v, n, fs, delay_s):  # pragma: no cover - compiled
    """``sample_averages``' arithmetic in the order numpy's cumsum and interp use it, in one pass: the padded record
    (point 0 and point m - 1 the 0 V pads, point j the record's j - 1) and its running integral are walked segment by
    segment as the edges advance, without storing either."""
    m = t.size + 2
    t_first, t_last = t[0] - 1e-12, t[-1] + 1e-12
    out = np.empty(n)
    # the segment [point j, point j + 1]: times tj, tn, volts vj, vn, running integral at its ends ij, i_next
    j, tj, vj, ij = 0, t_first, 0.0, 0.0
    tn, vn = (t[0], v[0]) if m > 2 else (t_last, 0.0)
    i_next = ij + 0.5 * (vn + vj) * (tn - tj)
    previous = 0.0
    for k in range(n + 1):
        e = k / fs + delay_s
        if e <= t_first:
            value = 0.0
        else:
            at_end = e >= t_last
            while j < m - 1 and (at_end or tn <= e):  # advance to the segment holding e (past the end: the last point)
                j, tj, vj, ij = j + 1, tn, vn, i_next
                if j < m - 1:
                    tn, vn = (t[j], v[j]) if j + 1 < m - 1 else (t_last, 0.0)
                    i_next = ij + 0.5 * (vn + vj) * (tn - tj)
            if at_end:
                value = ij
            else:
                slope = (i_next - ij) / (tn - tj)
                value = slope * (e - tj) + ij
        if k > 0:
            out[k - 1] = (value - previous) * fs
        previous = value
    return out
