"""The perfect twin (simulated benches only): the simulator's own noiseless physics, used as the twin.

It is the upper bound of what any twin can do for PAT, so benchmarks compare the real twins against it. The kits
(``orchestrator.kits``) build these from the running simulated bench's physics: the one place besides ``--simulate``
where the orchestrator reaches into ``simulators``.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from encoding import electronic
from encoding.awg_scope import bin_outputs, delayed
from encoding.optical import gray_levels, output_units, pixel_values

log = logging.getLogger(__name__)


class PerfectTwin(nn.Module):
    """x [B, n], θ [n] or [B, n] -> y [B, n_outputs] from the bench's true physics (no noise, no drift, from rest).

    ``drive(x, θ)`` gives the drive units of a setup, ``volts_per_unit`` turns them into the AWG's EMF (V),
    ``physics.noiseless(emf [B, T], fs)`` is the bench's noiseless, differentiable response (V) and ``outputs`` bins it.
    """

    kind = "perfect"

    def __init__(self, physics, encoding, n: int, n_outputs: int, volts_per_unit: float,
                 drive: Callable[[Tensor, Tensor], Tensor], outputs: Callable[[Tensor], Tensor], delay_samples: float = 0.0):
        super().__init__()
        self.physics, self.encoding, self.volts_per_unit = physics, encoding, volts_per_unit
        self.delay_samples = delay_samples  # the true delay the setup's cut leaves, AWG samples (>= 0)
        self.n_inputs = self.n_params = n
        self.n_outputs = n_outputs
        self._drive, self._outputs = drive, outputs

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        emf = self._drive(x.double(), theta.double()) * self.volts_per_unit
        v = self.response(emf)
        if self.delay_samples:
            v = delayed(v, self.delay_samples)
        return self._outputs(v).to(x.dtype)

    def response(self, emf: Tensor) -> Tensor:
        """The noiseless device output [B, T] for the AWG EMF [B, T] (V), at the AWG sample instants."""
        return self.physics.noiseless(emf, self.encoding.sample_rate_hz)


class PerfectMechanicalTwin(PerfectTwin):
    """The plate's perfect twin: the AWG's EMF reaches the amplifier through its input divider, and the setup reads the
    microphone as the average over each AWG sample period of the scope's linear interpolation of the bench's trace
    (which the bench computes at ``oversampling`` points per AWG sample)."""

    def response(self, emf: Tensor) -> Tensor:
        plate, fs = self.physics, self.encoding.sample_rate_hz
        m = plate.oversampling(fs)
        fine = plate.noiseless(emf * plate.values.input_divider, fs, internal_rate=True)  # [B, T m]
        w = torch.as_tensor(box_average_weights(m), dtype=fine.dtype)
        reach = (len(w) - 1) // 2
        return torch.nn.functional.conv1d(fine[:, None], w[None, None], padding=reach, stride=m)[:, 0, : emf.shape[1]]


def box_average_weights(m: int) -> np.ndarray:
    """Weights w_j, j = -r..r, such that sum_j w_j y[k m + j] is the mean over [k m - m/2, k m + m/2] of the linear
    interpolation of samples y (m samples per averaging period): the integral of the triangle kernel, exactly."""
    def cdf(u: np.ndarray) -> np.ndarray:  # integral of max(0, 1 - |t|) from -inf to u
        u = np.clip(u, -1.0, 1.0)
        return np.where(u < 0, (u + 1) ** 2 / 2, 1 - (1 - u) ** 2 / 2)

    r = m // 2 + 1
    j = np.arange(-r, r + 1)
    return (cdf(m / 2 - j) - cdf(-m / 2 - j)) / m


class PerfectOpticalTwin(nn.Module):
    """The optical bench's perfect twin: the setup's gray levels (rounded as the SLM gets them; the gradient passes
    straight through the rounding) into the bench's noiseless SHG counts (true lookup table, crosstalk, spectrum,
    phase matching, spectrometer; mean laser power, no noise, no ADC), read out with the setup's calibrated bins."""

    kind = "perfect"

    def __init__(self, shaper, setup):
        super().__init__()
        self.shaper, self.enc, self.cal = shaper, setup.enc, setup.calibration
        self.n_inputs = self.n_params = setup.n_inputs
        self.n_outputs = setup.n_outputs
        self.register_buffer("lut", torch.tensor(self.cal.lut, dtype=torch.float64))
        self.register_buffer("weights", setup.output_weights.double().clone())

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        gray = gray_levels(pixel_values(x.double(), theta.double(), self.enc), self.lut, self.enc.phase_span_rad)
        gray = gray + (torch.round(gray) - gray).detach()
        cal = self.cal
        counts = self.shaper.expected_counts(gray, exposure_s=cal.exposure_s,
                                             electrons_per_count=cal.electrons_per_count, columns=tuple(cal.roi))
        return output_units(counts @ self.weights.T, self.enc, cal.reference_mean).to(x.dtype)


def PerfectElectronicTwin(circuit, encoding: electronic.ElectronicEncoding, n: int, volts_per_unit: float) -> PerfectTwin:  # noqa: N802
    """The electronic bench's perfect twin from its circuit (for tests and scripts that hold a circuit)."""
    return PerfectTwin(circuit, encoding, n, n, volts_per_unit, lambda x, t: electronic.drive_units(x, t, encoding),
                       lambda v: bin_outputs(v, n) / encoding.output_volts_per_unit)
