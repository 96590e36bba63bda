"""The sweep file: a base experiment file, a search space over its fields by dotted path, the metric, an optional
early-stopping scheduler and the trials' resources. ``pnn sweep`` reads it with ``load_sweep``, which checks
everything before Ray starts and reports each problem as ``file:line: field: message`` (``orchestrator.yamlconfig``)::

    experiment: ../electronic_digits.yaml     # relative to this file
    set: {training.epochs: 3}                 # fixed overrides of the experiment file, as pnn run --set
    space:
      training.lr: {loguniform: [0.005, 0.1]}
      network.depth: {grid: [1, 2]}
      seed: {choice: [0, 1, 2]}
    metric: test_accuracy                     # the device test accuracy after each epoch (default), mode max
    trials: 3                                 # samples; each one runs every grid combination (Ray Tune's rule)
    cpus_per_trial: 1
    max_concurrent: 2
    scheduler: {asha: {grace_epochs: 1, reduction_factor: 2}}

Each dotted path is checked against the experiment model of the base file's setup (an unknown field is reported at
its line, with the allowed names), and every value the space can take (each grid or choice value, both ends of a
range, and every combination of them up to ``MAX_COMBINATIONS``) is validated by that model as ``pnn run`` would.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from common.models import FieldError, StrictModel
from orchestrator.config import ExperimentConfig
from orchestrator.experiment_file import load_experiment
from orchestrator.kits import setup_kit
from orchestrator.yamlconfig import (ConfigError, FieldPath, Problem, dotted, line_map, load_yaml_model, parse_dotted,
                                     set_by_path)
from orchestrator.yamlconfig import _expand  # Annotated/Optional/Union/root models unwrapped, as the loader does

log = logging.getLogger(__name__)

MAX_COMBINATIONS = 4096
"""Combinations of the space's values validated together before the sweep starts (beyond: each value alone)."""

EPOCH_METRICS = {"test_accuracy": "max", "train_loss": "min", "train_accuracy_running": "max",
                 "twin_test_accuracy": "max"}
"""What a trial reports after each epoch (the trainer's metric row), with the mode each is usually optimised in."""


class Distribution(StrictModel):
    """One dimension of the search space: exactly one of ``grid`` (every value, in every sample), ``choice`` (one
    value drawn per trial), ``uniform: [low, high]`` or ``loguniform: [low, high]`` (drawn per trial; whole numbers
    for an integer field)."""

    grid: list[Any] | None = Field(None, min_length=1)
    choice: list[Any] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [k for k in ("grid", "choice", "uniform", "loguniform") if k in data]
            if len(given) != 1 and not (set(data) - set(cls.model_fields)):
                raise ValueError("give exactly one of grid, choice, uniform, loguniform"
                                 + (f" (not {' and '.join(given)})" if given else ""))
        return data

    @model_validator(mode="after")
    def _ranges(self) -> "Distribution":
        for kind in ("uniform", "loguniform"):
            bounds = getattr(self, kind)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise FieldError(kind, "must be [low, high] with low < high")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise FieldError("loguniform", "must be [low, high] with 0 < low < high")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None)

    def values(self) -> list[Any]:
        """The values to validate before the sweep: all of a grid or choice, both ends of a range."""
        return list(getattr(self, self.kind))


class AshaConfig(StrictModel):
    """Asynchronous successive halving over epochs: after ``grace_epochs``, and then at each further rung, a trial
    goes on only if its metric is in the best 1/``reduction_factor`` of the trials that reached that epoch."""

    grace_epochs: PositiveInt = 1
    reduction_factor: float = Field(2.0, gt=1)


class SchedulerConfig(StrictModel):
    asha: AshaConfig


class SweepConfig(StrictModel):
    """A sweep file."""

    sweep: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="name (default: the file's stem)")
    description: str = ""
    experiment: str = Field(description="the base experiment file, relative to the sweep file")
    set: dict[str, Any] = Field({}, description="fixed overrides of the experiment file by dotted path")
    space: dict[str, Distribution] = Field(min_length=1)
    metric: str = "test_accuracy"
    mode: Literal["max", "min"] | None = Field(None, description="default: min for train_loss, else max")
    trials: PositiveInt = Field(1, description="samples of the space; each runs every grid combination")
    cpus_per_trial: PositiveFloat = 1.0
    max_concurrent: PositiveInt | None = Field(None, description="default: as many as the CPUs allow")
    scheduler: SchedulerConfig | None = None
    simulate: bool = Field(False, description="every trial on its own simulated bench, as --simulate (which also "
                           "turns it on); for sweeps that only make sense on the simulator")
    bench: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]+$",
                              description="real instruments: the Ray resource bench:<name> each trial holds "
                                          "(default: one per instrument, bench:<its resource string>)")

    @model_validator(mode="after")
    def _metric_known(self) -> "SweepConfig":
        if self.metric not in EPOCH_METRICS:
            raise FieldError("metric", f"must be one of {', '.join(EPOCH_METRICS)} (what a trial reports after each "
                             f"epoch)")
        return self

    @property
    def metric_mode(self) -> str:
        return self.mode or EPOCH_METRICS[self.metric]


