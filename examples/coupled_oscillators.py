"""A setup of one's own in one file: a network of coupled nonlinear oscillators (pendula), simulated.

This is the physical system of the self-contained example of the official Physics-Aware-Training repository
(github.com/mcmahon-lab/Physics-Aware-Training, "Self-contained Example - Coupled Nonlinear Oscillators on Fashion
MNIST", 2021; Wright, Onodera et al., Nature 601, 549 (2022)), rewritten as a pnn-lab setup. Everything pnn-lab needs
to know about it is in this file: the experiment-file sections, a simulated stand-in for the device, the
``PhysicalSetup`` that drives it, a physics twin, a perfect twin, and the kit that ties them together.

The physics (dimensionless: time in units of 1/ω0, the small-angle period of one pendulum is 2π; angles in rad)
-------------------------------------------------------------------------------------------------------------------
n pendula, all-to-all coupled through the sines of their angles, each with a constant drive::

    d²q_i/dt² = -sin(κ q_i) + Σ_j J_ij [sin(κ q_j) - sin(κ q_i)] + e_i          i = 1 .. n

    q_i(0) = amplitude_rad · x_i  (+ setting noise)    dq_i/dt(0) = 0             (input: the initial angles)
    e_i    = drive_per_unit · θ_i                                                   (parameters: the drives)
    y_i    = q_i(duration)        (+ read-out noise)                                (output: the angles at the end)

Shapes: x [B, n] in [-1, 1], θ [n] (or [B, n]) in the network's ``theta_bounds``, y [B, n] in rad. J [n, n] is
symmetric with a zero diagonal: the coupling network as designed, ``J_ij ~ N(0, coupling² / n)`` drawn once from
``encoding.coupling_seed`` (the field on one pendulum is then O(coupling) whatever n). The equations are integrated
with the classical Runge-Kutta scheme (RK4) from rest.

The official example trains J and e on a GPU (a 100-pendulum network on each of 16 image patches, then a
1610-pendulum network; 2.6 million parameters). A pnn-lab device layer has one parameter per slot, so here the
couplings are fixed hardware and the drives e_i are the trained parameters θ; the element-wise affine maps of
``PhysicalNetwork`` between layers set the initial angles.

The device, and why its twin is wrong
-------------------------------------
The simulated stand-in for the lab's device (``SimulatedOscillators``) is the "physical system" of the official
example: the designed network plus what the official example adds to emulate the gap between model and
experiment, with the same values:

- a nonlinearity error: the pendula obey sin(κ q) with κ = 1 + η, η = 0.1 (``NONLINEARITY_ERROR``);
- coupling disorder: every J_ij is off by a fixed random amount, symmetric, std 0.2/√2 off the diagonal
  (``COUPLING_DISORDER`` = 0.2 as there, drawn once from ``simulate.seed``);
- setting noise on each initial angle, std 0.02 rad, drawn afresh for every measurement (``SETTING_NOISE_RAD``);
  and, not in the official example, a little read-out noise (``READOUT_NOISE_RAD``) and a 2x finer time step than
  the twin's (``DEVICE_SUBSTEPS``: the device is continuous, the twin's solver is not).

The physics twin (``NominalOscillatorTwin``) is the nominal model the official example trains with: the designed
couplings and the ideal sine (κ = 1). Its physical constants are deliberately NOT fitted: the coupling disorder is
n²/2 unknown numbers that the twin data cannot pin down (a few thousand samples), and fitting κ would remove the
mismatch this example is about. What ``pnn calibrate`` fits (``twin.physics``) is the read-out calibration any lab
does, three scalars: an input gain and an output gain and offset. PAT trains well through this wrong twin, because
the device computes every forward pass; training in silico (``--mode in_silico``) trusts the twin's forward pass too,
and loses accuracy on the device. The perfect twin (``pnn bench``'s pat:perfect row) is the stand-in's own
noiseless physics.

How to run it
-------------
Register the setup for one command with ``--setup-file``, or install ``examples/`` (``pip install -e examples/``,
entry point ``pnn_lab.setups``), then::

    export PNN_DATA_DIR=/path/to/data            # holds fashion-mnist/
    pnn --setup-file examples/coupled_oscillators.py check examples/fashion_mnist_oscillators.yaml --simulate
    pnn --setup-file examples/coupled_oscillators.py run examples/fashion_mnist_oscillators.yaml --simulate
    pnn --setup-file examples/coupled_oscillators.py run examples/fashion_mnist_oscillators.yaml --simulate \\
        --mode in_silico --out runs/osc_insilico
    pnn --setup-file examples/coupled_oscillators.py bench examples/fashion_mnist_oscillators.yaml --simulate \\
        --rows pat:physics,pat:perfect,in_silico:physics,digital

There is no hardware behind it: without ``--simulate`` the kit refuses to open the setup.
"""

