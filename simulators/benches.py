"""Simulated benches: the instruments of a setup wired to its physics and served on loopback TCP ports.

Electronic bench wiring::

    AWG CH1 output (50 ohm) --> circuit input      circuit output --> scope CHAN1
                                AWG CH1 terminal  --> scope CHAN2
    AWG sync (trigger out)  --> scope EXT TRIG     AWG CH2: not connected

Mechanical bench wiring (``simulators.physics.mechanical``)::

    AWG CH1 output (50 ohm) --> amplifier input (10 kohm) --> speaker + plate ~~ air ~~> microphone --> scope CHAN1
                                AWG CH1 terminal          --> scope CHAN2
    AWG sync (trigger out)  --> scope EXT TRIG     AWG CH2: not connected

Optical bench wiring (``simulators.physics.optical``), both instruments on serial ports (pseudo-terminals, or
``socket://`` URLs with ``serial="socket"``)::

    laser --> pulse shaper with the SLM --> BBO (SHG) --> spectrometer --> camera
    SLM trigger out --> camera external trigger

When the SLM plays a sequence with its trigger out on, the camera (armed for an external kinetic series) takes one
frame per pattern whose trigger it can accept: a trigger that arrives sooner than the camera's cycle time (exposure
plus read-out) after the previous accepted one is missed, as on the real camera.

``start_bench("electronic")`` returns a ``RunningBench`` whose ``resources`` point pyvisa at the instruments::

    with start_bench("electronic", seed=0) as bench:
        rm = pyvisa.ResourceManager("@py")
        awg = rm.open_resource(bench.resources["awg"], read_termination="\\n", write_termination="\\n")

A triggered burst is played to the physics padded with the AWG's idle level (its first point) so the response
covers the scope's whole window, pre-trigger part included, and at least the bench's ``settle_s`` before the trigger
(the mechanical bench's AC coupling and plate need 0.1 s to forget their start from rest). A continuous waveform is
repeated until the physics is in steady state (at least one period and ``settle_s`` before the trigger) and the scope
triggers at the start of a period. With ``realtime=True`` an acquisition completes only after the played waveform's
physical duration.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Callable, Protocol

import numpy as np

from simulators.instruments import SimInfiniiVision, SimKeysight33522B
from simulators.physics.electronic import ElectronicCircuit
from simulators.instruments.camera import SimSpectroscopyCamera
from simulators.instruments.slm import SimPhaseSLM
from simulators.physics.mechanical import SpeakerPlate
from simulators.physics.optical import SHGPulseShaper
from simulators.scpi import SCPIInstrument
from common.faults import FaultPlan
from simulators.scpi.pty import PtyServer
from simulators.scpi.tcp import SCPIServer

log = logging.getLogger(__name__)


class Physics(Protocol):
    """What a bench's physics offers the bench and its users (the orchestrator reads ``busy_s``)."""

    busy_s: float  # wall time spent computing physics, s
    bench_time_s: float

    def steps_per_sample(self, sample_rate_hz: float) -> int:
        """Internal time steps the physics takes per drive sample at this rate (its cost grows with their total)."""


