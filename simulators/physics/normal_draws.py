"""The benches' pinned noise streams, drawn several times faster: the same numbers, the same use of the generator.

A bench seeded alike gives the same noise, bit for bit (torch's within a few ulps), whatever the code around it.

**numpy's float32 normals** (the plate's microphone and CHAN2). ``Generator.standard_normal(n, dtype=np.float32)``
costs about 9 ns a number (4.4 ms for the mechanical bench's 504,000-sample record, twice a call), of which drawing
the random bits is about 1 ns. ``standard_normal_f32`` draws the bits in bulk (``random_raw``) and runs numpy's
float32 ziggurat on them compiled:

- each number takes one 32-bit word r: layer i = r & 0xff, sign = bit 8, rabs = r >> 9 (23 bits);
  x = rabs * w[i] (float32), kept if rabs < k[i] (about 98.5 % of the time);
- otherwise layer 0 draws from the tail beyond R by logarithms of further words, and the other layers test the
  wedge, (f[i-1] - f[i]) u + f[i] < exp(-x^2 / 2) with u a further word, and start again if it fails.

The tables k, w, f (256 layers of equal area V, the last bounded by R = 3.654...) are computed here as numpy
computes its own; ``tests/test_normal_draws.py`` checks every layer's bound and width against numpy's draws, and
3 million draws, tails and wedges included. The words come from the generator in numpy's order (the low half of each
64-bit output first, the high half kept for the next draw), and the generator is left exactly where numpy's own
draw would leave it. Only ``PCG64`` (``np.random.default_rng``'s) on a little-endian machine is done this way;
anything else, or a numpy whose draws these do not reproduce (checked once), falls back to numpy.

**torch's float64 normals** (the circuit's scope noise). ``torch.randn(n, dtype=torch.float64)`` draws n uniforms
from the CPU generator's Mersenne Twister (MT19937), one at a time, and turns them into normals by Box-Muller.
``torch_randn`` runs the Twister compiled on a copy of the generator's state and writes the state back (the same
uniforms, bit for bit), and the Box-Muller as SIMD vectors (within a few ulps); a draw that is not read only
advances the Twister. A torch whose generator state is not laid out as expected, or whose uniforms these do not
reproduce (checked once), falls back to torch's own draws.
"""

from __future__ import annotations

import functools
import logging
import math
import sys

import numba
import numpy as np
import torch

