"""Ground truth of the electronic bench: a driven RLC circuit with a diode-pair nonlinearity.

This is "reality" for the simulated bench. The twins never import it (see DESIGN.md).

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
step for the diode current). For speed, a long waveform is cut into chunks integrated in parallel, each started
``warmup`` samples early from rest; the circuit forgets its state with time constant 2L/R ~ 70 us, so with a warm-up
of many time constants the result equals the sequential integration to well below the noise floor.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import Tensor

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


def diode_current(v: Tensor, values: CircuitValues, delta_t_k: float = 0.0) -> tuple[Tensor, Tensor]:
    """Current through the diode pair (A) and its differential conductance (S) at voltage v (V)."""
    w = values.width
    v_f = torch.where(v >= 0, values.v_f_pos, values.v_f_neg) + values.tempco * delta_t_k
    z = (v.abs() - v_f) / w
    current = torch.sign(v) * (w / values.r_d) * torch.nn.functional.softplus(z)
    conductance = torch.sigmoid(z) / values.r_d
    return current, conductance


def integrate(emf: Tensor, sample_rate_hz: float, values: CircuitValues, delta_t_k: float = 0.0,
              max_step_s: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Integrate the circuit from rest for each row of ``emf``.

    Args:
        emf: [C, T] AWG EMF (V), one independent waveform per row, sampled at ``sample_rate_hz``.
    Returns:
        (v, i): [C, T] capacitor (output) voltage in V and inductor current in A at each sample time.
    Differentiable in ``emf`` (used by the perfect twin).
    """
    n_sub = max(1, math.ceil(1.0 / (sample_rate_hz * max_step_s)))
    dt = 1.0 / (sample_rate_hz * n_sub)
    r_tot = values.r_src + values.r + values.r_l
    i = torch.zeros(emf.shape[0], dtype=emf.dtype)
    v = torch.zeros_like(i)
    vs, is_ = [], []
    for k in range(emf.shape[1]):
        e = emf[:, k]
        for _ in range(n_sub):
            i = i + dt / values.l * (e - r_tot * i - v)
            i_d, g = diode_current(v, values, delta_t_k)
            v = v + (dt / values.c) * (i - i_d) / (1.0 + (dt / values.c) * g)
        vs.append(v)
        is_.append(i)
    return torch.stack(vs, dim=1), torch.stack(is_, dim=1)


class ElectronicCircuit:
    """The bench's circuit as the simulated instruments see it.

    ``respond(emf_v, fs)`` -> {1: output at scope CHAN1 (V), 2: AWG terminal at scope CHAN2 (V)}, sample k at
    time k / fs after the AWG trigger, with trigger delay, drift and scope input noise included.
    """

    trigger_delay_s = 2.37e-6
    noise_v = {1: 2e-3, 2: 1e-3}
    chunk = 512
    warmup = 512

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
        """Output voltage (V) for independent EMF rows [C, T] from rest, no noise, no delay, no drift."""
        return integrate(emf, sample_rate_hz, self.values)[0]

    def respond(self, emf_v: np.ndarray, sample_rate_hz: float) -> dict[int, np.ndarray]:
        start = time.perf_counter()
        emf = torch.as_tensor(np.asarray(emf_v, dtype=np.float64))
        n = emf.shape[0]
        delta_t = self.temperature_offset_k()
        with torch.no_grad():
            v, i = self._integrate_chunked(emf, sample_rate_hz, delta_t)
            terminal = emf - self.values.r_src * i
            out = {1: v, 2: terminal}
            delay = self.trigger_delay_s * sample_rate_hz  # in samples
            for ch in out:
                out[ch] = _delay(out[ch], delay) + self.noise_v[ch] * torch.randn(n, generator=self._noise, dtype=emf.dtype)
        self.bench_time_s += n / sample_rate_hz + 0.02
        self.busy_s += time.perf_counter() - start
        return {ch: trace.numpy() for ch, trace in out.items()}

    def _integrate_chunked(self, emf: Tensor, fs: float, delta_t: float) -> tuple[Tensor, Tensor]:
        """Sequential integration of one long waveform, computed as parallel overlapping chunks."""
        n, chunk, warm = emf.shape[0], self.chunk, self.warmup
        n_chunks = max(1, math.ceil(n / chunk))
        padded = torch.nn.functional.pad(emf, (warm, n_chunks * chunk - n))
        rows = padded.unfold(0, chunk + warm, chunk)  # [n_chunks, warm + chunk]
        v, i = integrate(rows, fs, self.values, delta_t)
        v = v[:, warm:].reshape(-1)[:n]
        i = i[:, warm:].reshape(-1)[:n]
        return v, i


def _delay(trace: Tensor, samples: float) -> Tensor:
    """Delay a trace by a fractional number of samples (linear interpolation, zeros shifted in)."""
    whole, frac = int(math.floor(samples)), samples - math.floor(samples)
    shifted = torch.nn.functional.pad(trace, (whole + 1, 0))[: trace.shape[0] + 1]
    return (1 - frac) * shifted[1:] + frac * shifted[:-1]