from __future__ import annotations

import logging
import math
import time
from types import TracebackType
from typing import Any, Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from torch import Tensor, nn

from common.models import FieldError, StrictModel
from drivers.setups.base import PhysicalSetup, check_batch, uniform_bounds
from orchestrator.config import ExperimentConfig
from orchestrator.kits import KitError, Row, SetupKit, register_setup
from twins import broadcast_theta, register_twin

log = logging.getLogger(__name__)

SETUP_NAME = "coupled_oscillators"

# -- the simulated device's truth (unknown to the twin; the values of the official example) ----------------------
NONLINEARITY_ERROR = 0.1   # η: the device's pendula obey sin((1 + η) q)
COUPLING_DISORDER = 0.2    # each J_ij of the device is off by 0.2 · (g_ij + g_ji) / 2, g ~ N(0, 1)
SETTING_NOISE_RAD = 0.02   # std of the error in setting each initial angle, rad, fresh every measurement
READOUT_NOISE_RAD = 0.002  # std of the error in reading each final angle, rad
DEVICE_SUBSTEPS = 2        # the device integrates with a step 2x finer than the twin's

MAX_OMEGA_STEP = 1.0       # the largest ω·step allowed: above it RK4 loses over 1 % of a mode's amplitude per step


# ================================================================================================================
# The physics, shared by the device, the physics twin and the perfect twin
# ================================================================================================================

def symmetric_gaussian(n: int, seed: int) -> Tensor:
    """(g + gᵀ)/2 with g [n, n] ~ N(0, 1) drawn from ``seed`` and the diagonal set to 0 (float64): off-diagonal
    entries have std 1/√2."""
    g = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sym = (g + g.T) / 2
    return sym.fill_diagonal_(0.0)


def designed_coupling(n: int, strength: float, seed: int) -> Tensor:
    """The coupling network as designed: J [n, n], symmetric, zero diagonal, J_ij ~ N(0, strength² / n)."""
    return symmetric_gaussian(n, seed) * (strength * math.sqrt(2.0 / n))


def evolve(q0: Tensor, drive: Tensor, coupling: Tensor, kappa: float | Tensor, duration: float,
           steps: int) -> Tensor:
    """The angles q(duration) [B, n] of the pendula started at rest from q0 [B, n] under the constant ``drive``
    [B, n] or [n] (RK4, ``steps`` equal steps; differentiable in everything)::

        d²q_i/dt² = -sin(κ q_i) + Σ_j J_ij [sin(κ q_j) - sin(κ q_i)] + e_i
    """
    # -s_i + Σ_j J_ij (s_j - s_i) = (s @ M)_i with M = J - diag(1 + Σ_j J_ij) (J symmetric), s = sin(κ q)
    mixing = coupling - torch.diag(coupling.sum(dim=1) + 1.0)

    def acceleration(q: Tensor) -> Tensor:
        return torch.addmm(drive, torch.sin(kappa * q), mixing)

    h = duration / steps
    q, p = q0, torch.zeros_like(q0)
    for _ in range(steps):  # RK4 for q' = p, p' = a(q), with the intermediate p's substituted in
        half = q + 0.5 * h * p
        a1 = acceleration(q)
        a2 = acceleration(half)
        a3 = acceleration(half + 0.25 * h * h * a1)
        a4 = acceleration(q + h * p + 0.5 * h * h * a2)
        q = q + h * p + h * h / 6 * (a1 + a2 + a3)
        p = p + h / 6 * (a1 + 2 * (a2 + a3) + a4)
    return q


