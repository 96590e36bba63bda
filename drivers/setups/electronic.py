"""The nonlinear-circuit setup: an AWG drives an RLC circuit with a diode pair, an oscilloscope records it.

Encoding of one sample (all in "units" in [-1, 1]; ``drive_volts_per_unit`` turns units into volts at the
circuit input, ``output_volts_per_unit`` turns measured volts back into units)::

    values   x_1 θ_1 x_2 θ_2 ... x_n θ_n        (inputs and parameters interleaved in time)
    samples  each value held ``samples_per_value`` AWG samples, then ``guard_samples`` of 0 V
    output   the circuit voltage over the 2n value slots, averaged in n equal bins -> y_1 ... y_n

A batch becomes ONE arbitrary waveform (samples back to back, each followed by its guard interval), played once
by a bus-triggered burst and recorded by one single-shot scope acquisition; the batch is split only when the AWG
memory or the scope record cannot hold it (``drivers.setups.awg_scope``, shared with the mechanical setup). The
AWG output is switched off while a new waveform is uploaded and on again before the trigger.
"""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor

from common.models import StrictModel
from drivers.setups.awg_scope import AWGConfig, AwgScopeSetup, ScopeConfig, bin_outputs, interleave, sample_averages


class ElectronicInstruments(StrictModel):
    awg: AWGConfig
    scope: ScopeConfig


class ElectronicEncoding(StrictModel):
    """Time-domain encoding of inputs, parameters and outputs (see module docstring)."""

    sample_rate_hz: float = Field(1e6, gt=0, le=250e6)
    samples_per_value: PositiveInt = 2
    guard_samples: int = Field(128, ge=0)
    drive_volts_per_unit: PositiveFloat = 1.0
    output_volts_per_unit: PositiveFloat = 0.5
    lead_samples: int = Field(32, ge=8, description="0 V samples before the first sample of a batch")

    def samples_per_item(self, n_inputs: int) -> int:
        """AWG samples one batch item occupies, guard included."""
        return 2 * n_inputs * self.samples_per_value + self.guard_samples

    def n_outputs(self, n_inputs: int) -> int:
        """Outputs per item: one bin per slot."""
        return n_inputs


# ----------------------------------------------------------------------------------------------------------
# Pure encoding functions, shared by the setup and the twins


def drive_units(x: Tensor, theta: Tensor, enc: ElectronicEncoding) -> Tensor:
    """x [B, n] and theta [n] or [B, n] (units) -> drive waveform [B, 2 n spv] (units), x and θ interleaved."""
    return interleave(x, theta, enc.samples_per_value)


class ElectronicSetup(AwgScopeSetup):
    """PhysicalSystem for the nonlinear circuit: x [B, n] in [-1, 1], θ [n] in param_bounds -> y [B, n]."""

    name = "electronic"
    device = "circuit"

    def __init__(self, awg, scope, instruments: ElectronicInstruments, encoding: ElectronicEncoding,
                 n: int, param_bounds: tuple[float, float] = (-1.0, 1.0), delay_s: float = 0.0):
        super().__init__(awg, scope, instruments, encoding, n, encoding.n_outputs(n), param_bounds, delay_s)

    def configure_awg(self) -> None:
        awg, enc = self.awg, self.enc
        awg.output = False
        awg.load = self.cfg.awg.load_ohm
        awg.set_levels(amplitude_vpp=2.0 * enc.drive_volts_per_unit, offset_v=0.0)  # DAC +-1 -> +-drive_volts_per_unit
        awg.configure_burst(n_cycles=1, trigger_source="BUS")

    def drive(self, x: Tensor, theta: Tensor) -> Tensor:
        return drive_units(x, theta, self.enc)

    def outputs(self, items: Tensor) -> Tensor:
        return bin_outputs(items, self.n_outputs) / self.enc.output_volts_per_unit


__all__ = ["AWGConfig", "ScopeConfig", "ElectronicInstruments", "ElectronicEncoding", "ElectronicSetup",
           "drive_units", "bin_outputs", "sample_averages", "emf_per_unit"]


def emf_per_unit(awg: AWGConfig, enc, source_ohm: float = 50.0) -> float:
    """AWG EMF (V) per drive unit: the AWG sets ``drive_volts_per_unit`` into its configured load, so the EMF
    behind its 50 ohm source is larger by (R_load + 50) / R_load (twice at 50 ohm, equal for High-Z)."""
    if awg.load_ohm == "INF":
        return enc.drive_volts_per_unit
    return enc.drive_volts_per_unit * (awg.load_ohm + source_ohm) / awg.load_ohm