@dataclass
class Sweep:
    """A checked sweep: the file's settings, the base experiment (with ``set`` applied) and what the trials need."""

    path: Path
    config: SweepConfig
    experiment_path: Path
    base: ExperimentConfig
    base_data: dict = field(repr=False)  # the resolved base experiment (``model_dump(mode="json")``)
    integer_paths: set[str] = field(default_factory=set)  # space paths whose field takes whole numbers

    @property
    def name(self) -> str:
        return self.config.sweep or self.path.stem

    def trial_config(self, settings: dict[str, Any]) -> ExperimentConfig:
        """The experiment of one trial: the base with ``settings`` (dotted path -> value) applied, validated."""
        return validate_settings(self.base, self.base_data, settings)

    def spec(self) -> dict:
        """What a trial needs, as plain data (stored in the sweep folder for --resume)."""
        return {"name": self.name, "sweep_file": str(self.path), "experiment_file": str(self.experiment_path),
                "setup": self.base.setup, "base": self.base_data, "sweep": self.config.model_dump(mode="json"),
                "integer_paths": sorted(self.integer_paths)}


def validate_settings(base: ExperimentConfig, base_data: dict, settings: dict[str, Any]) -> ExperimentConfig:
    """``base_data`` with ``settings`` applied, validated by the experiment model of ``base``'s setup (raises
    ValidationError, or ValueError for a path that cannot be set)."""
    data = copy.deepcopy(base_data)
    for path, value in settings.items():
        set_by_path(data, path, value)
    return type(base).model_validate(data)


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file and its base experiment; raises ConfigError listing every problem as
    ``file:line: field: message`` (problems of the experiment file itself are reported in that file)."""
    path = Path(path)
    file = str(path)
    config: SweepConfig = load_yaml_model(path, SweepConfig)  # type: ignore[assignment]
    lines = line_map(yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader))

    def line(*parts: str | int) -> int | None:
        return next((lines[parts[:n]] for n in range(len(parts), 0, -1) if parts[:n] in lines), None)

    experiment_path = (path.parent / config.experiment).resolve()
    if not experiment_path.is_file():
        raise ConfigError([(file, line("experiment"), "experiment",
                            f"no experiment file at {experiment_path} (the path is relative to the sweep file)")])
    base_file = load_experiment(experiment_path)  # problems of the experiment file: reported in that file
    model = type(base_file)
    problems: list[Problem] = []
    leaf_types: dict[str, Any] = {}
    for section, keys in (("set", config.set), ("space", config.space)):
        for key in keys:
            try:
                leaf_types[key] = field_type(model, key)
            except FieldPathError as err:
                problems.append((file, line(section, key), f"{section}.{key}", str(err)))
    if problems:
        raise ConfigError(problems)
    clash = sorted(set(config.set) & set(config.space))
    if clash:
        raise ConfigError([(file, line("space", key), f"space.{key}", "is also in set: give it in one place")
                           for key in clash])

    try:
        base = validate_settings(base_file, base_file.model_dump(mode="json"), config.set)
    except (ValidationError, ValueError) as err:
        raise ConfigError([(file, line("set", key), f"set.{key}", message)
                           for key, message in _refusals(err, list(config.set))]) from None
    base_data = base.model_dump(mode="json")

    integer_paths = {key for key in config.space if _takes_whole_numbers(leaf_types[key])}
    candidates: dict[str, list[Any]] = {}
    for key, dist in config.space.items():
        values = dist.values()
        if key in integer_paths and dist.kind in ("uniform", "loguniform"):
            values = [round(v) for v in values]
        candidates[key] = values
        for i, value in enumerate(values):
            try:
                validate_settings(base, base_data, {key: value})
            except (ValidationError, ValueError) as err:
                where = ("space", key, dist.kind, i) if dist.kind in ("grid", "choice") else ("space", key, dist.kind)
                for field_name, message in _refusals(err, [key]):
                    problems.append((file, line(*where), dotted(where[:2]) + f".{dist.kind}" +
                                     (f"[{i}]" if len(where) == 4 else ""),
                                     f"{value!r} is refused by the experiment: {field_name}: {message}"))
    if problems:
        raise ConfigError(problems)
    problems += _combination_problems(file, line("space"), base, base_data, candidates)
    if problems:
        raise ConfigError(problems)
    log.debug("sweep %s: %d dimensions over %s", path, len(config.space), experiment_path)
    return Sweep(path.resolve(), config, experiment_path, base, base_data, integer_paths)


def _combination_problems(file: str, line: int | None, base: ExperimentConfig, base_data: dict,
                          candidates: dict[str, list[Any]]) -> list[Problem]:
    """Combinations of the space's values the experiment model refuses together (at most the first three)."""
    count = 1
    for values in candidates.values():
        count *= len(values)
    if len(candidates) < 2 or count > MAX_COMBINATIONS:
        if count > MAX_COMBINATIONS:
            log.info("%d combinations of the space's values: each value was checked alone", count)
        return []
    problems: list[Problem] = []
    keys = list(candidates)
    for combo in itertools.product(*candidates.values()):
        settings = dict(zip(keys, combo))
        try:
            validate_settings(base, base_data, settings)
        except (ValidationError, ValueError) as err:
            refused = "; ".join(f"{f}: {m}" for f, m in _refusals(err, keys))
            what = ", ".join(f"{k}={v!r}" for k, v in settings.items())
            problems.append((file, line, "space", f"the combination {what} is refused by the experiment: {refused}"))
            if len(problems) == 3:
                break
    return problems


