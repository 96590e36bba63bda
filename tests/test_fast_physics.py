"""The simulated benches' fast physics (issue 14, point 4) gives today's outputs within floating-point rounding.

Each reference below is the bench's physics as it was first written, kept here verbatim as plain numpy / scipy /
torch (it also documents the equations in their simplest form):

- the circuit: the per-time-step numpy loop of ``integrate`` over parallel overlapping chunks (float32, warm-up
  from rest), trigger delay by ``np.interp``, scope noise from ``torch.randn``;
- the plate: ``scipy.signal.lfilter`` for the amplifier input stage and for each nonlinear mode and its correction,
  the linear part by FFT convolution in float32, hum and noise;
- the shaper: the SLM phase through ``unfold`` and a matmul, the SHG autoconvolution by ``torch.fft`` padding the
  field itself (``n=``), the spectrometer matrix, the camera's Poisson and read noise.

Each reference bench is seeded exactly as the simulator documents (``default_rng(seed)`` for the values and drift
phases, then its own noise generator), and run on the same inputs, call after call, so that the noise streams, the
bench time and the drift must stay in step too.

Tolerances, and why:

- circuit: the chunks are integrated in float32 (eps 6e-8). The compiled kernel computes each step with the same
  float32 operations, but its exp / log1p (libm) may differ from numpy's SIMD ones in the last bit, and the sigmoid
  reuses the softplus' exponential; such last-bit differences are carried along by the resonant circuit. Allowed:
  2e-6 V, i.e. about 30 float32 ulps of a 1 V signal (the scope's noise is 2 mV, its LSB 11 mV). The chunks run as
  SIMD vectors with their own exp / log1p (``vector_math``), which may differ from libm's in the last bit too. The
  noise itself (float64 Box-Muller on torch's own uniforms, with ``vector_math``'s log, cos and sin) must agree with
  ``torch.randn`` to 1e-14 (unit normals up to ~5.5: a few float64 ulps).
- plate: float64 filters (the direct form II transposed of ``lfilter``, but on blocks of the record side by side,
  joined exactly: ~1e-13 V apart from one pass), unchanged float32 convolution: 1e-9 V (signals ~0.3 V, noise 1 mV).
- shaper: the differentiable signal (``expected_counts``, float64, ~1e3 electrons per column) to a relative 1e-12.
  ``frames`` computes the signal in float32 (relative error ~3e-7 of the peak) and draws the Poisson and read noise
  from the same stream: a Poisson draw whose mean moved by that much rarely comes out one photoelectron different,
  so the counts must be equal but for one count in at most 1 in 10,000 pixels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch
from scipy.special import expit

from encoding.awg_scope import interleave, sample_averages
from simulators.instruments import scope_record
from simulators.physics import electronic, iir, mechanical, normal_draws, optical
from simulators.physics.electronic import CircuitValues, ElectronicCircuit
from simulators.physics.mechanical import PlateValues, SpeakerPlate
from simulators.physics.optical import (
    ADC_MAX,
    N_COLUMNS,
    N_FFT,
    N_FINE,
    N_ROWS,
    OVERSAMPLE,
    OpticalValues,
    SHGPulseShaper,
)

CIRCUIT_ATOL_V = 2e-6
NOISE_ATOL = 1e-14
PLATE_ATOL_V = 1e-9
SHAPER_RTOL = 1e-12


# -- the circuit, as first written -------------------------------------------------------------------------------------

def ref_integrate(emf: np.ndarray, fs: float, values: CircuitValues, delta_t_k: float = 0.0,
                  max_step_s: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """L di/dt = e - (R_src + R + R_L) i - v; C dv/dt = i - I_d(v): symplectic Euler for L, a linearised implicit
    step for C and the diode pair, at most 1 us per step; every row from rest."""
    n_sub, k_l, k_c, decay, w, g_max, vf_mid, vf_half = electronic._scheme(fs, values, delta_t_k, max_step_s)
    i = emf[:, 0] * 0.0
    v = emf[:, 0] * 0.0
    vs, is_ = [], []
    for k in range(emf.shape[1]):
        e = emf[:, k]
        for _ in range(n_sub):
            i = decay * i + k_l * (e - v)
            sign = np.sign(v)
            z = np.abs(v) / w - (vf_mid + vf_half * sign) / w
            i_d = (w * g_max) * sign * np.logaddexp(0.0, z)
            kg = (k_c * g_max) * expit(z)
            v = v + k_c * (i - i_d) / (1.0 + kg)
        vs.append(v)
        is_.append(i)
    return np.stack(vs, 1), np.stack(is_, 1)


class RefCircuit:
    """``ElectronicCircuit.respond`` as first written."""

    trigger_delay_s = 2.37e-6
    noise_v = {1: 2e-3, 2: 1e-3}
    min_chunk, max_chunk, warmup = 256, 4096, 384

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.values = CircuitValues().off_nominal(rng)
        self.drift_phase = float(rng.uniform(0, 2 * math.pi))
        self.noise = torch.Generator().manual_seed(seed + 12345)
        self.bench_time_s = 0.0

    def temperature_offset_k(self) -> float:
        t = self.bench_time_s
        return 0.8 * math.sin(2 * math.pi * t / 600.0 + self.drift_phase) + 0.3 * math.sin(2 * math.pi * t / 97.0)

    def chunked(self, emf: np.ndarray, fs: float, delta_t: float) -> tuple[np.ndarray, np.ndarray]:
        n, warm = emf.shape[0], self.warmup
        chunk = int(np.clip(n // 1024, self.min_chunk, self.max_chunk))
        n_chunks = max(1, math.ceil(n / chunk))
        padded = np.pad(emf.astype(np.float32), (warm, n_chunks * chunk - n))
        rows = np.lib.stride_tricks.sliding_window_view(padded, chunk + warm)[::chunk]
        v, i = ref_integrate(rows, fs, self.values, delta_t)
        return v[:, warm:].reshape(-1)[:n].astype(np.float64), i[:, warm:].reshape(-1)[:n].astype(np.float64)

    def respond(self, emf_v: np.ndarray, fs: float) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        """The traces, and (separately) the noise added to each."""
        emf = np.asarray(emf_v, dtype=np.float64)
        n = emf.shape[0]
        m = electronic._scheme(fs, self.values, 0.0, 1e-6)[0]
        drive = np.repeat(emf, m) if m > 1 else emf
        v, i = self.chunked(drive, fs * m, self.temperature_offset_k())
        v, i = v[m - 1::m], i[m - 1::m]
        out, noises = {1: v, 2: emf - self.values.r_src * i}, {}
        for ch, trace in out.items():
            noises[ch] = self.noise_v[ch] * torch.randn(n, generator=self.noise, dtype=torch.float64).numpy()
            t = np.arange(n) - self.trigger_delay_s * fs
            out[ch] = np.interp(t, np.arange(n), trace, left=0.0, right=trace[-1]) + noises[ch]
        self.bench_time_s += n / fs + 0.02
        return out, noises


def awg_items(rng: np.random.Generator, n_items: int, slots: int, hold: int, guard: int, peak: float) -> np.ndarray:
    """A waveform like the encodings': values held ``hold`` samples, ``guard`` samples of 0 V after each item."""
    values = rng.uniform(-peak, peak, (n_items, slots)).repeat(hold, axis=1)
    return np.pad(values, ((0, 0), (0, guard))).reshape(-1)