# ================================================================================================================
# The experiment file's sections
# ================================================================================================================

class OscillatorEncoding(StrictModel):
    """How x and θ become initial angles and drives, and how long the pendula swing (see the module docstring).
    Twin data and twins are reused only for an equal encoding, so the designed couplings belong here too."""

    amplitude_rad: PositiveFloat = Field(1.0, le=math.pi, description="initial angle per input unit, rad")
    drive_per_unit: PositiveFloat = Field(1.0, description="drive e_i per parameter unit, rad·ω0²")
    duration: PositiveFloat = Field(1.0, description="evolution time, in units of 1/ω0")
    steps: PositiveInt = Field(4, description="RK4 steps of the twin (the simulated device takes 2x as many)")
    coupling: float = Field(3.0, ge=0, description="strength of the designed couplings: J_ij ~ N(0, coupling²/n)")
    coupling_seed: int = Field(0, description="which random coupling network was designed (built)")

    def n_outputs(self, n_inputs: int) -> int:
        """Every pendulum is read: one output per input."""
        return n_inputs

    def coupling_matrix(self, n: int) -> Tensor:
        """The designed couplings J [n, n] (float64)."""
        return designed_coupling(n, self.coupling, self.coupling_seed)

    def fastest_mode(self, n: int) -> float:
        """ω (in ω0) of the fastest small-angle mode of the designed network of n pendula. For small angles
        d²q/dt² = M q with M = J - diag(1 + Σ_j J_ij); its largest |eigenvalue| (an oscillation, or a growth where
        the couplings destabilise) is ω², and ω sets the time step RK4 needs."""
        coupling = self.coupling_matrix(n)
        eig = torch.linalg.eigvalsh(coupling - torch.diag(coupling.sum(dim=1) + 1.0))
        return math.sqrt(float(eig.abs().max()))


class NoInstruments(StrictModel):
    """The simulated oscillator network runs in-process: there is no instrument to name."""


class CoupledOscillatorExperiment(ExperimentConfig):
    setup: Literal["coupled_oscillators"]
    instruments: NoInstruments = NoInstruments()
    encoding: OscillatorEncoding = OscillatorEncoding()

    @model_validator(mode="after")
    def _step_resolves_the_fastest_mode(self) -> CoupledOscillatorExperiment:
        """The twin's RK4 step must resolve the fastest mode of the network (known once network.width is set)."""
        n, enc = self.network.width, self.encoding
        if n is not None:
            omega = enc.fastest_mode(n)
            needed = math.ceil(omega * enc.duration / MAX_OMEGA_STEP)
            if enc.steps < needed:
                raise FieldError("encoding.steps", (
                    f"{enc.steps} RK4 steps over a duration of {enc.duration:g}/ω0 cannot follow the fastest mode of "
                    f"{n} pendula (ω = {omega:.2f} ω0); use at least {needed}"))
        return self


# ================================================================================================================
# The simulated stand-in for the device, and its bench
# ================================================================================================================

