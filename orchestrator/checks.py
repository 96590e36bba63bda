"""``pnn check``: connect, identify, and check an experiment's settings against the instruments' limits without
changing any output."""

from __future__ import annotations

import logging
from contextlib import ExitStack

from drivers.errors import InstrumentError
from drivers.scpi import SCPIInstrument
from drivers.transport import open_link
from orchestrator.config import ExperimentConfig
from orchestrator.datasets import DatasetError
from orchestrator.experiment import load_task
from orchestrator.kits import setup_kit
from orchestrator.connections import serial_settings
from orchestrator.lab import device_width, instrument_roles, simulated_instruments, start_simulated_bench

log = logging.getLogger(__name__)


def settings_problems(cfg: ExperimentConfig, n: int | None = None) -> list[tuple[str, str, str]]:
    """Offline checks of the experiment's settings (the setup's kit says which): (item, value, 'ok' or problem)
    rows. ``n`` is the device width if known."""
    rows: list[tuple[str, str, str]] = []

    def row(item: str, value: str, problem: str | None) -> None:
        rows.append((item, value, problem or "ok"))

    setup_kit(cfg.setup).check_settings(cfg, n, row)
    return rows


def check_experiment(cfg: ExperimentConfig, simulate: bool = False, data_dir: str | None = None
                     ) -> tuple[list[tuple[str, str, str]], int]:
    """Check the data set is there, connect to each instrument, ask *IDN? and read its error queue; add the offline
    settings checks. Returns the (item, value, status) rows and the exit code: 0 all ok, 3 an instrument cannot be
    reached or reports errors, else 2 (the file, its settings or its data set need fixing)."""
    rows: list[tuple[str, str, str]] = [("experiment file", cfg.experiment, "ok")]
    instruments_ok = True
    width = cfg.network.width
    try:
        data = load_task(cfg, data_dir)
    except DatasetError as err:
        rows.append(("data set", cfg.task.dataset, f"cannot be loaded: {err}"))
    else:
        size = f"{len(data.y_train)} train / {len(data.y_test)} test, {data.x_train.shape[1]} features"
        rows.append(("data set", f"{data.name}: {size}", "ok"))
        width = device_width(cfg, data.x_train.shape[1])
    with ExitStack() as stack:
        if simulate:
            bench = stack.enter_context(start_simulated_bench(cfg))
            cfg = simulated_instruments(cfg, bench.resources)
        for role in instrument_roles(cfg):
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
                instruments_ok = instruments_ok and not errors
            except InstrumentError as err:
                rows.append((f"{role} connection", inst.resource, str(err)))
                instruments_ok = False
        rows += settings_problems(cfg, width)
    if not instruments_ok:
        return rows, 3
    return rows, 0 if all(status == "ok" for _, _, status in rows) else 2