from simulators.physics.vector_math import cos_sin_turns, log_positive

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
    it. ``draw_only``: advance ``rng`` as if, return None. Reads and then sets the generator's state: one thread at a
    time (the benches draw under their lock)."""
    bits = rng.bit_generator
    exact = isinstance(bits, np.random.PCG64) and sys.byteorder == "little" and n > 0
    log1p = _tail_logarithm() if exact else None
    if log1p is None:
        values = rng.standard_normal(n, dtype=np.float32)
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


# -- torch ------------------------------------------------------------------------------------------------------

def torch_randn(generator: torch.Generator, n: int, draw_only: bool = False) -> np.ndarray | None:
    """``torch.randn(n, generator=generator, dtype=torch.float64)``: the same numbers (within a few ulps) and the same
    use of the generator, a few times faster. For n >= 16 torch draws n uniforms u (53 bits each), turns each block of
    16 into normals by Box-Muller (radius sqrt(-2 log(1 - u_j)), angle 2 pi u_{j+8}: cos for the first 8, sin for
    the last 8) and, if 16 does not divide n, redraws the last 16 from 16 further uniforms; here the uniforms come from
    ``torch_uniforms`` and the Box-Muller runs compiled, as SIMD vectors. ``draw_only``: advance the generator as if,
    return None."""
    if n < 16:
        values = torch.randn(n, generator=generator, dtype=torch.float64)
        return None if draw_only else values.numpy()
    tail = n % 16
    size = n + (16 if tail else 0)
    u = torch_uniforms(generator, size, draw_only)
    if draw_only:
        return None
    out = np.empty(n)
    _box_muller(u[: n - tail], out[: n - tail])
    if tail:  # the redrawn block is the last 16
        _box_muller(u[n:], out[n - 16:])
    return out


@numba.njit(cache=True, nogil=True)
def _box_muller(u, out):  # pragma: no cover - compiled
    """Blocks of 16 uniforms -> 16 normals each (``torch.randn``'s normal_fill_16), u and out [16 K]: in block b,
    radius sqrt(-2 log(1 - u[16 b + j])) and angle 2 pi u[16 b + 8 + j] give out[16 b + j] (cos) and
    out[16 b + 8 + j] (sin), j < 8. Tiles of the blocks' halves are copied into contiguous buffers, so that the
    arithmetic (``_normal_pairs``) runs as SIMD vectors."""
    tile = 256  # blocks per tile: four 16 kB buffers, in the L1 cache
    first, second = np.empty(8 * tile), np.empty(8 * tile)
    cos_part, sin_part = np.empty(8 * tile), np.empty(8 * tile)
    n_blocks = u.shape[0] // 16
    for b0 in range(0, n_blocks, tile):
        count = min(tile, n_blocks - b0)
        for b in range(count):
            for j in range(8):
                first[8 * b + j], second[8 * b + j] = u[16 * (b0 + b) + j], u[16 * (b0 + b) + 8 + j]
        _normal_pairs(first, second, cos_part, sin_part, 8 * count)
        for b in range(count):
            for j in range(8):
                out[16 * (b0 + b) + j], out[16 * (b0 + b) + 8 + j] = cos_part[8 * b + j], sin_part[8 * b + j]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _normal_pairs(u_radius, u_angle, cos_out, sin_out, count):  # pragma: no cover - compiled
    """Box-Muller on the first ``count`` entries: r = sqrt(-2 log(1 - u_radius)), cos_out = r cos(2 pi u_angle),
    sin_out = r sin(2 pi u_angle); ``vector_math``'s log and cos/sin, within a few ulps of the C library's."""
    for i in range(count):
        radius = math.sqrt(-2.0 * log_positive(1.0 - u_radius[i]))
        cos_a, sin_a = cos_sin_turns(u_angle[i])
        cos_out[i] = radius * cos_a
        sin_out[i] = radius * sin_a


MT_N, MT_M = 624, 397  # the Mersenne Twister's state words and its recurrence's offset
_STATE_BYTES = 5056  # torch's CPU generator state: seed u64, left i32, seeded i32, next u64, 624 words as u64, 40 more
_WORDS_AT = 24


def torch_uniforms(generator: torch.Generator, count: int, draw_only: bool = False) -> np.ndarray | None:
    """``torch.rand(count, generator=generator, dtype=torch.float64)``: the same uniforms [count] in [0, 1), bit for
    bit, and the generator left where that call leaves it. Each uniform takes two 32-bit words a, b of the Twister:
    ((a << 32 | b) & (2^53 - 1)) / 2^53. ``draw_only``: advance the generator as if, return None. Reads and then
    sets the generator's state: one thread at a time (the benches draw under their lock)."""
    if not _twister_reproduced():
        if draw_only:  # two words per number, as a uniform takes
            torch.empty(count, dtype=torch.int64).random_(generator=generator)
            return None
        return torch.rand(count, generator=generator, dtype=torch.float64).numpy()
    state = generator.get_state().numpy().copy()  # uint8 [5056]
    out = np.empty(0 if draw_only else count)
    _run_twister(state, count, out, draw_only)
    generator.set_state(torch.from_numpy(state))
    return None if draw_only else out


def _run_twister(state: np.ndarray, count: int, out: np.ndarray, draw_only: bool) -> None:
    """``count`` uniforms into out from torch's generator state (uint8 [5056], updated in place)."""
    words = state[_WORDS_AT:_WORDS_AT + 8 * MT_N].view(np.uint64).astype(np.uint32)
    position = np.array([state[8:12].view(np.int32)[0], state[16:24].view(np.uint64)[0]], np.int64)  # left, next
    _twister_uniforms(words, position, count, out, draw_only)
    state[_WORDS_AT:_WORDS_AT + 8 * MT_N] = words.astype(np.uint64).view(np.uint8)
    state[8:12] = position[:1].astype(np.int32).view(np.uint8)
    state[16:24] = position[1:].astype(np.uint64).view(np.uint8)


@functools.cache
def _twister_reproduced() -> bool:
    """Whether this torch's generator state is laid out as ``torch_uniforms`` reads it and its uniforms are
    reproduced: 1,000 uniforms (three regenerations of the state) and the state after them, against torch's own."""
    ref = torch.Generator().manual_seed(7)
    state = ref.get_state().numpy().copy()
    if sys.byteorder == "little" and state.shape[0] == _STATE_BYTES:
        got = np.empty(1000)
        _run_twister(state, 1000, got, False)
        want = torch.rand(1000, generator=ref, dtype=torch.float64).numpy()
        if np.array_equal(got, want) and torch.equal(torch.from_numpy(state), ref.get_state()):
            return True
    log.warning("torch's Mersenne Twister is not reproduced here; the circuit's scope noise is drawn by torch")
    return False


@numba.njit(cache=True, nogil=True)
def _twister_uniforms(state, position, count, out, draw_only):  # pragma: no cover - compiled
    """``count`` uniforms from MT19937 words [624] (uint32, updated) at ``position`` = [left, next] (updated, as
    torch keeps them: the next call takes state[next] unless left == 1, which first regenerates the state), into
    out [count] unless ``draw_only``."""
    left, nxt = position[0], position[1]
    tempered = np.empty(0 if draw_only else MT_N, np.uint32)
    half = np.uint32(0)  # the first word of a uniform whose second is in the next block
    scale = 1.0 / 9007199254740992.0  # 2^-53
    mask = np.uint64(0x1FFFFFFFFFFFFF)
    done, total = 0, 2 * count  # words
    while done < total:
        if left == 1:
            _twist(state)
            left, nxt = MT_N + 1, 0
        take = min(total - done, left - 1)
        if not draw_only:
            for t in range(take):
                y = state[nxt + t]
                y ^= y >> np.uint32(11)
                y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
                y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
                y ^= y >> np.uint32(18)
                tempered[t] = y
            t = 0
            if done % 2:
                out[done // 2] = ((np.uint64(half) << np.uint64(32) | np.uint64(tempered[0])) & mask) * scale
                t = 1
            while t + 1 < take:
                out[(done + t) // 2] = ((np.uint64(tempered[t]) << np.uint64(32) | np.uint64(tempered[t + 1])) & mask
                                        ) * scale
                t += 2
            if t < take:
                half = tempered[t]
        nxt += take
        left -= take
        done += take
    position[0], position[1] = left, nxt


@numba.njit(cache=True, nogil=True)
def _twist(state):  # pragma: no cover - compiled
    """The Twister's next 624 words, in place: state[i] = state[i + 397] ^ A(upper bit of state[i] | lower 31 bits
    of state[i + 1]), indices mod 624, with A(y) = y >> 1, xor 0x9908B0DF if y is odd."""
    upper, lower, a = np.uint32(0x80000000), np.uint32(0x7FFFFFFF), np.uint32(0x9908B0DF)
    for i in range(MT_N - MT_M):  # in three runs without the index wrap-around, so that the first two vectorise
        y = (state[i] & upper) | (state[i + 1] & lower)
        state[i] = state[i + MT_M] ^ (y >> np.uint32(1)) ^ (a * (y & np.uint32(1)))
    for i in range(MT_N - MT_M, MT_N - 1):
        y = (state[i] & upper) | (state[i + 1] & lower)
        state[i] = state[i + MT_M - MT_N] ^ (y >> np.uint32(1)) ^ (a * (y & np.uint32(1)))
    y = (state[MT_N - 1] & upper) | (state[0] & lower)
    state[MT_N - 1] = state[MT_M - 1] ^ (y >> np.uint32(1)) ^ (a * (y & np.uint32(1)))
