"""The experiment file: what a lab operator writes. Validated strictly (unknown keys are errors) and reported as
``file:line: field: message`` by ``load_experiment``.

The sections every experiment has are here; the ``instruments`` and ``encoding`` sections, and the checks that tie
them to the rest, belong to the setup: ``orchestrator.experiment_file.load_experiment`` validates a file with the
experiment model of the kit (``orchestrator.kits``) its ``setup`` names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from common.models import FieldError, StrictModel
from orchestrator.yamlconfig import ConfigError, field_line
from common.faults import FaultPlan


class TaskConfig(StrictModel):
    """The data set and how much of it to use."""

    dataset: Literal["digits", "mnist", "fashion_mnist", "vowels", "fsdd"]
    downsample: Literal[7, 14] | None = None
    n_train: PositiveInt | None = None
    n_test: PositiveInt | None = None
    audio_duration_s: PositiveFloat | None = Field(None, description="fsdd: window of each clip, s (default 0.512)")
    audio_rate_hz: PositiveInt | None = Field(None, description="fsdd: resample the 8 kHz clips to this rate, Sa/s")


class NetworkConfig(StrictModel):
    """A stack of ``depth`` physical layers of width ``width`` with element-wise affine maps in between.

    ``readout: pool`` (fully physical): the last layer's output bins are assigned to the classes round-robin and
    averaged. ``readout: linear`` adds a digital linear layer, ``input: linear`` one before the first physical layer
    (either makes a "hybrid" network)."""

    depth: PositiveInt = 3
    width: PositiveInt | None = Field(None, description="device width n; default: the number of input features")
    readout: Literal["pool", "linear"] = "pool"
    input: Literal["tile", "linear"] = Field(
        "tile", description="features reach the first layer tiled to the width (fully physical) or through a digital "
                            "linear layer and tanh (a hybrid network, like the paper's optical MNIST)")
    theta_bounds: tuple[float, float] = (-1.0, 1.0)
    theta_init: Literal["uniform", "middle"] = Field(
        "uniform", description="θ starts uniform within theta_bounds, or at their middle (a silent parameter waveform)")
    shuffle_slots: bool = Field(True, description="fixed random order of the time slots of each layer after the first")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> "NetworkConfig":
        if not self.theta_bounds[0] < self.theta_bounds[1]:
            raise FieldError("theta_bounds", "must be [low, high] with low < high")
        return self


class NeuralTwinConfig(StrictModel):
    """The neural twin: a causal temporal convolutional network over the time slots (default), or an MLP on
    [x, θ] (``hidden``, ``residual``), which needs many more measured samples for the same error."""

    architecture: Literal["temporal_conv", "mlp"] = "temporal_conv"
    channels: PositiveInt = 32
    kernel: int = Field(3, ge=2)
    dilations: list[PositiveInt] = [1, 2, 4, 8, 16]
    hidden: list[PositiveInt] = [512, 512]
    residual: bool = True
    epochs: PositiveInt = 30
    lr: PositiveFloat = 3e-3
    batch_size: PositiveInt = 64
    patience: PositiveInt = 10
    threads: PositiveInt | None = Field(1, description="torch CPU threads while fitting (null: torch's own "
                                        "setting, all cores), at most torch's setting (a sweep trial's "
                                        "cpus_per_trial); one is fastest for an MLP twin")


class PhysicsTwinConfig(StrictModel):
    """The physics twin: the setup's nominal physics with fitted constants (fitted on ``samples`` measurements)."""

    samples: PositiveInt = 1500
    n_modes: PositiveInt = Field(24, description="mechanical: plate modes in the twin")
    nonlinear_modes: int = Field(6, ge=0, description="mechanical: lowest modes with Duffing stiffening")
    epochs: PositiveInt = 40
    lr: PositiveFloat = 0.02
    batch_size: PositiveInt = 128
    patience: PositiveInt = 10


