"""Opening a setup: the simulated bench (``--simulate``) or the real instruments named in the experiment file.

``open_setup`` is the one place that connects drivers to instruments; whatever happens inside the ``with`` block,
the AWG output is switched off (the SLM blanked, the camera stopped) and every link closed on the way out. When it
opens a setup it runs the setup's instrument calibration (``calibrate_instruments``: the AWG-to-scope delay; for the
plate also its frequency response and the acoustic delay; for the optical bench the dark frame, the spectrometer
offset and the lookup-table check).
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from drivers.awg import Keysight33500B
from drivers.camera import SpectroscopyCamera
from drivers.errors import InstrumentError, LimitViolation, NotMadeSafe
from drivers.scope import KeysightInfiniiVision
from drivers.setups.awg_scope import AwgScopeSetup
from drivers.setups.electronic import ElectronicSetup
from drivers.setups.mechanical import MechanicalSetup
from drivers.setups.optical import OpticalSetup
from drivers.slm import PhaseSLM
from drivers.transport import Link, open_link
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

    baud_rates = {role: section.baud_rate for role, section in cfg.instruments if hasattr(section, "baud_rate")}
    return start_bench(cfg.setup, seed=cfg.simulate.seed, realtime=cfg.simulate.realtime, baud_rates=baud_rates,
                       faults=fault_plans(cfg))


def fault_plans(cfg: ExperimentConfig) -> dict:
    """The ``simulate.faults`` section as a FaultPlan per instrument role (``all``: every instrument; a role's own
    entry wins). Each instrument draws its faults from its own seed (the entry's seed + the role's position)."""
    from simulators.server import FaultPlan

    roles = [role for role, _ in cfg.instruments]
    faults = cfg.simulate.faults
    unknown = set(faults) - set(roles) - {"all"}
    if unknown:
        raise ValueError(f"simulate.faults: a {cfg.setup} experiment has no instrument {sorted(unknown)}; its "
                         f"roles are {', '.join(roles)} (or all)")
    plans = {}
    for i, role in enumerate(roles):
        settings = faults.get(role) or faults.get("all")
        if settings is not None:
            plans[role] = FaultPlan(seed=settings.seed + i, latency_s=settings.latency_s, stuck_s=settings.stuck_s,
                                    unplug_s=settings.unplug_s, max_faults=settings.max_faults,
                                    **settings.probabilities())
    return plans


def simulated_instruments(cfg: ExperimentConfig, resources: dict[str, str]) -> ExperimentConfig:
    """A copy of ``cfg`` whose instrument resources point at a simulated bench."""
    inst = cfg.instruments.model_copy(update={
        role: getattr(cfg.instruments, role).model_copy(update={"resource": res, "visa_library": "@py"})
        for role, res in resources.items()})
    return cfg.model_copy(update={"instruments": inst})


@contextmanager
def open_setup(cfg: ExperimentConfig, n: int, *, bench=None, calibrate: bool = True) -> Iterator:
    """Connect to the instruments (or the running simulated ``bench``) and yield a configured setup."""
    if bench is not None:
        cfg = simulated_instruments(cfg, bench.resources)
    links: list[Link] = []
    make_safe: list[tuple[str, Callable[[], object]]] = []  # (instrument, action) run on the way out, whatever happened
    leaving: BaseException | None = None  # the error or interrupt on its way out, if any
    try:
        build = _open_optical if cfg.setup == "optical" else _open_awg_scope
        setup = build(cfg, n, links, make_safe)
        _set_up(setup, calibrate, cfg.training.max_retries)
        yield setup
    except BaseException as err:
        leaving = err
        if isinstance(err, (InstrumentError, KeyboardInterrupt)):
            # failed or interrupted mid-conversation: a reply may be on its way or a binary upload half sent, and an
            # "output off" sent now would be read as part of it; fresh connections start the conversation over
            with _signals_held():
                for link in links:
                    try:
                        link.reconnect()
                    except Exception as problem:  # noqa: BLE001 - try to make the others safe anyway
                        log.warning("reconnecting %s before making it safe: %s", link.name, problem)
        raise
    finally:
        unsafe = _make_safe(make_safe, links)
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
    unsafe = []
    with _signals_held():
        for name, action in actions:  # also when the setup refused its settings after an instrument was reached
            try:
                if action() is False:  # the AWG's output_off reports (and has logged) a failure instead of raising
                    unsafe.append(f"{name}: the output could not be switched off")
            except Exception as err:  # noqa: BLE001 - one instrument failing must not stop the others going safe
                log.error("making the instruments safe: %s", err)
                unsafe.append(str(err))
        for link in reversed(links):
            try:
                link.close()
            except Exception as err:  # noqa: BLE001 - closing must not hide the original error
                log.warning("closing %s: %s", link.name, err)
    return unsafe


def _set_up(setup, calibrate: bool, max_retries: int) -> None:
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


def serial_settings(section) -> dict:
    """The line settings of a serial instrument's config section (none for LAN instruments)."""
    return {k: getattr(section, k) for k in ("baud_rate", "flow_control") if hasattr(section, k)}


def _link(section, name: str, links: list[Link]) -> Link:
    """Open one instrument's link from its config section (serial settings where it has them)."""
    link = open_link(section.resource, name=name, visa_library=section.visa_library, timeout_s=section.timeout_s,
                     **serial_settings(section))
    links.append(link)
    return link


def _tidy(name: str, action: Callable[[], object]) -> Callable[[], None]:
    """A step on the way out that is tidying, not safety (stopping a camera series): its failure is logged, and not
    reported as an output that may still be on."""
    def run() -> None:
        try:
            action()
        except Exception as err:  # noqa: BLE001 - a camera left armed harms nothing
            log.warning("%s, on the way out: %s", name, err)
    return run


def _open_awg_scope(cfg: ExperimentConfig, n: int, links: list[Link], make_safe: list) -> AwgScopeSetup:
    inst = cfg.instruments
    awg = Keysight33500B(_link(inst.awg, "awg", links), name="awg", channel=inst.awg.channel,
                         load_ohm=inst.awg.load_ohm, max_abs_volts=inst.awg.max_abs_volts,
                         max_abs_offset_volts=inst.awg.max_abs_offset_volts, memory_points=inst.awg.memory_points)
    make_safe.append(("awg", awg.output_off))
    scope = KeysightInfiniiVision(_link(inst.scope, "scope", links), name="scope", max_points=inst.scope.max_points)
    return SETUPS[cfg.setup](awg, scope, inst, cfg.encoding, n=n, param_bounds=cfg.network.theta_bounds)


def _open_optical(cfg: ExperimentConfig, n: int, links: list[Link], make_safe: list) -> OpticalSetup:
    inst = cfg.instruments
    slm = PhaseSLM(_link(inst.slm, "slm", links), name="slm", gray_min=inst.slm.gray_min, gray_max=inst.slm.gray_max,
                   max_sequence=inst.slm.max_sequence, baud_rate=inst.slm.baud_rate)
    make_safe.append(("slm", slm.blank))
    camera = SpectroscopyCamera(_link(inst.camera, "camera", links), name="camera",
                                max_exposure_s=inst.camera.max_exposure_s, baud_rate=inst.camera.baud_rate)
    make_safe.append(("camera", _tidy("camera", camera.abort)))
    return OpticalSetup(slm, camera, inst, cfg.encoding, n, param_bounds=cfg.network.theta_bounds)
