"""Opening a setup: the simulated bench (``--simulate``) or the real instruments named in the experiment file.

``open_setup`` is the one place that connects drivers to instruments; whatever happens inside the ``with`` block,
the AWG output is switched off and every link closed on the way out. When it opens a setup it runs the setup's
instrument calibration (``calibrate_instruments``: the AWG-to-scope delay; for the plate also its frequency
response and the acoustic delay).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from drivers.awg import Keysight33500B
from drivers.scope import KeysightInfiniiVision
from drivers.setups.awg_scope import AwgScopeSetup
from drivers.setups.electronic import ElectronicSetup
from drivers.setups.mechanical import MechanicalSetup
from drivers.transport import open_link
from orchestrator.config import ExperimentConfig

log = logging.getLogger(__name__)

SETUPS: dict[str, type[AwgScopeSetup]] = {"electronic": ElectronicSetup, "mechanical": MechanicalSetup}


def device_width(cfg: ExperimentConfig, n_features: int) -> int:
    """The device width n: configured, or the number of input features."""
    return cfg.network.width or n_features


def device_outputs(cfg: ExperimentConfig, width: int) -> int:
    """Outputs of one device layer of the given width (the encoding decides)."""
    return cfg.encoding.n_outputs(width)


def start_simulated_bench(cfg: ExperimentConfig):
    """Start the experiment's simulated bench in this process on free loopback ports."""
    from simulators.benches import start_bench

    return start_bench(cfg.setup, seed=cfg.simulate.seed, realtime=cfg.simulate.realtime)


def simulated_instruments(cfg: ExperimentConfig, resources: dict[str, str]) -> ExperimentConfig:
    """A copy of ``cfg`` whose instrument resources point at a simulated bench."""
    inst = cfg.instruments.model_copy(update={
        role: getattr(cfg.instruments, role).model_copy(update={"resource": res, "visa_library": "@py"})
        for role, res in resources.items()})
    return cfg.model_copy(update={"instruments": inst})


@contextmanager
def open_setup(cfg: ExperimentConfig, n: int, *, bench=None, calibrate: bool = True) -> Iterator[AwgScopeSetup]:
    """Connect to the instruments (or the running simulated ``bench``) and yield a configured setup."""
    if bench is not None:
        cfg = simulated_instruments(cfg, bench.resources)
    inst = cfg.instruments
    links = []
    awg = None
    try:
        awg_link = open_link(inst.awg.resource, name="awg", visa_library=inst.awg.visa_library,
                             timeout_s=inst.awg.timeout_s)
        links.append(awg_link)
        scope_link = open_link(inst.scope.resource, name="scope", visa_library=inst.scope.visa_library,
                               timeout_s=inst.scope.timeout_s)
        links.append(scope_link)
        awg = Keysight33500B(awg_link, name="awg", channel=inst.awg.channel, load_ohm=inst.awg.load_ohm,
                             max_abs_volts=inst.awg.max_abs_volts, max_abs_offset_volts=inst.awg.max_abs_offset_volts,
                             memory_points=inst.awg.memory_points)
        scope = KeysightInfiniiVision(scope_link, name="scope", max_points=inst.scope.max_points)
        setup = SETUPS[cfg.setup](awg, scope, inst, cfg.encoding, n=n, param_bounds=cfg.network.theta_bounds)
        setup.configure()
        if calibrate:
            setup.calibrate_instruments()
        yield setup
    finally:
        if awg is not None:  # also when the setup refused its settings after the AWG was reached
            awg.output_off()
        for link in reversed(links):
            try:
                link.close()
            except Exception as err:  # noqa: BLE001 - closing must not hide the original error
                log.warning("closing %s: %s", link.name, err)