class RefineConfig(StrictModel):
    """Online refinement of the twin from the device measurements training makes (``orchestrator.refine``).

    PAT measures each physical layer's (x, θ, y) in every training batch; these go into a ring buffer of the last
    ``buffer_size`` samples (and into HDF5 files in the run folder). Every ``every_batches`` batches a copy of the
    twin is fine-tuned for ``steps`` Adam steps on the buffer mixed with the original twin data, in a worker thread,
    and its weights replace the twin's between two batches. In silico, the device measures every
    ``measure_every``-th training batch for it (the training forward stays on the twin)."""

    enabled: bool = False
    every_batches: PositiveInt = Field(10, description="batches between two refinements")
    buffer_size: PositiveInt = Field(4096, description="device samples (x, θ, y of one layer) kept, the newest")
    steps: PositiveInt = Field(40, description="Adam steps per refinement")
    batch_size: PositiveInt = Field(128, description="samples per Adam step")
    lr: PositiveFloat = Field(1e-3, description="Adam learning rate of the fine-tuning")
    mix_fraction: float = Field(0.5, ge=0, lt=1, description="share of each step's samples drawn from the original "
                                                             "twin data (so the twin does not forget)")
    measure_every: PositiveInt = Field(1, description="in silico: the device measures every N-th training batch")
    overlap: bool = Field(True, description="fine-tune in a worker while the device measures the next batches "
                                            "(the weights are swapped in at the next refinement); false: at once")
    warmup_batches: NonNegativeInt = Field(0, description="before the first step: the device measures this many "
                                                        "training batches at the initial parameters and the twin "
                                                        "is refined on them at once, so that the first epochs' "
                                                        "gradients come from a twin adapted to them")
    warmup_steps: PositiveInt = Field(200, description="Adam steps of that first refinement")
    jitter: NonNegativeFloat = Field(0.0, description="with each training measurement the device also measures "
                                                    "jitter_samples of the batch's points with x and θ moved by "
                                                    "random steps of this standard deviation (in their units, kept "
                                                    "in bounds), so that the twin learns its slopes there, not only "
                                                    "its values (PAT uses only its slopes); 0: none")
    jitter_samples: PositiveInt = Field(8, description="such nearby points per physical forward")


class TwinConfig(StrictModel):
    """Which twin supplies the gradients, and how twins are calibrated."""

    kind: Literal["neural", "physics", "hybrid", "perfect"] = "neural"
    samples: PositiveInt = Field(8000, description="random (x, θ) samples measured for the twin")
    repeats: PositiveInt = Field(1, description="measurements per sample, averaged")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    neural: NeuralTwinConfig = Field(NeuralTwinConfig(), description="the neural twin, and the hybrid twin's residual")
    physics: PhysicsTwinConfig = PhysicsTwinConfig()
    refine: RefineConfig = RefineConfig()


class SpsaConfig(StrictModel):
    """Step sizes of ``mode: perturbative`` (SPSA; Spall 1998): at step k (from 0) every trainable parameter moves
    by a_k times the gradient estimate, a_k = a / (k + 1 + A)^alpha, measured with perturbations of ±c_k,
    c_k = c / (k + 1)^gamma (parameter units; θ in its bounds' units)."""

    a: PositiveFloat = 0.5
    c: PositiveFloat = 0.05
    A: float = Field(50.0, ge=0, description="stability constant, about a tenth of the steps")
    alpha: float = Field(0.602, gt=0, le=1)
    gamma: float = Field(0.101, gt=0, le=1)


