"""What the kits of the AWG-and-scope setups (electronic, mechanical) share: the experiment-file checks that tie the
encoding to the instruments, opening a Keysight 33500B and an InfiniiVision scope, and the checks of ``pnn check``."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, ClassVar

import numpy as np
from pydantic import model_validator

from common.models import FieldError
from drivers.awg import Keysight33500B
from drivers.scope import KeysightInfiniiVision
from drivers.setups.awg_scope import SCREEN_DIVISIONS, AwgScopeSetup
from encoding.awg_scope import emf_per_unit
from orchestrator.config import ExperimentConfig
from orchestrator.kits import Row, SetupKit
from orchestrator.kits.simulated import serve_builtin_bench
from orchestrator.connections import Connections
from orchestrator.plots import OutputAxis

AWG_MAX_SAMPLE_RATE = 250e6  # Sa/s, the fastest 33500B


def awg_emf_per_unit(cfg: ExperimentConfig) -> float:
    """The AWG's EMF (V) per drive unit for the experiment's encoding and AWG load."""
    return emf_per_unit(cfg.encoding.drive_volts_per_unit, cfg.instruments.awg.load_ohm)


class AwgScopeExperiment(ExperimentConfig):
    """Checks shared by the setups an AWG drives and a scope records (electronic, mechanical)."""

    @model_validator(mode="after")
    def _fits_the_instruments(self) -> "AwgScopeExperiment":
        awg, enc, width = self.instruments.awg, self.encoding, self.network.width
        if enc.drive_volts_per_unit > awg.max_abs_volts:
            raise FieldError("encoding.drive_volts_per_unit", f"{enc.drive_volts_per_unit:g} V is above the "
                             f"safety limit instruments.awg.max_abs_volts {awg.max_abs_volts:g} V")
        room = AwgScopeSetup.item_room(self.instruments, enc)
        if width is not None and enc.samples_per_item(width) > room:
            raise FieldError("network.width", f"one item of width {width} needs {enc.samples_per_item(width)} AWG "
                             f"samples; instruments.awg.memory_points and instruments.scope.max_points leave room "
                             f"for {room}")
        return self


class AwgScopeKit(SetupKit):
    """A setup that an AWG drives and a scope records; a subclass names its ``setup_class`` and adds its own checks
    (``check_device``) and twins."""

    setup_class: ClassVar[type[AwgScopeSetup]]

    def open(self, cfg: ExperimentConfig, n: int, connections: Connections, bench: Any | None) -> AwgScopeSetup:
        inst = cfg.instruments
        awg = Keysight33500B(connections.link("awg"), name="awg", channel=inst.awg.channel,
                             load_ohm=inst.awg.load_ohm, max_abs_volts=inst.awg.max_abs_volts,
                             max_abs_offset_volts=inst.awg.max_abs_offset_volts, memory_points=inst.awg.memory_points)
        connections.on_exit("awg", awg.output_off)
        scope = KeysightInfiniiVision(connections.link("scope"), name="scope", max_points=inst.scope.max_points)
        return self.setup_class(awg, scope, inst, cfg.encoding, n=n, param_bounds=cfg.network.theta_bounds)

    def start_bench(self, cfg: ExperimentConfig, faults: dict) -> AbstractContextManager[Any]:
        return serve_builtin_bench(cfg, faults)

    def output_axis(self, cfg: ExperimentConfig, setup: AwgScopeSetup) -> OutputAxis:
        """Output bin k: the scope channel's mean (or rms) voltage over the k-th equal part of the item's value slots;
        its position is that part's centre time from the item's start; the full scale is the screen's edge."""
        enc, scope, n_out = cfg.encoding, cfg.instruments.scope, setup.n_outputs
        window_s = (enc.samples_per_item(setup.n_inputs) - enc.guard_samples) / enc.sample_rate_hz
        unit, factor = ("ms", 1e3) if window_s >= 2e-3 else ("µs", 1e6)
        statistic = getattr(enc, "bin_statistic", "mean")
        edge = SCREEN_DIVISIONS / 2 * scope.volts_per_div
        return OutputAxis(positions=(np.arange(n_out) + 0.5) * window_s / n_out * factor,
                          label=f"time in the item ({unit}), centres of the output bins",
                          value_label=f"scope CH{scope.channel} (V, bin {statistic})",
                          scale=enc.output_volts_per_unit,
                          full_scale=(edge,) if statistic == "rms" else (-edge, edge))

    def check_settings(self, cfg: ExperimentConfig, n: int | None, row: Row) -> None:
        enc, awg = cfg.encoding, cfg.instruments.awg
        row("drive amplitude", f"{enc.drive_volts_per_unit} V per unit (limit {awg.max_abs_volts} V)",
            None if enc.drive_volts_per_unit <= awg.max_abs_volts else "exceeds awg.max_abs_volts")
        row("sample rate", f"{enc.sample_rate_hz:g} Sa/s", None if enc.sample_rate_hz <= AWG_MAX_SAMPLE_RATE
            else f"above the 33500B maximum {AWG_MAX_SAMPLE_RATE:g}")
        if n is not None:
            per_item = enc.samples_per_item(n)
            room = AwgScopeSetup.item_room(cfg.instruments, enc)
            row("samples per item", f"{per_item} ({room // max(per_item, 1)} items per upload)",
                None if per_item <= room else "one item does not fit in the AWG memory / scope record")
        self.check_device(cfg, n, row)

    def check_device(self, cfg: ExperimentConfig, n: int | None, row: Row) -> None:
        """The setup's own checks, after the shared ones."""
