"""Ground truth of the mechanical bench: audio amplifier -> speaker -> vibrating metal plate -> air -> microphone.

This is "reality" for the simulated bench. The twins never import it (see docs/architecture.md).

Signal chain (all SI units unless stated)::

    AWG EMF e(t) --[R_src 50 ohm]--+-- amplifier input (R_in 10 kohm): u = e R_in / (R_in + R_src) --> scope CHAN2
                                   |
    amplifier:  AC coupling (1st-order high-pass, 20 Hz) -> gain 8 -> soft clipping at the rails
                v = v_clip tanh(v_lin / v_clip), v_clip = 6 V -> bandwidth of the output stage (1st-order low-pass,
                12 kHz; after the clipping, as in an amplifier with an output filter: see Numerics for why)
    speaker:    force F = (Bl / R_e) * [voice coil L/R low-pass, 3 kHz corner] v,   Bl / R_e = 0.6 N/V
    plate:      25 damped modes, 150 Hz .. 9 kHz (nominal table below), modal displacement q_m in micrometres:
                q_m'' + 2 sigma_m q_m' + w_m^2 q_m (1 + beta_m (q_m^2 + kappa sum_{n != m} q_n^2)) = b_m F
                b_m = phi_m / M (um/s^2 per newton): mode shape phi_m at the voice coil, modal mass M = 0.1 kg
    air:        10 cm to the microphone at 343 m/s: acoustic delay 0.29 ms
    microphone: pressure ~ plate velocity: p = S sum_m c_m q_m'  (c_m: each mode's radiation towards the microphone,
                both signs, so neighbouring modes interfere), S = 10 V per m/s of modal velocity,
                1st-order high-pass at 80 Hz, self-noise 1 mV rms, mains hum 2 mV at 50 Hz (``mains_hz``) plus
                0.7 mV at its 3rd harmonic, with a phase that follows bench time (mains is not locked to the AWG)
    --> scope CHAN1.       AWG sync --> scope EXT trigger, trigger delay 2.37 us (as on the electronic bench).

Lab-scale numbers and why:
- damping: zeta_m = max(0.012, 25 Hz / f_m): the speaker's suspension damps the lowest modes strongly, the metal
  itself weakly; every decay time 1 / sigma_m = 1 / (2 pi zeta_m f_m) is at most ~6.4 ms (7 ms off nominal), so a
  guard of 600 samples at 20 kHz (30 ms) lets the plate ring down to about 1 %;
- scale: a 0.5 V drive at the amplifier input (4 V out of the amplifier, 3.5 V after the soft clip) held for 5 ms
  moves the lowest mode by ~22 um (a step) to ~25 um (a tone on its resonance), and beta = 1e-4 / um^2 makes the
  Duffing term beta q^2 reach 0.05-0.07 there (0.2-0.25 for a resonant tone held 20 ms, ~0.6 at 1 V, where the
  amplifier clips hard); random values at 20 kHz move it by only ~5 um (beta q^2 ~ 0.003): there the amplifier's
  clipping is the main nonlinearity. Displacement falls with frequency: a 1 V tone held on each mode's own
  resonance gives beta q^2 = 0.62, 0.20, 0.16, 0.06, 0.03, 0.016 for the lowest six modes and below 0.005 for all
  others, so only the lowest 6 modes (up to ~0.9 kHz) carry the nonlinearity (beta is 0 for the others).
  kappa = 0.3;
- the microphone gives about +-0.25 V for random 0.5 V values at 20 kHz, +-0.4 V when each value is held 4 samples
  (a resonant tone gives more).

Imperfections, all drawn from the seed and documented here:
- mode frequencies +-3 % off the nominal table, dampings +-10 %, beta +-10 %, couplings, amplifier gain, clip level,
  force constant, corner frequencies, microphone sensitivity and distance a few percent;
- slow temperature wander (about 1 K over ten minutes of bench time; bench time advances by each played waveform plus
  20 ms per acquisition) and mode frequencies drifting with it, tempco -2.5e-4 / K;
- microphone self-noise and mains hum (above), scope CHAN2 input noise 1 mV rms; the 8-bit quantization happens in
  the simulated scope, the AWG's int16 DAC in the simulated AWG;
- the plate keeps ringing into the next item when the guard is short: the whole concatenated waveform is one
  continuous signal.

Numerics (the model of "reality"):
- the physics runs at an internal rate f_i = M f_s, the smallest integer multiple of the AWG rate f_s that is at least
  20 kHz (an 8 kHz waveform is oversampled 3x); the AWG holds each value (zero-order hold). The traces handed to the
  scope are at f_i (the scope interpolates linearly);
- every linear part is discretised exactly for an input held over each internal interval (matrix exponential of the
  continuous state space, so corner frequencies above the Nyquist frequency are fine). The amplifier's input stage
  (AC coupling and gain) is averaged over each interval, clipped, and held over the interval as the input of the
  output stage's low-pass and everything after it. As the AWG holds its values too, the small-signal response is
  exact: at 20 kHz ``frequency_response`` with ``hold_rate_hz`` agrees to 1e-3 up to 6 kHz, and within a few % up
  to 9 kHz, where the aliases of the held drive (which it leaves out) start to count. With the low-pass before the
  clipping, one clipped value per interval cannot represent the low-pass's 13 us rounding of each AWG step: at
  20 kHz that model would droop by 17 % at 5 kHz (sinc-like), so the bandwidth limit sits after the clip;
- the plate's nonlinearity to first order in beta q^2 (one fixed-point/Picard step): q = q_lin + L_m[N_m(q_lin)],
  N_m = -w_m^2 beta_m q_m ((1 - kappa) q_m^2 + kappa sum_n q_n^2), with q_lin taken at the middle of each interval
  and N held over it. It shifts the low resonances upwards and adds harmonics and intermodulation, as a stiffening
  plate does. Valid while beta q^2 << 1: against a fine-step integration of the full equations above it differs by
  0.02 % (of the microphone's rms) for random values of 0.5 V held 4 samples, 5 % for a 0.5 V tone held 15 ms on
  the lowest resonance (beta q^2 ~ 0.2, where the nonlinearity itself is 22 %), and 28 % at 1 V (beta q^2 ~ 0.6-1),
  where this model, still bounded by the amplifier's clipping, is no longer a Duffing plate;
- the linear part of the microphone signal is one combined impulse response (all modes, computed from the discrete
  state space and truncated where it has decayed below 1e-6 of its peak), applied by FFT convolution; the
  nonlinear modes and their corrections by IIR filters (``lfilter``'s direct form II transposed, compiled with
  numba in ``simulators.physics.iir``: all modes at once, each record cut into blocks that run side by side in the
  vector units and are joined exactly; the same numbers as one pass up to ~1e-13 of the signal). The acoustic delay
  is exact: the microphone is evaluated between the sample instants from the exact solution over the interval. The
  AWG terminal (CHAN2) is the held drive at the internal rate, delayed by the trigger delay with linear interpolation.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace

import numba
import numpy as np
import scipy.signal
import torch
from torch import Tensor

from simulators.physics import iir
from simulators.physics.normal_draws import standard_normal_f32

log = logging.getLogger(__name__)

# Nominal plate: modes spaced like a plate's (the spacing grows with frequency), jittered; mode shapes at the voice
# coil (drive) and the radiation towards the microphone, of both signs.
NOMINAL_MODE_HZ: tuple[float, ...] = (
    150, 268, 384, 489, 659, 906, 1027, 1361, 1624, 1864, 2147, 2473, 2823,
    3238, 3654, 4093, 4649, 5080, 5539, 6162, 6498, 7049, 7775, 8216, 9000)
NOMINAL_DRIVE_COUPLING: tuple[float, ...] = (
    0.68, 0.65, -0.95, -0.76, -0.68, -0.67, 0.51, -0.36, 0.48, 0.80, 0.48, 0.59, 0.35,
    -0.89, -0.45, -0.52, -0.92, -0.68, 0.90, -0.77, 0.83, -0.41, 0.70, 0.68, -0.92)
NOMINAL_MIC_COUPLING: tuple[float, ...] = (
    0.90, 0.96, -0.94, 0.72, 0.44, -0.48, 0.95, 0.71, -0.47, 0.92, 0.77, 0.72, -0.59,
    0.62, -0.51, 0.37, 0.92, -0.65, -0.71, 0.56, -0.84, 0.37, 0.59, 0.37, 0.43)
N_NONLINEAR = 6  # the lowest modes carry the Duffing stiffening; displacement of the others is too small to matter
NOMINAL_ZETA: tuple[float, ...] = tuple(max(0.012, 25.0 / f) for f in NOMINAL_MODE_HZ)
NOMINAL_BETA: tuple[float, ...] = tuple(1e-4 if m < N_NONLINEAR else 0.0 for m in range(len(NOMINAL_MODE_HZ)))


@dataclass(frozen=True)
class PlateValues:
    """Physical constants of the mechanical bench (SI units; plate displacement in micrometres)."""

    # AWG -> amplifier
    r_src: float = 50.0             # AWG output impedance, ohm
    r_in: float = 10e3              # amplifier input impedance, ohm
    amp_highpass_hz: float = 20.0   # AC coupling
    amp_lowpass_hz: float = 12e3    # bandwidth
    amp_gain: float = 8.0           # V/V
    v_clip: float = 6.0             # soft-clipping level (the rails), V
    # speaker
    coil_corner_hz: float = 3e3     # voice coil R / (2 pi L)
    force_per_volt: float = 0.6     # Bl / R_e, N/V
    # plate
    mode_hz: tuple[float, ...] = NOMINAL_MODE_HZ
    mode_zeta: tuple[float, ...] = NOMINAL_ZETA           # damping ratios sigma_m / w_m
    drive_coupling: tuple[float, ...] = NOMINAL_DRIVE_COUPLING  # mode shapes at the voice coil
    mic_coupling: tuple[float, ...] = NOMINAL_MIC_COUPLING      # radiation towards the microphone
    modal_mass_kg: float = 0.1
    beta: tuple[float, ...] = NOMINAL_BETA                # Duffing coefficients, 1 / um^2
    kappa: float = 0.3                                    # nonlinear coupling between modes
    tempco: float = -2.5e-4                               # relative mode-frequency change per kelvin
    # air and microphone
    mic_distance_m: float = 0.10
    sound_speed_m_s: float = 343.0
    mic_sensitivity: float = 10.0   # V per m/s of (coupling-weighted) modal velocity
    mic_highpass_hz: float = 80.0
    mic_noise_v: float = 1e-3       # self-noise, V rms
    mains_hz: float = 50.0
    hum_v: float = 2e-3             # mains hum amplitude at the fundamental, V
    hum3_v: float = 0.7e-3          # at the 3rd harmonic, V

    @property
    def input_divider(self) -> float:
        """Amplifier-input volts per volt of AWG EMF: R_in / (R_in + R_src)."""
        return self.r_in / (self.r_in + self.r_src)

    @property
    def acoustic_delay_s(self) -> float:
        return self.mic_distance_m / self.sound_speed_m_s

    def off_nominal(self, rng: np.random.Generator) -> "PlateValues":
        """The same bench with each constant drawn off its nominal value (see the module docstring)."""
        f = lambda spread: float(1.0 + rng.uniform(-spread, spread))  # noqa: E731
        per_mode = lambda values, spread: tuple(float(v) * f(spread) for v in values)  # noqa: E731
        return replace(
            self, amp_highpass_hz=self.amp_highpass_hz * f(0.05), amp_lowpass_hz=self.amp_lowpass_hz * f(0.05),
            amp_gain=self.amp_gain * f(0.03), v_clip=self.v_clip * f(0.03),
            coil_corner_hz=self.coil_corner_hz * f(0.05), force_per_volt=self.force_per_volt * f(0.03),
            mode_hz=per_mode(self.mode_hz, 0.03), mode_zeta=per_mode(self.mode_zeta, 0.10),
            drive_coupling=per_mode(self.drive_coupling, 0.05), mic_coupling=per_mode(self.mic_coupling, 0.05),
            beta=per_mode(self.beta, 0.10), mic_sensitivity=self.mic_sensitivity * f(0.05),
            mic_highpass_hz=self.mic_highpass_hz * f(0.05), mic_distance_m=self.mic_distance_m * f(0.05),
        )


# -- exact discretisation ---------------------------------------------------------------------------------------------

def _expm(m: np.ndarray) -> np.ndarray:
    """Matrix exponential of a stack of small matrices [..., n, n]: scaling and squaring with a Taylor series
    (error below 1e-16 before squaring). numpy's matmul rather than scipy.linalg.expm, whose threaded BLAS calls on
    tiny matrices can stall for milliseconds on a busy machine."""
    eye = np.broadcast_to(np.eye(m.shape[-1]), m.shape)
    norm = float(np.abs(m).sum(axis=-2).max()) if m.size else 0.0  # largest 1-norm in the stack
    squarings = max(0, math.ceil(math.log2(norm / 0.5))) if norm > 0.5 else 0
    x = m / 2.0**squarings
    result = eye + x
    term = x
    for k in range(2, 16):
        term = term @ x / k
        result = result + term
    for _ in range(squarings):
        result = result @ result
    return result


def _hold_solution(a: np.ndarray, b: np.ndarray, dt: float, average: bool = False) -> tuple[np.ndarray, ...]:
    """Exact solution of x' = A x + B u over ``dt`` with u held constant: x(t + dt) = Phi x(t) + Gamma u; with
    ``average`` also its mean over the interval: mean x = Phi_bar x(t) + Gamma_bar u.

    Args:
        a: [..., n, n], b: [..., n] (batched over leading dimensions).
    Returns:
        Phi [..., n, n], Gamma [..., n] (and Phi_bar [..., n, n], Gamma_bar [..., n]).
    """
    n = a.shape[-1]
    if dt == 0:
        return np.broadcast_to(np.eye(n), a.shape).copy(), np.zeros_like(b)
    # d/dt (x, u) is linear, and so is d/dt of (x, u, integral of (x, u)): one matrix exponential
    size = 2 * n + 2 if average else n + 1
    aug = np.zeros(a.shape[:-2] + (size, size))
    aug[..., :n, :n] = a
    aug[..., :n, n] = b
    if average:
        aug[..., n + 1:, : n + 1] = np.eye(n + 1)
    e = _expm(aug * dt)
    if not average:
        return e[..., :n, :n], e[..., :n, n]
    integral = e[..., n + 1:, : n + 1] / dt
    return e[..., :n, :n], e[..., :n, n], integral[..., :n, :n], integral[..., :n, n]


def _held_filters(a: np.ndarray, b: np.ndarray, c: np.ndarray, period_s: float, offset_s: float | None,
                  d: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """IIR filters (b, a) giving y(t_k + offset) = C x(t_k + offset) + D u_k from inputs u_j held over
    [t_j, t_j + T).

    Args:
        a: [S, n, n], b: [S, n], c: [S, n], d: [S] or None (0): S continuous-time single-input single-output
            systems.
        offset_s: 0 <= offset < T; the output then depends on u_k itself only if offset > 0. None: the average of
            y over [t_k, t_k + T) instead.
    Returns:
        S pairs (numerator [n + 1], denominator [n + 1]) for ``scipy.signal.lfilter``.
    """
    if offset_s is None:
        phi, gam, phi_bar, gam_bar = _hold_solution(a, b, period_s, average=True)
    else:
        phi, gam = _hold_solution(a, b, period_s)
        phi_bar, gam_bar = _hold_solution(a, b, offset_s)
    c_e = np.einsum("si,sij->sj", c, phi_bar)
    d_e = np.einsum("si,si->s", c, gam_bar) + (0.0 if d is None else d)
    # transfer function of the discrete system (phi, gam, c_e, d_e), as scipy.signal.ss2tf computes it, batched:
    # den = det(z - phi), num = det(z - phi + gam c_e) + (d_e - 1) den
    den = _poly(np.linalg.eigvals(phi))
    num = _poly(np.linalg.eigvals(phi - gam[:, :, None] * c_e[:, None, :])) + (d_e - 1.0)[:, None] * den
    return [(num[s], den[s]) for s in range(a.shape[0])]


def _summed_impulse_response(a: np.ndarray, b: np.ndarray, c: np.ndarray, period_s: float, offset_s: float,
                             length: int, block: int = 512) -> np.ndarray:
    """Sum over S systems of the response y(t_k + offset) to a unit input held over [0, T), k < ``length``.

    Computed from the discrete state space (powers of Phi applied block by block), not from a transfer function:
    high-order polynomials with poles clustered near z = 1 lose digits at high sample rates.
    Args as ``_held_filters``; returns [length].
    """
    phi, gam = _hold_solution(a, b, period_s)
    phi_e, gam_e = _hold_solution(a, b, offset_s)
    c_e = np.einsum("si,sij->sj", c, phi_e)
    h = np.empty(length)
    h[0] = np.einsum("si,si->", c, gam_e)  # y(t_0 + offset) = C (Phi_e x_0 + Gamma_e u_0) with x_0 = 0
    states = gam[:, :, None]  # columns x_{j+1} = Phi^j Gamma for j < block: [S, n, block], by doubling
    power = phi
    while states.shape[2] < block:
        states = np.concatenate([states, power @ states], axis=2)
        power = power @ power
    if states.shape[2] != block:
        states, power = states[:, :, :block], np.linalg.matrix_power(phi, block)
    for start in range(1, length, block):
        stop = min(length, start + block)
        h[start:stop] = (c_e[:, None, :] @ states[:, :, : stop - start]).sum(axis=0)[0]
        states = power @ states
    return h


def _poly(roots: np.ndarray) -> np.ndarray:
    """Real coefficients (highest power first) of the monic polynomials with the given roots [S, n] -> [S, n + 1]."""
    coef = np.zeros(roots.shape[:-1] + (roots.shape[-1] + 1,), dtype=complex)
    coef[..., 0] = 1.0
    for k in range(roots.shape[-1]):
        coef[..., 1:] = coef[..., 1:] - roots[..., k, None] * coef[..., :-1]
    return coef.real


def _lfilter_adjoint(ba: tuple[np.ndarray, np.ndarray], g: np.ndarray) -> np.ndarray:
    """Adjoint of a filter from rest (``iir.Blocks.lfilter``) on a finite record: the same filter on the time-reversed
    gradient, reversed."""
    return scipy.signal.lfilter(ba[0], ba[1], g[..., ::-1], axis=-1)[..., ::-1]


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Causal convolution from rest along the last axis, truncated to the length of ``x`` (x [C, N], kernel [L])."""
    return scipy.signal.oaconvolve(x, kernel[None, :], axes=-1)[:, : x.shape[-1]]


