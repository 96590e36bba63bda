"""The experiment file: what a lab operator writes. Validated strictly (unknown keys are errors) and reported as
``file:line: field: message`` by ``load_experiment``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import Field, PositiveFloat, PositiveInt, RootModel, model_validator

from common.models import FieldError, StrictModel
from drivers.setups.electronic import ElectronicEncoding, ElectronicInstruments
from drivers.setups.mechanical import MechanicalEncoding, MechanicalInstruments
from drivers.setups.optical import OpticalEncoding, OpticalInstruments
from orchestrator.yamlconfig import ConfigError, field_line, load_yaml_model


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


class PhysicsTwinConfig(StrictModel):
    """The physics twin: the setup's nominal physics with fitted constants (fitted on ``samples`` measurements)."""

    samples: PositiveInt = 1500
    n_modes: PositiveInt = Field(24, description="mechanical: plate modes in the twin")
    nonlinear_modes: int = Field(6, ge=0, description="mechanical: lowest modes with Duffing stiffening")
    epochs: PositiveInt = 40
    lr: PositiveFloat = 0.02
    batch_size: PositiveInt = 128
    patience: PositiveInt = 10


class TwinConfig(StrictModel):
    """Which twin supplies the gradients, and how twins are calibrated."""

    kind: Literal["neural", "physics", "hybrid", "perfect"] = "neural"
    samples: PositiveInt = Field(8000, description="random (x, θ) samples measured for the twin")
    repeats: PositiveInt = Field(1, description="measurements per sample, averaged")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    neural: NeuralTwinConfig = Field(NeuralTwinConfig(), description="the neural twin, and the hybrid twin's residual")
    physics: PhysicsTwinConfig = PhysicsTwinConfig()


class TrainingConfig(StrictModel):
    mode: Literal["pat", "in_silico"] = "pat"
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
    max_retries: int = Field(2, ge=0, description="retries of a failed physical forward before the run stops")


FAULT_KINDS = ("latency", "no_reply", "drop_connection", "garble_block", "short_block", "error", "reset", "stuck")
Probability = Annotated[float, Field(ge=0, le=1)]


class FaultSettings(StrictModel):
    """Faults one simulated instrument injects, each a probability per reply (see simulators.server.FaultPlan):
    ``rate`` for every kind at once, or a probability per kind (which wins over ``rate``)."""

    rate: Probability = 0.0
    latency: Probability | None = None
    no_reply: Probability | None = None
    drop_connection: Probability | None = None
    garble_block: Probability | None = None
    short_block: Probability | None = None
    error: Probability | None = None
    reset: Probability | None = None
    stuck: Probability | None = None
    seed: int = 0
    latency_s: float = Field(0.5, ge=0, description="delay of a late reply, s")
    stuck_s: float = Field(1.0, ge=0, description="how long a stuck instrument ignores everything, s")
    unplug_s: float = Field(0.5, ge=0, description="how long a pulled serial cable stays out, s")
    max_faults: PositiveInt | None = Field(None, description="stop injecting after this many faults")

    def probabilities(self) -> dict[str, float]:
        """Probability per reply of each kind of fault."""
        return {kind: self.rate if getattr(self, kind) is None else getattr(self, kind) for kind in FAULT_KINDS}


class SimulateConfig(StrictModel):
    """Settings of the simulated bench used with --simulate."""

    seed: int = 1
    realtime: bool = False
    faults: dict[Literal["all", "awg", "scope", "slm", "camera"], FaultSettings] = Field(
        {}, description="faults injected per instrument role (awg, scope, slm, camera), or 'all' for every instrument")


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

    def artifacts_path(self, simulated: bool) -> Path:
        base = Path(self.artifacts_dir) if self.artifacts_dir else Path("artifacts") / self.experiment
        return base.with_name(base.name + "-sim") if simulated else base


class _AwgScopeExperiment(ExperimentConfig):
    """Checks shared by the setups an AWG drives and a scope records (electronic, mechanical)."""

    @model_validator(mode="after")
    def _fits_the_instruments(self) -> "_AwgScopeExperiment":
        awg, scope, enc, width = self.instruments.awg, self.instruments.scope, self.encoding, self.network.width
        if enc.drive_volts_per_unit > awg.max_abs_volts:
            raise FieldError("encoding.drive_volts_per_unit", f"{enc.drive_volts_per_unit:g} V is above the "
                             f"safety limit instruments.awg.max_abs_volts {awg.max_abs_volts:g} V")
        room = min(awg.memory_points, scope.max_points) - 2 * enc.lead_samples
        if width is not None and enc.samples_per_item(width) > room:
            raise FieldError("network.width", f"one item of width {width} needs {enc.samples_per_item(width)} AWG "
                             f"samples; instruments.awg.memory_points and instruments.scope.max_points leave room "
                             f"for {room}")
        return self


class ElectronicExperiment(_AwgScopeExperiment):
    setup: Literal["electronic"]
    instruments: ElectronicInstruments
    encoding: ElectronicEncoding = ElectronicEncoding()


class MechanicalExperiment(_AwgScopeExperiment):
    setup: Literal["mechanical"]
    instruments: MechanicalInstruments
    encoding: MechanicalEncoding = MechanicalEncoding()


class OpticalExperiment(ExperimentConfig):
    setup: Literal["optical"]
    instruments: OpticalInstruments
    encoding: OpticalEncoding = OpticalEncoding()

    @model_validator(mode="after")
    def _fits_the_slm(self) -> "OpticalExperiment":
        first, end = self.encoding.active_pixels
        width = self.network.width
        if width is not None and 2 * width > end - first:
            raise FieldError("network.width", f"width {width} needs {2 * width} spectral bins (x and θ); "
                             f"encoding.active_pixels [{first}, {end}] holds {end - first} pixels")
        return self


class ExperimentFile(RootModel):
    """An experiment file: one of the setups' experiment models, chosen by its ``setup`` field."""

    root: Annotated[Union[ElectronicExperiment, MechanicalExperiment, OpticalExperiment], Field(discriminator="setup")]


def load_experiment(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Read and validate an experiment file; raises ConfigError (``file:line: field: message``)."""
    return load_yaml_model(path, ExperimentFile, overrides=overrides).root  # type: ignore[attr-defined]


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


__all__ = ["ExperimentConfig", "ElectronicExperiment", "MechanicalExperiment", "OpticalExperiment", "ConfigError", "load_experiment", "dump_config", "data_dir", "task_data_error"]
