"""exp, log1p, log, cos and sin written out as arithmetic, so that numba's loops that call them run as SIMD vectors.

numba compiles ``math.exp`` and the like to calls into the C library, one element at a time; a loop that makes such
a call is not vectorised. These functions use only +, *, /, floor, selects and exponent bits, which LLVM vectorises.
They work in float64 to within a few ulps, so a float32 result rounded from them equals the C library's float32
function except where that one is not correctly rounded (a last-bit difference). The electronic bench's circuit
and scope noise use them (``simulators.physics.electronic``).

numba inlines them into the kernels that call them and caches those kernels by their own file's time stamp: after
editing this file, delete ``simulators/physics/__pycache__`` (or touch the calling module), or a cached kernel keeps the
old arithmetic.
"""

from __future__ import annotations

import math

import numba
import numpy as np

# polynomial coefficients, highest power first (for ``_horner``)
_EXP_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(13, -1, -1))                 # exp r, to r^13
_ATANH_SERIES = tuple(1.0 / k for k in range(23, 0, -2))                                 # atanh(s) / s in t = s^2
_SIN_TAYLOR = tuple((-1.0) ** (k // 2) / math.factorial(k) for k in range(19, 0, -2))    # sin(x) / x in t = x^2
_COS_TAYLOR = tuple((-1.0) ** (k // 2) / math.factorial(k) for k in range(18, -1, -2))   # cos x in t = x^2
_LOG2_E = 1.0 / math.log(2.0)
_LN_2_HI = 6.93147180369123816490e-01  # ln 2 in two parts (Cody and Waite): n * _LN_2_HI is exact for |n| < 2^20
_LN_2_LO = 1.90821492927058770002e-10
_SQRT_HALF = math.sqrt(0.5)


@numba.njit(inline="always")
def _horner(x: float, coefficients: tuple) -> float:  # pragma: no cover - compiled
    """The polynomial with ``coefficients`` (highest power first) at x."""
    p = coefficients[0]
    for k in range(1, len(coefficients)):
        p = coefficients[k] + x * p
    return p


@numba.njit(inline="always")
def exp_nonpositive(x: float) -> float:  # pragma: no cover - compiled
    """exp(x) for x <= 0 (float64; below -700 it returns exp(-700) ~ 1e-304, zero in float32).

    x = n ln 2 + r with |r| <= ln 2 / 2; exp(r) by its Taylor series to r^13 (truncation 5e-18); 2^n from its bits.
    """
    x = max(x, -700.0)
    n = math.floor(x * _LOG2_E + 0.5)
    r = (x - n * _LN_2_HI) - n * _LN_2_LO
    p = _horner(r, _EXP_TAYLOR)
    two_to_n = np.int64((np.int64(n) + 1023) << 52).view(np.float64)
    return p * two_to_n


@numba.njit(inline="always")
def log1p_unit(e: float) -> float:  # pragma: no cover - compiled
    """log(1 + e) for 0 <= e <= 1 (float64, relative error below 2e-13, accurate for tiny e too: plenty for a float32
    result).

    log(1 + e) = 2 atanh(s), s = e / (2 + e) <= 1/3: the odd series 2 (s + s^3/3 + ... + s^23/23).
    """
    s = e / (2.0 + e)
    t = s * s
    p = _horner(t, _ATANH_SERIES)
    return 2.0 * s * p


@numba.njit(inline="always")
def log_positive(y: float) -> float:  # pragma: no cover - compiled
    """log(y) for normal, finite y > 0 (float64, within about 1 ulp).

    y = 2^e m with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172: the odd
    series to s^21 (truncation below 1e-17 of the result)."""
    bits = np.float64(y).view(np.int64)
    e = ((bits >> 52) & 0x7FF) - 1023
    m = np.int64((bits & 0xFFFFFFFFFFFFF) | (np.int64(1023) << 52)).view(np.float64)  # in [1, 2)
    if m > 2.0 * _SQRT_HALF:
        m *= 0.5
        e += 1
    s = (m - 1.0) / (m + 1.0)
    t = s * s
    p = _horner(t, _ATANH_SERIES[1:-1])  # s^3 / 3 .. s^21 / 21
    return e * _LN_2_HI + (2.0 * s + (2.0 * s * t * p + e * _LN_2_LO))


@numba.njit(inline="always")
def cos_sin_turns(u: float) -> tuple[float, float]:  # pragma: no cover - compiled
    """(cos 2 pi u, sin 2 pi u) for 0 <= u <= 1 (float64, within about 1 ulp of the exact values).

    The quadrant comes from u exactly (q = round(4 u), f = u - q / 4 in [-1/8, 1/8]); sin and cos of 2 pi f
    (|2 pi f| <= pi / 4) by their Taylor series to x^19 and x^18; then the rotation by q quarter turns."""
    q = math.floor(4.0 * u + 0.5)
    x = (u - 0.25 * q) * (2.0 * math.pi)
    t = x * x
    s = _horner(t, _SIN_TAYLOR[:-1])  # from x^3 on
    sin_x = x + x * t * s
    c = -_horner(t, _COS_TAYLOR[:-1])  # from x^2 on
    cos_x = 1.0 - t * c
    quadrant = q - 4.0 * math.floor(0.25 * q)  # 0, 1, 2, 3 (u = 1 is quadrant 0)
    odd = quadrant == 1.0 or quadrant == 3.0
    cos_sign = -1.0 if quadrant == 1.0 or quadrant == 2.0 else 1.0
    sin_sign = -1.0 if quadrant >= 2.0 else 1.0
    return cos_sign * (sin_x if odd else cos_x), sin_sign * (cos_x if odd else sin_x)
