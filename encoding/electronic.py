"""The nonlinear circuit's encoding: how x and θ become an AWG waveform and a scope trace becomes outputs.

Encoding of one sample (all in "units" in [-1, 1]; ``drive_volts_per_unit`` turns units into volts at the
circuit input, ``output_volts_per_unit`` turns measured volts back into units)::

    values   x_1 θ_1 x_2 θ_2 ... x_n θ_n        (inputs and parameters interleaved in time)
    samples  each value held ``samples_per_value`` AWG samples, then ``guard_samples`` of 0 V
    output   the circuit voltage over the 2n value slots, averaged in n equal bins -> y_1 ... y_n

How a batch is played and recorded: ``drivers.setups.electronic``.
"""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor

from common.models import StrictModel
from encoding.awg_scope import interleave


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


def drive_units(x: Tensor, theta: Tensor, enc: ElectronicEncoding) -> Tensor:
    """x [B, n] and theta [n] or [B, n] (units) -> drive waveform [B, 2 n spv] (units), x and θ interleaved."""
    return interleave(x, theta, enc.samples_per_value)
