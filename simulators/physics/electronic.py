"""Ground truth of the electronic bench: a driven RLC circuit with a diode-pair nonlinearity.

This is "reality" for the simulated bench. The twins never import it (see docs/architecture.md).

Circuit (all SI units)::

    AWG EMF e(t) --[R_src 50 ohm]--[R]--[L (with winding resistance R_L)]--+-- v(t) --> scope CHAN1
                                                                           |
                                                              C  ||  diode pair + R_d
                                                                           |
                                                                          GND
    AWG output terminal (e - R_src i) --> scope CHAN2

    L di/dt = e - (R_src + R + R_L) i - v
    C dv/dt = i - I_d(v)
    I_d(v) = sign(v) * w / R_d * softplus((|v| - V_f(v, T)) / w)   (a silicon diode pair in series with R_d,
             conducting above V_f ~ 0.55 V, with different forward voltages for the two polarities)

Imperfections, all drawn from the seed and documented here:
- component values off nominal: R, L, C, R_d within +-5 %, forward voltages within +-3 %;
- slow thermal drift of the forward voltages, -2 mV/K, with the temperature wandering by about 1 K over
  ten minutes of bench time (bench time advances by each played waveform plus 20 ms per acquisition);
- AWG output impedance (R_src = 50 ohm) loads the drive; the AWG's int16 DAC quantization happens in the
  simulated AWG;
- scope input noise (2 mV rms on CHAN1, 1 mV on CHAN2) and the scope's 8-bit quantization (in the scope);
- a trigger delay of 2.37 us between the AWG trigger and the scope trigger;
- the circuit keeps ringing into the next sample when the guard interval is short (inter-symbol carry-over):
  the whole concatenated waveform is integrated as one continuous signal.

Numerics: one semi-implicit step per microsecond or finer (symplectic Euler for the LC pair, a linearised implicit
step for the diode current). For speed, a long waveform is cut into chunks integrated independently (float32), each
started ``warmup`` samples early from rest; the circuit forgets its state with time constant 2L/R ~ 70 us, so with a
warm-up of many time constants the result equals the sequential integration to well below the noise floor. The
chunks run side by side as SIMD vectors (``_integrate_chunks``, numba, with exp and log1p from ``vector_math``: equal
to the C library's float32 functions but for a last bit here and there, which the resonant circuit carries along at
the 1e-7 V level). ``integrate`` writes the scheme out as array operations (torch, for the differentiable perfect
twin); numpy arrays go through ``_integrate_rows``, the same scheme compiled with numba (the same operations per step,
equal to the per-time-step numpy loop within float rounding). The scope noise is ``torch.randn``'s stream, drawn
through ``normal_draws.torch_randn`` (torch's Mersenne Twister and Box-Muller compiled: the same numbers within a few
ulps), and only for the channels the scope reads are the traces computed.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace

import numba
import numpy as np
import torch
from torch import Tensor

from simulators.physics.normal_draws import torch_randn
from simulators.physics.vector_math import exp_nonpositive, log1p_unit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CircuitValues:
    """Component values of the circuit (ohm, henry, farad, volt)."""

    r_src: float = 50.0
    r: float = 220.0
    r_l: float = 30.0
    l: float = 10e-3
    c: float = 1e-9
    r_d: float = 1000.0
    v_f_pos: float = 0.55
    v_f_neg: float = 0.55
    width: float = 0.045  # n * V_T of the diodes, V
    tempco: float = -2e-3  # forward-voltage temperature coefficient, V/K

    def off_nominal(self, rng: np.random.Generator) -> "CircuitValues":
        """The same circuit with each component drawn a few percent off its nominal value."""
        f = lambda spread: float(1.0 + rng.uniform(-spread, spread))  # noqa: E731
        return replace(
            self, r=self.r * f(0.05), l=self.l * f(0.05), c=self.c * f(0.05), r_d=self.r_d * f(0.05),
            v_f_pos=self.v_f_pos * f(0.03), v_f_neg=self.v_f_neg * 1.06 * f(0.03),
        )


def _scheme(sample_rate_hz: float, values: CircuitValues, delta_t_k: float, max_step_s: float) -> tuple:
    """Constants of the integration scheme: substeps per sample, dt/L, dt/C, the current's decay per step, the
    diode width (V) and conductance scale (S), and the mean and half-difference of the forward voltages (V)."""
    n_sub = max(1, math.ceil(1.0 / (sample_rate_hz * max_step_s)))
    dt = 1.0 / (sample_rate_hz * n_sub)
    k_l, k_c = dt / values.l, dt / values.c
    decay = 1.0 - k_l * (values.r_src + values.r + values.r_l)
    vf_mid = 0.5 * (values.v_f_pos + values.v_f_neg) + values.tempco * delta_t_k
    vf_half = 0.5 * (values.v_f_pos - values.v_f_neg)
    return n_sub, k_l, k_c, decay, values.width, 1.0 / values.r_d, vf_mid, vf_half


def integrate(emf, sample_rate_hz: float, values: CircuitValues, delta_t_k: float = 0.0, max_step_s: float = 1e-6):
    """Integrate the circuit from rest for each row of ``emf``.

    Args:
        emf: [C, T] AWG EMF (V), one independent waveform per row, sampled at ``sample_rate_hz``; a torch tensor
            (differentiable, used by the perfect twin) or a numpy array (float32 or float64, computed in that
            precision by the compiled ``_integrate_rows``).
    Returns:
        (v, i): [C, T] capacitor (output) voltage in V and inductor current in A at each sample time.
    """
    if isinstance(emf, np.ndarray):
        emf = np.ascontiguousarray(emf)
        v, i = np.empty_like(emf), np.empty_like(emf)
        constants = _kernel_constants(emf.dtype, sample_rate_hz, values, delta_t_k, max_step_s)
        _integrate_rows(emf, v, i, *constants)
        return v, i
    n_sub, k_l, k_c, decay, w, g_max, vf_mid, vf_half = _scheme(sample_rate_hz, values, delta_t_k, max_step_s)
    i = emf[:, 0] * 0.0
    v = emf[:, 0] * 0.0
    vs, is_ = [], []
    for k in range(emf.shape[1]):
        e = emf[:, k]
        for _ in range(n_sub):
            i = decay * i + k_l * (e - v)                      # symplectic Euler for L
            sign = torch.sign(v)
            z = torch.abs(v) / w - (vf_mid + vf_half * sign) / w  # diode pair: forward voltage per polarity
            i_d = (w * g_max) * sign * torch.nn.functional.softplus(z)
            kg = (k_c * g_max) * torch.sigmoid(z)              # k_c times the diodes' differential conductance
            v = v + k_c * (i - i_d) / (1.0 + kg)               # linearised implicit step for C and the diodes
        vs.append(v)
        is_.append(i)
    return torch.stack(vs, 1), torch.stack(is_, 1)


def _kernel_constants(dtype: np.dtype, sample_rate_hz: float, values: CircuitValues, delta_t_k: float,
                      max_step_s: float) -> tuple:
    """``_integrate_rows``' constants, each rounded to ``dtype`` as numpy rounds a Python float operand."""
    n_sub, k_l, k_c, decay, w, g_max, vf_mid, vf_half = _scheme(sample_rate_hz, values, delta_t_k, max_step_s)
    f = np.dtype(dtype).type
    return n_sub, f(decay), f(k_l), f(k_c), f(w), f(vf_mid), f(vf_half), f(w * g_max), f(k_c * g_max), f(0.0), f(1.0)


