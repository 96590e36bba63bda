"""Physics twin of the electronic setup: the nominal circuit of the lab notebook, in torch, with its physical
constants fitted to measured data.

    L di/dt = e - R i - v,      C dv/dt = i - I_d(v),
    I_d(v) = sign(v) w / R_d softplus((|v| - V_f±) / w)         (diode pair in series with R_d)

e is the AWG EMF: the drive units times ``emf_per_unit`` (V). The twin integrates each batch item from rest
(it assumes the guard interval lets the circuit settle) and returns the output bins in units, like the setup.
Fitted constants (all positive ones stored as logs): R, L, C, R_d, V_f+, V_f-, w, the input gain and the output
gain and offset. It knows nothing of the bench's noise, delay, drift or quantization.
"""

from __future__ import annotations

import math

import numpy as np

import torch
from torch import Tensor, nn

from encoding.awg_scope import bin_outputs
from encoding.electronic import ElectronicEncoding, drive_units
from twins.registry import register_twin

NOMINAL = {"r": 300.0, "l": 10e-3, "c": 1e-9, "r_d": 1000.0, "v_f_pos": 0.55, "v_f_neg": 0.55, "width": 0.045}


@register_twin
class ElectronicPhysicsTwin(nn.Module):
    """Nominal RLC + diode-pair circuit with fitted constants. x [B, n], θ [n] or [B, n] -> y [B, n] (units)."""

    kind = "electronic_physics"

    def __init__(self, n: int, encoding: dict, emf_per_unit: float, nominal: dict | None = None):
        super().__init__()
        self.n_inputs = self.n_params = self.n_outputs = n
        self.encoding = ElectronicEncoding(**encoding)
        self.emf_per_unit = emf_per_unit
        self.nominal = dict(nominal or NOMINAL)
        self.log_values = nn.ParameterDict({k: nn.Parameter(torch.tensor(math.log(v), dtype=torch.float64))
                                            for k, v in self.nominal.items()})
        self.log_input_gain = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.output_gain = nn.Parameter(torch.ones((), dtype=torch.float64))
        self.output_offset = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def config(self) -> dict:
        return {"n": self.n_inputs, "encoding": self.encoding.model_dump(), "emf_per_unit": self.emf_per_unit,
                "nominal": self.nominal}

    def constants(self) -> dict[str, float]:
        """Current fitted circuit constants in SI units."""
        return {k: float(p.detach().exp()) for k, p in self.log_values.items()}

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        enc = self.encoding
        emf = drive_units(x.double(), theta.double(), enc) * (self.emf_per_unit * self.log_input_gain.exp())
        if any(p.requires_grad for p in self.log_values.values()):
            v = self._integrate(emf, enc.sample_rate_hz)  # fitting: autograd through the constants
        else:  # frozen (as in PAT): the same scheme in numpy, gradient in the EMF by its adjoint, ~20x faster
            v = _FrozenCircuit.apply(emf, self.constants(), enc.sample_rate_hz)
        y = bin_outputs(v, self.n_outputs) / enc.output_volts_per_unit
        return (self.output_gain * y + self.output_offset).to(x.dtype)

    def _integrate(self, emf: Tensor, fs: float) -> Tensor:
        p = {k: v.exp() for k, v in self.log_values.items()}
        n_sub = max(1, math.ceil(1.0 / (fs * 1e-6)))  # at least one step per microsecond
        dt = 1.0 / (fs * n_sub)
        i = emf.new_zeros(emf.shape[0])
        v = emf.new_zeros(emf.shape[0])
        out = []
        for k in range(emf.shape[1]):
            for _ in range(n_sub):
                i = i + dt / p["l"] * (emf[:, k] - p["r"] * i - v)
                v_f = torch.where(v >= 0, p["v_f_pos"], p["v_f_neg"])
                z = (v.abs() - v_f) / p["width"]
                i_d = torch.sign(v) * p["width"] / p["r_d"] * nn.functional.softplus(z)
                g = torch.sigmoid(z) / p["r_d"]
                v = v + dt / p["c"] * (i - i_d) / (1 + dt / p["c"] * g)
            out.append(v)
        return torch.stack(out, dim=1)


def _scheme(constants: dict[str, float], fs: float) -> tuple[int, float, float, float]:
    n_sub = max(1, math.ceil(1.0 / (fs * 1e-6)))
    dt = 1.0 / (fs * n_sub)
    return n_sub, dt / constants["l"], dt / constants["c"], 1.0 - dt / constants["l"] * constants["r"]


def _run(emf: np.ndarray, p: dict[str, float], fs: float, saved: np.ndarray | None = None) -> np.ndarray:
    """``_integrate`` in numpy for fixed constants; records per step (D, g, dg/dv, i - i_d) into ``saved``."""
    n_sub, k_l, k_c, decay = _scheme(p, fs)
    i, v = np.zeros(emf.shape[0]), np.zeros(emf.shape[0])
    out = np.empty_like(emf)
    for k in range(emf.shape[1]):
        for j in range(n_sub):
            i = decay * i + k_l * (emf[:, k] - v)
            sign = np.sign(v)
            z = (np.abs(v) - np.where(v >= 0, p["v_f_pos"], p["v_f_neg"])) / p["width"]
            sig = 0.5 * (1.0 + np.tanh(0.5 * z))
            i_d = sign * p["width"] / p["r_d"] * np.logaddexp(0.0, z)
            d = 1.0 + k_c * sig / p["r_d"]
            if saved is not None:
                saved[k * n_sub + j] = (d, sig / p["r_d"], sig * (1 - sig) * sign / (p["width"] * p["r_d"]), i - i_d)
            v = v + k_c * (i - i_d) / d
        out[:, k] = v
    return out


class _FrozenCircuit(torch.autograd.Function):
    """Output voltage [B, T] of the circuit with fixed constants; backward = adjoint of the discrete scheme."""

    @staticmethod
    def forward(ctx, emf: Tensor, constants: dict[str, float], fs: float) -> Tensor:
        ctx.constants, ctx.fs = constants, fs
        ctx.save_for_backward(emf)
        return torch.from_numpy(_run(emf.detach().numpy(), constants, fs))

    @staticmethod
    def backward(ctx, grad_v: Tensor):
        (emf,) = ctx.saved_tensors
        p, fs = ctx.constants, ctx.fs
        e = emf.detach().numpy()
        n_sub, k_l, k_c, decay = _scheme(p, fs)
        saved = np.empty((e.shape[1] * n_sub, 4, e.shape[0]))
        _run(e, p, fs, saved)
        gv = grad_v.detach().double().numpy()
        grad_e = np.zeros_like(e)
        adj_i, adj_v = np.zeros(e.shape[0]), np.zeros(e.shape[0])
        for k in reversed(range(e.shape[1])):
            adj_v = adj_v + gv[:, k]
            for j in reversed(range(n_sub)):
                d, g, dg, r = saved[k * n_sub + j]
                adj_i_new = adj_i + adj_v * k_c / d
                grad_e[:, k] += adj_i_new * k_l
                adj_v = adj_v * (1.0 - k_c * g / d - k_c * k_c * r * dg / (d * d)) - adj_i_new * k_l
                adj_i = decay * adj_i_new
        return torch.from_numpy(grad_e), None, None