def test_circuit_respond_equals_the_numpy_loop() -> None:
    rng = np.random.default_rng(7)
    fast, ref = ElectronicCircuit(seed=3), RefCircuit(seed=3)
    assert fast.values == ref.values
    waves = [(awg_items(rng, 180, 320, 2, 320, 2.0), 1e6),   # long: chunks longer than the minimum (300k samples)
             (awg_items(rng, 12, 64, 2, 100, 1.5), 1e6),     # short: the minimum chunk, and a partial last chunk
             (awg_items(rng, 20, 32, 2, 80, 3.0), 250e3)]    # 4 steps per sample
    for emf, fs in waves:
        got = fast.respond(emf, fs)
        want, noises = ref.respond(emf, fs)
        for ch in (1, 2):
            assert got[ch].shape == want[ch].shape
            np.testing.assert_allclose(got[ch], want[ch], rtol=0, atol=CIRCUIT_ATOL_V)
        # the noise streams stay in step: the noiseless difference is far below the noise
        assert np.abs(got[1] - want[1]).max() < 1e-3 * np.abs(noises[1]).max()
    assert fast.bench_time_s == ref.bench_time_s
    assert fast.temperature_offset_k() == ref.temperature_offset_k()


def test_circuit_skips_the_traces_the_scope_does_not_read() -> None:
    rng = np.random.default_rng(1)
    fast, ref = ElectronicCircuit(seed=4), RefCircuit(seed=4)
    for n in (4000, 13, 2501):
        emf = rng.uniform(-1.0, 1.0, n)
        got, (want, _) = fast.respond(emf, 1e6, channels=(1,)), ref.respond(emf, 1e6)
        assert set(got) == {1}  # CHAN2's noise was drawn all the same: CHAN1 stays in step
        np.testing.assert_allclose(got[1], want[1], rtol=0, atol=CIRCUIT_ATOL_V)


