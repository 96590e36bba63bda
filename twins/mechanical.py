"""Physics twin of the mechanical setup: amplifier, speaker, a plate with damped Duffing modes, microphone.

The model (what the lab notebook says about the bench, nothing taken from the simulator)::

    drive      u[k] = drive units (``drive_units``) * drive_volts_per_unit               V at the amplifier input
    amplifier  v_a = G * H_ac * H_lp u,  H_ac = s/(s + w_ac) (AC coupling),  H_lp = w_lp/(s + w_lp)
               v_c = V_clip * tanh(v_a / V_clip)                                       soft clipping at the rails
    coil       F = w_coil/(s + w_coil) v_c                                             force, in volts
    plate      q_m'' + 2 zeta_m w_m q_m' + w_m^2 q_m (1 + beta_m q_m^2 + kappa beta_m sum_{n!=m} q_n^2)
                   = w_m^2 b_m F,                       m = 1..M,  w_m = 2 pi f_m
    microphone p = sum_m c_m q_m' / w_m,   mic = g_out * s/(s + w_mic) p                   V, sampled at the AWG grid
    outputs    y = bin_outputs(mic over the value slots, n_outputs, bin_statistic) / output_volts_per_unit + offset

Units: f in Hz, zeta dimensionless, the modal displacement q_m is normalised so that its static response to a
force of 1 V is b_m (b_m dimensionless); c_m in mic volts per unit of q_m'/w_m. The linear response sees only the
signed modal weight g_m = b_m c_m: the plate's velocity response is sum_m g_m w_m s / (s^2 + 2 zeta_m w_m s + w_m^2)
(mic volts per volt of coil force), i.e. ``weight_m = g_m w_m`` in the form H ~ weight j w / (w_m^2 - w^2 + 2 j zeta
w_m w) used by ``modes_from_response``. Only the Duffing terms see b and c separately; they are fitted for the lowest
``nonlinear_modes`` modes only (higher modes move far less: displacement ~ force / w^2), and the cross-coupling sums
over these modes too (the other modes have beta = 0). A common scale s (b -> s b, c -> c / s, beta -> beta / s^2)
leaves every output unchanged; it is fixed by normalising the drive couplings b of the nonlinear modes to a geometric
mean of 1. (Per mode, b_m and beta_m are told apart only through the weak cross-coupling, so that split is loosely
determined by a fit; the outputs are not.)

How it is computed (x [B, n], theta [n] or [B, n] -> y [B, n_outputs]; T = ``encoding.drive_samples(n)``):
every linear stage is discretised exactly for a zero-order-hold (ZOH) input, from the poles and residues of its
transfer function (``zoh_impulse_response``), and applied to the whole batch by FFT convolution with zero padding
(no wrap-around). The amplifier stage gives the mean of v_a over each sample interval (which the clip acts on and
holds); the coil -> mode -> microphone cascade gives the microphone at the sample instants. The Duffing term is a
first-order (one Picard step) correction: the modal displacements q_m of the linear solution ([B, K, T], interval
means) give the extra modal force n_m = -beta_m q_m (q_m^2 + kappa sum_{n!=m} q_n^2) (in units of w_m^2 q), whose
velocity response through mode m and the microphone is added to the output.

Fitted constants (positive ones stored as logs, so gradient steps are relative): per mode f, zeta and the weight g
(signed; stored as ``weight_raw`` times a fixed per-mode scale ``weight_scale``, so steps are relative to the initial
size); for the nonlinear modes b and beta; kappa; amplifier gain G, clip level V_clip, amplifier low-pass and AC
coupling corners; coil corner; microphone high-pass corner; output gain g_out and offset.

Speed (one thread, 2-core CI machine): PAT's frozen forward + backward of a batch of 64 with 24 modes, 6 nonlinear,
takes ~11 / 15 / 25 ms for n = 128 / 256 / 400 slots (interleave, T = 2n) and ~140 ms for the raw-audio item
(n = 4096, combine add); with float32 x (as in PAT) the convolutions run in float32. A fitting step (float64, batch
of 128, parameters trainable) takes ~45 / 80 / 120 ms.

Delay: the setup removes the measured instrument and acoustic delays, erring early by up to ~2 samples (a late cut
would leave the twin needing to see the future); the twin fits what remains, ``delay_samples`` >= 0, as a linear
interpolation between samples (``delayed``).

What the twin ignores: microphone self-noise and mains hum, drift of the mode frequencies with temperature, scope/AWG quantisation, and carry-over between
items (each item starts from rest: the guard interval lets the plate ring down). Each sample of the drive is assumed
held (ZOH) for one AWG sample period and the output is the microphone voltage at the sample instants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.fft
import scipy.optimize
import scipy.signal
import torch
from torch import Tensor, nn

from encoding.awg_scope import bin_outputs, delayed
from encoding.mechanical import MechanicalEncoding, drive_units
from twins.registry import broadcast_theta, register_twin

NOMINAL: dict[str, float] = {
    "amp_gain": 8.0,            # amplifier voltage gain
    "clip_v": 6.0,              # soft-clipping level (rails), V
    "amp_lowpass_hz": 12e3,     # amplifier bandwidth
    "amp_highpass_hz": 20.0,    # amplifier AC coupling
    "coil_hz": 3e3,             # voice coil L/R corner
    "mic_highpass_hz": 80.0,    # microphone high-pass
    "output_gain": 1.0,         # mic volts per modelled volt (absorbs the mic sensitivity error)
    "kappa": 0.1,               # cross-coupling of the Duffing terms
    "duffing_eta": 0.02,        # initial beta_m: relative stiffening at the resonant amplitude under a rail sine
}
"""Nominal chain constants; the twin's initial values unless the constructor gets ``nominal`` overrides."""

