"""The registry of setups: one ``SetupKit`` per setup name, and everything pnn-lab knows about that setup is in it.

The orchestrator never names a setup: it looks up the kit of the experiment file's ``setup`` and asks it. A kit
holds the setup's experiment-file model (its ``instruments`` and ``encoding`` sections), how to open its
``PhysicalSetup`` on the instruments (or on its simulated bench), its physics twin, its perfect twin (simulated
benches only), the offline checks ``pnn check`` prints, and the files its calibration adds.

Where kits come from, in this order:

- the built-in setups (``electronic``, ``mechanical``, ``optical``: the kits in the modules of this package,
  imported on first use);
- a kit registered by ``register_setup(MyKit())``, e.g. in a file given to ``pnn --setup-file my_setup.py``
  (``load_setup_file``);
- the entry point group ``pnn_lab.setups`` of any installed package: ``name = "module:KitClass"`` (or a kit object),
  loaded when ``setup_kit(name)`` meets a name not yet registered.

See docs/adding-a-setup.md for a walk through a setup of one's own.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from contextlib import AbstractContextManager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, ClassVar

from torch import nn

from drivers.setups.base import PhysicalSetup
from orchestrator.config import ExperimentConfig
from orchestrator.connections import Connections
from orchestrator.plots import OutputAxis

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pnn_lab.setups"

Row = Callable[[str, str, "str | None"], None]
"""``row(item, value, problem)``: one line of ``pnn check``'s table (problem None: ok)."""


class KitError(ValueError):
    """A request the setup cannot serve (no simulated bench, no physics or perfect twin, no real hardware): the
    operator's mistake, reported by the CLI in one line (exit code 2)."""


class SetupKit:
    """What pnn-lab needs to know about one setup. Subclass it, set ``name`` and ``experiment``, implement ``open``;
    override the rest where the setup has it.

    The bench a kit's ``start_bench`` returns is whatever its ``open`` understands; the orchestrator itself uses only
    ``bench.resources`` (role -> resource string of each simulated instrument, replacing the experiment file's),
    ``bench.instruments`` (role -> simulated front panel, for the report of what they show at the end),
    ``bench.physics.busy_s`` (s spent computing physics) and ``bench.set_faults(plans)``.
    """

    name: ClassVar[str]
    """The experiment file's ``setup`` value."""
    experiment: ClassVar[type[ExperimentConfig]]
    """The experiment-file model: ``orchestrator.config.ExperimentConfig`` with ``setup: Literal[name]`` and this
    setup's ``instruments`` and ``encoding`` sections."""

    # -- required ------------------------------------------------------------------------------------------------
    def open(self, cfg: ExperimentConfig, n: int, connections: Connections, bench: Any | None) -> PhysicalSetup:
        """Build the setup of device width ``n`` on its instruments: open each link with ``connections.link(role)``
        and register what must happen on the way out with ``connections.on_exit`` (outputs off, SLM blank) before
        anything can switch an output on. ``bench`` is the running simulated bench, or None for real instruments
        (whose resources ``cfg`` then names)."""
        raise NotImplementedError

    # -- optional ------------------------------------------------------------------------------------------------
    def start_bench(self, cfg: ExperimentConfig, faults: dict) -> AbstractContextManager[Any]:
        """Start the setup's simulated bench (``--simulate``) on free loopback ports; ``faults`` holds a
        ``simulators.scpi.faults.FaultPlan`` per instrument role. Returns a context manager that yields the
        running bench."""
        raise KitError(f"the {self.name} setup has no simulated bench; leave out --simulate")

    def physics_twin(self, cfg: ExperimentConfig, setup: PhysicalSetup, n: int, n_outputs: int) -> nn.Module:
        """A fresh, untrained physics twin of width ``n`` with ``n_outputs`` outputs for the open ``setup`` (it may
        use what the setup's calibration measured)."""
        raise KitError(f"the {self.name} setup has no physics twin; use twin.kind neural")

    def perfect_twin(self, cfg: ExperimentConfig, bench: Any, setup: PhysicalSetup) -> nn.Module:
        """The simulated bench's own noiseless physics as a twin (benchmarks only)."""
        raise KitError(f"the {self.name} setup has no perfect twin")

    def check_settings(self, cfg: ExperimentConfig, n: int | None, row: Row) -> None:
        """The offline checks of ``pnn check``: call ``row(item, value, problem or None)`` for each. ``n`` is the
        device width if known."""

    def save_calibration(self, setup: PhysicalSetup, artifacts: Path) -> None:
        """Write the calibration's own files (a measured response, a calibration plot) to the artifacts folder."""

    def plot_fitted(self, setup: PhysicalSetup, artifacts: Path) -> None:
        """Plots of the calibration with the fitted twins (after the twin fits)."""

    def output_axis(self, cfg: ExperimentConfig, setup: PhysicalSetup) -> OutputAxis:
        """What the setup's outputs mean, for the run folder's plots: where each output bin lies (a time, a
        wavelength), the outputs' physical unit and the instrument's full scale. Default: bin indices, output
        units."""
        return OutputAxis.bins(setup.n_outputs)


