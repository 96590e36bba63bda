"""exp and log1p written out as arithmetic, so that numba's loops that call them run as SIMD vectors.

numba compiles ``math.exp`` and ``math.log1p`` to calls into the C library, one element at a time; a loop that makes
such a call is not vectorised. These two functions use only +, *, /, floor and an exponent assembled from bits, which
LLVM vectorises. They work in float64 to about 1e-15 relative, so a float32 result rounded from them equals the C
library's float32 function except where that one is not correctly rounded (a last-bit difference).
"""

from __future__ import annotations

import math

import numba
import numpy as np

_LOG2_E = 1.0 / math.log(2.0)
_LN_2 = math.log(2.0)


@numba.njit(inline="always")
def exp_nonpositive(x: float) -> float:  # pragma: no cover - compiled
    """exp(x) for x <= 0 (float64; below -700 it returns exp(-700) ~ 1e-304, zero in float32).

    x = n ln 2 + r with |r| <= ln 2 / 2; exp(r) by its Taylor series to r^11 (truncation 3e-15); 2^n from its bits.
    """
    x = max(x, -700.0)
    n = math.floor(x * _LOG2_E + 0.5)
    r = x - n * _LN_2
    p = 1.0 / 39916800.0
    p = 1.0 / 3628800.0 + r * p
    p = 1.0 / 362880.0 + r * p
    p = 1.0 / 40320.0 + r * p
    p = 1.0 / 5040.0 + r * p
    p = 1.0 / 720.0 + r * p
    p = 1.0 / 120.0 + r * p
    p = 1.0 / 24.0 + r * p
    p = 1.0 / 6.0 + r * p
    p = 0.5 + r * p
    p = 1.0 + r * p
    p = 1.0 + r * p
    two_to_n = np.int64((np.int64(n) + 1023) << 52).view(np.float64)
    return p * two_to_n


@numba.njit(inline="always")
def log1p_unit(e: float) -> float:  # pragma: no cover - compiled
    """log(1 + e) for 0 <= e <= 1 (float64, relative error ~1e-13 or better, accurate for tiny e too).

    log(1 + e) = 2 atanh(s), s = e / (2 + e) <= 1/3: the odd series 2 (s + s^3/3 + ... + s^23/23).
    """
    s = e / (2.0 + e)
    t = s * s
    p = 1.0 / 23.0
    p = 1.0 / 21.0 + t * p
    p = 1.0 / 19.0 + t * p
    p = 1.0 / 17.0 + t * p
    p = 1.0 / 15.0 + t * p
    p = 1.0 / 13.0 + t * p
    p = 1.0 / 11.0 + t * p
    p = 1.0 / 9.0 + t * p
    p = 1.0 / 7.0 + t * p
    p = 1.0 / 5.0 + t * p
    p = 1.0 / 3.0 + t * p
    p = 1.0 + t * p
    return 2.0 * s * p