INITIAL_DELAY_SAMPLES = 0.5  # remaining delay the twin starts from (the setup cuts 0..2 samples early)
DEFAULT_BAND_HZ = (150.0, 9000.0)
DEFAULT_DECAY_S = 5e-3
DEFAULT_PEAK_GAIN = 0.02  # default mode weight: peak mic volts per coil-force volt
_MAX_ZETA = 0.95
_CHUNK_ELEMENTS = 1 << 23  # items per ``trace`` call are limited so that the [B, K, 2T] modal arrays stay ~64 MB


# ---------------------------------------------------------------------------------------------------------------
# ZOH-exact discrete responses of rational transfer functions with simple poles
# ---------------------------------------------------------------------------------------------------------------

def residues(poles: Tensor, numerator_at_poles: Tensor) -> Tensor:
    """Residues r_i = N(p_i) / prod_{j != i} (p_i - p_j) of H(s) = N(s) / prod_j (s - p_j) (simple poles).

    poles, numerator_at_poles: complex [..., P] -> [..., P]."""
    diff = poles[..., :, None] - poles[..., None, :]
    eye = torch.eye(poles.shape[-1], dtype=torch.bool)
    diff = torch.where(eye, torch.ones((), dtype=diff.dtype), diff)
    return numerator_at_poles / diff.prod(dim=-1)


def _zoh_terms(poles: Tensor, res: Tensor, dt: float, average: bool) -> tuple[Tensor, Tensor]:
    """Coefficients C [..., P] and head h0 [...] with h[0] = h0, h[i] = Re sum_p C_p exp(p (i - 1) dt) for i >= 1."""
    z = poles * dt
    e1 = torch.expm1(z)
    if average:
        coef = res / poles**2 * e1**2 / dt
        head = (res / poles * (e1 / z - 1)).sum(dim=-1).real
    else:
        coef = res / poles * e1
        head = torch.zeros(poles.shape[:-1], dtype=poles.real.dtype)
    return coef, head


def zoh_impulse_response(poles: Tensor, res: Tensor, dt: float, length: int, average: bool = False) -> Tensor:
    """Discrete impulse response [..., length] of a strictly proper H(s) = sum_p r_p / (s - p) for a held input.

    The input u[j] is held constant over [j dt, (j + 1) dt) (zero-order hold) and the system starts at rest; then
    y[k] = sum_j h[k - j] u[j] exactly, where y[k] is the output at the instant k dt (``average=False``; h[0] = 0,
    h[i] = s(i dt) - s((i - 1) dt) with s the step response), or its mean over [k dt, (k + 1) dt)
    (``average=True``; h[i] from the second difference of the integrated step response). Poles and residues are
    complex [..., P] (conjugate pairs both listed, so the response is real); differentiable in both.
    """
    coef, head = _zoh_terms(poles, res, dt, average)
    k = torch.arange(length - 1, dtype=poles.real.dtype)
    tail = (coef[..., None] * torch.exp(poles[..., None] * (dt * k))).sum(dim=-2).real
    return torch.cat([head[..., None], tail], dim=-1)


def _zoh_dtft(poles: Tensor, res: Tensor, dt: float, omega: Tensor, average: bool = False) -> Tensor:
    """DTFT [..., F] of ``zoh_impulse_response`` (infinite length) at normalised frequencies omega [F] (rad/sample)."""
    coef, head = _zoh_terms(poles, res, dt, average)
    e = torch.exp(-1j * omega)
    ratio = coef[..., None] * e / (1 - torch.exp(poles * dt)[..., None] * e)
    return ratio.sum(dim=-2) + head[..., None]


