"""The mechanical setup's kit: an AWG drives an amplifier and a speaker carrying a metal plate; a microphone on the
scope listens.

    encoding        encoding/mechanical.py           setup           drivers/setups/mechanical.py
    physics twin    twins/mechanical.py               simulated bench simulators/physics/mechanical.py
    experiments     experiments/mechanical_*.yaml

Its calibration adds the plate's measured frequency response (``frequency_response.csv``, and ``.png`` with the
fitted twins' responses on top).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import nn

from common.files import atomic_write_bytes
from drivers.setups.mechanical import FrequencyResponse, MechanicalInstruments, MechanicalSetup
from encoding.mechanical import MechanicalEncoding
from orchestrator import plots
from orchestrator.config import ExperimentConfig
from orchestrator.kits import Row
from orchestrator.kits.awg_scope import AwgScopeExperiment, AwgScopeKit, awg_emf_per_unit
from orchestrator.perfect_twin import PerfectMechanicalTwin
from twins.artifact import load_twin, twin_path
from twins.mechanical import MechanicalPhysicsTwin

log = logging.getLogger(__name__)

MODE_SEARCH_FROM_HZ = 100.0  # the physics twin's modes are searched in the measured response above this frequency


class MechanicalExperiment(AwgScopeExperiment):
    setup: Literal["mechanical"]
    instruments: MechanicalInstruments
    encoding: MechanicalEncoding = MechanicalEncoding()


class MechanicalKit(AwgScopeKit):
    name = "mechanical"
    experiment = MechanicalExperiment
    setup_class = MechanicalSetup

    def physics_twin(self, cfg: ExperimentConfig, setup: MechanicalSetup, n: int, n_outputs: int) -> nn.Module:
        """The modal twin, its modes initialised from the measured response when there is one."""
        pc = cfg.twin.physics
        shape = dict(nonlinear_modes=pc.nonlinear_modes, n_outputs=n_outputs)
        response = setup.frequency_response
        if response is None:
            return MechanicalPhysicsTwin(n, cfg.encoding.model_dump(), n_modes=pc.n_modes, **shape)
        band = response.f_hz >= MODE_SEARCH_FROM_HZ  # below, mains hum and the high-passes, not the plate
        return MechanicalPhysicsTwin.from_response(n, cfg.encoding.model_dump(), response.f_hz[band],
                                                   response.as_cut(setup.response_delay_s)[band], n_modes=pc.n_modes,
                                                   **shape)

    def perfect_twin(self, cfg: ExperimentConfig, bench: Any, setup: MechanicalSetup) -> nn.Module:
        """The plate's noiseless physics; it also knows the true acoustic delay, and delays its output by what the
        setup's (early) cut leaves of it."""
        plate, fs = bench.physics, cfg.encoding.sample_rate_hz
        left = (plate.trigger_delay_s + plate.acoustic_delay_s - setup.delay_s - setup.response_delay_s) * fs
        if left < -0.1:
            log.warning("the setup cuts items %.2f samples after the sound arrives; the perfect twin cannot look "
                        "ahead", -left)
        return PerfectMechanicalTwin(plate, cfg.encoding, setup.n_inputs, setup.n_outputs, awg_emf_per_unit(cfg),
                                     setup.drive, setup.outputs, delay_samples=max(0.0, left))

    def check_device(self, cfg: ExperimentConfig, n: int | None, row: Row) -> None:
        enc, awg, scope = cfg.encoding, cfg.instruments.awg, cfg.instruments.scope
        full_scale = 4 * scope.volts_per_div
        row("scope range", f"+-{full_scale:g} V on CHAN{scope.channel} (microphone)",
            None if full_scale >= 2 * enc.output_volts_per_unit else
            "below 2 output units: loud outputs will clip at the screen edge; raise volts_per_div")
        row("DC offset", "0 V (refused by the driver)", None)
        row("switch-on ramp", f"{awg.ramp_steps} steps over {awg.ramp_s:g} s", None)
        if n is not None:
            n_out = enc.n_outputs(n)
            row("output bins", f"{n_out} of {enc.drive_samples(n) // n_out} samples each",
                None if enc.drive_samples(n) % n_out == 0 else "the drive samples do not divide into equal bins; "
                "the remainder is dropped")

    def save_calibration(self, setup: MechanicalSetup, artifacts: Path) -> None:
        if setup.frequency_response is not None:
            save_frequency_response(artifacts / "frequency_response.csv", setup.frequency_response)

    def plot_fitted(self, setup: MechanicalSetup, artifacts: Path) -> None:
        if setup.frequency_response is not None:
            plot_frequency_response(artifacts, setup.frequency_response, setup.response_delay_s)


def save_frequency_response(path: Path, response: FrequencyResponse) -> None:
    """The measured frequency response as CSV: f_hz, magnitude (V/V), phase (rad), coherence."""
    rows = ["f_hz,magnitude,phase_rad,coherence"] + [
        f"{f:.3f},{abs(h):.6g},{np.angle(h):.6f},{c:.4f}"
        for f, h, c in zip(response.f_hz, response.response, response.coherence)]
    atomic_write_bytes(path, ("\n".join(rows) + "\n").encode())


def plot_frequency_response(artifacts: Path, response: FrequencyResponse, response_delay_s: float) -> Path:
    """The plate's measured response with the fitted twins' small-signal responses on top."""
    curves = {}
    for kind in ("physics", "hybrid"):
        path = twin_path(artifacts, kind)
        if path.exists():
            model = load_twin(path)[0]
            physics = getattr(model, "physics", model)
            if hasattr(physics, "frequency_response"):
                curves[f"{kind} twin"] = physics.frequency_response(response.f_hz)
    return plots.plot_frequency_response(
        response.f_hz, response.as_cut(response_delay_s), curves, artifacts / "frequency_response.png",
        f"plate response (items cut {response_delay_s * 1e3:.2f} ms after the trigger)")

