"""One session on a bench: start the simulated bench (``--simulate``) or reach the real instruments, open the setup on
them, get its twin; on the way out the setup is made safe, the links closed, and the simulated bench reports what its
instruments show and stops. ``pnn run``, ``pnn bench``, ``pnn calibrate`` and the scripts in ``experiments/`` all
start here::

    with open_session(cfg, n, simulate=True) as session:
        twin = session.twin()                       # the experiment's twin.kind: fitted (calibrating first) or perfect
        train_on_setup(cfg, data, session.setup, twin, out, resume=False, bench=session.bench)
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from torch import nn

from drivers.setups.base import PhysicalSetup
from orchestrator.calibrate import calibrate, encoding_key, reuse_calibration
from orchestrator.config import ExperimentConfig
from orchestrator.kits import KitError, setup_kit
from orchestrator.lab import open_setup, start_simulated_bench
from twins.artifact import load_twin, twin_path

log = logging.getLogger(__name__)


@dataclass
class Session:
    """An open setup (``setup``) on the simulated ``bench`` (None on real instruments); ``artifacts`` is where its
    calibration and twins are kept."""

    cfg: ExperimentConfig
    setup: PhysicalSetup
    bench: Any | None
    artifacts: Path

    def twin(self, kind: str | None = None, cfg: ExperimentConfig | None = None,
             progress: Callable | None = None) -> nn.Module:
        """The twin of ``kind`` (default the experiment's ``twin.kind``) for this setup: see ``get_twin``."""
        cfg = cfg or self.cfg
        return get_twin(cfg, kind or cfg.twin.kind, self.setup, self.bench, self.artifacts, progress)


@contextmanager
def open_session(cfg: ExperimentConfig, n: int, *, simulate: bool, calibrate: bool = True) -> Iterator[Session]:
    """Start the experiment's simulated bench if ``simulate``, open the setup of width ``n`` on it (or on the real
    instruments) and yield the session; everything is made safe and closed on the way out, whatever happened."""
    with ExitStack() as stack:
        bench = stack.enter_context(start_simulated_bench(cfg)) if simulate else None
        if bench is not None:
            stack.callback(report_simulated_outputs, bench)  # runs after the setup below has closed
        setup = stack.enter_context(open_setup(cfg, n, bench=bench, calibrate=calibrate))
        yield Session(cfg, setup, bench, cfg.artifacts_path(simulate))


def require_bench_for(kind: str, *, simulated: bool) -> None:
    """Refuse the perfect twin off a simulated bench (KitError): it is the simulator's own physics. The CLI asks this
    before any instrument is touched."""
    if kind == "perfect" and not simulated:
        raise KitError("the perfect twin exists only on a simulated bench (use --simulate)")


def get_twin(cfg: ExperimentConfig, kind: str, setup: PhysicalSetup, bench: Any | None, artifacts: Path,
             progress: Callable | None = None) -> nn.Module:
    """The twin of ``kind``: the perfect twin from the simulated bench, or a fitted artifact (calibrating first
    when it does not exist yet or was made for another encoding)."""
    if kind == "perfect":
        require_bench_for(kind, simulated=bench is not None)
        return setup_kit(cfg.setup).perfect_twin(cfg, bench, setup)
    path = twin_path(artifacts, kind)
    model = None
    if path.exists():
        model, meta = load_twin(path)
        if (meta.get("encoding") != encoding_key(cfg.encoding) or meta.get("n") != setup.n_inputs
                or not reuse_calibration(setup, meta.get("instruments"), str(path))):
            log.warning("%s was fitted for other settings; calibrating again", path)
            model = None
        else:
            log.info("using %s twin %s (held-out NMSE %.4f)", kind, path, meta.get("val_nmse", float("nan")))
    else:
        log.info("no %s twin at %s yet; calibrating first", kind, path)
    if model is None:
        calibrate(cfg, setup, artifacts, [kind], progress=progress)
        model = load_twin(path)[0]
    return model.requires_grad_(False)  # PAT differentiates the twin in its inputs only, never trains it


def simulated_outputs(bench: Any) -> dict[str, tuple[bool, str]]:
    """What the simulated front panels show: role -> (safe, description); every AWG output off, the SLM blank."""
    states = {}
    for role, inst in bench.instruments.items():
        if hasattr(inst, "output_enabled"):  # an AWG
            on = [ch for ch, enabled in inst.output_enabled.items() if enabled]
            states[role] = (not on, f"output(s) {on} ON" if on else "outputs off")
        elif hasattr(inst, "is_blank"):  # an SLM
            states[role] = (inst.is_blank, "blank" if inst.is_blank else "showing a pattern")
    return states


def report_simulated_outputs(bench: Any, wait_s: float = 2.0) -> None:
    """Log what the simulated instruments show once the setup is closed. They work through the commands they were
    sent in their own threads (after an abort a command may still be queued), so give them ``wait_s`` to go safe."""
    deadline = time.monotonic() + wait_s
    while not all(safe for safe, _ in simulated_outputs(bench).values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    for role, (safe, state) in simulated_outputs(bench).items():
        log.log(logging.INFO if safe else logging.WARNING, "simulated %s after the run: %s", role, state)