def oscillator_impulse_responses(f_hz: Tensor, zeta: Tensor, fs: float, length: int,
                                 average: bool = False) -> tuple[Tensor, Tensor]:
    """ZOH-exact impulse responses (displacement, velocity) [..., length] of q'' + 2 zeta w q' + w^2 q = w^2 u.

    In closed form: with p = w (-zeta + j sqrt(1 - zeta^2)), the displacement step response is
    1 - Re[(1 - j zeta / sqrt(1 - zeta^2)) e^{p t}] and the velocity one w / sqrt(1 - zeta^2) e^{-zeta w t}
    sin(w_d t); the impulse responses are their differences over one sample (``zoh_impulse_response``).
    f_hz, zeta: tensors broadcastable to the same shape (differentiable). The displacement has static gain 1.
    """
    w = 2 * math.pi * f_hz
    poles = _mode_poles(w, zeta)
    ones = torch.ones_like(poles)
    disp = zoh_impulse_response(poles, residues(poles, (w**2)[..., None] * ones), 1 / fs, length, average)
    vel = zoh_impulse_response(poles, residues(poles, (w**2)[..., None] * poles), 1 / fs, length, average)
    return disp, vel


def _mode_poles(w: Tensor, zeta: Tensor) -> Tensor:
    """[..., 2] complex poles w (-zeta +- j sqrt(1 - zeta^2)) of an underdamped oscillator."""
    wd = w * torch.sqrt(1 - zeta**2)
    re = -zeta * w
    p = torch.complex(re, wd)
    return torch.stack([p, p.conj()], dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# The twin
# ---------------------------------------------------------------------------------------------------------------

def default_modes(n_modes: int, band_hz: tuple[float, float] = DEFAULT_BAND_HZ) -> list[list[float]]:
    """Log-spaced placeholder modes [f_hz, zeta, weight] (decay time ~5 ms, alternating signs); calibrate instead."""
    f = np.geomspace(band_hz[0], band_hz[1], n_modes) if n_modes > 1 else np.array([math.sqrt(band_hz[0] * band_hz[1])])
    out = []
    for m, fm in enumerate(f):
        w = 2 * math.pi * fm
        zeta = float(np.clip(1 / (DEFAULT_DECAY_S * w), 0.002, 0.1))
        weight = (-1) ** m * DEFAULT_PEAK_GAIN * 2 * zeta * w
        out.append([float(fm), zeta, float(weight)])
    return out


@register_twin
class MechanicalPhysicsTwin(nn.Module):
    """Amplifier -> coil -> plate modes (first-order Duffing) -> microphone, with fitted constants (module docstring).

    Args:
        n: slots per item (n_inputs = n_params = n).
        encoding: the setup's ``MechanicalEncoding`` as a dict.
        modes: initial modes [[f_hz, zeta, weight], ...] (e.g. from ``modes_from_response``; weight as there, in mic
            volts per coil-force volt times rad/s); default: ``n_modes`` log-spaced placeholders (``default_modes``).
        n_modes: number of modes when ``modes`` is None.
        nonlinear_modes: the lowest this many modes get a Duffing term.
        n_outputs: outputs per item; default ``encoding.n_outputs(n)``.
        nominal: overrides of ``NOMINAL`` (initial chain constants).
    x [B, n], theta [n] or [B, n] (units) -> y [B, n_outputs] (units, as the setup's outputs).
    """

    kind = "mechanical_physics"

    def __init__(self, n: int, encoding: dict, modes: Sequence[Sequence[float]] | None = None, n_modes: int = 24,
                 nonlinear_modes: int = 6, n_outputs: int | None = None, nominal: dict | None = None):
        super().__init__()
        self.encoding = MechanicalEncoding(**encoding)
        self.n_inputs = self.n_params = int(n)
        self.n_outputs = int(n_outputs or self.encoding.n_outputs(self.n_inputs))
        self.samples = self.encoding.drive_samples(self.n_inputs)
        if self.n_inputs < 1 or not 1 <= self.n_outputs <= self.samples:
            raise ValueError(f"need n >= 1 and 1 <= n_outputs <= {self.samples} samples; got n={n}, "
                             f"n_outputs={n_outputs}")
        unknown = set(nominal or {}) - set(NOMINAL)
        if unknown:
            raise ValueError(f"unknown nominal constant(s) {sorted(unknown)}; known: {', '.join(NOMINAL)}")
        self.nominal = {key: float(value) for key, value in {**NOMINAL, **(nominal or {})}.items()}
        if not all(value > 0 and math.isfinite(value) for value in self.nominal.values()):
            raise ValueError(f"nominal constants must be positive and finite, got {self.nominal}")
        modes = [list(map(float, m)) for m in (modes if modes is not None else default_modes(int(n_modes)))]
        if not modes or any(len(m) != 3 or m[0] <= 0 or not 0 < m[1] < 1 for m in modes):
            raise ValueError("modes must be one or more [f_hz > 0, 0 < zeta < 1, weight] triples")
        modes.sort(key=lambda m: m[0])
        self.init_modes = modes
        self.n_modes = len(modes)
        self.nonlinear_modes = max(0, min(int(nonlinear_modes), self.n_modes))

        f, zeta, weight = (torch.tensor(c, dtype=torch.float64) for c in zip(*modes))
        w = 2 * math.pi * f
        g = weight / w
        scale = g.abs().clamp_min(1e-3 * float(g.abs().max()) + 1e-30)
        self.log_f = nn.Parameter(f.log())
        self.log_zeta = nn.Parameter(zeta.log())
        self.weight_raw = nn.Parameter(g / scale)
        self.register_buffer("weight_scale", scale)
        k = self.nonlinear_modes
        q_ref = self.nominal["clip_v"] / (2 * zeta[:k])  # resonant amplitude under a rail-level sine, b = 1
        self.log_drive = nn.Parameter(torch.zeros(k, dtype=torch.float64))
        self.log_beta = nn.Parameter(torch.log(self.nominal["duffing_eta"] / q_ref**2))
        c = {key: torch.tensor(math.log(self.nominal[key]), dtype=torch.float64)
             for key in ("amp_gain", "clip_v", "amp_lowpass_hz", "amp_highpass_hz", "coil_hz", "mic_highpass_hz",
                         "output_gain", "kappa")}
        self.log_kappa = nn.Parameter(c["kappa"])
        self.log_amp_gain = nn.Parameter(c["amp_gain"])
        self.log_clip_v = nn.Parameter(c["clip_v"])
        self.log_amp_lowpass_hz = nn.Parameter(c["amp_lowpass_hz"])
        self.log_amp_highpass_hz = nn.Parameter(c["amp_highpass_hz"])
        self.log_coil_hz = nn.Parameter(c["coil_hz"])
        self.log_mic_highpass_hz = nn.Parameter(c["mic_highpass_hz"])
        self.log_output_gain = nn.Parameter(c["output_gain"])
        self.output_offset = nn.Parameter(torch.zeros((), dtype=torch.float64))
        # what is left of the acoustic delay after the setup's cut (which errs early), in AWG samples, >= 0
        self.delay_raw = nn.Parameter(torch.tensor(math.log(math.expm1(INITIAL_DELAY_SAMPLES)), dtype=torch.float64))

    # --- bookkeeping -------------------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"n": self.n_inputs, "encoding": self.encoding.model_dump(), "modes": self.init_modes,
                "n_modes": self.n_modes, "nonlinear_modes": self.nonlinear_modes, "n_outputs": self.n_outputs,
                "nominal": dict(self.nominal)}

    @classmethod
    def from_response(cls, n: int, encoding: dict, f_hz: np.ndarray, response: np.ndarray, n_modes: int = 24,
                      **kwargs) -> MechanicalPhysicsTwin:
        """A twin whose modes come from a measured frequency response (complex mic volts per amplifier-input volt
        at f_hz): the nominal amplifier/coil/microphone chain is divided out, then ``modes_from_response``."""
        probe = cls(n, encoding, n_modes=1, nonlinear_modes=0, n_outputs=kwargs.get("n_outputs"),
                    nominal=kwargs.get("nominal"))
        chain = probe.chain_response(f_hz)
        modes = modes_from_response(f_hz, response, n_modes, chain=chain)
        first = cls(n, encoding, modes=modes, n_modes=len(modes), **kwargs)
        weights = first._refit_weights(f_hz, response)
        modes = [[f, zeta, weight] for (f, zeta, _), weight in zip(first.init_modes, weights)]
        return cls(n, encoding, modes=modes, n_modes=len(modes), **kwargs)

    @torch.no_grad()
    def _refit_weights(self, f_hz: np.ndarray, response: np.ndarray) -> list[float]:
        """The modal weights (``modes`` format) that fit the twin's exact discrete response (all else fixed) to a
        measured one by linear least squares; the chain division of ``from_response`` is only approximate near
        fs / 2. Falls back to the current weights if the solve fails."""
        f = np.asarray(f_hz, dtype=np.float64).ravel()
        h = np.asarray(response, dtype=np.complex128).ravel()
        keep = (f > 0) & (f < 0.5 * self.encoding.sample_rate_hz) & np.isfinite(h)
        f, h = f[keep], h[keep]
        dt = 1.0 / self.encoding.sample_rate_hz
        omega = torch.as_tensor(2 * np.pi * f * dt)
        sys = self._systems()
        _, _, g = self._mode_constants()
        lin_p, lin_r = sys["lin"]
        per_mode = _zoh_dtft(lin_p, lin_r / g[:, None], dt, omega)  # [M, F], unit weights
        basis = (per_mode * _zoh_dtft(*sys["amp"], dt, omega, average=True) * self._delay_dtft(omega)
                 * self.log_output_gain.exp()).numpy().T
        sigma = np.abs(h) + 0.5 * np.median(np.abs(h))
        a = basis / sigma[:, None]
        g_new = np.linalg.lstsq(np.concatenate([a.real, a.imag]), np.concatenate([(h / sigma).real, (h / sigma).imag]),
                                rcond=None)[0]
        w = 2 * np.pi * self.log_f.exp().numpy()
        if not np.all(np.isfinite(g_new)) or np.all(g_new == 0):
            g_new = g.numpy()
        return [float(v) for v in g_new * w]

    def _mode_constants(self) -> tuple[Tensor, Tensor, Tensor]:
        w = 2 * math.pi * self.log_f.exp()
        zeta = self.log_zeta.exp().clamp(max=_MAX_ZETA)
        g = self.weight_raw * self.weight_scale
        return w, zeta, g

    def _drive_coupling(self) -> Tensor:
        return (self.log_drive - self.log_drive.mean()).exp() if self.nonlinear_modes else self.log_drive.exp()

    @torch.no_grad()
    def constants(self) -> dict:
        """Current fitted constants: the chain's (Hz, V, gains) and per mode f_hz, zeta, weight, b, c, beta."""
        w, zeta, g = self._mode_constants()
        k = self.nonlinear_modes
        b = torch.ones_like(w)
        b[:k] = self._drive_coupling()
        beta = torch.zeros_like(w)
        beta[:k] = self.log_beta.exp()
        out = {key.removeprefix("log_"): float(getattr(self, key).exp())
               for key in ("log_amp_gain", "log_clip_v", "log_amp_lowpass_hz", "log_amp_highpass_hz", "log_coil_hz",
                           "log_mic_highpass_hz", "log_output_gain", "log_kappa")}
        out["output_offset"] = float(self.output_offset)
        out["modes"] = [{"f_hz": float(wm / (2 * math.pi)), "zeta": float(z), "weight": float(gm * wm),
                         "b": float(bm), "c": float(gm / bm), "beta": float(be)}
                        for wm, z, gm, bm, be in zip(w, zeta, g, b, beta)]
        return out

    def modes(self) -> list[list[float]]:
        """Current modes as [[f_hz, zeta, weight], ...] (the constructor's ``modes`` format)."""
        return [[m["f_hz"], m["zeta"], m["weight"]] for m in self.constants()["modes"]]

    # --- the model ---------------------------------------------------------------------------------------------
    def _systems(self) -> dict[str, tuple[Tensor, Tensor]]:
        """(poles, residues) of every linear stage, from the current constants."""
        two_pi = 2 * math.pi
        w, zeta, g = self._mode_constants()
        w_ac, w_lp = two_pi * self.log_amp_highpass_hz.exp(), two_pi * self.log_amp_lowpass_hz.exp()
        w_coil, w_mic = two_pi * self.log_coil_hz.exp(), two_pi * self.log_mic_highpass_hz.exp()
        gain = self.log_amp_gain.exp()
        amp_p = torch.complex(-torch.stack([w_ac, w_lp]), torch.zeros(2, dtype=torch.float64))
        amp_r = residues(amp_p, gain * w_lp * amp_p)  # G s w_lp / ((s + w_ac)(s + w_lp))

        mode_p = _mode_poles(w, zeta)  # [M, 2]
        ones = torch.ones(self.n_modes, 1, dtype=torch.float64)
        coil_p = torch.complex(-w_coil * ones, 0 * ones)
        mic_p = torch.complex(-w_mic * ones, 0 * ones)
        lin_p = torch.cat([coil_p, mode_p, mic_p], dim=1)  # coil -> plate velocity -> mic, [M, 4]
        lin_r = residues(lin_p, (w_coil * w)[:, None] * lin_p**2) * g[:, None]
        k = self.nonlinear_modes
        disp_p = torch.cat([coil_p[:k], mode_p[:k]], dim=1)  # coil -> displacement (static gain 1), [K, 3]
        disp_r = residues(disp_p, (w_coil * w[:k] ** 2)[:, None] * torch.ones_like(disp_p))
        vel_p = torch.cat([mode_p[:k], mic_p[:k]], dim=1)  # modal force -> velocity / w -> mic, [K, 3]
        vel_r = residues(vel_p, w[:k, None] * vel_p**2)
        return {"amp": (amp_p, amp_r), "lin": (lin_p, lin_r), "disp": (disp_p, disp_r), "vel": (vel_p, vel_r)}

    def trace(self, drive_volts: Tensor, nonlinear: bool = True) -> Tensor:
        """The microphone voltage [B, T] (at the sample instants) for the amplifier-input voltage [B, T] (held).

        ``nonlinear=False`` skips the clipping and the Duffing correction (the small-signal path). The convolutions run
        in the drive's dtype (float32 in PAT, where x is float32: twice as fast; float64 when fitting, where
        ``fit_twin`` passes the parameters' dtype); the impulse responses are always computed in float64."""
        dt = 1.0 / self.encoding.sample_rate_hz
        u = drive_volts if drive_volts.dtype in (torch.float32, torch.float64) else drive_volts.double()
        dtype = u.dtype  # the impulse responses are computed in float64, the convolutions in the drive's dtype
        t = u.shape[1]
        n_fft = scipy.fft.next_fast_len(2 * t, real=True)
        sys = self._systems()
        amp_ir = zoh_impulse_response(*sys["amp"], dt, t, average=True).to(dtype)
        v = torch.fft.irfft(torch.fft.rfft(u, n_fft) * torch.fft.rfft(amp_ir, n_fft), n_fft)[:, :t]
        if nonlinear:
            clip = self.log_clip_v.exp().to(dtype)
            v = clip * torch.tanh(v / clip)
        v_spec = torch.fft.rfft(v, n_fft)
        lin_ir = zoh_impulse_response(*sys["lin"], dt, t).sum(dim=0).to(dtype)
        out_spec = v_spec * torch.fft.rfft(lin_ir, n_fft)
        k = self.nonlinear_modes
        if nonlinear and k:
            b = self._drive_coupling()
            w, _, g = self._mode_constants()
            disp_ir = (zoh_impulse_response(*sys["disp"], dt, t, average=True) * b[:, None]).to(dtype)  # [K, T]
            q = torch.fft.irfft(v_spec[:, None, :] * torch.fft.rfft(disp_ir, n_fft), n_fft)[..., :t]  # [B, K, T]
            q2 = q.square()
            cross = q2.sum(dim=1, keepdim=True) - q2
            beta, kappa = self.log_beta.exp().to(dtype), self.log_kappa.exp().to(dtype)
            force = -beta[:, None] * q * (q2 + kappa * cross)
            vel_ir = (zoh_impulse_response(*sys["vel"], dt, t) * (g[:k] / b)[:, None]).to(dtype)
            out_spec = out_spec + (torch.fft.rfft(force, n_fft) * torch.fft.rfft(vel_ir, n_fft)).sum(dim=1)
        mic = torch.fft.irfft(out_spec, n_fft)[:, :t]
        return delayed(mic, nn.functional.softplus(self.delay_raw)) * self.log_output_gain.exp().to(dtype)

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        """y [B, n_outputs] (units) from x [B, n] and theta [B, n] or [n] (units)."""
        theta = broadcast_theta(x, theta, self.n_inputs, self.n_params)
        enc = self.encoding
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float64
        drive = drive_units(x.to(dtype), theta.to(dtype), enc) * enc.drive_volts_per_unit
        chunk = max(1, _CHUNK_ELEMENTS // (max(1, self.nonlinear_modes) * 2 * self.samples))
        mic = torch.cat([self.trace(d) for d in drive.split(chunk)]) if len(drive) > chunk else self.trace(drive)
        y = bin_outputs(mic, self.n_outputs, enc.bin_statistic) / enc.output_volts_per_unit
        return (y + self.output_offset.to(dtype)).to(x.dtype)

    @property
    def delay_samples(self) -> float:
        """The fitted remaining delay, AWG samples."""
        return float(nn.functional.softplus(self.delay_raw.detach()))

    # --- frequency domain --------------------------------------------------------------------------------------
    @torch.no_grad()
    def frequency_response(self, f_hz: np.ndarray, discrete: bool = True) -> np.ndarray:
        """Complex small-signal response (mic volts per amplifier-input volt) of the twin's linear path at f_hz.

        ``discrete=True``: exactly what the twin computes for a sampled sine at f_hz (held drive, output at the
        sample instants; valid up to fs / 2), i.e. what a device measurement on the AWG grid gives.
        ``discrete=False``: the continuous-time transfer function of the model (no sampling effects).
        """
        f = torch.as_tensor(np.asarray(f_hz, dtype=np.float64))
        sys = self._systems()
        dt = 1.0 / self.encoding.sample_rate_hz
        if discrete:
            omega = 2 * math.pi * f * dt
            h = _zoh_dtft(*sys["amp"], dt, omega, average=True) * _zoh_dtft(*sys["lin"], dt, omega).sum(dim=0)
            h = h * self._delay_dtft(omega)
        else:
            s = 2j * math.pi * f
            h = _partial_fractions(*sys["amp"], s) * _partial_fractions(*sys["lin"], s).sum(dim=0)
            h = h * torch.exp(-s * self.delay_samples * dt)
        return (h * self.log_output_gain.exp()).numpy()

    def _delay_dtft(self, omega: Tensor) -> Tensor:
        """Frequency response of ``delayed`` by the fitted delay at normalised angular frequencies omega (rad/sample)."""
        d = self.delay_samples
        whole, frac = math.floor(d), d - math.floor(d)
        return torch.exp(-1j * omega * whole) * ((1 - frac) + frac * torch.exp(-1j * omega))

    @torch.no_grad()
    def chain_response(self, f_hz: np.ndarray) -> np.ndarray:
        """Approximate discrete response of everything but the plate (amplifier, coil, microphone, output gain, the
        hold's sin(x)/x and half-sample delay, the fitted delay), mic volts per coil-force volt: what
        ``from_response`` divides out."""
        f = np.asarray(f_hz, dtype=np.float64)
        s = 2j * np.pi * f
        c = {k: float(v) for k, v in self.constants().items() if not isinstance(v, list)}
        w_ac, w_lp = 2 * np.pi * c["amp_highpass_hz"], 2 * np.pi * c["amp_lowpass_hz"]
        w_coil, w_mic = 2 * np.pi * c["coil_hz"], 2 * np.pi * c["mic_highpass_hz"]
        dt = 1.0 / self.encoding.sample_rate_hz
        hold = np.where(f > 0, -np.expm1(-s * dt) / np.where(f > 0, s * dt, 1), 1.0)
        return (c["output_gain"] * c["amp_gain"] * s / (s + w_ac) * w_lp / (s + w_lp) * w_coil / (s + w_coil)
                * s / (s + w_mic) * hold * np.exp(-s * self.delay_samples * dt))

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, n={self.n_inputs}, n_outputs={self.n_outputs}, modes={self.n_modes}, "
                f"nonlinear_modes={self.nonlinear_modes}")