def test_scope_resamples_as_np_interp() -> None:
    rng = np.random.default_rng(6)
    for length in (1, 2, 7, 5000):
        trace = rng.standard_normal(length)
        for first, srate, start, fs in ((0.0, 1e6, 0.0, 1e6), (-3e-4, 1.7e6, -2e-4, 1e6), (2e-3, 3.3e5, 1e-4, 2e4)):
            n = 3000
            want = np.interp(((first + np.arange(n) / srate) - start) * fs, np.arange(length, dtype=np.float64),
                             trace)
            np.testing.assert_array_equal(scope_record.resample(trace, first, srate, start, fs, n), want)


def reference_sample_averages(t: np.ndarray, volts: np.ndarray, n: int, fs: float, delay_s: float) -> np.ndarray:
    """The box average as first written: trapezoid running integral, ``np.interp`` at the period edges."""
    t = np.concatenate([[t[0] - 1e-12], t, [t[-1] + 1e-12]])
    v = np.concatenate([[0.0], volts, [0.0]])
    integral = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * np.diff(t))])
    edges = np.arange(n + 1) / fs + delay_s
    return np.diff(np.interp(edges, t, integral)) * fs


@pytest.mark.parametrize("points, n, delay_s", [(200_000, 160_000, -0.5e-6), (997, 1200, 3.3e-6), (50, 80, -2e-5),
                                                (3, 2, 0.0)])
def test_sample_averages_equal_np_interp(points: int, n: int, delay_s: float) -> None:
    """Irregular record grids, edges before, inside and beyond the record: equal to the last bit."""
    rng = np.random.default_rng(points)
    t = np.cumsum(rng.uniform(0.2e-6, 1.4e-6, points)) - 1e-6
    volts = rng.normal(size=points)
    assert np.array_equal(sample_averages(t, volts, n, 1e6, delay_s),
                          reference_sample_averages(t, volts, n, 1e6, delay_s))


def test_circuit_noise_is_torch_randn() -> None:
    for n in (1, 15, 16, 17, 1000, 65_541):
        ref, fast = torch.Generator().manual_seed(99), torch.Generator().manual_seed(99)
        for _ in range(2):  # the generator is left where torch.randn leaves it
            want = torch.randn(n, generator=ref, dtype=torch.float64).numpy()
            np.testing.assert_allclose(normal_draws.torch_randn(fast, n), want, rtol=0, atol=NOISE_ATOL)
        assert torch.equal(fast.get_state(), ref.get_state())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_circuit_integrate_numpy_equals_the_loop(dtype) -> None:
    values = ElectronicCircuit(seed=5).values
    rng = np.random.default_rng(2)
    emf = np.stack([awg_items(rng, 4, 40, 2, 60, peak) for peak in (0.5, 1.5, 3.0)]).astype(dtype)
    for fs in (1e6, 400e3):
        got = electronic.integrate(emf, fs, values, delta_t_k=0.4)
        want = ref_integrate(emf, fs, values, delta_t_k=0.4)
        atol = (1e-12, 1e-14) if dtype == np.float64 else (CIRCUIT_ATOL_V, 1e-8)
        for g, w, tol in zip(got, want, atol):
            assert g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=0, atol=tol)


