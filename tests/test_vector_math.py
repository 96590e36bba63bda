"""The SIMD-friendly exp, log1p, log and cos/sin of ``simulators.physics.vector_math`` against numpy's (libm's)."""

from __future__ import annotations

import math

import numba
import numpy as np

from simulators.physics import vector_math as vm


@numba.njit
def _apply(name: int, x: np.ndarray) -> np.ndarray:
    out = np.empty((2, x.shape[0]))
    for i in range(x.shape[0]):
        if name == 0:
            out[0, i] = vm.exp_nonpositive(x[i])
        elif name == 1:
            out[0, i] = vm.log1p_unit(x[i])
        elif name == 2:
            out[0, i] = vm.log_positive(x[i])
        else:
            out[0, i], out[1, i] = vm.cos_sin_turns(x[i])
    return out


def _ulps(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want) / np.spacing(np.abs(want))))


def test_exp_of_nonpositive_arguments() -> None:
    x = -np.concatenate([np.linspace(0.0, 40.0, 200_001), np.geomspace(1e-300, 700.0, 5001),
                         [0.5 * math.log(2.0), math.log(2.0), 1.5 * math.log(2.0)]])
    assert _ulps(_apply(0, x)[0], np.exp(x)) <= 2
    # beyond -700 it stays at exp(-700): zero once rounded to float32, as float32 exp gives
    assert np.all(_apply(0, np.array([-701.0, -1e5]))[0].astype(np.float32) == 0)
    assert np.array_equal(_apply(0, np.array([-80.0, -87.0, -95.0]))[0].astype(np.float32),
                          np.exp(np.array([-80.0, -87.0, -95.0])).astype(np.float32))


def test_log1p_on_the_unit_interval() -> None:
    e = np.concatenate([np.linspace(0.0, 1.0, 200_001), np.geomspace(1e-300, 1.0, 5001)])
    got = _apply(1, e)[0]
    assert got[0] == 0.0
    assert np.max(np.abs(got[1:] / np.log1p(e[1:]) - 1.0)) < 2e-13  # far beyond float32's 6e-8


def test_log_of_positive_numbers() -> None:
    rng = np.random.default_rng(0)
    y = np.concatenate([1.0 - rng.random(200_000), np.geomspace(2.0**-1022, 1e300, 5001),
                        [1.0, math.sqrt(0.5), math.sqrt(2.0), 2.0**-53, 1.0 - 2.0**-53]])
    got, want = _apply(2, y)[0], np.log(y)
    assert got[-5] == 0.0
    nonzero = want != 0.0
    assert _ulps(got[nonzero], want[nonzero]) <= 4


def test_cos_and_sin_of_turns() -> None:
    rng = np.random.default_rng(1)
    u = np.concatenate([rng.random(200_000), np.arange(9) / 8.0, [1.0 - 2.0**-53, 2.0**-53]])
    cos_u, sin_u = _apply(3, u)
    angle = 2.0 * np.pi * u
    # against libm of the rounded angle: differences up to an ulp of the angle (~9e-16 near 2 pi)
    assert np.max(np.abs(cos_u - np.cos(angle))) < 2e-15
    assert np.max(np.abs(sin_u - np.sin(angle))) < 2e-15
    # exact quarter turns
    assert (cos_u[200_000], sin_u[200_000]) == (1.0, 0.0)
    assert (cos_u[200_002], sin_u[200_002]) == (0.0, 1.0)
    assert (cos_u[200_004], sin_u[200_004]) == (-1.0, 0.0)
    assert (cos_u[200_006], sin_u[200_006]) == (0.0, -1.0)