@numba.njit(cache=True, nogil=True)
def _integrate_rows(emf, v_out, i_out, n_sub, decay, k_l, k_c, w, vf_mid, vf_half, wg, kcg, zero,
                    one):  # pragma: no cover - compiled
    """The circuit's scheme, compiled: ``integrate``'s loop, with the same operations in the same order, in the
    precision of ``emf`` [C, T] (the constants come rounded to it from ``_kernel_constants``); each row from rest.
    Per step::

        i <- decay i + k_l (e - v)                                    symplectic Euler for L di/dt
        z  = |v| / w - (vf_mid + vf_half sign v) / w                  diode pair, forward voltage per polarity
        v <- v + k_c (i - w g_max sign(v) softplus(z)) / (1 + k_c g_max sigmoid(z))   linearised implicit step

    softplus(z) = max(z, 0) + log1p(exp(-|z|)) as ``np.logaddexp(0, z)`` computes it; the sigmoid reuses exp(-|z|).
    """
    rows, steps = emf.shape
    i_state, v_state = np.full(rows, zero), np.full(rows, zero)
    for k in range(steps):
        for r in range(rows):  # independent rows: their steps overlap in the CPU (each one alone is latency-bound)
            e = emf[r, k]
            i, v = i_state[r], v_state[r]
            for _ in range(n_sub):
                i = decay * i + k_l * (e - v)
                sign = one if v > zero else (-one if v < zero else zero)
                z = abs(v) / w - (vf_mid + vf_half * sign) / w
                ez = math.exp(-abs(z))
                softplus = max(z, zero) + math.log1p(ez)
                sigmoid = (one if z > zero else ez) / (one + ez)  # selects, no branches: v's sign is unpredictable
                v = v + k_c * (i - wg * sign * softplus) / (one + kcg * sigmoid)
            i_state[r], v_state[r] = i, v
            v_out[r, k] = v
            i_out[r, k] = i


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _integrate_chunks(emf_t, warm, v_out, i_out, decay, k_l, k_c, w, vf_mid, vf_half, wg, kcg, zero,
                      one):  # pragma: no cover - compiled
    """The scheme of ``_integrate_rows`` (one step per sample) for float32 chunks laid out time-major, as SIMD vectors.

    ``emf_t`` [warm + length, chunks]: column r is chunk r's drive, from rest; steps ``warm`` .. ``warm + length - 1``
    go to v_out, i_out [length, chunks]. The loop over chunks is vectorised: the same float32 operations per step,
    with exp and log1p from ``vector_math`` (float64 inside, rounded to float32), which may differ from the C
    library's in the last bit.
    """
    steps, rows = emf_t.shape
    i_state, v_state = np.full(rows, zero), np.full(rows, zero)
    for k in range(steps):
        e_k = emf_t[k]
        for r in range(rows):
            e, i, v = e_k[r], i_state[r], v_state[r]
            i = decay * i + k_l * (e - v)
            sign = one if v > zero else (-one if v < zero else zero)
            z = abs(v) / w - (vf_mid + vf_half * sign) / w
            ez = np.float32(exp_nonpositive(-abs(np.float64(z))))
            softplus = max(z, zero) + np.float32(log1p_unit(np.float64(ez)))
            sigmoid = (one if z > zero else ez) / (one + ez)
            v = v + k_c * (i - wg * sign * softplus) / (one + kcg * sigmoid)
            i_state[r], v_state[r] = i, v
        if k >= warm:
            v_out[k - warm] = v_state
            i_out[k - warm] = i_state


