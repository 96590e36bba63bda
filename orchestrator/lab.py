"""Opening a setup: the simulated bench (``--simulate``) or the real instruments named in the experiment file.

``open_setup`` is the one place that connects drivers to instruments. It asks the setup's kit
(``orchestrator.kits``) to build the setup over ``Connections``, the links it opens and the actions it registers for
the way out; whatever happens inside the ``with`` block, those actions run (the AWG output off, the SLM blank, the
camera stopped) and every link is closed. When it opens a setup it runs the setup's instrument calibration
(``calibrate_instruments``: the AWG-to-scope delay; for the plate also its frequency response and the acoustic
delay; for the optical bench the dark frame, the spectrometer offset and the lookup-table check).
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from drivers.errors import InstrumentError, LimitViolation, NotMadeSafe
from drivers.setups.base import PhysicalSetup
from drivers.transport import Link
from orchestrator.config import ExperimentConfig
from orchestrator.connections import Connections
from orchestrator.kits import setup_kit

log = logging.getLogger(__name__)


def device_width(cfg: ExperimentConfig, n_features: int) -> int:
    """The device width n: configured, or the number of input features."""
    return cfg.network.width or n_features


def device_outputs(cfg: ExperimentConfig, width: int) -> int:
    """Outputs of one device layer of the given width (the encoding decides)."""
    return cfg.encoding.n_outputs(width)


def start_simulated_bench(cfg: ExperimentConfig):
    """Start the experiment's simulated bench in this process on free loopback ports (a context manager that yields
    the running bench)."""
    return setup_kit(cfg.setup).start_bench(cfg, fault_plans(cfg))


def instrument_roles(cfg: ExperimentConfig) -> list[str]:
    """The roles of the experiment's instruments (``awg``, ``scope``, ...), in the order of its instruments section."""
    return list(type(cfg.instruments).model_fields)


def fault_plans(cfg: ExperimentConfig) -> dict:
    """The ``simulate.faults`` section as a FaultPlan per instrument role (``all``: every instrument; a role's own
    entry wins). Each instrument draws its faults from its own seed (the entry's seed + the role's position)."""
    faults = cfg.simulate.faults  # its roles are checked when the experiment file is read
    plans = {}
    for i, role in enumerate(instrument_roles(cfg)):
        plan = faults.get(role, faults.get("all"))
        if plan is not None:
            plans[role] = plan.model_copy(update={"seed": plan.seed + i})
    return plans


def simulated_instruments(cfg: ExperimentConfig, resources: dict[str, str]) -> ExperimentConfig:
    """A copy of ``cfg`` whose instrument resources point at a simulated bench."""
    inst = cfg.instruments.model_copy(update={
        role: getattr(cfg.instruments, role).model_copy(update={"resource": res, "visa_library": "@py"})
        for role, res in resources.items()})
    return cfg.model_copy(update={"instruments": inst})


@contextmanager
def open_setup(cfg: ExperimentConfig, n: int, *, bench: Any | None = None, calibrate: bool = True
               ) -> Iterator[PhysicalSetup]:
    """Connect to the instruments (or the running simulated ``bench``) and yield the configured setup of width n."""
    if bench is not None:
        cfg = simulated_instruments(cfg, bench.resources)
    connections = Connections(cfg)
    leaving: BaseException | None = None  # the error or interrupt on its way out, if any
    try:
        setup = setup_kit(cfg.setup).open(cfg, n, connections, bench)
        _set_up(setup, calibrate, cfg.training.max_retries)
        yield setup
    except BaseException as err:
        leaving = err
        if isinstance(err, (InstrumentError, KeyboardInterrupt)):
            # failed or interrupted mid-conversation: a reply may be on its way or a binary upload half sent, and an
            # "output off" sent now would be read as part of it; fresh connections start the conversation over
            with _signals_held():
                for link in connections.links:
                    try:
                        link.reconnect()
                    except Exception as problem:  # noqa: BLE001 - try to make the others safe anyway
                        log.warning("reconnecting %s before making it safe: %s", link.name, problem)
        raise
    finally:
        unsafe = _make_safe(connections.exit_actions, connections.links)
        if leaving is not None:  # what the operator is told: were any instruments reached (and so made safe)?
            leaving.instruments_reached = [link.name for link in connections.links]  # type: ignore[attr-defined]
        if unsafe:
            # the operator must hear it: on the error on its way out (the CLI reads ``unsafe``), or as an error
            if leaving is not None:
                leaving.unsafe = unsafe  # type: ignore[attr-defined]
            else:
                raise NotMadeSafe("lab", None, "could not make the instruments safe: " + "; ".join(unsafe)
                                  + "; switch their outputs off by hand")


def _make_safe(actions: list[tuple[str, Callable[[], object]]], links: list[Link]) -> list[str]:
    """Run the make-safe actions (outputs off, SLM blank), then close the links, with Ctrl-C and SIGTERM held: a
    signal now would leave an output on. Returns the failures of the make-safe actions."""
    with _signals_held():
        # also when the setup refused its settings after an instrument was reached
        unsafe = [problem for name, action in actions if (problem := _make_one_safe(name, action))]
        for link in reversed(links):
            try:
                link.close()
            except Exception as err:  # noqa: BLE001 - closing must not hide the original error
                log.warning("closing %s: %s", link.name, err)
    return unsafe


def _make_one_safe(name: str, action: Callable[[], object]) -> str | None:
    """Run one make-safe action; what went wrong, or None. Off the main thread, where signals cannot be held, a
    KeyboardInterrupt can land in it (a sweep trial's close() interrupting its calibration just as it ended): the
    stop is under way already and the interrupt comes once, so the action is tried again."""
    for attempt in (1, 2):
        try:
            # the AWG's output_off reports (and has logged) a failure by returning False instead of raising
            return f"{name}: the output could not be switched off" if action() is False else None
        except KeyboardInterrupt:
            log.warning("%s: interrupted while making it safe%s", name, "; trying again" if attempt == 1 else "")
        except Exception as err:  # noqa: BLE001 - one instrument failing must not stop the others going safe
            log.error("making the instruments safe: %s", err)
            return str(err)
    return f"{name}: interrupted while making it safe"


def _set_up(setup: PhysicalSetup, calibrate: bool, max_retries: int) -> None:
    """Configure the instruments and calibrate them; an instrument failure is retried ``max_retries`` times, each
    after ``setup.recover()`` (reconnect, configure, read back). A refused setting (LimitViolation) is not retried."""
    for attempt in range(max_retries + 1):
        try:
            if attempt == 0:
                setup.configure()
            else:
                setup.recover()
            if calibrate:
                setup.calibrate_instruments()
            return
        except LimitViolation:
            raise
        except InstrumentError as err:
            if attempt == max_retries:
                raise
            log.warning("setting up the instruments failed (%s); retry %d of %d", err, attempt + 1, max_retries)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM inside the block (main thread only); they are delivered when it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
