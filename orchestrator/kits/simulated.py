"""The built-in setups' simulated benches (``simulators.benches``), started for ``--simulate``."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from orchestrator.config import ExperimentConfig


def serve_builtin_bench(cfg: ExperimentConfig, faults: dict) -> AbstractContextManager[Any]:
    """Serve the simulated bench named like the experiment's setup, on free loopback ports (serial instruments on
    pseudo-terminals paced at their configured baud rate in realtime mode), injecting ``faults`` per role."""
    from simulators.benches import start_bench

    baud_rates = {role: section.baud_rate for role, section in cfg.instruments if hasattr(section, "baud_rate")}
    return start_bench(cfg.setup, seed=cfg.simulate.seed, realtime=cfg.simulate.realtime, baud_rates=baud_rates,
                       faults=faults)