def output_vjp(emf: np.ndarray, grad_v: np.ndarray, sample_rate_hz: float, values: CircuitValues,
               delta_t_k: float = 0.0, max_step_s: float = 1e-6) -> np.ndarray:
    """Vector-Jacobian product of ``integrate``'s output voltage with respect to the EMF, by the adjoint of the
    discrete scheme (compiled, no autograd graph: the perfect twin's backward).

    Args:
        emf: [C, T] EMF (V); grad_v: [C, T] dL/dv for each output sample.
    Returns:
        dL/d emf [C, T] (float64).
    """
    n_sub, k_l, k_c, decay, w, g_max, vf_mid, vf_half = _scheme(sample_rate_hz, values, delta_t_k, max_step_s)
    emf = np.ascontiguousarray(emf, dtype=np.float64)
    grad_emf = np.zeros_like(emf)
    _vjp_rows(emf, np.ascontiguousarray(grad_v, dtype=np.float64), grad_emf, n_sub, decay, k_l, k_c, w, g_max,
              vf_mid, vf_half)
    return grad_emf


@numba.njit(cache=True, nogil=True)
def _vjp_rows(emf, grad_v, grad_emf, n_sub, decay, k_l, k_c, w, g_max, vf_mid, vf_half):  # pragma: no cover - compiled
    """``output_vjp`` for each row: the scheme forward (as ``integrate``), keeping per step D = 1 + k_c g, the diode
    conductance g, dg/dv and r = i' - i_d, then the adjoint backward through the steps::

        a_i' = a_i + a_v k_c / D                       through v' = v + k_c r / D
        dL/de += a_i' k_l                              i' = decay i + k_l (e - v)
        a_v <- a_v (1 - k_c g / D - k_c^2 r dg / D^2) - a_i' k_l,    a_i <- decay a_i'
    """
    rows, t_len = emf.shape
    saved = np.empty((t_len * n_sub, 4))
    for row in range(rows):
        i, v = 0.0, 0.0
        for k in range(t_len):
            for j in range(n_sub):
                i = decay * i + k_l * (emf[row, k] - v)
                sign = 1.0 if v > 0.0 else (-1.0 if v < 0.0 else 0.0)
                z = (abs(v) - vf_mid - vf_half * sign) / w
                ez = math.exp(-abs(z))
                sig = (1.0 if z > 0.0 else ez) / (1.0 + ez)
                r = i - (w * g_max) * sign * (max(z, 0.0) + math.log1p(ez))
                d = 1.0 + k_c * g_max * sig
                s = saved[k * n_sub + j]
                s[0], s[1], s[2], s[3] = d, g_max * sig, g_max * sig * (1.0 - sig) * sign / w, r
                v = v + k_c * r / d
        adj_i, adj_v = 0.0, 0.0
        for k in range(t_len - 1, -1, -1):
            adj_v += grad_v[row, k]
            for j in range(n_sub - 1, -1, -1):
                d, g, dg, r = saved[k * n_sub + j]
                adj_i_new = adj_i + adj_v * k_c / d
                grad_emf[row, k] += adj_i_new * k_l
                adj_v = adj_v * (1.0 - k_c * g / d - k_c * k_c * r * dg / (d * d)) - adj_i_new * k_l
                adj_i = decay * adj_i_new