class SimulatedOscillators:
    """The "physical system": the designed network as built (disorder, nonlinearity error) plus noise. One per bench,
    seeded by ``simulate.seed``: the disorder is fixed for the bench, the noise is fresh at every measurement."""

    def __init__(self, enc: OscillatorEncoding, seed: int):
        self.enc = enc
        self.seed = seed
        self.kappa = 1.0 + NONLINEARITY_ERROR
        self.steps = enc.steps * DEVICE_SUBSTEPS
        self.busy_s = 0.0  # time spent computing the physics (the orchestrator reports it)
        self._noise = torch.Generator().manual_seed(seed)
        self._coupling: dict[int, Tensor] = {}

    def coupling(self, n: int) -> Tensor:
        """The couplings J [n, n] of the built network of n pendula: as designed, plus this device's disorder."""
        if n not in self._coupling:
            disorder = COUPLING_DISORDER * symmetric_gaussian(n, 1_000_003 * self.seed + n)
            self._coupling[n] = self.enc.coupling_matrix(n) + disorder
        return self._coupling[n]

    @torch.no_grad()
    def measure(self, x: Tensor, theta: Tensor) -> Tensor:
        """One measurement of a batch: x [B, n], θ [n] or [B, n] -> final angles y [B, n] (rad, float32)."""
        t0 = time.perf_counter()
        x64, theta64 = x.double(), theta.double()
        q0 = self.enc.amplitude_rad * x64 + SETTING_NOISE_RAD * self._randn(x64.shape)
        q = evolve(q0, self.enc.drive_per_unit * theta64, self.coupling(x.shape[1]), self.kappa,
                   self.enc.duration, self.steps)
        y = q + READOUT_NOISE_RAD * self._randn(q.shape)
        self.busy_s += time.perf_counter() - t0
        return y.float()

    def _randn(self, shape: torch.Size) -> Tensor:
        return torch.randn(shape, generator=self._noise, dtype=torch.float64)

    def describe(self) -> dict:
        return {"device": "simulated coupled-oscillator network", "seed": self.seed, "kappa": self.kappa,
                "coupling_disorder": COUPLING_DISORDER, "setting_noise_rad": SETTING_NOISE_RAD,
                "readout_noise_rad": READOUT_NOISE_RAD, "steps": self.steps}


class OscillatorBench:
    """What ``--simulate`` starts: the simulated network (``physics``), without instruments. A context manager."""

    def __init__(self, enc: OscillatorEncoding, seed: int):
        self.physics = SimulatedOscillators(enc, seed)
        self.resources: dict[str, str] = {}    # no simulated instruments to point the experiment file at
        self.instruments: dict[str, Any] = {}  # no front panels to report at the end

    def set_faults(self, plans: dict) -> None:
        """Fault injection is for instruments; this bench has none."""
        if plans:
            log.warning("the coupled-oscillator bench has no instruments: simulate.faults is ignored")

    def __enter__(self) -> OscillatorBench:
        log.info("simulated coupled-oscillator network started (seed %d, κ = %.2f, coupling disorder %.2f)",
                 self.physics.seed, self.physics.kappa, COUPLING_DISORDER)
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        log.info("simulated coupled-oscillator network: %.1f s of physics", self.physics.busy_s)


# ================================================================================================================
# The setup: what pnn-lab trains and evaluates on
# ================================================================================================================

class CoupledOscillatorSetup(PhysicalSetup):
    """n pendula of the simulated network as one physical layer: x [B, n] in [-1, 1], θ [n] or [B, n] -> y [B, n]."""

    name = SETUP_NAME

    def __init__(self, device: SimulatedOscillators, enc: OscillatorEncoding, n: int,
                 theta_bounds: tuple[float, float]):
        self.device = device
        self.n_inputs = self.n_params = n
        self.n_outputs = enc.n_outputs(n)
        self.param_bounds = uniform_bounds(n, theta_bounds)
        self.enc = enc
        super().__init__()

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        check_batch(self.name, x, theta, self.n_inputs, self.param_bounds)
        t0 = time.perf_counter()
        y = self.device.measure(x, theta)
        self.counters.record(len(x), uploads=1, seconds=time.perf_counter() - t0)
        return y

    def snapshot(self) -> dict:
        return {**super().snapshot(), **self.device.describe()}

    def reuse_calibration(self, snapshot: dict | None, source: str) -> bool:
        """Twin data and twins measured on another simulated device (another ``simulate.seed``, other constants)
        are measured again."""
        now = self.device.describe()
        if snapshot is not None and any(snapshot.get(key) != value for key, value in now.items()):
            log.warning("%s was measured on another simulated device; measuring again", source)
            return False
        return True


# ================================================================================================================
# Twins
# ================================================================================================================

