"""Compiled IIR filters for the mechanical bench (``simulators.physics.mechanical``), with numba.

The kernels run the direct form II transposed of ``scipy.signal.lfilter``. A filter (b, a) of order n has n + 1
coefficients each, normalised to a_0 = 1 (``coefficients``); per sample, with the state z (all in float64)::

    y_k     = z_0 + b_0 x_k
    z_j    <- z_{j+1} + b_{j+1} x_k - a_{j+1} y_k      (j < n - 1)
    z_{n-1} = b_n x_k - a_n y_k

A recursion in time runs one sample after the other. To let the processor's vector units work on many samples at
once, ``Blocks`` cuts each record into blocks that are filtered side by side, one block per SIMD lane:

1. every block is filtered from rest, keeping only its state at the end, e_b;
2. the state each block really starts from follows block by block, exactly, as the filter is linear in its state:
   s_{b+1} = F^L s_b + e_b, with s_0 = 0 (a record starts from rest) and F^L the state's transition over a block of L
   samples;
3. every block is filtered again from s_b, now keeping the output.

Blocks are at least as long as the filters' memory, so F^L is small and the join adds no rounding of its own: the
output is as accurate as one pass's (both carry the direct form's rounding, ~1e-13 of the signal for the plate's
filters at 20 kHz; not the same bits, as the sums run in another order). The plate's nonlinear modes need their
displacements q exact before the Duffing term, so the displacement filters run step 3 before the correction filters
see q; the correction filters, linear too, get the response to their true starting states added instead of a third
pass (the free response y_k = e_0^T F^k s_b). On a 512-item record of the mechanical bench (504,000 samples) this
takes 14.6 ms, transposes included, where one pass with the modes side by side took 19.2 ms.
"""

from __future__ import annotations

import numba
import numpy as np

LANES = 256       # blocks side by side (times rows): enough to keep the vector units busy
MIN_BLOCK = 64    # samples: shorter blocks would spend more on joining than they save