class _NoiselessOutput(torch.autograd.Function):
    """The circuit's output voltage as a differentiable function of the EMF, with the adjoint backward."""

    @staticmethod
    def forward(ctx, emf: Tensor, circuit: "ElectronicCircuit", fs: float) -> Tensor:
        ctx.circuit, ctx.fs = circuit, fs
        ctx.save_for_backward(emf)
        v, _ = integrate(emf.detach().numpy(), fs, circuit.values)
        return torch.from_numpy(v).to(emf.dtype)

    @staticmethod
    def backward(ctx, grad_v: Tensor):
        (emf,) = ctx.saved_tensors
        grad = output_vjp(emf.detach().numpy(), grad_v.detach().double().numpy(), ctx.fs, ctx.circuit.values)
        return torch.from_numpy(grad).to(emf.dtype), None, None


class ElectronicCircuit:
    """The bench's circuit as the simulated instruments see it.

    ``respond(emf_v, fs)`` -> {1: output at scope CHAN1 (V), 2: AWG terminal at scope CHAN2 (V)}, sample k at
    time k / fs after the AWG trigger, with trigger delay, drift and scope input noise included.
    """

    trigger_delay_s = 2.37e-6
    noise_v = {1: 2e-3, 2: 1e-3}
    min_chunk, max_chunk = 256, 4096
    warmup = 384

    def __init__(self, seed: int = 0, nominal: CircuitValues | None = None):
        self.rng = np.random.default_rng(seed)
        self.nominal = nominal or CircuitValues()
        self.values = self.nominal.off_nominal(self.rng)
        self.bench_time_s = 0.0
        self.busy_s = 0.0  # wall time spent computing physics (for overhead reports)
        self._drift_phase = float(self.rng.uniform(0, 2 * math.pi))
        self._noise = torch.Generator().manual_seed(int(seed) + 12345)
        log.info("electronic circuit values (seed %d): %s", seed, asdict(self.values))

    def temperature_offset_k(self) -> float:
        """Temperature offset (K) from nominal at the current bench time: slow 10-minute wander."""
        t = self.bench_time_s
        return 0.8 * math.sin(2 * math.pi * t / 600.0 + self._drift_phase) + 0.3 * math.sin(2 * math.pi * t / 97.0)

    def noiseless(self, emf: Tensor, sample_rate_hz: float) -> Tensor:
        """Output voltage (V) for independent EMF rows [C, T] from rest, no noise, no delay, no drift;
        differentiable in ``emf`` (the gradient comes from ``output_vjp``)."""
        return _NoiselessOutput.apply(emf.double(), self, sample_rate_hz).to(emf.dtype)

    def respond(self, emf_v: np.ndarray, sample_rate_hz: float, channels: tuple[int, ...] = (1, 2)
                ) -> dict[int, np.ndarray]:
        """The traces of ``channels`` only (the scope reads no others); the noise of every channel is drawn all the
        same, so that the noise stream does not depend on what the scope reads."""
        start = time.perf_counter()
        emf = np.asarray(emf_v, dtype=np.float64)
        n = emf.shape[0]
        m = self.steps_per_sample(sample_rate_hz)
        # below 1 MSa/s each sample takes m substeps: integrate the EMF held for m steps at m times the rate instead
        # (the same scheme, but vectorised over chunks rather than looping over substeps in Python), keep every m-th
        drive = np.repeat(emf, m) if m > 1 else emf
        v, i = self._integrate_chunked(drive, sample_rate_hz * m, self.temperature_offset_k(), current=2 in channels)
        traces = {1: lambda: v[m - 1::m], 2: lambda: emf - self.values.r_src * i[m - 1::m]}
        delay = self.trigger_delay_s * sample_rate_hz  # in samples
        out = {}
        for ch, trace in traces.items():
            noise = torch_randn(self._noise, n, draw_only=ch not in channels)
            if noise is not None:
                noise *= self.noise_v[ch]
                out[ch] = _delay(trace(), delay)
                out[ch] += noise
        self.bench_time_s += n / sample_rate_hz + 0.02
        self.busy_s += time.perf_counter() - start
        return out

    def steps_per_sample(self, sample_rate_hz: float) -> int:
        """Integration steps per EMF sample (steps are at most 1 us long)."""
        return _scheme(sample_rate_hz, self.values, 0.0, 1e-6)[0]

    def _integrate_chunked(self, emf: np.ndarray, fs: float, delta_t: float, current: bool = True
                           ) -> tuple[np.ndarray, np.ndarray | None]:
        """Sequential integration of one long waveform, computed as parallel overlapping chunks: the output voltage
        v [N] (V) and, if ``current``, the inductor current i [N] (A; else None)."""
        # about 1024 chunks: many SIMD lanes, each chunk long enough that its warm-up costs little
        n, warm = emf.shape[0], self.warmup
        chunk = int(np.clip(n // 1024, self.min_chunk, self.max_chunk))
        n_chunks = max(1, math.ceil(n / chunk))
        padded = np.pad(emf.astype(np.float32), (warm, n_chunks * chunk - n))
        # chunk r is padded[r chunk : r chunk + warm + chunk]; its last ``chunk`` steps are the output
        emf_t = np.lib.stride_tricks.sliding_window_view(padded, warm + chunk)[::chunk].T.copy()  # time-major
        v, i = np.empty((chunk, n_chunks), np.float32), np.empty((chunk, n_chunks), np.float32)
        n_sub, *constants = _kernel_constants(np.float32, fs, self.values, delta_t, 1e-6)
        assert n_sub == 1, "the chunks are integrated at one step per sample"
        _integrate_chunks(emf_t, warm, v, i, *constants)
        return _trace_of_chunks(v, n), _trace_of_chunks(i, n) if current else None


def _trace_of_chunks(chunks: np.ndarray, n: int) -> np.ndarray:
    """Time-major chunk outputs [chunk, n_chunks] (float32) -> the first n samples of the trace they make, float64."""
    return np.ascontiguousarray(chunks.T).reshape(-1)[:n].astype(np.float64)


@numba.njit(cache=True, nogil=True)
def _delay(trace: np.ndarray, samples: float) -> np.ndarray:  # pragma: no cover - compiled
    """Delay a trace by a fractional number of samples: linear interpolation (as ``np.interp``: y_j + (x - j)
    (y_{j+1} - y_j) at x = k - samples), zeros shifted in, the last value held."""
    n = trace.shape[0]
    out = np.empty(n)
    for k in range(n):
        x = k - samples
        if x < 0.0:
            out[k] = 0.0
        elif x >= n - 1:
            out[k] = trace[n - 1]
        else:
            j = int(x)
            out[k] = (trace[j + 1] - trace[j]) * (x - j) + trace[j]
    return out
