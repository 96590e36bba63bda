"""The optical setup's kit: a femtosecond pulse shaped by a phase SLM, frequency-doubled, read by a camera behind a
spectrometer; both instruments are serial.

    encoding        encoding/optical.py              setup           drivers/setups/optical.py
    physics twin    twins/optical.py                  simulated bench simulators/physics/optical.py
    experiments     experiments/optical_*.yaml

Its calibration adds ``optical_calibration.png`` (the transform-limited spectrum with the output bins, the dark
frame, the lookup-table check).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import model_validator
from torch import nn

from common.models import FieldError
from drivers.camera import SpectroscopyCamera
from drivers.setups.optical import OpticalInstruments, OpticalSetup
from drivers.slm import PhaseSLM
from encoding.optical import OpticalEncoding, output_bin_edges
from orchestrator import plots
from orchestrator.config import ExperimentConfig
from orchestrator.kits import Row, SetupKit
from orchestrator.kits.simulated import serve_builtin_bench
from orchestrator.connections import Connections
from orchestrator.perfect_twin import PerfectOpticalTwin
from orchestrator.plots import OutputAxis
from twins.optical import OpticalPhysicsTwin


class OpticalExperiment(ExperimentConfig):
    setup: Literal["optical"]
    instruments: OpticalInstruments
    encoding: OpticalEncoding = OpticalEncoding()

    @model_validator(mode="after")
    def _fits_the_slm(self) -> "OpticalExperiment":
        first, end = self.encoding.active_pixels
        width = self.network.width
        if width is not None and 2 * width > end - first:
            raise FieldError("network.width", f"width {width} needs {2 * width} spectral bins (x and θ); "
                             f"encoding.active_pixels [{first}, {end}] holds {end - first} pixels")
        return self


class OpticalKit(SetupKit):
    name = "optical"
    experiment = OpticalExperiment

    def open(self, cfg: ExperimentConfig, n: int, connections: Connections, bench: Any | None) -> OpticalSetup:
        inst = cfg.instruments
        slm = PhaseSLM(connections.link("slm"), name="slm", gray_min=inst.slm.gray_min, gray_max=inst.slm.gray_max,
                       max_sequence=inst.slm.max_sequence, baud_rate=inst.slm.baud_rate)
        connections.on_exit("slm", slm.blank)
        camera = SpectroscopyCamera(connections.link("camera"), name="camera",
                                    max_exposure_s=inst.camera.max_exposure_s, baud_rate=inst.camera.baud_rate)
        connections.on_exit("camera", camera.abort, safety=False)  # a camera left armed harms nothing
        return OpticalSetup(slm, camera, inst, cfg.encoding, n, param_bounds=cfg.network.theta_bounds)

    def start_bench(self, cfg: ExperimentConfig, faults: dict) -> AbstractContextManager[Any]:
        return serve_builtin_bench(cfg, faults)

    def physics_twin(self, cfg: ExperimentConfig, setup: OpticalSetup, n: int, n_outputs: int) -> nn.Module:
        if setup.calibration is None:
            raise ValueError("the optical physics twin needs the calibrated setup (lookup table, spectrometer offset)")
        return OpticalPhysicsTwin(n, cfg.encoding.model_dump(), setup.calibration.model_dump(mode="json"),
                                  n_outputs=n_outputs)

    def perfect_twin(self, cfg: ExperimentConfig, bench: Any, setup: OpticalSetup) -> nn.Module:
        return PerfectOpticalTwin(bench.physics, setup)

    def output_axis(self, cfg: ExperimentConfig, setup: OpticalSetup) -> OutputAxis:
        """Output bin k: the SH spectrum summed over the k-th equal wavelength part of ``output_span_nm`` around the
        SH centre (half the laser's centre wavelength), in output units."""
        enc, n_out = cfg.encoding, setup.n_outputs
        centre_nm = enc.shaper.laser_center_nm / 2
        return OutputAxis(positions=centre_nm + ((np.arange(n_out) + 0.5) / n_out - 0.5) * enc.output_span_nm,
                          label="second-harmonic wavelength (nm), centres of the output bins",
                          value_label=f"SH signal ({enc.output_gain:g} x bin / reference - {enc.output_offset:g})")

    def check_settings(self, cfg: ExperimentConfig, n: int | None, row: Row) -> None:
        enc, slm, cam = cfg.encoding, cfg.instruments.slm, cfg.instruments.camera
        first, end = enc.active_pixels
        row("active SLM pixels", f"{first} .. {end - 1} ({end - first} pixels)",
            None if n is None or end - first >= 2 * n else f"cannot hold {2 * n} spectral bins (x and θ)")
        nominal_top = 2 * math.pi * slm.gray_max / 255  # the SLM's own table is checked when it is connected
        row("phase range", f"0 .. {enc.phase_span_rad:.3f} rad, gray {slm.gray_min} .. {slm.gray_max}",
            None if enc.phase_span_rad <= nominal_top + 1e-9 else "needs gray levels above gray_max (nominal table)")
        row("camera", f"exposure {cam.exposure_s:g} s, gain {cam.gain}, {cam.dark_frames} frames per dark frame",
            None)
        row("serial lines", f"SLM {slm.baud_rate} baud ({slm.flow_control}), camera {cam.baud_rate} baud "
            f"({cam.flow_control})", None)
        if n is not None:
            n_out = enc.n_outputs(n)
            per_bin = enc.output_span_nm / enc.spectrometer.nm_per_column / n_out
            row("output bins", f"{n_out} over {enc.output_span_nm:g} nm ({per_bin:.1f} camera columns each)",
                None if per_bin >= 2 else "fewer than 2 camera columns per bin: the line spread mixes neighbours")

    def save_calibration(self, setup: OpticalSetup, artifacts: Path) -> None:
        if setup.reference_spectrum is not None:
            plot_optical_calibration(artifacts / "optical_calibration.png", setup)


def plot_optical_calibration(path: Path, setup: OpticalSetup) -> Path:
    """The transform-limited spectrum with the output bins, the dark frame, and the lookup-table check."""
    cal, check = setup.calibration, setup.lut_check
    gray, power = setup.lut_sweep if setup.lut_sweep is not None else (np.zeros(0), np.zeros(0))
    return plots.plot_optical_calibration(
        setup.reference_spectrum, setup.dark_full, output_bin_edges(setup.enc, setup.n_outputs, cal.column_offset),
        gray, power, check.get("pi_gray_measured"), check.get("pi_gray_table", float("nan")), path,
        f"optical calibration: spectrometer offset {cal.column_offset:+.2f} columns; {check.get('message', '')}")