# -- the plate, as first written ---------------------------------------------------------------------------------------

def ref_lfilter(ba, x):
    return scipy.signal.lfilter(ba[0], ba[1], x, axis=-1)


def ref_chain(u: np.ndarray, plan, single: bool = False) -> np.ndarray:
    """Amplifier (averaged input stage, tanh clip), all modes linear by convolution, the Duffing correction of the
    nonlinear modes to first order (one Picard step), the output delay."""
    t = ref_lfilter(plan.pre, u)
    np.tanh(t, out=t)
    if single:
        y = scipy.signal.oaconvolve(t.astype(np.float32), plan.kernel.astype(np.float32)[None, :],
                                    axes=-1)[:, : t.shape[-1]].astype(np.float64)
    else:
        y = scipy.signal.oaconvolve(t, plan.kernel[None, :], axes=-1)[:, : t.shape[-1]]
    if plan.q_filters:
        q = [ref_lfilter(ba, t) for ba in plan.q_filters]
        p = np.empty_like(t)
        ks = np.zeros_like(t)
        for qm in q:
            ks += np.multiply(qm, qm, out=p)
        ks *= plan.kappa_ratio
        for qm, ba in zip(q, plan.n_filters):
            np.multiply(qm, qm, out=p)
            p += ks
            p *= qm
            y += ref_lfilter(ba, p)
    if plan.shift:
        y = np.concatenate([np.zeros(y.shape[:-1] + (plan.shift,)), y], axis=-1)[..., : u.shape[-1]]
    return y


