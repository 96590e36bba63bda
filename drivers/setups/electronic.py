"""The nonlinear-circuit setup: an AWG drives an RLC circuit with a diode pair, an oscilloscope records it.

The encoding (x and θ interleaved in time slots, the circuit voltage binned into outputs) is ``encoding.electronic``.

A batch becomes ONE arbitrary waveform (samples back to back, each followed by its guard interval), played once
by a bus-triggered burst and recorded by one single-shot scope acquisition; the batch is split only when the AWG
memory or the scope record cannot hold it (``drivers.setups.awg_scope``, shared with the mechanical setup). The
AWG output is switched off while a new waveform is uploaded and on again before the trigger.
"""

from __future__ import annotations

from torch import Tensor

from common.models import StrictModel
from drivers.setups.awg_scope import AWGConfig, AwgScopeSetup, ScopeConfig
from encoding.awg_scope import bin_outputs
from encoding.electronic import ElectronicEncoding, drive_units


class ElectronicInstruments(StrictModel):
    awg: AWGConfig
    scope: ScopeConfig


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