def _refusals(err: Exception, paths: list[str]) -> list[tuple[str, str]]:
    """(field, message) for each complaint of the experiment model (or of set_by_path)."""
    if not isinstance(err, ValidationError):
        return [(paths[0] if len(paths) == 1 else "", str(err))]
    out = []
    for e in err.errors(include_url=False):
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p[:1].isupper())]  # drop union member names
        message = e["msg"]
        error = e.get("ctx", {}).get("error")
        if isinstance(error, Exception):
            message = str(error)
            if isinstance(getattr(error, "field", None), str):
                loc += list(parse_dotted(error.field))
        out.append((dotted(loc) or "(experiment)", message))
    return out


# -- dotted paths against the experiment schema -------------------------------------------------------------------

class FieldPathError(ValueError):
    """A dotted path that names no field of the experiment file."""


def field_type(model: type[BaseModel], path: str) -> Any:
    """The annotation of the field ``path`` (dotted, e.g. ``training.lr``, ``network.theta_bounds[0]``,
    ``simulate.faults.awg.rate``) in ``model``; raises FieldPathError naming the first part that does not exist."""
    try:
        parts: FieldPath = parse_dotted(path)
    except ValueError as err:
        raise FieldPathError(str(err)) from None
    candidates = [model]
    for i, part in enumerate(parts):
        step: list[Any] = []
        names: list[str] = []
        for tp in (t for c in candidates for t in _expand(c)):
            origin = typing.get_origin(tp)
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                fields = {f.alias or name: f for name, f in tp.model_fields.items()}
                names += list(fields)
                if part in fields:
                    step.append(fields[part].annotation)
            elif origin in (list, tuple) and isinstance(part, int):
                args = [a for a in typing.get_args(tp) if a is not Ellipsis]
                if origin is tuple and len(args) > 1 and part >= len(args):
                    continue
                step.append(args[min(part, len(args) - 1)] if args else Any)
            elif origin is dict and isinstance(part, str):
                step.append(typing.get_args(tp)[1] if typing.get_args(tp) else Any)
            elif tp is Any:
                step.append(Any)
        if not step:
            where = dotted(parts[:i]) or "the experiment file"
            if names:
                close = difflib.get_close_matches(str(part), names, n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(dict.fromkeys(names))}"
                raise FieldPathError(f"{where} has no field '{part}' ({hint})")
            raise FieldPathError(f"{where} is a single value, not a section: '{dotted(parts[:i + 1])}' does not exist")
        candidates = step
    return Union[tuple(candidates)] if len(candidates) > 1 else candidates[0]


def _takes_whole_numbers(tp: Any) -> bool:
    """Whether a field accepts integers but not fractions (a range over it is drawn as whole numbers)."""
    leaves = [t for t in _expand(tp) if t is not type(None)]
    return bool(leaves) and all(t is int or typing.get_origin(t) is Literal for t in leaves) and int in leaves


def describe_space(config: SweepConfig) -> str:
    """One line per dimension, e.g. ``training.lr: loguniform [0.005, 0.1]``."""
    return "\n".join(f"{key}: {dist.kind} {list(dist.values())}" for key, dist in config.space.items())


def kit_experiment_model(setup: str) -> type[ExperimentConfig]:
    """The experiment model of a setup (for a trial rebuilding its configuration from the stored spec)."""
    return setup_kit(setup).experiment


__all__ = ["Sweep", "SweepConfig", "Distribution", "load_sweep", "validate_settings", "field_type", "FieldPathError",
           "EPOCH_METRICS", "describe_space", "kit_experiment_model"]
