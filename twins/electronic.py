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

import numba
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
        else:  # frozen (as in PAT): the same scheme compiled, gradient in the EMF by its adjoint (_FrozenCircuit)
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


def _frozen(emf: np.ndarray, p: dict[str, float], fs: float, grad_v: np.ndarray | None = None) -> np.ndarray:
    """``_integrate`` for fixed constants, compiled: the output voltage [B, T] for the EMF [B, T] (V), or, given
    dL/dv ``grad_v`` [B, T], dL/d emf [B, T] by the adjoint of the discrete scheme."""
    n_sub, k_l, k_c, decay = _scheme(p, fs)
    emf = np.ascontiguousarray(emf, dtype=np.float64)
    out = np.zeros_like(emf)
    backward = grad_v is not None
    grad = np.ascontiguousarray(grad_v, dtype=np.float64) if backward else out
    _circuit_rows(emf, grad, out, backward, n_sub, decay, k_l, k_c, p["width"], p["r_d"], p["v_f_pos"], p["v_f_neg"])
    return out


@numba.njit(cache=True, nogil=True)
def _circuit_rows(emf, grad_v, out, backward, n_sub, decay, k_l, k_c, width, r_d, v_f_pos, v_f_neg
                  ):  # pragma: no cover - compiled
    """Each row from rest, per step (``_integrate``'s scheme)::

        i <- decay i + k_l (e - v);   z = (|v| - V_f±) / w;   D = 1 + k_c sigmoid(z) / R_d
        v <- v + k_c (i - sign(v) w / R_d softplus(z)) / D

    Forward: the voltage after each sample into ``out``. Backward: per step D, g = sigmoid(z) / R_d, dg/dv and
    r = i - i_d are kept and the adjoint runs back through the steps, adding dL/de into ``out``::

        a_i' = a_i + a_v k_c / D;   dL/de += a_i' k_l;   a_v <- a_v (1 - k_c g / D - k_c^2 r dg / D^2) - a_i' k_l;
        a_i <- decay a_i'
    """
    rows, t_len = emf.shape
    saved = np.empty((t_len * n_sub if backward else 0, 4))
    for row in range(rows):
        i, v = 0.0, 0.0
        for k in range(t_len):
            for j in range(n_sub):
                i = decay * i + k_l * (emf[row, k] - v)
                sign = 1.0 if v > 0.0 else (-1.0 if v < 0.0 else 0.0)
                z = (abs(v) - (v_f_pos if v >= 0.0 else v_f_neg)) / width
                ez = math.exp(-abs(z))
                sig = (1.0 if z > 0.0 else ez) / (1.0 + ez)
                r = i - sign * width / r_d * (max(z, 0.0) + math.log1p(ez))
                d = 1.0 + k_c * sig / r_d
                if backward:
                    s = saved[k * n_sub + j]
                    s[0], s[1], s[2], s[3] = d, sig / r_d, sig * (1.0 - sig) * sign / (width * r_d), r
                v = v + k_c * r / d
            if not backward:
                out[row, k] = v
        if backward:
            adj_i, adj_v = 0.0, 0.0
            for k in range(t_len - 1, -1, -1):
                adj_v += grad_v[row, k]
                for j in range(n_sub - 1, -1, -1):
                    d, g, dg, r = saved[k * n_sub + j]
                    adj_i_new = adj_i + adj_v * k_c / d
                    out[row, k] += adj_i_new * k_l
                    adj_v = adj_v * (1.0 - k_c * g / d - k_c * k_c * r * dg / (d * d)) - adj_i_new * k_l
                    adj_i = decay * adj_i_new


class _FrozenCircuit(torch.autograd.Function):
    """Output voltage [B, T] of the circuit with fixed constants; backward = adjoint of the discrete scheme."""

    @staticmethod
    def forward(ctx, emf: Tensor, constants: dict[str, float], fs: float) -> Tensor:
        ctx.constants, ctx.fs = constants, fs
        ctx.save_for_backward(emf)
        return torch.from_numpy(_frozen(emf.detach().numpy(), constants, fs))

    @staticmethod
    def backward(ctx, grad_v: Tensor):
        (emf,) = ctx.saved_tensors
        grad = _frozen(emf.detach().numpy(), ctx.constants, ctx.fs, grad_v.detach().double().numpy())
        return torch.from_numpy(grad), None, None
