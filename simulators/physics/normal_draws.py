"""numpy's float32 normal draws, the same numbers and the same use of the generator, several times faster.

The simulated benches' noise streams are pinned: a bench seeded alike gives the same noise, bit for bit, whatever
the code around it. ``Generator.standard_normal(n, dtype=np.float32)`` costs about 10 ns a number (5 ms for the
mechanical bench's 504,000-sample record, twice a call), of which drawing the random bits is under 2 ns.
``standard_normal_f32`` draws the bits in bulk (``random_raw``) and runs numpy's float32 ziggurat on them compiled:

- each number takes one 32-bit word r: layer i = r & 0xff, sign = bit 8, rabs = r >> 9 (23 bits);
  x = rabs * w[i] (float32), kept if rabs < k[i] (about 98.5 % of the time);
- otherwise layer 0 draws from the tail beyond R by logarithms of further words, and the other layers test the
  wedge, (f[i-1] - f[i]) u + f[i] < exp(-x^2 / 2) with u a further word, and start again if it fails.

The tables k, w, f (256 layers of equal area V, the last bounded by R = 3.654...) are computed here as numpy
computes its own; ``tests/test_normal_draws.py`` checks every layer's bound and width against numpy's draws.
The words come from the generator in numpy's order (the low half of each 64-bit output first, the high half kept
for the next draw), and the generator is left exactly where numpy's own draw would leave it. Only ``PCG64``
(``np.random.default_rng``'s) on a little-endian machine is done this way; anything else falls back to numpy.
"""

from __future__ import annotations

import functools
import logging
import math
import sys

import numba
import numpy as np

log = logging.getLogger(__name__)

R = 3.6541528853610087963519472518  # where the tail begins
LAYER_AREA = 0.0049286732339746519  # V: the area of each of the 256 layers


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy's float32 ziggurat tables: k (uint32 [256], acceptance bounds on rabs), w (float32 [256], layer width
    per unit of rabs), f (float32 [256], the density at each layer's edge)."""
    def density(x: float) -> float:
        return math.exp(-0.5 * x * x)

    edges = np.zeros(256)  # x_i from R down to 0, then reversed: layer i spans |x| < edges[i]
    edges[0] = R
    for i in range(1, 255):
        edges[i] = math.sqrt(-2.0 * math.log(density(edges[i - 1]) + LAYER_AREA / edges[i - 1]))
    edges = edges[::-1].copy()
    scale = 2.0 ** 23
    k = np.zeros(256, np.uint32)
    k[1:] = np.round(edges[:-1] / edges[1:] * scale).astype(np.uint32)
    k[0] = np.uint32(round(R * density(R) / LAYER_AREA * scale))
    w = edges.copy()
    w[0] = LAYER_AREA / density(R)  # the base layer, tail included, as a rectangle of area V
    w = (w / scale).astype(np.float32)
    f = np.array([density(x) for x in edges]).astype(np.float32)
    return k, w, f


K, W, F = _tables()


@functools.cache
def _tail_logarithm() -> bool | None:
    """How the installed numpy takes the tail's logarithms: True for log1pf(-u), False for logf(1 - u) (they differ
    in the last bit now and then), None if neither reproduces numpy's draws (then numpy draws them itself). Decided
    on 4,096 draws from a state whose first draw is such a tail (PCG64 seeded 0, 1,033,628 outputs on)."""
    def seeded() -> np.random.Generator:
        rng = np.random.Generator(np.random.PCG64(0))
        rng.bit_generator.advance(1_033_628)
        return rng

    expected = seeded().standard_normal(4096, dtype=np.float32)
    words = seeded().bit_generator.random_raw(4096).view(np.uint32)
    for log1p in (True, False):
        out = np.empty(4096, np.float32)
        if _ziggurat(words, 4096, out, False, K, W, F, log1p) > 0 and np.array_equal(out, expected):
            return log1p
    log.warning("numpy's float32 normal draws are not reproduced here; the benches' noise is drawn by numpy")
    return None


def standard_normal_f32(rng: np.random.Generator, n: int, draw_only: bool = False) -> np.ndarray | None:
    """``rng.standard_normal(n, dtype=np.float32)``: the same numbers [n], and ``rng`` left where that call leaves
    it. ``draw_only``: advance ``rng`` as if, return None."""
    bits = rng.bit_generator
    exact = isinstance(bits, np.random.PCG64) and sys.byteorder == "little" and n > 0
    log1p = _tail_logarithm() if exact else None
    if log1p is None:
        values = rng.standard_normal(max(n, 0), dtype=np.float32)
        return None if draw_only else values
    start = bits.state
    buffered = start["has_uint32"]
    out = np.empty(0 if draw_only else n, np.float32)
    spare = n // 32 + 64  # room for the rejected draws (about 1.5 %, a few words each)
    while True:
        raw = bits.random_raw((n + spare + 1) // 2)
        words = raw.view(np.uint32)  # little-endian: each output's low half, then its high half
        if buffered:
            words = np.concatenate([np.array([start["uinteger"]], np.uint32), words])
        used = _ziggurat(words, n, out, draw_only, K, W, F, log1p)
        if used >= 0:
            break
        bits.state = start  # ran out of words (never seen): again with more
        spare *= 2
    from_raw = used - buffered  # words taken from the 64-bit outputs drawn here
    outputs = (from_raw + 1) // 2
    bits.state = start
    bits.advance(outputs)
    state = bits.state
    # numpy keeps the last output's high half for the next draw: still waiting if an odd number of words was used
    state["has_uint32"] = from_raw % 2
    state["uinteger"] = int(raw[outputs - 1] >> np.uint64(32)) if outputs else start["uinteger"]
    bits.state = state
    return None if draw_only else out


@numba.njit(cache=True, nogil=True)
def _ziggurat(words, n, out, draw_only, k, w, f, log1p):  # pragma: no cover - compiled
    """numpy's ``random_standard_normal_f`` for n numbers from the 32-bit words [m] into out [n] (unless
    ``draw_only``); returns how many words it took, or -1 if m ran out."""
    m = words.shape[0]
    r_tail = np.float32(R)
    inv_r_tail = np.float32(1.0 / R)
    to_unit = np.float32(1.0 / 16777216.0)
    one = np.float32(1.0)
    j = 0
    for i in range(n):
        while True:
            if j >= m:
                return -1
            word = words[j]
            j += 1
            layer = word & 0xFF
            rabs = (word >> 9) & 0x7FFFFF
            x = np.float32(rabs) * w[layer]
            if (word >> 8) & 1:
                x = -x
            if rabs < k[layer]:
                break
            if layer == 0:  # the tail beyond R
                while True:
                    if j + 2 > m:
                        return -1
                    u1 = np.float32(words[j] >> 8) * to_unit
                    u2 = np.float32(words[j + 1] >> 8) * to_unit
                    j += 2
                    if log1p:  # numpy's log1pf(-u) or logf(1 - u), as it was built
                        xx = -inv_r_tail * math.log1p(-u1)
                        yy = -math.log1p(-u2)
                    else:
                        xx = -inv_r_tail * math.log(one - u1)
                        yy = -math.log(one - u2)
                    if yy + yy > xx * xx:
                        x = -(r_tail + xx) if (rabs >> 8) & 1 else r_tail + xx
                        break
                break
            if j >= m:
                return -1
            u = np.float32(words[j] >> 8) * to_unit
            j += 1
            if np.float64((f[layer - 1] - f[layer]) * u + f[layer]) < math.exp(-0.5 * np.float64(x) * np.float64(x)):
                break
        if not draw_only:
            out[i] = x
    return j