class TrainingConfig(StrictModel):
    mode: Literal["pat", "in_silico", "perturbative"] = Field(
        "pat", description="pat: device forward, twin backward; in_silico: the twin for both; perturbative: SPSA "
                           "with two device forwards per step and no twin")
    spsa: SpsaConfig = SpsaConfig()
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: PositiveFloat = 0.02
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 64
    eval_batch_size: PositiveInt = 512
    epoch_test_samples: PositiveInt | None = Field(
        None, description="test samples evaluated on the device after each epoch (default all; the final evaluation "
                          "always uses the whole test set)")
    eval_every: PositiveInt = Field(
        1, description="evaluate on the device after every N-th epoch (and always after the last): the device's "
                       "time goes to training in between; the other epochs' test accuracy is left empty")
    max_retries: int = Field(2, ge=0, description="retries of a failed physical forward before the run stops")


class SimulateConfig(StrictModel):
    """Settings of the simulated bench used with --simulate."""

    seed: int = 1
    realtime: bool = False
    faults: dict[str, FaultPlan] = Field(
        {}, description="faults injected per instrument role (e.g. awg, scope, slm, camera: the experiment's "
                        "instruments), or 'all' for every instrument")


class ExperimentConfig(StrictModel):
    """What every experiment file holds; ``setup`` selects the instruments and encoding sections (subclasses)."""

    experiment: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    setup: str
    seed: int = 0
    instruments: Any
    encoding: Any
    task: TaskConfig
    network: NetworkConfig = NetworkConfig()
    twin: TwinConfig = TwinConfig()
    training: TrainingConfig = TrainingConfig()
    simulate: SimulateConfig = SimulateConfig()
    artifacts_dir: str | None = Field(None, description="calibration, twin data and twins; default artifacts/<experiment>")

    THETA_RANGE: ClassVar[tuple[float, float]] = (-1.0, 1.0)
    """θ the setups can represent: drive units within the AWG's DAC range, SLM values within phase_span_rad."""

    @model_validator(mode="after")
    def _theta_bounds_in_range(self) -> "ExperimentConfig":
        (low, high), (lo, hi) = self.network.theta_bounds, self.THETA_RANGE
        if low < lo or high > hi:
            raise FieldError("network.theta_bounds", f"[{low:g}, {high:g}] must lie inside [{lo:g}, {hi:g}] for "
                             f"the {self.setup} setup")
        return self

    @model_validator(mode="after")
    def _refine_has_a_twin_to_refine(self) -> "ExperimentConfig":
        if self.twin.refine.enabled and self.training.mode == "perturbative":
            raise FieldError("twin.refine.enabled", "perturbative training uses no twin: there is none to refine")
        if self.twin.refine.enabled and self.twin.kind == "perfect":
            raise FieldError("twin.refine.enabled", "the perfect twin is the simulator's own physics: refine a fitted "
                                                    "twin (neural, physics or hybrid)")
        return self

    @model_validator(mode="after")
    def _faults_name_instruments(self) -> "ExperimentConfig":
        roles = list(type(self.instruments).model_fields) if isinstance(self.instruments, BaseModel) else []
        for role in self.simulate.faults:
            if role != "all" and role not in roles:
                raise FieldError(f"simulate.faults.{role}", f"this {self.setup} experiment has no instrument {role!r}; "
                                 f"its instruments are {', '.join(roles) or 'none'} (or all)")
        return self

    def artifacts_path(self, simulated: bool) -> Path:
        base = Path(self.artifacts_dir) if self.artifacts_dir else Path("artifacts") / self.experiment
        return base.with_name(base.name + "-sim") if simulated else base


def task_data_error(path: str | Path | None, error: Exception) -> ConfigError:
    """A data set that cannot be loaded, as a problem of the experiment file's ``task.dataset`` field."""
    line = field_line(path, "task.dataset") if path else None
    return ConfigError([(str(path or "experiment"), line, "task.dataset", str(error))])


def data_dir(cli_value: str | None = None) -> str | None:
    """The data directory: --data-dir, else $PNN_DATA_DIR, else None."""
    return cli_value or os.environ.get("PNN_DATA_DIR")


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved configuration as YAML (written to the run folder)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


__all__ = ["ExperimentConfig", "ConfigError", "dump_config", "data_dir", "task_data_error"]
