"""Reading an experiment file: its ``setup`` names the kit (``orchestrator.kits``) whose experiment model validates it.
Problems are reported as ``file:line: field: message`` (``orchestrator.yamlconfig``)."""

from __future__ import annotations

from pathlib import Path

import yaml

from drivers.resources import is_placeholder
from orchestrator.config import ExperimentConfig
from orchestrator.kits import ENTRY_POINT_GROUP, known_setups, setup_kit
from orchestrator.yamlconfig import ConfigError, field_line, load_yaml_model, parse_override


def load_experiment(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Read and validate an experiment file with the experiment model of its setup's kit; raises ConfigError
    (``file:line: field: message``), also for a setup no kit is registered for."""
    name = _setup_name(path, overrides)
    model: type[ExperimentConfig] = ExperimentConfig  # no usable setup name: the base model reports what is wrong
    if isinstance(name, str):
        try:
            model = setup_kit(name).experiment
        except KeyError:
            choices = ", ".join(f"'{known}'" for known in known_setups())
            raise ConfigError([(str(path), field_line(path, "setup"), "setup", (
                f"must be one of {choices} (a setup of your own: pnn --setup-file FILE, or an entry point in the "
                f"group '{ENTRY_POINT_GROUP}')"))]) from None
    return load_yaml_model(path, model, overrides=overrides)  # type: ignore[return-value]


def require_resources(cfg: ExperimentConfig, path: str | Path) -> None:
    """Refuse, before any instrument is touched, an experiment whose instruments' resources are still placeholders
    (``<your AWG's VISA resource>``, as the shipped files hold): ConfigError at each field's line."""
    problems = []
    for role in type(cfg.instruments).model_fields:
        resource = getattr(getattr(cfg.instruments, role), "resource", None)
        if isinstance(resource, str) and is_placeholder(resource):
            field = f"instruments.{role}.resource"
            problems.append((str(path), field_line(path, field), field, (
                f"{resource} is a placeholder: set it to the resource string of your instrument (VISA, serial port or "
                f"socket:// URL), or add --simulate to use the simulated bench")))
    if problems:
        raise ConfigError(problems)


def _setup_name(path: str | Path, overrides: dict | None) -> object:
    """The ``setup`` an experiment file names (an override wins); None if the file cannot be read as YAML (loading
    it then reports why)."""
    for key, value in (overrides or {}).items():
        if key.strip() == "setup":
            try:
                return parse_override(f"setup={value}")[1] if isinstance(value, str) else value
            except (ValueError, yaml.YAMLError):
                return None
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data.get("setup") if isinstance(data, dict) else None