def _partial_fractions(poles: Tensor, res: Tensor, s: Tensor) -> Tensor:
    """sum_p r_p / (s - p) at complex frequencies s [F] -> [..., F]."""
    return (res[..., None] / (s - poles[..., None])).sum(dim=-2)


# ---------------------------------------------------------------------------------------------------------------
# Modes from a measured frequency response
# ---------------------------------------------------------------------------------------------------------------

def _mode_basis(w: np.ndarray, f_m: np.ndarray, zeta: np.ndarray) -> np.ndarray:
    """[F, M] complex: j w / (w_m^2 - w^2 + 2 j zeta_m w_m w)."""
    wm = 2 * np.pi * f_m[None, :]
    w = w[:, None]
    return 1j * w / (wm**2 - w**2 + 2j * zeta[None, :] * wm * w)


def _half_power_zeta(f: np.ndarray, mag: np.ndarray, k: int, lo: int, hi: int) -> float:
    """zeta = bandwidth / (2 f0) from the -3 dB points around peak index k, searched within [lo, hi]."""
    level = mag[k] / math.sqrt(2)

    def crossing(step: int) -> float | None:
        i = k
        while lo <= i + step <= hi:
            j = i + step
            if mag[j] < level:  # interpolate between i (above) and j (below)
                return float(f[i] + (f[j] - f[i]) * (mag[i] - level) / (mag[i] - mag[j]))
            i = j
        return None

    left, right = crossing(-1), crossing(+1)
    if left is None and right is None:
        bandwidth = 2 * float(np.median(np.diff(f)))
    elif left is None:
        bandwidth = 2 * (right - f[k])
    elif right is None:
        bandwidth = 2 * (f[k] - left)
    else:
        bandwidth = right - left
    df = float(np.median(np.diff(f)))
    return float(np.clip(max(bandwidth, df) / (2 * f[k]), 1e-4, 0.5))