_KITS: dict[str, SetupKit] = {}
_BUILT_IN = {"electronic": "orchestrator.kits.electronic:ElectronicKit",
             "mechanical": "orchestrator.kits.mechanical:MechanicalKit",
             "optical": "orchestrator.kits.optical:OpticalKit"}
"""The built-in kits, as ``module:class`` (the form of an entry point), imported on first use."""


def register_setup(kit: SetupKit | type[SetupKit]) -> SetupKit:
    """Register ``kit`` (a kit, or a kit class, instantiated without arguments) under its ``name``; returns it.
    Registering the same class again replaces the earlier one (a setup file loaded twice)."""
    kit = kit() if isinstance(kit, type) else kit
    name = getattr(kit, "name", None)
    if not isinstance(kit, SetupKit) or not isinstance(name, str) or not name:
        raise TypeError(f"{kit!r} is not a SetupKit with a name")
    known = _KITS.get(name)
    if known is not None and type(known).__qualname__ != type(kit).__qualname__:
        raise ValueError(f"setup {name!r} is already registered by {type(known).__module__}."
                         f"{type(known).__qualname__}")
    _KITS[name] = kit
    return kit


def setup_kit(name: str) -> SetupKit:
    """The kit registered for setup ``name``: a built-in one, one registered in this process, or an installed
    package's entry point. Raises KeyError listing the known setups."""
    if name not in _KITS and name in _BUILT_IN:
        module, _, cls = _BUILT_IN[name].partition(":")
        register_setup(getattr(importlib.import_module(module), cls))
    if name not in _KITS:
        _load_entry_point(name)
    if name not in _KITS:
        raise KeyError(f"unknown setup {name!r}; known: {', '.join(known_setups())} (a setup of your own: "
                       f"pnn --setup-file FILE, or an entry point in the group {ENTRY_POINT_GROUP!r})")
    return _KITS[name]


def known_setups() -> list[str]:
    """Names of every setup available: built in, registered, or offered by an installed package."""
    offered = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(set(_BUILT_IN) | set(_KITS) | offered)


def _load_entry_point(name: str) -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            target = ep.load()
            kit = register_setup(target)
            if kit.name != name:
                raise ValueError(f"entry point {ep.value!r} ({ENTRY_POINT_GROUP}) is named {name!r} but its kit is "
                                 f"named {kit.name!r}")
            log.info("setup %r from the entry point %s", name, ep.value)
            return


def load_setup_file(path: str | Path) -> None:
    """Import a Python file that registers a setup of its own (``register_setup(MyKit())``). The file is the lab's
    own code, run as any imported module is: give only files you trust."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"setup file {path} does not exist")
    module_name = f"pnn_setup_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # pydantic and pickle look models up by their module
    spec.loader.exec_module(module)
    log.info("setup file %s loaded", path)


__all__ = ["ENTRY_POINT_GROUP", "KitError", "SetupKit", "known_setups", "load_setup_file", "register_setup",
           "setup_kit"]
