"""``pnn check``: connect, identify, and check an experiment's settings against the instruments' limits without
changing any output."""

from __future__ import annotations

import logging
import math
from contextlib import ExitStack

from drivers.errors import InstrumentError
from drivers.scpi import SCPIInstrument
from drivers.setups.electronic import emf_per_unit
from drivers.transport import open_link
from orchestrator.config import ExperimentConfig
from orchestrator.lab import serial_settings, simulated_instruments, start_simulated_bench

log = logging.getLogger(__name__)

AWG_MAX_SAMPLE_RATE = 250e6


def settings_problems(cfg: ExperimentConfig, n: int | None = None) -> list[tuple[str, str, str]]:
    """Offline checks of the experiment's settings: (item, value, 'ok' or problem) rows."""
    rows: list[tuple[str, str, str]] = []

    def row(item: str, value: str, problem: str | None) -> None:
        rows.append((item, value, problem or "ok"))

    if cfg.setup == "optical":
        _optical_problems(cfg, n, row)
        return rows
    enc, awg, scope = cfg.encoding, cfg.instruments.awg, cfg.instruments.scope

    row("drive amplitude", f"{enc.drive_volts_per_unit} V per unit (limit {awg.max_abs_volts} V)",
        None if enc.drive_volts_per_unit <= awg.max_abs_volts else "exceeds awg.max_abs_volts")
    row("sample rate", f"{enc.sample_rate_hz:g} Sa/s",
        None if enc.sample_rate_hz <= AWG_MAX_SAMPLE_RATE else f"above the 33500B maximum {AWG_MAX_SAMPLE_RATE:g}")
    if n is not None:
        per_item = enc.samples_per_item(n)
        room = min(awg.memory_points, scope.max_points) - 2 * enc.lead_samples
        row("samples per item", f"{per_item} ({room // max(per_item, 1)} items per upload)",
            None if per_item <= room else "one item does not fit in the AWG memory / scope record")
    full_scale = 4 * scope.volts_per_div
    if cfg.setup == "electronic":
        emf_peak = emf_per_unit(awg, enc)
        row("scope range", f"+-{full_scale:g} V on CHAN{scope.channel} (drive EMF peak {emf_peak:g} V)",
            None if full_scale >= 0.7 * emf_peak else "the circuit output may clip at the screen edge; raise volts_per_div")
    else:
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
    return rows


def _optical_problems(cfg: ExperimentConfig, n: int | None, row) -> None:
    enc, slm, cam = cfg.encoding, cfg.instruments.slm, cfg.instruments.camera
    first, end = enc.active_pixels
    row("active SLM pixels", f"{first} .. {end - 1} ({end - first} pixels)",
        None if n is None or end - first >= 2 * n else f"cannot hold {2 * n} spectral bins (x and θ)")
    nominal_top = 2 * math.pi * slm.gray_max / 255  # the SLM's own table is checked when it is connected
    row("phase range", f"0 .. {enc.phase_span_rad:.3f} rad, gray {slm.gray_min} .. {slm.gray_max}",
        None if enc.phase_span_rad <= nominal_top + 1e-9 else "needs gray levels above gray_max (nominal table)")
    row("camera", f"exposure {cam.exposure_s:g} s, gain {cam.gain}, {cam.dark_frames} frames per dark frame", None)
    row("serial lines", f"SLM {slm.baud_rate} baud ({slm.flow_control}), camera {cam.baud_rate} baud "
        f"({cam.flow_control})", None)
    if n is not None:
        n_out = enc.n_outputs(n)
        per_bin = enc.output_span_nm / enc.spectrometer.nm_per_column / n_out
        row("output bins", f"{n_out} over {enc.output_span_nm:g} nm ({per_bin:.1f} camera columns each)",
            None if per_bin >= 2 else "fewer than 2 camera columns per bin: the line spread mixes neighbours")


def check_experiment(cfg: ExperimentConfig, simulate: bool = False) -> tuple[list[tuple[str, str, str]], bool]:
    """Connect to each instrument, ask *IDN? and read its error queue; add the offline settings checks."""
    rows: list[tuple[str, str, str]] = [("experiment file", cfg.experiment, "ok")]
    with ExitStack() as stack:
        if simulate:
            bench = stack.enter_context(start_simulated_bench(cfg))
            cfg = simulated_instruments(cfg, bench.resources)
        for role in type(cfg.instruments).model_fields:
            inst = getattr(cfg.instruments, role)
            try:
                link = open_link(inst.resource, name=role, visa_library=inst.visa_library, timeout_s=inst.timeout_s,
                                 **serial_settings(inst))
                stack.callback(link.close)
                dev = SCPIInstrument(link, name=role)
                ident = dev.idn()
                errors = dev.errors()
                rows.append((f"{role} identity", f"{ident.manufacturer} {ident.model} ({inst.resource})", "ok"))
                rows.append((f"{role} error queue", "empty" if not errors else str(errors),
                             "ok" if not errors else "errors pending"))
            except InstrumentError as err:
                rows.append((f"{role} connection", inst.resource, str(err)))
        width = cfg.network.width
        rows += settings_problems(cfg, width)
    return rows, all(status == "ok" for _, _, status in rows)