def modes_from_response(f_hz: np.ndarray, response: np.ndarray, n_modes: int, chain: np.ndarray | None = None,
                        refine: bool = True) -> list[list[float]]:
    """Modes [[f_hz, zeta, weight], ...] (sorted by frequency) of a measured velocity-pickup frequency response.

    Model: H(w) ~ sum_m weight_m j w / (w_m^2 - w^2 + 2 j zeta_m w_m w) (so weight_m / (2 zeta_m w_m) is the real,
    signed response at the peak). Steps: the ``n_modes`` most prominent peaks of |H| (``scipy.signal.find_peaks``),
    zeta from each peak's half-power bandwidth (searched up to the neighbouring peaks), the signed weights by linear
    least squares on the complex response, then (``refine``) a joint nonlinear least-squares fit of all f, zeta and
    weights with a relative error weighting (so small peaks count too).

    Args:
        f_hz: frequencies [F] (Hz, increasing; a fine grid resolves the narrow high-frequency modes).
        response: complex response [F] at f_hz (e.g. mic volts per amplifier-input volt).
        n_modes: at most this many modes (fewer if |H| has fewer peaks).
        chain: complex response [F] of everything but the plate, divided out first (its phase would otherwise flip
            the signs of the high modes), e.g. ``MechanicalPhysicsTwin.chain_response(f_hz)``.
    Raises:
        ValueError: shapes disagree, or no peak is found.
    """
    f = np.asarray(f_hz, dtype=np.float64).ravel()
    h = np.asarray(response, dtype=np.complex128).ravel()
    if chain is not None:
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero of the chain (f = 0) is dropped below
            h = h / np.asarray(chain, dtype=np.complex128).ravel()
    if f.shape != h.shape or f.size < 3:
        raise ValueError(f"f_hz and response need the same length >= 3, got {f.shape} and {h.shape}")
    order = np.argsort(f)
    f, h = f[order], h[order]
    keep = (f > 0) & np.isfinite(h)
    f, h = f[keep], h[keep]
    mag = np.abs(h)
    peaks, props = scipy.signal.find_peaks(mag, prominence=0)
    if peaks.size == 0:
        raise ValueError("no resonance peak in the response")
    top = np.sort(peaks[np.argsort(props["prominences"])[::-1][:n_modes]])
    bounds = np.concatenate([[0], (top[:-1] + top[1:]) // 2, [f.size - 1]])
    f0 = np.empty(top.size)
    zeta = np.empty(top.size)
    for i, k in enumerate(top):
        f0[i] = f[k]
        if 0 < k < f.size - 1:  # parabolic interpolation of the peak on |H|
            a, b, c = mag[k - 1], mag[k], mag[k + 1]
            denom = a - 2 * b + c
            if denom < 0:
                shift = 0.5 * (a - c) / denom
                f0[i] = f[k] + shift * (f[k + 1] - f[k - 1]) / 2
        zeta[i] = _half_power_zeta(f, mag, k, bounds[i], bounds[i + 1])
    w = 2 * np.pi * f
    weights = _weights_lsq(w, h, f0, zeta)
    if refine:
        f0, zeta, weights = _refine(w, h, f0, zeta, weights)
    return [[float(a), float(b), float(c)] for a, b, c in zip(f0, zeta, weights)]


def _weights_lsq(w: np.ndarray, h: np.ndarray, f0: np.ndarray, zeta: np.ndarray) -> np.ndarray:
    basis = _mode_basis(w, f0, zeta)
    a = np.concatenate([basis.real, basis.imag])
    rhs = np.concatenate([h.real, h.imag])
    return np.linalg.lstsq(a, rhs, rcond=None)[0]


def _refine(w: np.ndarray, h: np.ndarray, f0: np.ndarray, zeta: np.ndarray, weights: np.ndarray):
    m = f0.size
    scale = np.maximum(np.abs(weights), 1e-12 * np.abs(weights).max() + 1e-300)
    sigma = np.abs(h) + 0.5 * np.median(np.abs(h))

    def unpack(p):
        return np.exp(p[:m]), np.exp(p[m:2 * m]), p[2 * m:] * scale

    def residual(p):
        fm, zm, wm = unpack(p)
        r = (h - _mode_basis(w, fm, zm) @ wm) / sigma
        return np.concatenate([r.real, r.imag])

    p0 = np.concatenate([np.log(f0), np.log(zeta), weights / scale])
    lower = np.concatenate([np.log(f0) - 0.05, np.log(np.maximum(zeta / 5, 1e-5)), np.full(m, -np.inf)])
    upper = np.concatenate([np.log(f0) + 0.05, np.log(np.minimum(zeta * 5, _MAX_ZETA)), np.full(m, np.inf)])
    p0 = np.clip(p0, lower + 1e-12, upper - 1e-12)
    try:
        fit = scipy.optimize.least_squares(residual, p0, bounds=(lower, upper), method="trf", max_nfev=200 * m)
    except (ValueError, np.linalg.LinAlgError):
        return f0, zeta, weights
    if not fit.success or np.sum(fit.fun**2) > np.sum(residual(p0) ** 2):
        return f0, zeta, weights
    return unpack(fit.x)