@register_twin
class NominalOscillatorTwin(nn.Module):
    """The physics twin: the nominal model (designed couplings, ideal sine, the encoding's RK4 steps) with a fitted
    read-out calibration (input gain, output gain and offset). The physical constants are not fitted (module
    docstring). x [B, n], θ [n] or [B, n] -> y [B, n] (rad)."""

    kind = "coupled_oscillators"

    def __init__(self, n: int, encoding: dict):
        super().__init__()
        self.n_inputs = self.n_params = self.n_outputs = n
        self.encoding = OscillatorEncoding(**encoding)
        self.register_buffer("coupling", self.encoding.coupling_matrix(n))
        self.input_gain = nn.Parameter(torch.ones((), dtype=torch.float64))
        self.output_gain = nn.Parameter(torch.ones((), dtype=torch.float64))
        self.output_offset = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def config(self) -> dict:
        return {"n": self.n_inputs, "encoding": self.encoding.model_dump()}

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        theta = broadcast_theta(x, theta, self.n_inputs, self.n_params)
        enc = self.encoding
        q0 = (enc.amplitude_rad * self.input_gain) * x.double()
        q = evolve(q0, enc.drive_per_unit * theta.double(), self.coupling, 1.0, enc.duration, enc.steps)
        return (self.output_gain * q + self.output_offset).to(x.dtype)


@register_twin
class PerfectOscillatorTwin(nn.Module):
    """The simulated device's own physics without its noise (benchmarks only: a real device has no such twin)."""

    kind = "coupled_oscillators_perfect"

    def __init__(self, n: int, encoding: dict, seed: int):
        super().__init__()
        self.n_inputs = self.n_params = self.n_outputs = n
        self.encoding = OscillatorEncoding(**encoding)
        self.seed = seed
        device = SimulatedOscillators(self.encoding, seed)
        self.kappa, self.steps = device.kappa, device.steps
        self.register_buffer("coupling", device.coupling(n))

    def config(self) -> dict:
        return {"n": self.n_inputs, "encoding": self.encoding.model_dump(), "seed": self.seed}

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        theta = broadcast_theta(x, theta, self.n_inputs, self.n_params)
        enc = self.encoding
        q = evolve(enc.amplitude_rad * x.double(), enc.drive_per_unit * theta.double(), self.coupling, self.kappa,
                   enc.duration, self.steps)
        return q.to(x.dtype)


# ================================================================================================================
# The kit: everything pnn-lab asks about the setup
# ================================================================================================================

class CoupledOscillatorKit(SetupKit):
    name = SETUP_NAME
    experiment = CoupledOscillatorExperiment

    def open(self, cfg: ExperimentConfig, n: int, connections: Any, bench: Any | None) -> CoupledOscillatorSetup:
        if bench is None:
            raise KitError(f"the {SETUP_NAME} example has no hardware; use --simulate")
        return CoupledOscillatorSetup(bench.physics, cfg.encoding, n, cfg.network.theta_bounds)

    def start_bench(self, cfg: ExperimentConfig, faults: dict) -> OscillatorBench:
        bench = OscillatorBench(cfg.encoding, cfg.simulate.seed)
        bench.set_faults(faults)
        return bench

    def physics_twin(self, cfg: ExperimentConfig, setup: PhysicalSetup, n: int, n_outputs: int) -> nn.Module:
        return NominalOscillatorTwin(n, cfg.encoding.model_dump())

    def perfect_twin(self, cfg: ExperimentConfig, bench: Any, setup: PhysicalSetup) -> nn.Module:
        return PerfectOscillatorTwin(setup.n_inputs, cfg.encoding.model_dump(), bench.physics.seed)

    def check_settings(self, cfg: ExperimentConfig, n: int | None, row: Row) -> None:
        enc = cfg.encoding
        row("initial angles", f"±{enc.amplitude_rad:g} rad",
            None if enc.amplitude_rad < math.pi else "at ±π the pendula start upside down")
        h = enc.duration / enc.steps
        if n is None:
            row("RK4 step", f"{h:g} / ω0 (set network.width to check it against the fastest mode)", None)
            return
        omega = enc.fastest_mode(n)
        row("pendula", f"{n}, all-to-all coupled (strength {enc.coupling:g}, seed {enc.coupling_seed})", None)
        row("RK4 step", f"{h:g} / ω0 (fastest mode ω = {omega:.2f} ω0, ω·step = {omega * h:.2f})",
            None if omega * h <= MAX_OMEGA_STEP else "too coarse for the fastest mode: raise encoding.steps")


register_setup(CoupledOscillatorKit)
