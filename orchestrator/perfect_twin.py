"""The perfect twin (simulated benches only): the simulator's own noiseless physics, used as the twin.

It is the upper bound of what any twin can do for PAT, so benchmarks compare the real twins against it. This is
the one place besides ``--simulate`` where the orchestrator reaches into ``simulators``.
"""

from __future__ import annotations

from torch import Tensor, nn

from drivers.setups.electronic import ElectronicEncoding, bin_outputs, drive_units


class PerfectElectronicTwin(nn.Module):
    """x [B, n], θ [n] or [B, n] -> y [B, n] from the bench's true circuit (no noise, no drift, from rest)."""

    kind = "perfect"

    def __init__(self, circuit, encoding: ElectronicEncoding, n: int, emf_per_unit: float):
        super().__init__()
        self.circuit, self.encoding, self.emf_per_unit = circuit, encoding, emf_per_unit
        self.n_inputs = self.n_params = self.n_outputs = n

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        emf = drive_units(x.double(), theta.double(), self.encoding) * self.emf_per_unit
        v = self.circuit.noiseless(emf, self.encoding.sample_rate_hz)
        return (bin_outputs(v, self.n_outputs) / self.encoding.output_volts_per_unit).to(x.dtype)