def ref_sine(step: float, phase: float, n: int, block: int = 1024) -> np.ndarray:
    """sin(phase + step k) for k < n, by angle addition over blocks."""
    rows = -(-n // block)
    outer = phase + step * block * np.arange(rows)
    inner = step * np.arange(block)
    out = np.multiply.outer(np.sin(outer), np.cos(inner))
    out += np.multiply.outer(np.cos(outer), np.sin(inner))
    return out.reshape(-1)[:n]


class RefPlate:
    """``SpeakerPlate.respond`` as first written (the discretisation ``_make_plan`` is shared: unchanged)."""

    trigger_delay_s = 2.37e-6
    chan2_noise_v = 1e-3

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.values = PlateValues().off_nominal(rng)
        self.drift_phase = float(rng.uniform(0, 2 * math.pi))
        self.mains_phase = rng.uniform(0, 2 * math.pi, 2)
        self.noise = np.random.default_rng(seed + 54321)
        self.bench_time_s = 0.0

    def respond(self, emf_v: np.ndarray, fs: float) -> tuple[dict[int, np.ndarray], float]:
        v = self.values
        m = max(1, math.ceil(20e3 / fs - 1e-9))
        rate = m * fs
        u = np.repeat(np.asarray(emf_v, dtype=np.float64) * v.input_divider, m)
        n = u.shape[0]
        t = self.bench_time_s
        temp = 0.8 * math.sin(2 * math.pi * t / 600.0 + self.drift_phase) + 0.3 * math.sin(2 * math.pi * t / 97.0)
        plan = mechanical._make_plan(v, rate, v.acoustic_delay_s + self.trigger_delay_s, round(temp, 3))
        mic = ref_chain(u[None, :], plan, single=True)[0]
        mains = 2 * math.pi * v.mains_hz
        for harmonic, amplitude, phase in ((1, v.hum_v, self.mains_phase[0]), (3, v.hum3_v, self.mains_phase[1])):
            mic += amplitude * ref_sine(harmonic * mains / rate, harmonic * mains * t + phase, n)
        mic += v.mic_noise_v * self.noise.standard_normal(n, dtype=np.float32)
        delay = self.trigger_delay_s * rate
        whole = int(math.floor(delay))
        frac = delay - whole
        shifted = np.concatenate([np.zeros(whole + 1), u])[: n + 1]  # shifted[j + 1] = u[j - whole]
        chan2 = (1.0 - frac) * shifted[1:] + frac * shifted[:-1]
        chan2 += self.chan2_noise_v * self.noise.standard_normal(n, dtype=np.float32)
        self.bench_time_s += n / rate + 0.02
        return {1: mic, 2: chan2}, rate


def test_plate_respond_equals_lfilter_chain() -> None:
    rng = np.random.default_rng(8)
    fast, ref = SpeakerPlate(seed=2), RefPlate(seed=2)
    assert fast.values == ref.values
    waves = [(awg_items(rng, 80, 192, 1, 600, 0.5), 20e3),
             (awg_items(rng, 10, 96, 2, 200, 1.0), 8e3),      # 3 internal samples per AWG sample
             (np.zeros(5000), 20e3)]
    for emf, fs in waves:
        (got, rate), (want, want_rate) = fast.respond(emf, fs), ref.respond(emf, fs)
        assert rate == want_rate
        for ch in (1, 2):
            np.testing.assert_allclose(got[ch], want[ch], rtol=0, atol=PLATE_ATOL_V)
    assert fast.bench_time_s == ref.bench_time_s


def test_plate_skips_the_traces_the_scope_does_not_read() -> None:
    rng = np.random.default_rng(3)
    fast, ref = SpeakerPlate(seed=5), RefPlate(seed=5)
    for n in (3000, 17, 4100):
        emf = rng.uniform(-0.5, 0.5, n)
        (got, _), (want, _) = fast.respond(emf, 20e3, channels=(1,)), ref.respond(emf, 20e3)
        assert set(got) == {1}  # CHAN2's noise was drawn all the same: CHAN1 stays in step
        np.testing.assert_allclose(got[1], want[1], rtol=0, atol=PLATE_ATOL_V)


def test_plate_noiseless_and_its_adjoint_equal_lfilter_chain() -> None:
    plate = SpeakerPlate(seed=4)
    rng = np.random.default_rng(3)
    drive = torch.tensor(np.stack([awg_items(rng, 3, 64, 2, 300, a) for a in (0.2, 1.0)]), requires_grad=True)
    for internal in (False, True):
        y = plate.noiseless(drive, 10e3, temperature_offset_k=0.3, internal_rate=internal)
        plan = plate._plan(20e3, 0.0, 0.3)
        want = ref_chain(np.repeat(drive.detach().numpy(), 2, axis=1), plan)
        np.testing.assert_allclose(y.detach().numpy(), want if internal else want[:, ::2], rtol=0, atol=PLATE_ATOL_V)
    # the adjoint still sees what the forward pass kept: a finite-difference check along one direction
    weights = torch.tensor(rng.standard_normal(y.shape))
    (grad,) = torch.autograd.grad((plate.noiseless(drive, 10e3, internal_rate=True) * weights).sum(), drive)
    direction = torch.tensor(rng.standard_normal(drive.shape))
    eps = 1e-6
    with torch.no_grad():
        f = lambda d: float((plate.noiseless(d, 10e3, internal_rate=True) * weights).sum())
        fd = (f(drive + eps * direction) - f(drive - eps * direction)) / (2 * eps)
    assert abs(fd - float((grad * direction).sum())) < 1e-5 * max(1.0, abs(fd))


# -- the shaper, as first written --------------------------------------------------------------------------------------

class RefShaper:
    """``SHGPulseShaper.frames`` as first written; the bench's fixed tables (laser, LUT, crosstalk weights, phase
    matching, spectrometer matrices, signal calibration) are taken from a fresh bench of the same seed."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.values = OpticalValues().off_nominal(rng)
        half = self.values.fixed_pattern_counts
        self.column_bias = self.values.bias_counts + rng.uniform(-half, half, N_COLUMNS)
        self.drift_phase = rng.uniform(0, 2 * math.pi, 2)
        self.noise = np.random.default_rng(seed + 424242)
        self.bench_time_s = 0.0
        self.tables = SHGPulseShaper(seed)

    def sh_columns(self, gray: torch.Tensor, columns: tuple[int, int]) -> torch.Tensor:
        tab = self.tables
        c = tab._const(torch.float64)
        if gray.dtype.is_floating_point:
            g = gray.to(torch.float64).clamp(0.0, 255.0)
            i0 = g.floor().clamp_(max=254.0)
            index = i0.long()
            phase = torch.addcmul(c["lut"][index], c["lut_slope"][index], g - i0)
        else:
            phase = c["lut"][gray.long().clamp(0, 255)]
        r = tab._reach
        padded = torch.cat([phase[:, :1].expand(-1, r), phase, phase[:, -1:].expand(-1, r)], dim=1)
        fine = padded.unfold(1, 2 * r + 1, 1) @ c["crosstalk"].T
        phase = fine.reshape(gray.shape[0], N_FINE) * c["retardance_scale"]
        lo, hi, matrix = tab._spectrometer(columns, torch.float64)
        field = torch.complex(c["amplitude"] * torch.cos(phase), c["amplitude"] * torch.sin(phase))
        time_domain = torch.fft.ifft(field, n=N_FFT, norm="forward")
        sh = torch.fft.fft(time_domain * time_domain, norm="forward")
        window = sh[:, lo * OVERSAMPLE:hi * OVERSAMPLE]
        power = torch.mul(window.real, window.real).addcmul_(window.imag, window.imag) \
            * c["phase_matching"][lo * OVERSAMPLE:hi * OVERSAMPLE]
        binned = power[:, 0::OVERSAMPLE]
        for s in range(1, OVERSAMPLE):
            binned = binned + power[:, s::OVERSAMPLE]
        return binned @ matrix * tab._electrons_per_unit_s

    def frames(self, patterns: np.ndarray, *, exposure_s: float, electrons_per_count: float,
               columns: tuple[int, int] = (0, N_COLUMNS), rows: tuple[int, int] = (0, N_ROWS), mode: str = "FVB",
               shutter_open: bool = True) -> np.ndarray:
        v = self.values
        first, count = columns
        k = patterns.shape[0]
        times = self.bench_time_s + exposure_s * np.arange(k)
        if shutter_open:
            gray = torch.from_numpy(patterns.astype(np.int64))
            with torch.no_grad():
                signal = torch.cat([self.sh_columns(gray[i:i + 64], columns)
                                    for i in range(0, k, 64)]).numpy()
            eps = self.noise.normal(0.0, v.energy_jitter / math.sqrt(max(1, round(exposure_s * v.rep_rate_hz))), k)
            p1, p2 = self.drift_phase
            drift = 1.0 + v.energy_drift * (0.7 * np.sin(2 * math.pi * times / 600.0 + p1)
                                            + 0.3 * np.sin(2 * math.pi * times / 130.0 + p2))
            signal = signal * ((drift * (1.0 + eps)) ** 2 * exposure_s)[:, None]
        else:
            signal = np.zeros((k, count))
        if mode == "IMAGE":
            signal = signal[:, None, :] * self.tables.row_profile(rows)[None, :, None]
        dark_e = v.dark_current_e_per_s * exposure_s * (N_ROWS if mode == "FVB" else 1)
        electrons = self.noise.poisson(signal + dark_e) + self.noise.normal(0.0, v.read_noise_e, signal.shape)
        counts = np.rint(self.column_bias[first:first + count] + electrons / electrons_per_count)
        self.bench_time_s += k * exposure_s
        return np.clip(counts, 0, ADC_MAX).astype(np.uint16)


def test_shaper_frames_equal_the_torch_chain() -> None:
    rng = np.random.default_rng(9)
    fast, ref = SHGPulseShaper(seed=2), RefShaper(seed=2)
    assert fast.values == ref.values
    calls = [(rng.integers(0, 256, (150, 640)), {"exposure_s": 1e-3, "electrons_per_count": 4.0,
                                                 "columns": (400, 300)}),
             (rng.integers(0, 256, (70, 640)), {"exposure_s": 2e-3, "electrons_per_count": 2.0}),
             (np.zeros((64, 640)), {"exposure_s": 1e-3, "electrons_per_count": 1.0, "columns": (300, 420)}),
             (rng.integers(0, 256, (3, 640)), {"exposure_s": 5e-3, "electrons_per_count": 4.0, "columns": (500, 64),
                                               "rows": (40, 48), "mode": "IMAGE"}),
             (rng.integers(0, 256, (5, 640)), {"exposure_s": 1e-3, "electrons_per_count": 4.0, "shutter_open": False})]
    differing = 0
    for patterns, kwargs in calls:
        patterns = patterns.astype(np.uint8)
        got, want = fast.frames(patterns, **kwargs), ref.frames(patterns, **kwargs)
        assert got.dtype == want.dtype == np.uint16 and got.shape == want.shape
        difference = np.abs(got.astype(int) - want.astype(int))
        # a pixel moves by one count where the float32 signal's rounding crosses a count's half: a few in 10^4 at
        # most, in the brightest frames (saturated at one electron a count: 3 of 26,880 pixels with numpy 2.4.6,
        # numba 0.68.1; none in the others)
        assert difference.max() <= 1 and np.count_nonzero(difference) <= 2e-4 * difference.size
        differing += np.count_nonzero(difference)
    assert fast.bench_time_s == ref.bench_time_s
    assert differing <= 8  # of about 158,000 pixels: the float32 signal must not move the counts wholesale


def test_shaper_frames_signal_in_float32_is_the_float64_signal_within_rounding() -> None:
    """The frames' float32 signal (``frames_dtype``) against the float64 chain: a relative 1e-6 of the peak."""
    shaper = SHGPulseShaper(seed=2)
    assert shaper.frames_dtype == torch.float32
    gray = torch.from_numpy(np.random.default_rng(11).integers(0, 256, (64, 640)))
    with torch.no_grad():
        single = shaper._sh_columns(gray, (380, 260), dtype=torch.float32).double()
        double = shaper._sh_columns(gray, (380, 260))
    assert single.dtype == double.dtype == torch.float64
    assert float((single - double).abs().max()) <= 1e-6 * float(double.abs().max())


@pytest.mark.parametrize("columns, shorter_fft", [((350, 400), False), ((500, 64), True)])
def test_shaper_expected_counts_and_gradient_equal_the_torch_chain(columns: tuple[int, int],
                                                                   shorter_fft: bool) -> None:
    fast, ref = SHGPulseShaper(seed=3), RefShaper(seed=3)
    lo, hi, _ = fast._spectrometer(columns)
    # a narrow window's autoconvolution by shorter FFTs, the wrapped points outside it (the reference: N_FFT)
    assert (optical._circular_size(lo * OVERSAMPLE, hi * OVERSAMPLE) < N_FFT) == shorter_fft
    gray = torch.tensor(np.random.default_rng(4).uniform(0, 255, (5, 640)), requires_grad=True)
    got = fast.expected_counts(gray, exposure_s=1e-3, electrons_per_count=4.0, columns=columns)
    want = ref.sh_columns(gray, columns) * (1e-3 / 4.0)
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=SHAPER_RTOL,
                               atol=SHAPER_RTOL * float(want.detach().abs().max()))
    weights = torch.tensor(np.random.default_rng(5).standard_normal(got.shape))
    (g_fast,) = torch.autograd.grad((got * weights).sum(), gray)
    (g_ref,) = torch.autograd.grad((want * weights).sum(), gray)
    np.testing.assert_allclose(g_fast.numpy(), g_ref.numpy(), rtol=0, atol=1e-10 * float(g_ref.abs().max()))


