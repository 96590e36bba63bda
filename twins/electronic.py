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

import torch
from torch import Tensor, nn

from drivers.setups.electronic import ElectronicEncoding, bin_outputs, drive_units
from twins import register_twin

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
        v = self._integrate(emf, enc.sample_rate_hz)
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