def coefficients(filters: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """K filters (b, a) as ``lfilter`` uses them, normalised to a_0 = 1 and padded with zeros to a common order n:
    numerators and denominators [n + 1, K], filter k in column k."""
    size = max(max(len(b), len(a)) for b, a in filters)
    bs, as_ = np.zeros((size, len(filters))), np.zeros((size, len(filters)))
    as_[0] = 1.0
    for k, (b, a) in enumerate(filters):
        bs[: len(b), k], as_[: len(a), k] = np.asarray(b) / a[0], np.asarray(a) / a[0]
    return bs, as_


class Blocks:
    """Records [C, N] cut into blocks filtered side by side: the "columns" layout [L, B C], where column b C + c holds
    samples b L .. b L + L - 1 of row c (zero-padded at the end), so that a time step reads one contiguous row."""

    def __init__(self, rows: int, length: int, memory: int = MIN_BLOCK):
        """``memory``: samples over which the filters' responses die out (below ~1e-6 of their peak). Blocks are at
        least that long, so that the state a block starts from has decayed by its end: F^L is small and carrying
        it adds no more rounding than one pass does (short blocks of a filter with poles near z = 1 would add
        orders of magnitude more)."""
        self.rows, self.length = rows, length
        self.count = max(1, min(LANES // rows, length // max(MIN_BLOCK, memory)))  # blocks per row
        self.size = -(-length // self.count)                                         # L, samples per block

    def split(self, x: np.ndarray) -> np.ndarray:
        """[C, N] -> columns [L, B C]."""
        out = np.empty((self.size, self.count * self.rows))
        _transpose(np.ascontiguousarray(x, dtype=np.float64), out, self.count, True)
        return out

    def join(self, columns: np.ndarray) -> np.ndarray:
        """Columns [L, B C] -> [C, N]."""
        out = np.empty((self.rows, self.length))
        _transpose(out, columns, self.count, False)
        return out

    def lfilter(self, ba: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
        """The filter (b, a) from rest along each row, in the columns layout: x [L, B C] -> y [L, B C]."""
        b, a = (c[:, 0].copy() for c in coefficients([ba]))
        if len(b) == 1:
            return x * b[0]
        starts = self._starts(lambda ends: _filter(b, a, x, ends[0], np.empty((0, x.shape[1]))),
                              b[:, None], a[:, None], x.shape[1])
        y = np.empty_like(x)
        _filter(b, a, x, starts[0], y)
        return y

    def plate_nonlinear(self, t: np.ndarray, q_filters: list, n_filters: list, kappa_ratio: float,
                        keep: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The nonlinear modes' correction to the microphone, sum_m N_m(P_m), for the clipped amplifier output
        t [L, B C] (columns): q_m = Q_m(t) (um), ks = kappa_ratio sum_n q_n^2, P_m = (q_m^2 + ks) q_m, each filter
        from rest along each row (``mechanical._Plan`` says what the filters are).

        Returns the correction [L, B C] and, with ``keep``, q [K, L, B C] and ks [L, B C] (else empty arrays)."""
        qb, qa = coefficients(q_filters)
        nb, na = coefficients(n_filters)
        modes, width = qb.shape[1], t.shape[1]
        nothing = np.empty((0, width))
        n_states = np.zeros((modes, nb.shape[0] - 1, width))
        # the displacement filters' true starts, then exact q from them; the correction filters from rest
        q_starts = self._starts(lambda ends: _plate(t, qb, qa, ends, nb, na, n_states, kappa_ratio, False, nothing,
                                                    nothing[None], nothing), qb, qa, width)
        correction = np.zeros_like(t)
        q_out = np.empty((modes,) + t.shape) if keep else nothing[None]
        ks_out = np.empty_like(t) if keep else nothing
        _plate(t, qb, qa, q_starts, nb, na, n_states, kappa_ratio, True, correction, q_out, ks_out)
        if self.count > 1:
            # the correction filters' true starts: add their free response, y_k += e_0^T F_m^k s_m, for all modes
            # in one product [L, K n] @ [K n, B C]
            free, power = zip(*self._transitions(nb, na))
            n_starts = np.zeros_like(n_states)
            _carry(n_states, np.stack(power), self.rows, n_starts)
            correction += np.concatenate(free, axis=1) @ n_starts.reshape(-1, width)
        return correction, q_out, ks_out

    def _starts(self, run_from_rest, b: np.ndarray, a: np.ndarray, width: int) -> np.ndarray:
        """The states [K, n, B C] each block of K filters (b, a [n + 1, K]) truly starts from: ``run_from_rest(ends)``
        filters every block from rest into ``ends``, and the starts follow block by block (steps 1 and 2 above)."""
        ends = np.zeros((b.shape[1], b.shape[0] - 1, width))
        if self.count == 1:  # one block a row: every row starts from rest
            return ends
        run_from_rest(ends)
        starts = np.zeros_like(ends)
        _carry(ends, np.stack([power for _, power in self._transitions(b, a)]), self.rows, starts)
        return starts

    def _transitions(self, b: np.ndarray, a: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per filter (column): its free response from each unit state over a block [L, n] and F^L [n, n]."""
        order = b.shape[0] - 1
        out = []
        for k in range(b.shape[1]):
            state = np.eye(order)  # column j: the state e_j; ends as F^L
            free = np.empty((self.size, order))
            _filter(b[:, k].copy(), a[:, k].copy(), np.zeros((self.size, order)), state, free)
            out.append((free, state))
        return out


@numba.njit(cache=True, nogil=True)
def _filter(b, a, x, z, y):  # pragma: no cover - compiled
    """One filter (b, a [n + 1], n >= 1) down each column of x [L, W], from the states z [n, W], which end as the
    states after the last row; the output into y [L, W] (or nowhere if y is [0, W]). The new states are computed in
    a second buffer and swapped in (a state update that reads and writes one array does not vectorise)."""
    length, width, order = x.shape[0], x.shape[1], b.shape[0] - 1
    keep = y.shape[0] > 0
    state = np.empty((2, order, width))  # [k % 2]: the states before sample k
    state[0] = z
    out = np.empty(width)
    for k in range(length):
        c, d = k & 1, 1 - (k & 1)
        for w in range(width):
            out[w] = state[c, 0, w] + b[0] * x[k, w]
        for j in range(order - 1):
            for w in range(width):
                state[d, j, w] = state[c, j + 1, w] + x[k, w] * b[j + 1] - out[w] * a[j + 1]
        for w in range(width):
            state[d, order - 1, w] = x[k, w] * b[order] - out[w] * a[order]
        if keep:
            for w in range(width):
                y[k, w] = out[w]
    z[:] = state[length & 1]


@numba.njit(cache=True, nogil=True)
def _plate(t, qb, qa, zq, nb, na, zn, kappa_ratio, with_n, y, q_out, ks_out):  # pragma: no cover - compiled
    """Per time step of t [L, W]: the displacements q_m of the K modes (filters qb, qa [nq + 1, K] from the states
    zq [K, nq, W]); with ``with_n`` also ks = kappa_ratio sum_m q_m^2 (in mode order), P_m = (q_m^2 + ks) q_m and
    y += N_m(P_m) for m = 1 .. K in turn (filters nb, na [nn + 1, K] from the states zn [K, nn, W]). zq and zn end
    as the states after the last step. q_out [K, L, W] and ks_out [L, W] receive q and ks unless they are empty."""
    length, width, modes = t.shape[0], t.shape[1], qb.shape[1]
    oq, on = qb.shape[0] - 1, nb.shape[0] - 1
    keep = ks_out.shape[0] > 0
    sq = np.empty((2, modes, oq, width))  # [k % 2]: the states before step k, as in ``_filter``
    sn = np.empty((2, modes, on, width))
    sq[0], sn[0] = zq, zn
    q = np.empty((modes, width))
    p, ym, ks = np.empty(width), np.empty(width), np.empty(width)
    for k in range(length):
        c, d = k & 1, 1 - (k & 1)
        for m in range(modes):
            for w in range(width):
                q[m, w] = sq[c, m, 0, w] + qb[0, m] * t[k, w]
            for j in range(oq - 1):
                for w in range(width):
                    sq[d, m, j, w] = sq[c, m, j + 1, w] + t[k, w] * qb[j + 1, m] - q[m, w] * qa[j + 1, m]
            for w in range(width):
                sq[d, m, oq - 1, w] = t[k, w] * qb[oq, m] - q[m, w] * qa[oq, m]
        if not with_n:
            continue
        ks[:] = 0.0
        for m in range(modes):
            for w in range(width):
                ks[w] = ks[w] + q[m, w] * q[m, w]
        for w in range(width):
            ks[w] = ks[w] * kappa_ratio
        for m in range(modes):
            for w in range(width):
                p[w] = (q[m, w] * q[m, w] + ks[w]) * q[m, w]
                ym[w] = sn[c, m, 0, w] + nb[0, m] * p[w]
            for j in range(on - 1):
                for w in range(width):
                    sn[d, m, j, w] = sn[c, m, j + 1, w] + p[w] * nb[j + 1, m] - ym[w] * na[j + 1, m]
            for w in range(width):
                sn[d, m, on - 1, w] = p[w] * nb[on, m] - ym[w] * na[on, m]
            for w in range(width):
                y[k, w] = y[k, w] + ym[w]
        if keep:
            for m in range(modes):
                for w in range(width):
                    q_out[m, k, w] = q[m, w]
            for w in range(width):
                ks_out[k, w] = ks[w]
    zq[:] = sq[length & 1]
    if with_n:
        zn[:] = sn[length & 1]


@numba.njit(cache=True, nogil=True)
def _carry(ends, power, rows, starts):  # pragma: no cover - compiled
    """The states each block starts from: starts[..., b C + c] = power @ starts[..., (b - 1) C + c] + ends[...,
    (b - 1) C + c], block 0 of every row from rest (ends, starts [K, n, B C]; power [K, n, n]: F^L per filter)."""
    filters, order, width = ends.shape
    starts[:] = 0.0
    for col in range(rows, width):
        prev = col - rows
        for f in range(filters):
            for i in range(order):
                acc = ends[f, i, prev]
                for j in range(order):
                    acc += power[f, i, j] * starts[f, j, prev]
                starts[f, i, col] = acc


# the layout's transposes, a tile of TILE time steps at a time (about 2x numpy's transpose and copy here)
TILE = 64


@numba.njit(cache=True, nogil=True)
def _transpose(rows, columns, count, to_columns):  # pragma: no cover - compiled
    """Between rows [C, N] and columns [L, B C], columns[k, b C + c] = rows[c, b L + k]: into ``columns`` (0 beyond
    the record) if ``to_columns``, else into ``rows``."""
    n_rows, length, size = rows.shape[0], rows.shape[1], columns.shape[0]
    for k0 in range(0, size, TILE):
        for c in range(n_rows):
            for b in range(count):
                for k in range(k0, min(size, k0 + TILE)):
                    i = b * size + k
                    if to_columns:
                        columns[k, b * n_rows + c] = rows[c, i] if i < length else 0.0
                    elif i < length:
                        rows[c, i] = columns[k, b * n_rows + c]
