"""The simulated oscilloscope's acquisition record and its arithmetic: the input resampled onto the record's time grid
(``resample``, compiled), the ADC's quantization (``adc_codes``, ``quantize``) and HRES's moving average
(``box_average``). ``scope.SimInfiniiVision`` triggers, keeps one ``Record`` per acquisition and serves it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

SCREEN_DIVISIONS = 8
HRES_BITS = 12


@dataclass(frozen=True)
class AnalogChannel:
    """One channel of an acquisition kept as its input: the trace (sample j at start_s + j / fs, volts at the probe's
    input) and the vertical settings at the trigger, to be resampled and quantized at the points a transfer reads."""

    trace: np.ndarray
    first_s: float
    srate: float
    start_s: float
    fs: float
    n: int
    probe: float
    scale_v: float
    offset_v: float
    acq_type: str

    def volts(self, stride: int) -> np.ndarray:
        """The record's points 0, stride, 2 stride, ... in volts at the probe tip: the input resampled and scaled."""
        volts = resample(self.trace, self.first_s, self.srate, self.start_s, self.fs, len(range(0, self.n, stride)),
                         stride)
        if self.probe != 1.0:
            volts *= self.probe
        return volts

    def codes(self, stride: int) -> np.ndarray:
        """The 16-bit codes of record points 0, stride, 2 stride, ...: the same numbers as quantizing the whole
        record and decimating it (resampling and quantizing act point by point)."""
        return quantize(self.volts(stride), self.scale_v, self.offset_v, self.acq_type)


@dataclass
class Record:
    """One acquisition: 16-bit codes per channel on a uniform grid (8-bit ADC codes * 256 unless HRES/AVER).

    Channels whose every point depends only on the input at that point (DC coupling, not averaging) keep their
    input (``analog``) and are quantized at the points a transfer reads, when it reads them; the others (AC coupling
    subtracts the record's mean, AVER sums acquisitions) hold the codes of the whole record (``codes``)."""

    sample_rate_hz: float
    t0_s: float  # time of the first point relative to the trigger
    n_points: int
    acq_type: str
    count: int
    codes: dict[int, np.ndarray] = field(default_factory=dict)  # uint16
    analog: dict[int, AnalogChannel] = field(default_factory=dict)
    scale_v: dict[int, float] = field(default_factory=dict)
    offset_v: dict[int, float] = field(default_factory=dict)

    def channels(self) -> set[int]:
        return set(self.codes) | set(self.analog)

    def read(self, ch: int, stride: int) -> np.ndarray:
        """Codes of channel ``ch``'s points 0, stride, 2 stride, ... (uint16)."""
        if ch in self.codes:
            return self.codes[ch][::stride]
        return self.analog[ch].codes(stride)


def adc_codes(volts: np.ndarray, scale_v: float, offset_v: float, bits: int = 8) -> np.ndarray:
    """Volts -> ADC codes about the screen centre (-2^(bits-1) .. 2^(bits-1) - 1, clipped at the screen edges), as
    floats; ``volts`` is overwritten."""
    sub = 2 ** (bits - 8)
    u = volts
    u -= offset_v
    u *= 1.0 / (SCREEN_DIVISIONS * scale_v / 256.0)  # in 8-bit LSBs from the screen centre
    if sub != 1:
        u *= sub
    return np.clip(np.rint(u, out=u), -128 * sub, 128 * sub - 1, out=u)


def quantize(volts: np.ndarray, scale_v: float, offset_v: float, acq_type: str) -> np.ndarray:
    """One acquisition's 16-bit codes about 32768: 8-bit ADC codes * 256, or 12-bit codes * 16 in HRES (not AVER,
    which averages several acquisitions' 8-bit codes). ``volts`` is overwritten."""
    bits = HRES_BITS if acq_type == "HRES" else 8
    u = adc_codes(volts, scale_v, offset_v, bits)
    u += 2 ** (bits - 1)
    u *= 2 ** (16 - bits)
    return u.astype(np.uint16)


@numba.njit(cache=True, nogil=True)
def resample(trace: np.ndarray, first_s: float, srate: float, start_s: float, fs: float,
             n: int, stride: int = 1) -> np.ndarray:  # pragma: no cover - compiled
    """The trace (sample j at start_s + j / fs) at n record points, the k-th being point k stride of the record, at
    first_s + k stride / srate: linear interpolation, the edge values held outside the trace. With stride 1 the same
    numbers as ``np.interp(((first_s + arange(n) / srate) - start_s) * fs, arange(len(trace)), trace)``, in one
    pass; with a stride, those numbers decimated."""
    last = trace.shape[0] - 1
    out = np.empty(n)
    for k in range(n):
        x = ((first_s + (k * stride) / srate) - start_s) * fs
        if x < 0.0:
            out[k] = trace[0]
        elif x >= last:
            out[k] = trace[last]
        else:
            j = int(x)
            out[k] = (trace[j + 1] - trace[j]) * (x - j) + trace[j]
    return out


def box_average(trace: np.ndarray, k: int) -> np.ndarray:
    """Centred moving average over ``k`` samples (HRES); the trace itself for k < 2."""
    if k < 2 or trace.shape[0] < k:
        return trace
    c = np.concatenate(([0.0], np.cumsum(trace)))
    out = trace.copy()
    half = k // 2
    out[half:half + trace.shape[0] - k + 1] = (c[k:] - c[:-k]) / k
    return out
