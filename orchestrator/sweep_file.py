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

A **linked dimension** sets several fields at once: its name is not a field, and its ``grid`` or ``choice`` is a
mapping from a label (what the trial's settings and the results show) to the dotted paths and values it sets::

    space:
      mode:
        grid:
          pat: {training.mode: pat}
          pat+refine: {training.mode: pat, twin.refine.enabled: true}

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
    for an integer field). A ``grid`` or ``choice`` given as a mapping label -> {dotted path: value} is a linked
    dimension: each value sets every field it names."""

    grid: list[Any] | dict[str, dict[str, Any]] | None = Field(None, min_length=1)
    choice: list[Any] | dict[str, dict[str, Any]] | None = Field(None, min_length=1)
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

    @model_validator(mode="after")
    def _variants_set_something(self) -> "Distribution":
        for label, settings in (self.linked or {}).items():
            if not settings:
                raise FieldError(f"{self.kind}.{label}", "sets no field: give at least one dotted path and value")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None)

    @property
    def linked(self) -> dict[str, dict[str, Any]] | None:
        """A linked dimension's variants (label -> {dotted path: value}); None for a dimension over one field."""
        return linked_variants(self.model_dump())

    def values(self) -> list[Any]:
        """The values to validate before the sweep: all of a grid or choice (a linked one's labels), both ends of a
        range."""
        return list(getattr(self, self.kind))


def linked_variants(dist: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The variants of a linked dimension given as plain data (a ``Distribution``'s dump, as the stored spec holds
    it), or None."""
    values = dist.get("grid") if dist.get("grid") is not None else dist.get("choice")
    return values if isinstance(values, dict) else None


def expand_settings(space: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A trial's settings by dotted path: each linked dimension's label replaced by the fields its variant sets.
    ``space`` is the sweep file's space as plain data (``SweepConfig.model_dump(mode="json")["space"]``)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        variants = linked_variants(space[key]) if isinstance(space.get(key), dict) else None
        if variants is None:
            out[key] = value
        elif value not in variants:
            raise ValueError(f"{key}: {value!r} is none of its labels ({', '.join(variants)})")
        else:
            out.update(variants[value])
    return out


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
        """The experiment of one trial: the base with ``settings`` (dotted path -> value, or a linked dimension's
        label) applied, validated."""
        space = self.config.model_dump(mode="json")["space"]
        return validate_settings(self.base, self.base_data, expand_settings(space, settings))

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
    linked = {key: dist.linked for key, dist in config.space.items() if dist.linked is not None}
    for section, keys in (("set", config.set), ("space", config.space)):
        for key in keys:
            if key in linked and section == "space":
                problems += _linked_problems(file, line, model, key, config.space[key].kind, linked[key])
                continue
            try:
                leaf_types[key] = field_type(model, key)
            except FieldPathError as err:
                problems.append((file, line(section, key), f"{section}.{key}", str(err)))
    if problems:
        raise ConfigError(problems)
    where_set: dict[str, list[str]] = {}  # dotted path -> the places that set it: "set", "space", "space.<linked>"
    for key in config.space:
        for set_path in (dict.fromkeys(p for v in linked[key].values() for p in v) if key in linked else [key]):
            where_set.setdefault(set_path, []).append(f"space.{key}" if key in linked else "space")
    for key in config.set:
        where_set.setdefault(key, []).append("set")
    clash = [(field, places) for field, places in where_set.items() if len(places) > 1]
    if clash:
        raise ConfigError([(file, line("space", field) if places[0] == "space" else line(*places[0].split(".", 1)),
                            f"space.{field}" if places[0] == "space" else places[0],
                            ("" if places[0] == "space" else f"sets {field}, which ") +
                            f"is also set in {' and '.join(places[1:])}: give it in one place")
                           for field, places in clash])
    try:
        base = validate_settings(base_file, base_file.model_dump(mode="json"), config.set)
    except (ValidationError, ValueError) as err:
        raise ConfigError([(file, line("set", key), f"set.{key}", message)
                           for key, message in _refusals(err, list(config.set))]) from None
    base_data = base.model_dump(mode="json")

    integer_paths = {key for key in config.space if key not in linked and _takes_whole_numbers(leaf_types[key])}
    candidates: dict[str, list[Any]] = {}
    for key, dist in config.space.items():
        values = dist.values()
        if key in integer_paths and dist.kind in ("uniform", "loguniform"):
            values = [round(v) for v in values]
        candidates[key] = values
        for i, value in enumerate(values):
            settings = linked[key][value] if key in linked else {key: value}
            try:
                validate_settings(base, base_data, settings)
            except (ValidationError, ValueError) as err:
                if key in linked:
                    where: tuple = ("space", key, dist.kind, value)
                    name, shown = dotted(where), ", ".join(f"{k}={v!r}" for k, v in settings.items())
                elif dist.kind in ("grid", "choice"):
                    where, name, shown = ("space", key, dist.kind, i), f"space.{key}.{dist.kind}[{i}]", repr(value)
                else:
                    where, name, shown = ("space", key, dist.kind), f"space.{key}.{dist.kind}", repr(value)
                for field_name, message in _refusals(err, list(settings)):
                    problems.append((file, line(*where), name,
                                     f"{shown} is refused by the experiment: {field_name}: {message}"))
    if problems:
        raise ConfigError(problems)
    problems += _combination_problems(file, line("space"), base, base_data, candidates, linked)
    if problems:
        raise ConfigError(problems)
    log.debug("sweep %s: %d dimensions over %s", path, len(config.space), experiment_path)
    return Sweep(path.resolve(), config, experiment_path, base, base_data, integer_paths)


def _linked_problems(file: str, line: Any, model: type[BaseModel], key: str, kind: str,
                     variants: dict[str, dict[str, Any]]) -> list[Problem]:
    """A linked dimension's name must not be a field (its values set fields by their own paths), and every path its
    variants set must be one."""
    try:
        field_type(model, key)
    except FieldPathError:
        pass
    else:
        return [(file, line("space", key), f"space.{key}",
                 (f"is a field of the experiment, but its {kind} is a mapping of labels to settings (a linked "
                  f"dimension): give the field a list of values, or the linked dimension a name that is no field"))]
    problems: list[Problem] = []
    for label, settings in variants.items():
        for path in settings:
            try:
                field_type(model, path)
            except FieldPathError as err:
                problems.append((file, line("space", key, kind, label, path), f"space.{key}.{kind}.{label}.{path}",
                                 str(err)))
    return problems


def _combination_problems(file: str, line: int | None, base: ExperimentConfig, base_data: dict,
                          candidates: dict[str, list[Any]],
                          linked: dict[str, dict[str, dict[str, Any]]] | None = None) -> list[Problem]:
    """Combinations of the space's values the experiment model refuses together (at most the first three); a linked
    dimension's value is its label, which sets the fields of its variant."""
    linked = linked or {}
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
        fields: dict[str, Any] = {}
        for key, value in settings.items():
            fields.update(linked[key][value] if key in linked else {key: value})
        try:
            validate_settings(base, base_data, fields)
        except (ValidationError, ValueError) as err:
            refused = "; ".join(f"{f}: {m}" for f, m in _refusals(err, list(fields)))
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


__all__ = ["Sweep", "SweepConfig", "Distribution", "load_sweep", "linked_variants", "expand_settings",
           "validate_settings", "field_type", "FieldPathError", "EPOCH_METRICS", "describe_space",
           "kit_experiment_model"]
