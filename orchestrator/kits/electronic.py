"""The electronic setup's kit: an AWG drives a nonlinear RLC circuit, a scope records it.

    encoding        encoding/electronic.py          setup           drivers/setups/electronic.py
    physics twin    twins/electronic.py              simulated bench simulators/physics/electronic.py
    experiments     experiments/electronic_*.yaml
"""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from drivers.setups.base import PhysicalSetup
from drivers.setups.electronic import ElectronicInstruments, ElectronicSetup
from encoding.electronic import ElectronicEncoding
from orchestrator.config import ExperimentConfig
from orchestrator.kits import Row
from orchestrator.kits.awg_scope import AwgScopeExperiment, AwgScopeKit, awg_emf_per_unit
from orchestrator.perfect_twin import PerfectTwin
from twins.electronic import ElectronicPhysicsTwin


class ElectronicExperiment(AwgScopeExperiment):
    setup: Literal["electronic"]
    instruments: ElectronicInstruments
    encoding: ElectronicEncoding = ElectronicEncoding()


class ElectronicKit(AwgScopeKit):
    name = "electronic"
    experiment = ElectronicExperiment
    setup_class = ElectronicSetup

    def physics_twin(self, cfg: ExperimentConfig, setup: PhysicalSetup, n: int, n_outputs: int) -> nn.Module:
        return ElectronicPhysicsTwin(n, cfg.encoding.model_dump(), awg_emf_per_unit(cfg))

    def perfect_twin(self, cfg: ExperimentConfig, bench: Any, setup: ElectronicSetup) -> nn.Module:
        return PerfectTwin(bench.physics, cfg.encoding, setup.n_inputs, setup.n_outputs, awg_emf_per_unit(cfg),
                           setup.drive, setup.outputs)

    def check_device(self, cfg: ExperimentConfig, n: int | None, row: Row) -> None:
        scope = cfg.instruments.scope
        full_scale = 4 * scope.volts_per_div
        emf_peak = awg_emf_per_unit(cfg)
        # the circuit's output stays below the drive's EMF peak (the diode pair clamps the resonance); a screen that
        # shows less may clip, and the setup counts every record that does (scope_clipped_records)
        row("scope range", f"+-{full_scale:g} V on CHAN{scope.channel} (drive EMF peak {emf_peak:g} V)",
            None if full_scale >= emf_peak else f"the circuit output can reach the drive's EMF peak and clip at the "
                                                f"screen edge; raise volts_per_div to {emf_peak / 4:g} or more")
