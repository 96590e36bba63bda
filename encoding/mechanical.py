"""The plate's encoding: how x and θ become the AWG waveform that drives the speaker, and how the microphone trace
becomes outputs.

Encoding of one sample (all in "units"; ``drive_volts_per_unit`` turns units into volts at the amplifier input,
``output_volts_per_unit`` turns microphone volts back into units)::

    combine: interleave   values x_1 θ_1 x_2 θ_2 ... x_n θ_n, each held ``samples_per_value`` AWG samples
    combine: add          values (x_1 + θ_1)/2 ... (x_n + θ_n)/2: the input and the parameter waveform played
                          together (the raw-audio task: x is the sound, θ a waveform of the same length)
    then ``guard_samples`` of 0 V (the plate rings down)
    output   the microphone trace over the value slots, in ``output_bins`` equal bins (default n), each reduced to
             its mean (``bin_statistic: mean``) or its root mean square (``rms``, a sound level)

How a batch is played and recorded, and the speaker's safety rules: ``drivers.setups.mechanical``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor

from common.models import StrictModel
from encoding.awg_scope import interleave


class MechanicalEncoding(StrictModel):
    """Time-domain encoding of inputs, parameters and outputs (see module docstring)."""

    sample_rate_hz: float = Field(20e3, gt=0, le=1e6)
    samples_per_value: PositiveInt = 1
    combine: Literal["interleave", "add"] = "interleave"
    guard_samples: int = Field(600, ge=0)
    lead_samples: int = Field(64, ge=8, description="0 V samples before the first item of a batch")
    drive_volts_per_unit: PositiveFloat = 0.5
    output_volts_per_unit: PositiveFloat = 0.1
    output_bins: PositiveInt | None = Field(None, description="outputs per item; default: n (one per slot)")
    bin_statistic: Literal["mean", "rms"] = "mean"

    def drive_samples(self, n_inputs: int) -> int:
        """AWG samples of one item's values (guard excluded)."""
        return (2 if self.combine == "interleave" else 1) * n_inputs * self.samples_per_value

    def samples_per_item(self, n_inputs: int) -> int:
        """AWG samples one batch item occupies, guard included."""
        return self.drive_samples(n_inputs) + self.guard_samples

    def n_outputs(self, n_inputs: int) -> int:
        return self.output_bins or n_inputs


def drive_units(x: Tensor, theta: Tensor, enc: MechanicalEncoding) -> Tensor:
    """x [B, n] and θ [n] or [B, n] (units, each in [-1, 1]) -> drive [B, enc.drive_samples(n)] (units in [-1, 1])."""
    if enc.combine == "interleave":
        return interleave(x, theta, enc.samples_per_value)
    return (0.5 * (x + theta)).repeat_interleave(enc.samples_per_value, dim=1)  # θ [n] broadcasts over the batch