@pytest.mark.parametrize("columns", [(0, N_COLUMNS), (410, 318), (500, 64), (1000, 24)])
def test_shaper_column_groups_leave_out_only_zeros(columns: tuple[int, int]) -> None:
    """The spectrometer's product group by group: put back together, the groups' blocks are the whole matrix, and
    what lies outside them is exactly zero; the product equals the full matmul within rounding."""
    shaper = SHGPulseShaper(seed=2)
    for dtype in (torch.float64, torch.float32):
        _, _, matrix = shaper._spectrometer(columns, dtype)
        rebuilt = torch.zeros_like(matrix)
        c0 = 0
        for r0, r1, part in shaper._column_groups(columns, dtype):
            rebuilt[r0:r1, c0:c0 + part.shape[1]] = part
            c0 += part.shape[1]
        assert c0 == columns[1] and torch.equal(rebuilt, matrix)
        bins = torch.rand(7, matrix.shape[0], dtype=dtype, generator=torch.Generator().manual_seed(1))
        full = bins @ matrix
        eps = torch.finfo(dtype).eps
        assert float((shaper._spectrometer_image(bins, columns) - full).abs().max()) <= 50 * eps * float(full.max())


@pytest.mark.parametrize("rows, length", [(1, 200_000), (3, 20_001), (300, 40), (1, 7)])
def test_blocks_filter_like_one_pass(rows: int, length: int) -> None:
    """``iir.Blocks`` (blocks side by side, joined by the carried states) is as accurate as one pass of ``lfilter``:
    many blocks a row, several rows, one block a row (no carry), a record shorter than a block. Accuracy is judged
    against the same filter as second-order sections (``sosfilt``), far less sensitive to rounding than the direct
    form with poles near z = 1, where one pass itself is off by ~1e-10 of the signal."""
    rng = np.random.default_rng(rows + length)
    x = rng.standard_normal((rows, length))
    # a 4th-order low-pass with poles nearer z = 1 than the plate's displacement filters, and its memory
    b, a = scipy.signal.butter(4, 0.01)
    h = scipy.signal.lfilter(b, a, np.r_[1.0, np.zeros(20_000)])
    memory = int(np.nonzero(np.abs(h) > 1e-6 * np.abs(h).max())[0][-1]) + 1
    blocks = iir.Blocks(rows, length, memory)
    assert (blocks.count > 1) == (length >= 2 * memory and 2 * rows <= iir.LANES)
    assert blocks.count * blocks.size >= length and (blocks.count == 1 or blocks.size >= memory)
    np.testing.assert_array_equal(blocks.join(blocks.split(x)), x)
    exact = scipy.signal.sosfilt(scipy.signal.butter(4, 0.01, output="sos"), x, axis=-1)
    one_pass = scipy.signal.lfilter(b, a, x, axis=-1)
    got = blocks.join(blocks.lfilter((b, a), blocks.split(x)))
    assert np.abs(got - exact).max() <= 2 * np.abs(one_pass - exact).max() + 1e-15 * np.abs(exact).max()
    if blocks.count > 1:  # not merely blocks from rest: the join matters
        from_rest = [scipy.signal.lfilter(b, a, part, axis=-1) for part in np.array_split(x, blocks.count, axis=1)]
        assert np.abs(np.concatenate(from_rest, axis=1) - exact).max() > 1e-3 * np.abs(exact).max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_item_theta", [False, True])
@pytest.mark.parametrize("spv", [1, 3])
def test_interleave_without_autograd_equals_the_differentiable_one(dtype, per_item_theta: bool, spv: int) -> None:
    """The drivers' interleave (numpy, no gradient wanted) gives the autograd path's numbers and dtype, to the bit,
    at a size torch would split over its threads (64 x 320)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(64, 320, generator=gen, dtype=dtype)
    theta = torch.rand(*((64, 320) if per_item_theta else (320,)), generator=gen, dtype=dtype)
    plain = interleave(x, theta, spv)
    differentiable = interleave(x.clone().requires_grad_(), theta, spv)
    assert differentiable.requires_grad and not plain.requires_grad
    assert plain.dtype == differentiable.dtype == dtype and plain.shape == (64, 2 * 320 * spv)
    assert torch.equal(plain, differentiable.detach())
    first_pair = torch.stack([x[:, 0], theta[..., 0].expand(64)], 1)  # x_1 θ_1 of each item
    assert torch.equal(plain[:, : 2 * spv], first_pair.repeat_interleave(spv, 1))