def _convolve_adjoint(g: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return _convolve(g[:, ::-1], kernel)[:, ::-1]


@dataclass(frozen=True)
class _Plan:
    """The discretised bench for one internal rate, output delay and temperature.

    pre:       amplifier input (held) -> linear amplifier output / v_clip, averaged over each interval
    kernel:    clipped amplifier output / v_clip, tanh(pre) (held) -> microphone, all modes linear, evaluated
               ``offset`` into the interval
    q_filters: tanh(pre) -> q_m at the middle of each interval (nonlinear modes, um)
    n_filters: P_m = q_m (q_m^2 + kappa_ratio sum_n q_n^2) (held, um^3) -> microphone, ``offset`` into the
               interval: the modal acceleration N_m = -w_m^2 beta_m (1 - kappa) P_m through the mode and the
               microphone (the factor is folded into the numerator)
    kappa_ratio: kappa / (1 - kappa)
    shift:     whole samples of delay on top of the offset (y_delayed[k] = y(t_{k - shift} + offset))
    """

    rate_hz: float
    pre: tuple[np.ndarray, np.ndarray]
    kernel: np.ndarray
    q_filters: list[tuple[np.ndarray, np.ndarray]]
    n_filters: list[tuple[np.ndarray, np.ndarray]]
    kappa_ratio: float
    shift: int


def _make_plan(v: PlateValues, rate_hz: float, delay_s: float, delta_t_k: float) -> _Plan:
    """Discretise the bench exactly at ``rate_hz`` (see the module docstring)."""
    dt = 1.0 / rate_hz
    two_pi = 2.0 * math.pi
    # amplifier input stage: AC coupling (state z1, output u - z1) and gain, here / v_clip, averaged over each
    # interval; this is clipped (tanh) and held as the input of the output stage's low-pass
    wh = two_pi * v.amp_highpass_hz
    g = v.amp_gain / v.v_clip
    pre = _held_filters(np.array([[[-wh]]]), np.array([[wh]]), np.array([[-g]]), dt, None, d=np.array([g]))[0]
    # the microphone sample k is y(t_k - delay) = y(t_{k - shift} + offset)
    shift = math.ceil(delay_s * rate_hz - 1e-9)
    offset = max(0.0, shift * dt - delay_s)

    w = two_pi * np.asarray(v.mode_hz) * (1.0 + v.tempco * delta_t_k)
    sigma = np.asarray(v.mode_zeta) * w
    b = np.asarray(v.drive_coupling) / v.modal_mass_kg * 1e6  # um/s^2 per N
    c = np.asarray(v.mic_coupling) * v.mic_sensitivity * 1e-6  # V per um/s
    wl, wc, wm = two_pi * v.amp_lowpass_hz, two_pi * v.coil_corner_hz, two_pi * v.mic_highpass_hz
    n_modes = w.shape[0]

    # from the clipped amplifier output / v_clip to the microphone, one system per mode, states:
    # 0 amplifier output (V), 1 coil force (N), 2 q (um), 3 q' (um/s), 4 microphone high-pass state (V)
    a5 = np.zeros((n_modes, 5, 5))
    a5[:, 0, 0] = -wl
    a5[:, 1, 0], a5[:, 1, 1] = wc * v.force_per_volt, -wc
    a5[:, 2, 3] = 1.0
    a5[:, 3, 1], a5[:, 3, 2], a5[:, 3, 3] = b, -w**2, -2.0 * sigma
    a5[:, 4, 3], a5[:, 4, 4] = wm * c, -wm
    b5 = np.zeros((n_modes, 5))
    b5[:, 0] = wl * v.v_clip
    c5 = np.zeros((n_modes, 5))
    c5[:, 3], c5[:, 4] = c, -1.0  # microphone: c q' minus the high-pass state
    slowest = min(float(sigma.min()), wm, wc, wl)
    kernel = _summed_impulse_response(a5, b5, c5, dt, offset, length=max(16, math.ceil(15.0 / slowest * rate_hz)))
    keep = np.nonzero(np.abs(kernel) > 1e-6 * np.abs(kernel).max())[0]
    kernel = kernel[: keep[-1] + 1]

    nl = np.nonzero(np.asarray(v.beta) > 0)[0]
    # clipped amplifier output / v_clip -> q_m at mid-interval (states 0-3)
    q_filters = _held_filters(a5[nl, :4, :4], b5[nl, :4], np.eye(5)[None, 2, :4].repeat(len(nl), 0), dt, 0.5 * dt)
    # modal acceleration -> microphone (states 2-4)
    b3 = np.zeros((len(nl), 3))
    b3[:, 1] = 1.0
    gain = -(w[nl] ** 2) * np.asarray(v.beta)[nl] * (1.0 - v.kappa)  # N_m / P_m, 1 / (s^2 um^2)
    n_filters = [(num * k, den) for (num, den), k in zip(_held_filters(a5[nl, 2:, 2:], b3, c5[nl, 2:], dt, offset),
                                                          gain)]
    if not 0.0 <= v.kappa < 1.0:
        raise ValueError(f"kappa must lie in [0, 1), got {v.kappa}")
    return _Plan(rate_hz, pre, kernel, q_filters, n_filters, v.kappa / (1.0 - v.kappa), shift)


# -- the chain and its adjoint ----------------------------------------------------------------------------------------

def _chain(u: np.ndarray, plan: _Plan, keep: bool = False, single: bool = False) -> tuple[np.ndarray, dict]:
    """Microphone signal (V, before noise and hum) for amplifier-input rows u [C, N] held at ``plan.rate_hz``,
    each row from rest. Returns y [C, N] and (if ``keep``) what the adjoint needs. ``single``: the linear part's
    convolution in single precision (2.5x faster; errors ~1e-6 of the signal, far below the microphone's noise)."""
    # the filters run on blocks of each row side by side (``iir``), each block as long as the bench's memory at least
    blocks = iir.Blocks(*u.shape, memory=len(plan.kernel))
    t_blocks = blocks.lfilter(plan.pre, blocks.split(u))  # linear amplifier output / v_clip
    np.tanh(t_blocks, out=t_blocks)                       # clipped amplifier output / v_clip
    t = blocks.join(t_blocks)
    if single:
        y = _convolve(t.astype(np.float32), plan.kernel.astype(np.float32)).astype(np.float64)
    else:
        y = _convolve(t, plan.kernel)
    cache: dict = {"t": t} if keep else {}
    if plan.q_filters:
        # per sample: q_m = Q_m(t) (um), ks = kappa_ratio sum_n q_n^2, P_m = q_m (q_m^2 + ks), y += N_m(P_m), for all
        # K modes at once, compiled (``iir.Blocks.plate_nonlinear``)
        correction, q, ks = blocks.plate_nonlinear(t_blocks, plan.q_filters, plan.n_filters, plan.kappa_ratio, keep)
        y += blocks.join(correction)
        if keep:
            cache.update(q=[blocks.join(qm) for qm in q], ks=blocks.join(ks))
    if plan.shift:
        y = np.concatenate([np.zeros(y.shape[:-1] + (plan.shift,)), y], axis=-1)[..., : u.shape[-1]]
    return y, cache


def _chain_adjoint(g_y: np.ndarray, plan: _Plan, cache: dict) -> np.ndarray:
    """dL/du [C, N] from dL/dy [C, N] (``_chain`` without delay shift, with the cache of its forward pass)."""
    assert plan.shift == 0
    g_t = _convolve_adjoint(g_y, plan.kernel)
    if plan.q_filters:
        q, ks = cache["q"], cache["ks"]
        g_p = [_lfilter_adjoint(ba, g_y) for ba in plan.n_filters]  # dL/dP_m
        r = 2.0 * plan.kappa_ratio * sum(g * qm for g, qm in zip(g_p, q))
        for g, qm, ba in zip(g_p, q, plan.q_filters):
            g_q = g * (3.0 * qm * qm + ks) + qm * r  # dP_n/dq_m = delta_nm (3 q_m^2 + k s) + 2 k q_n q_m
            g_t += _lfilter_adjoint(ba, g_q)
    t = cache["t"]
    return _lfilter_adjoint(plan.pre, g_t * (1.0 - t * t))


class _NoiselessMic(torch.autograd.Function):
    """Microphone volts at the AWG sample instants as a differentiable function of the drive (adjoint backward)."""

    @staticmethod
    def forward(ctx, drive: Tensor, plate: "SpeakerPlate", fs: float, delta_t_k: float, internal: bool) -> Tensor:
        m = plate.oversampling(fs)
        plan = plate._plan(m * fs, 0.0, delta_t_k)
        u = np.repeat(drive.detach().numpy(), m, axis=1)
        y, cache = _chain(u, plan, keep=ctx.needs_input_grad[0])
        ctx.plan, ctx.cache, ctx.m, ctx.internal = plan, cache, m, internal
        return torch.from_numpy(y if internal else np.ascontiguousarray(y[:, ::m]))

    @staticmethod
    def backward(ctx, grad: Tensor):
        m = ctx.m
        g = grad.detach().double().numpy()
        c, t = g.shape[0], g.shape[1] // m if ctx.internal else g.shape[1]
        if ctx.internal:
            g_y = np.ascontiguousarray(g)
        else:
            g_y = np.zeros((c, t * m))
            g_y[:, ::m] = g
        g_u = _chain_adjoint(g_y, ctx.plan, ctx.cache)
        return torch.from_numpy(g_u.reshape(c, t, m).sum(axis=2)), None, None, None, None


class SpeakerPlate:
    """The mechanical bench's physics as the simulated instruments see it (amplifier, speaker, plate, microphone).

    ``respond(emf_v, fs)`` -> ({1: microphone at scope CHAN1 (V), 2: AWG terminal at scope CHAN2 (V)}, trace rate):
    sample k at time k / trace rate after the AWG trigger (the trace rate is the internal rate, a multiple of fs),
    with the acoustic and trigger delays, drift, microphone noise and mains hum included.
    """

    trigger_delay_s = 2.37e-6
    chan2_noise_v = 1e-3  # scope input noise on the reference channel, V rms
    min_rate_hz = 20e3    # lowest internal rate of the physics
    settle_s = 0.1        # the bench's memory: amplifier AC coupling and plate decay die out well within this

    def __init__(self, seed: int = 0, nominal: PlateValues | None = None):
        self.rng = np.random.default_rng(seed)
        self.nominal = nominal or PlateValues()
        self.values = self.nominal.off_nominal(self.rng)
        self.bench_time_s = 0.0
        self.busy_s = 0.0  # wall time spent computing physics (for overhead reports)
        self._drift_phase = float(self.rng.uniform(0, 2 * math.pi))
        self._mains_phase = self.rng.uniform(0, 2 * math.pi, 2)
        self._noise = np.random.default_rng(int(seed) + 54321)
        self._plans: dict[tuple, _Plan] = {}
        log.info("mechanical bench values (seed %d): %s", seed, asdict(self.values))

    @property
    def acoustic_delay_s(self) -> float:
        return self.values.acoustic_delay_s

    def oversampling(self, sample_rate_hz: float) -> int:
        """Internal samples per AWG sample: the smallest M with M * fs >= ``min_rate_hz``."""
        return max(1, math.ceil(self.min_rate_hz / sample_rate_hz - 1e-9))

    steps_per_sample = oversampling

    def temperature_offset_k(self) -> float:
        """Temperature offset (K) from nominal at the current bench time: slow 10-minute wander."""
        t = self.bench_time_s
        return 0.8 * math.sin(2 * math.pi * t / 600.0 + self._drift_phase) + 0.3 * math.sin(2 * math.pi * t / 97.0)

    def _plan(self, rate_hz: float, delay_s: float, delta_t_k: float) -> _Plan:
        # 1 mK moves the modes by 2.5e-7: below anything measurable
        # the bench's server thread and a perfect twin (PAT's twin worker) may ask at once: read the cache once,
        # and keep what was found or made, whatever the other thread evicts meanwhile
        key = (self.values, rate_hz, delay_s, round(delta_t_k, 3))
        plan = self._plans.get(key)
        if plan is None:
            plan = _make_plan(self.values, rate_hz, delay_s, key[3])
            while len(self._plans) >= 8:
                self._plans.pop(next(iter(self._plans)), None)
            self._plans[key] = plan
        return plan

    # -- for tests, plots and the perfect twin ---------------------------------------------------------------------

    def noiseless(self, drive: Tensor, sample_rate_hz: float, temperature_offset_k: float = 0.0,
                  internal_rate: bool = False) -> Tensor:
        """Microphone volts without noise, hum, delays or drift, at the AWG sample instants k / fs.

        Args:
            drive: [C, T] volts at the amplifier input, sampled (and held) at ``sample_rate_hz``; each row an
                independent waveform from rest.
            temperature_offset_k: the bench's temperature offset (K) that sets the mode frequencies.
            internal_rate: return [C, T * M] at the internal rate M fs instead (sample j at j / (M fs)), the
                trace ``respond`` hands to the scope (there delayed, with noise and hum).
        Returns:
            [C, T] microphone volts; differentiable in ``drive`` (exact adjoint of the discretised chain).
        """
        return _NoiselessMic.apply(drive.double(), self, float(sample_rate_hz), float(temperature_offset_k),
                                   internal_rate).to(drive.dtype)

    def frequency_response(self, f_hz: np.ndarray | float, hold_rate_hz: float | None = None,
                           acoustic_delay: bool = False) -> np.ndarray:
        """Small-signal transfer (complex, V/V) from amplifier-input volts to microphone volts, continuous time.

        With ``hold_rate_hz`` it includes the AWG's zero-order hold at that rate, sinc(f / fs) exp(-i pi f / fs):
        the transfer from drive samples to microphone samples at the same instants, which ``noiseless`` shows at
        small drive up to the (small) errors of its discretisation. ``acoustic_delay`` adds exp(-i w delay).
        """
        v = self.values
        s = 2j * math.pi * np.asarray(f_hz, dtype=np.float64)
        two_pi = 2.0 * math.pi
        wh, wl, wc, wm = (two_pi * x for x in (v.amp_highpass_hz, v.amp_lowpass_hz, v.coil_corner_hz,
                                                v.mic_highpass_hz))
        amp = v.amp_gain * s / (s + wh) * wl / (s + wl)
        force = v.force_per_volt * wc / (s + wc)
        w = two_pi * np.asarray(v.mode_hz)
        sigma = np.asarray(v.mode_zeta) * w
        bc = (np.asarray(v.drive_coupling) / v.modal_mass_kg * 1e6) * (np.asarray(v.mic_coupling) * v.mic_sensitivity
                                                                        * 1e-6)
        ss = s[..., None]
        plate = (bc * ss / (ss * ss + 2.0 * sigma * ss + w * w)).sum(axis=-1)
        h = amp * force * plate * s / (s + wm)
        if hold_rate_hz:
            f = np.asarray(f_hz, dtype=np.float64) / hold_rate_hz
            h = h * np.sinc(f) * np.exp(-1j * math.pi * f)
        if acoustic_delay:
            h = h * np.exp(-s * v.acoustic_delay_s)
        return h

    # -- the simulated bench ---------------------------------------------------------------------------------------

    def respond(self, emf_v: np.ndarray, sample_rate_hz: float, channels: tuple[int, ...] = (1, 2)
                ) -> tuple[dict[int, np.ndarray], float]:
        """The traces the scope sees for an AWG EMF waveform (V, held at ``sample_rate_hz``) that starts at the
        trigger. Returns ({1: microphone (V), 2: AWG terminal (V)}, trace rate (Sa/s)), sample k at k / trace rate;
        only the traces of ``channels`` (the scope reads no others), the noise of both drawn all the same, so that
        the noise stream does not depend on what the scope reads."""
        start = time.perf_counter()
        v = self.values
        fs = float(sample_rate_hz)
        m = self.oversampling(fs)
        rate = m * fs
        u = np.asarray(emf_v, dtype=np.float64) * v.input_divider
        u = np.repeat(u, m) if m > 1 else u
        n = u.shape[0]
        if n == 0:
            return {ch: np.zeros(0) for ch in channels}, rate
        plan = self._plan(rate, self.acoustic_delay_s + self.trigger_delay_s, self.temperature_offset_k())
        mic, _ = _chain(u[None, :], plan, single=True)
        mic = mic[0]
        # mains hum, its phase following bench time, and the microphone's self-noise
        mains = 2 * math.pi * v.mains_hz
        for harmonic, amplitude, phase in ((1, v.hum_v, self._mains_phase[0]), (3, v.hum3_v, self._mains_phase[1])):
            _add_sine(mic, amplitude, harmonic * mains / rate, harmonic * mains * self.bench_time_s + phase)
        noise = standard_normal_f32(self._noise, n)
        noise *= v.mic_noise_v  # float32, as v.mic_noise_v * noise
        mic += noise
        chan2_noise = standard_normal_f32(self._noise, n, draw_only=2 not in channels)
        traces = {1: mic}
        if 2 in channels:
            traces[2] = _delay(u, self.trigger_delay_s * rate)
            traces[2] += self.chan2_noise_v * chan2_noise
        self.bench_time_s += n / rate + 0.02
        self.busy_s += time.perf_counter() - start
        return {ch: traces[ch] for ch in channels}, rate


def _add_sine(out: np.ndarray, amplitude: float, step: float, phase: float, block: int = 1024) -> None:
    """out[k] += amplitude sin(phase + step k), in place, by angle addition over blocks of ``block`` samples
    (sin(a + b) = sin a cos b + cos a sin b: the sines and cosines of one block's and of the blocks' starting angles
    only, a few times faster than np.sin), in one compiled pass over ``out``."""
    rows = -(-out.shape[0] // block)
    outer = phase + step * block * np.arange(rows)
    inner = step * np.arange(block)
    _add_angle_sums(out, amplitude, np.sin(outer), np.cos(outer), np.sin(inner), np.cos(inner))


@numba.njit(cache=True, nogil=True)
def _add_angle_sums(out, amplitude, sin_outer, cos_outer, sin_inner, cos_inner):  # pragma: no cover - compiled
    """out[r block + j] += (sin_outer[r] cos_inner[j] + cos_outer[r] sin_inner[j]) amplitude."""
    n, block = out.shape[0], sin_inner.shape[0]
    for r in range(sin_outer.shape[0]):
        start = r * block
        for j in range(min(block, n - start)):
            out[start + j] += (sin_outer[r] * cos_inner[j] + cos_outer[r] * sin_inner[j]) * amplitude


def _delay(trace: np.ndarray, samples: float) -> np.ndarray:
    """Delay a trace by a fractional number of samples (linear interpolation, zeros shifted in)."""
    whole = int(math.floor(samples))
    frac = samples - whole
    shifted = np.concatenate([np.zeros(whole + 1), trace])[: trace.shape[0] + 1]  # shifted[j + 1] = trace[j - whole]
    return (1.0 - frac) * shifted[1:] + frac * shifted[:-1]
