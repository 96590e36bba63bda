"""The links a setup is opened over, and what must happen to them on the way out.

A kit's ``open`` (``orchestrator.kits``) opens each instrument's link with ``Connections.link(role)`` and registers
the actions that make the setup safe with ``Connections.on_exit``; ``orchestrator.lab.open_setup`` runs those actions
and closes the links whatever happens.
"""

from __future__ import annotations

import logging
from typing import Callable

from drivers.transport import Link, open_link
from orchestrator.config import ExperimentConfig

log = logging.getLogger(__name__)


class Connections:
    """The links a setup is opened over (``link``), and the actions that make it safe on the way out (``on_exit``)."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.links: list[Link] = []
        self.exit_actions: list[tuple[str, Callable[[], object]]] = []

    def link(self, role: str) -> Link:
        """Open the link to the instrument of ``role`` as its section of the experiment file says (resource, VISA
        library, timeout, and the line settings of a serial instrument)."""
        section = getattr(self.cfg.instruments, role)
        link = open_link(section.resource, name=role, visa_library=section.visa_library, timeout_s=section.timeout_s,
                         **serial_settings(section))
        self.links.append(link)
        return link

    def on_exit(self, name: str, action: Callable[[], object], *, safety: bool = True) -> None:
        """Run ``action`` on the way out, whatever happened. A safety action (an output off) that fails, or returns
        False, is reported to the operator as an output that may still be on; a tidying one (``safety=False``:
        stopping a camera series) is only logged."""
        self.exit_actions.append((name, action if safety else _tidy(name, action)))


def serial_settings(section) -> dict:
    """The line settings of a serial instrument's config section (none for LAN instruments)."""
    return {k: getattr(section, k) for k in ("baud_rate", "flow_control") if hasattr(section, k)}


def _tidy(name: str, action: Callable[[], object]) -> Callable[[], None]:
    """A step on the way out that is tidying, not safety (stopping a camera series): its failure is logged, and not
    reported as an output that may still be on."""
    def run() -> None:
        try:
            action()
        except Exception as err:  # noqa: BLE001 - a camera left armed harms nothing
            log.warning("%s, on the way out: %s", name, err)
    return run
