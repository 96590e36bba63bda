"""Compiled IIR filters for the mechanical bench (``simulators.physics.mechanical``), with numba.

Both kernels run the direct form II transposed of ``scipy.signal.lfilter`` (same operations in the same order, so
the results agree with it to the last bits), but without its per-sample overhead, and ``plate_nonlinear`` runs all
the nonlinear modes of the plate in one pass over time instead of a pass and a temporary array per mode and
operation. A filter (b, a) of order n has n + 1 coefficients each, normalised to a_0 = 1 (``coefficients``); per
sample, with the state z (all in float64)::

    y_k     = z_0 + b_0 x_k
    z_j    <- z_{j+1} + b_{j+1} x_k - a_{j+1} y_k      (j < n - 1)
    z_{n-1} = b_n x_k - a_n y_k
"""

from __future__ import annotations

import numba
import numpy as np


def coefficients(filters: list[tuple[np.ndarray, np.ndarray]], lanes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """K filters (b, a) as ``lfilter`` uses them, normalised to a_0 = 1 and padded with zeros to a common order n:
    numerators and denominators [n + 1, K'], filter k in column k; K' is K rounded up to a multiple of ``lanes`` with
    zero filters (which output 0), so that the compiled loops over the filters run on whole SIMD registers."""
    size = max(max(len(b), len(a)) for b, a in filters)
    width = -(-len(filters) // lanes) * lanes
    bs, as_ = np.zeros((size, width)), np.zeros((size, width))
    as_[0] = 1.0
    for k, (b, a) in enumerate(filters):
        bs[: len(b), k], as_[: len(a), k] = np.asarray(b) / a[0], np.asarray(a) / a[0]
    return bs, as_


@numba.njit(cache=True, nogil=True)
def lfilter_rows(b, a, x):  # pragma: no cover - compiled
    """One filter (b [n + 1], a [n + 1], a_0 = 1) along the last axis of x [C, N], each row from rest: y [C, N]."""
    rows, length, order = x.shape[0], x.shape[1], b.shape[0] - 1
    y = np.empty_like(x)
    z = np.zeros(max(order, 1))
    for c in range(rows):
        z[:] = 0.0
        for k in range(length):
            xk = x[c, k]
            if order == 0:
                y[c, k] = xk * b[0]
                continue
            yk = z[0] + b[0] * xk
            for j in range(order - 1):
                z[j] = z[j + 1] + xk * b[j + 1] - yk * a[j + 1]
            z[order - 1] = xk * b[order] - yk * a[order]
            y[c, k] = yk
    return y


@numba.njit(cache=True, nogil=True)
def plate_nonlinear(t, qb, qa, nb, na, modes, kappa_ratio, y, q_out, ks_out, keep):  # pragma: no cover - compiled
    """Add the nonlinear modes' first-order Duffing correction to the microphone signal y [C, N], in place.

    Per sample of each row of the clipped amplifier output t [C, N]: the modes' displacements q_m = Q_m(t) (the
    filters qb, qa [nq + 1, K'] from ``coefficients``; the first ``modes`` are real), ks = kappa_ratio sum_m q_m^2,
    P_m = (q_m^2 + ks) q_m and y += N_m(P_m) for m = 1 .. modes in turn (the filters nb, na [nn + 1, K']). The
    filters are updated side by side (SIMD over the modes); the sums keep ``lfilter``'s order. With ``keep``,
    q_out [modes, C, N] and ks_out [C, N] receive q and ks (the adjoint needs them).
    """
    width, rows, length = qb.shape[1], t.shape[0], t.shape[1]
    oq, on = qb.shape[0] - 1, nb.shape[0] - 1
    zq, zn = np.zeros((oq, width)), np.zeros((on, width))
    q, p, ym = np.zeros(width), np.zeros(width), np.zeros(width)
    for c in range(rows):
        zq[:, :] = 0.0
        zn[:, :] = 0.0
        for k in range(length):
            x = t[c, k]
            for m in range(width):
                q[m] = zq[0, m] + qb[0, m] * x
            for j in range(oq - 1):
                for m in range(width):
                    zq[j, m] = zq[j + 1, m] + x * qb[j + 1, m] - q[m] * qa[j + 1, m]
            for m in range(width):
                zq[oq - 1, m] = x * qb[oq, m] - q[m] * qa[oq, m]
            ks = 0.0
            for m in range(modes):
                ks = ks + q[m] * q[m]
            ks = ks * kappa_ratio
            for m in range(width):
                p[m] = (q[m] * q[m] + ks) * q[m]
                ym[m] = zn[0, m] + nb[0, m] * p[m]
            for j in range(on - 1):
                for m in range(width):
                    zn[j, m] = zn[j + 1, m] + p[m] * nb[j + 1, m] - ym[m] * na[j + 1, m]
            for m in range(width):
                zn[on - 1, m] = p[m] * nb[on, m] - ym[m] * na[on, m]
            acc = y[c, k]
            for m in range(modes):
                acc = acc + ym[m]
            y[c, k] = acc
            if keep:
                for m in range(modes):
                    q_out[m, c, k] = q[m]
                ks_out[c, k] = ks