class AwgScopeBench:
    """An AWG and a scope wired to a physics model; every state change and all physics run under ``lock``.

    Subclasses provide ``physics`` and ``respond(emf_v, fs) -> (traces {scope channel: volts}, trace rate)``: the
    traces the scope sees for an AWG EMF (V) held at ``fs`` that starts at the trigger, sample k at k / trace rate.
    """

    roles = ("awg", "scope")  # the instruments' roles, as in ``instruments``
    drive_channel = 1
    max_padding = 1 << 16  # idle samples simulated around a burst at most; beyond, the scope holds the edge value
    max_periodic = 1 << 22  # samples simulated for a continuous waveform at most
    settle_s = 0.0  # how long the physics needs to forget its start from rest, s
    # physics time steps simulated per acquisition at most (a few seconds of computing): an AWG told to play a
    # waveform so slow that simulating the scope's window would take longer (e.g. FREQ MIN, 1 uHz) is not simulated,
    # and the scope sees no trigger; otherwise one command could keep the bench lock, and every instrument, for hours
    max_physics_steps = 1 << 24

    def __init__(self, realtime: bool = False):
        self.lock = threading.RLock()
        self.realtime = realtime
        self.awg = SimKeysight33522B(lock=self.lock, listener=self)
        self.scope = SimInfiniiVision(lock=self.lock, listener=self)
        self._continuous: tuple[np.ndarray, float] | None = None  # EMF period (V) and sample rate (Sa/s)

    @property
    def physics(self) -> Physics:
        raise NotImplementedError

    def respond(self, emf_v: np.ndarray, sample_rate_hz: float) -> tuple[dict[int, np.ndarray], float]:
        raise NotImplementedError

    @property
    def instruments(self) -> dict[str, SCPIInstrument]:
        return {"awg": self.awg, "scope": self.scope}

    # -- AwgListener / ScopeListener --------------------------------------------------------------------------------

    def on_awg_play(self, channel: int, emf_v: np.ndarray, sample_rate_hz: float, continuous: bool) -> None:
        if channel != self.drive_channel:
            return
        with self.lock:
            self._continuous = (emf_v, sample_rate_hz) if continuous else None
            self._acquire(emf_v, sample_rate_hz, continuous)

    def on_awg_stop(self, channel: int) -> None:
        if channel == self.drive_channel:
            with self.lock:
                self._continuous = None

    def on_scope_armed(self) -> None:
        with self.lock:
            if self._continuous is not None:
                self._acquire(*self._continuous, continuous=True)

    # -- physics -----------------------------------------------------------------------------------------------------

    def _acquire(self, emf_v: np.ndarray, fs: float, continuous: bool) -> None:
        """Run the physics on what the AWG plays and hand the traces to the scope, if it is armed."""
        if not self.scope.wants_trigger():
            return
        t_start, t_end = self.scope.window_s()
        n = emf_v.shape[0]
        if continuous:
            period_s = n / fs
            lead_s = max(-t_start, self.settle_s)
            before = max(1, min(math.ceil(lead_s / period_s), self.max_periodic // (2 * n)))
            after = max(1, min(math.ceil(t_end / period_s), self.max_periodic // n - before))
            drive = np.tile(emf_v, before + after)
            pre = before * n
            duration_s = max(t_end, 0.0)
        else:
            pre = min(self.max_padding, max(0, math.ceil(-t_start * fs), math.ceil(self.settle_s * fs)))
            post = min(self.max_padding, max(1, math.ceil(t_end * fs) - n + 1))
            idle = emf_v[0]
            drive = np.concatenate((np.full(pre, idle), emf_v, np.full(post, idle)))
            duration_s = n / fs
        steps = drive.shape[0] * self.physics.steps_per_sample(fs)
        if steps > self.max_physics_steps:
            log.warning("not simulated: %d drive samples at %g Sa/s would take %d physics steps (at most %d); the "
                        "scope sees no trigger", drive.shape[0], fs, steps, self.max_physics_steps)
            return
        traces, rate = self.respond(drive, fs)
        self.scope.capture(traces, rate, start_s=-pre / fs, ready_in_s=duration_s if self.realtime else 0.0)


class ElectronicBench(AwgScopeBench):
    """AWG, circuit and scope of the electronic setup."""

    def __init__(self, seed: int = 0, realtime: bool = False):
        self.circuit = ElectronicCircuit(seed=seed)
        super().__init__(realtime)

    @property
    def physics(self) -> ElectronicCircuit:
        return self.circuit

    def respond(self, emf_v: np.ndarray, sample_rate_hz: float) -> tuple[dict[int, np.ndarray], float]:
        # only the traces the scope will read
        return self.circuit.respond(emf_v, sample_rate_hz, self.scope.channels_needed()), sample_rate_hz


class MechanicalBench(AwgScopeBench):
    """AWG, amplifier + speaker + plate + microphone, and scope of the mechanical setup. The traces reach the scope
    at the physics' internal rate (a multiple of the AWG rate, at least 20 kHz)."""

    settle_s = SpeakerPlate.settle_s

    def __init__(self, seed: int = 0, realtime: bool = False):
        self.plate = SpeakerPlate(seed=seed)
        super().__init__(realtime)

    @property
    def physics(self) -> SpeakerPlate:
        return self.plate

    def respond(self, emf_v: np.ndarray, sample_rate_hz: float) -> tuple[dict[int, np.ndarray], float]:
        return self.plate.respond(emf_v, sample_rate_hz, self.scope.channels_needed())


class OpticalBench:
    """SLM, SHG physics and camera of the optical setup; all state changes and the physics run under ``lock``."""

    roles = ("slm", "camera")  # the instruments' roles, as in ``instruments``
    serial = True  # served on serial ports
    baud_rate = 3_000_000  # line speed of both instruments in realtime mode, bit/s

    def __init__(self, seed: int = 0, realtime: bool = False):
        self.lock = threading.RLock()
        self.realtime = realtime
        self.shaper = SHGPulseShaper(seed=seed)
        self.slm = SimPhaseSLM(lock=self.lock, listener=self, realtime=realtime)
        self.camera = SimSpectroscopyCamera(lock=self.lock, listener=self, realtime=realtime)
        self._shown = np.zeros(self.shaper.n_pixels, np.uint8)

    @property
    def physics(self) -> SHGPulseShaper:
        return self.shaper

    @property
    def instruments(self) -> dict[str, SCPIInstrument]:
        return {"slm": self.slm, "camera": self.camera}

    # -- SLM and camera listeners -------------------------------------------------------------------------------------
    def on_slm_pattern(self, pattern: np.ndarray) -> None:
        with self.lock:
            self._shown = np.array(pattern, np.uint8)

    def on_slm_sequence(self, patterns: np.ndarray, dwell_s: float, settle_s: float, trigger_out: bool, *,
                        start_s: float | None = None) -> None:
        with self.lock:
            self._shown = np.array(patterns[-1], np.uint8)
            want = self.camera.wants_frames()
            if not trigger_out or want <= 0:
                return
            cycle = self.camera.cycle_s
            step = 1 if dwell_s >= cycle else math.ceil(cycle / dwell_s)  # triggers the camera can accept
            taken = patterns[::step][:want]
            if step > 1:
                log.warning("camera cycle %.3g s is longer than the SLM dwell %.3g s: it misses triggers", cycle, dwell_s)
            frames = self._frames(taken, frame_period_s=dwell_s * step)
            ready = len(patterns) * dwell_s + cycle if self.realtime else 0.0
            self.camera.capture(frames, ready_in_s=ready, start_s=start_s)  # the frames' clock is the SLM's

    def on_camera_internal(self, n_frames: int) -> None:
        with self.lock:
            cam = self.camera
            frames = self._frames(np.repeat(self._shown[None], n_frames, axis=0), frame_period_s=cam.cycle_s)
            cam.capture(frames, ready_in_s=n_frames * cam.cycle_s if self.realtime else 0.0)

    def _frames(self, patterns: np.ndarray, frame_period_s: float) -> np.ndarray:
        cam = self.camera
        return self.shaper.frames(patterns, exposure_s=cam.exposure_s, electrons_per_count=cam.electrons_per_count,
                                  columns=cam.columns, rows=cam.rows, mode=cam.mode, shutter_open=cam.shutter_open,
                                  frame_period_s=frame_period_s)


class RunningBench:
    """A bench whose instruments are being served. ``resources``: role -> VISA resource string."""

    def __init__(self, name: str, bench: AwgScopeBench | OpticalBench, servers: dict[str, SCPIServer | PtyServer]):
        self.name = name
        self.bench = bench
        self.servers = servers

    @property
    def resources(self) -> dict[str, str]:
        return {role: server.resource for role, server in self.servers.items()}

    @property
    def instruments(self) -> dict[str, SCPIInstrument]:
        """The simulated front panels by role (for tests and diagnostics)."""
        return self.bench.instruments

    @property
    def physics(self) -> Physics:
        """The bench's physics model ("reality"): ``busy_s``, ``bench_time_s``, ``noiseless`` ..."""
        return self.bench.physics

    @property
    def circuit(self) -> Physics:
        """Older name of ``physics`` (the electronic bench's circuit)."""
        return self.bench.physics

    def set_faults(self, plans: dict[str, FaultPlan]) -> None:
        """From now on inject ``plans`` (keyed by role; instruments not named keep theirs), e.g. once the bench is
        calibrated."""
        for role, plan in plans.items():
            self.servers[role].injector.set_plan(plan)

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        log.info("%s bench closed", self.name)

    def __enter__(self) -> "RunningBench":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BENCHES: dict[str, Callable[[int, bool], AwgScopeBench | OpticalBench]] = {
    "electronic": ElectronicBench, "mechanical": MechanicalBench, "optical": OpticalBench}


def start_bench(name: str = "electronic", *, host: str = "127.0.0.1", seed: int = 0, realtime: bool = False,
                faults: dict[str, FaultPlan] | None = None, ports: dict[str, int] | None = None,
                serial: str = "pty", baud_rates: dict[str, int] | None = None) -> RunningBench:
    """Build bench ``name`` and serve each of its instruments: LAN instruments on their own TCP port (0 or missing:
    a free port); serial instruments on a pseudo-terminal (``serial="pty"``, resource ``/dev/pts/N``) or on a TCP
    port reached as ``socket://host:port`` (``serial="socket"``).

    ``faults``, ``ports`` and ``baud_rates`` (the line speed a realtime pty paces its bytes at, bit/s; default the
    bench's) are keyed by role (``"awg"``, ``"scope"``, ``"slm"``, ``"camera"``).
    """
    if name not in BENCHES:
        raise ValueError(f"unknown bench {name!r}; available: {', '.join(sorted(BENCHES))}")
    bench = BENCHES[name](seed, realtime)
    faults, ports, baud_rates = faults or {}, ports or {}, baud_rates or {}
    unknown = (set(faults) | set(ports) | set(baud_rates)) - set(bench.instruments)
    if unknown:
        raise ValueError(f"{name} bench has no instrument {sorted(unknown)}; roles: {sorted(bench.instruments)}")
    if serial not in ("pty", "socket"):
        raise ValueError(f"serial must be 'pty' or 'socket', got {serial!r}")
    servers: dict[str, SCPIServer | PtyServer] = {}
    try:
        for role, inst in bench.instruments.items():
            if getattr(bench, "serial", False) and serial == "pty":
                servers[role] = PtyServer(inst.session, name=f"{name}-{role}", faults=faults.get(role),
                                          baud_rate=baud_rates.get(role, bench.baud_rate) if realtime else None)
            else:
                servers[role] = SCPIServer(inst.session, host=host, port=ports.get(role, 0), name=f"{name}-{role}",
                                           faults=faults.get(role), serial_url=getattr(bench, "serial", False))
    except OSError:
        for server in servers.values():
            server.close()
        raise
    running = RunningBench(name, bench, servers)
    log.info("%s bench (seed %d%s): %s", name, seed, ", realtime" if realtime else "", running.resources)
    return running
