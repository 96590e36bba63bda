"""Strict YAML loading: every problem reported as ``file:line: field: message``."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Annotated, Literal, Union

import pytest
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.yamlconfig import ConfigError, load_yaml_model, parse_override, set_by_path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Layer(_Strict):
    kind: Literal["electronic", "optical"] = "electronic"
    outputs: int = Field(gt=0)


class Gain(_Strict):
    type: Literal["gain"]
    factor: float


class Offset(_Strict):
    type: Literal["offset"]
    volts: float


class Network(_Strict):
    layers: list[Layer]
    theta_bounds: tuple[float, float] = (-1.0, 1.0)
    digital: list[Annotated[Union[Gain, Offset], Field(discriminator="type")]] = []


class Twin(_Strict):
    kind: Literal["neural", "physics"]
    samples: int = Field(1000, gt=0)


class Training(_Strict):
    mode: Literal["pat", "in_silico"] = "pat"
    lr: float = Field(0.01, gt=0)
    epochs: int = Field(10, gt=0)


class Experiment(_Strict):
    experiment: str
    network: Network
    twin: Twin
    training: Training = Training()


GOOD = """\
experiment: demo
network:
  layers:
    - outputs: 8
    - kind: optical
      outputs: 4
  digital:
    - type: gain
      factor: 2.0
twin:
  kind: neural
training:
  lr: 0.01
  epochs: 5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def errors(path: Path, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_yaml_model(path, Experiment, **kwargs)
    return str(info.value).splitlines()


def test_valid_file_loads(tmp_path):
    cfg = load_yaml_model(write(tmp_path, GOOD), Experiment)
    assert cfg.network.layers[1].kind == "optical" and cfg.training.epochs == 5
    assert cfg.network.digital[0].factor == 2.0


# (edits to GOOD, expected report lines after the file name)
CASES = {
    "wrong type and out of range": (
        [("lr: 0.01", "lr: -1"), ("epochs: 5", "epochs: many")],
        [":13: training.lr: Input should be greater than 0",
         ":14: training.epochs: Input should be a valid integer, unable to parse string as an integer"]),
    "literal choice": (
        [("kind: neural", "kind: quantum")],
        [":11: twin.kind: Input should be 'neural' or 'physics'"]),
    "unknown keys": (
        [("  lr: 0.01", "  lrr: 0.01\n  colour: red")],
        [":13: training.lrr: unknown field (did you mean 'lr'?)",
         ":14: training.colour: unknown field (allowed: mode, lr, epochs)"]),
    "missing field: line of its section": (
        [("  kind: neural", "  samples: 10")],
        [":10: twin.kind: Field required"]),
    "missing top-level section: no line": (
        [("twin:\n  kind: neural\n", "")],
        [": twin: Field required"]),
    "list items and a discriminated union": (
        [("      outputs: 4", "      outputs: 0"), ("factor: 2.0", "factr: 2.0")],
        [":6: network.layers[1].outputs: Input should be greater than 0",
         ":8: network.digital[0].factor: Field required",
         ":9: network.digital[0].factr: unknown field (did you mean 'factor'?)"]),
    "missing field in a list item": (
        [("    - outputs: 8", "    - {}")],
        [":4: network.layers[0].outputs: Field required"]),
    "tuple item": (
        [("  digital:", "  theta_bounds: [0, high]\n  digital:")],
        [":7: network.theta_bounds[1]: Input should be a valid number, unable to parse string as a number"]),
}


@pytest.mark.parametrize("edits, expected", CASES.values(), ids=CASES.keys())
def test_problem_reports(tmp_path, edits, expected):
    text = GOOD
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    path = write(tmp_path, text)
    assert errors(path) == [f"{path}{line}" for line in expected]


def test_duplicate_keys(tmp_path):
    path = write(tmp_path, GOOD.replace("  epochs: 5", "  epochs: 5\n  lr: 0.5").replace(
        "experiment: demo", "experiment: demo\nexperiment: other"))
    assert errors(path) == [
        f"{path}:2: experiment: duplicate key (first given on line 1; only one is allowed)",
        f"{path}:16: training.lr: duplicate key (first given on line 14; only one is allowed)",
    ]


def test_yaml_syntax_errors(tmp_path):
    path = write(tmp_path, GOOD.replace("  kind: neural", "  kind: neural\n   samples: 3"))
    assert errors(path) == [f"{path}:12: YAML syntax error: mapping values are not allowed here"]
    path = write(tmp_path, "network:\n  layers: [1, 2\ntwin: {}\n")
    assert errors(path) == [f"{path}:3: YAML syntax error: expected ',' or ']', but got ':' "
                            "(while parsing a flow sequence started on line 2)"]


def test_unsafe_tags_are_refused(tmp_path):
    path = write(tmp_path, "experiment: !!python/object/apply:os.system ['echo pwned']\n")
    (line,) = errors(path)
    assert line.startswith(f"{path}:1: YAML syntax error: could not determine a constructor")


def test_file_level_problems(tmp_path):
    assert errors(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: file not found"]
    path = write(tmp_path, "- a\n- b\n")
    assert errors(path) == [f"{path}:1: the file is a list, not a mapping of sections (expected 'key: value' lines)"]
    path = write(tmp_path, "")
    assert errors(path) == [f"{path}: the file is empty (expected 'key: value' lines)"]


def test_problems_attribute(tmp_path):
    path = write(tmp_path, GOOD.replace("lr: 0.01", "lr: 0"))
    with pytest.raises(ConfigError) as info:
        load_yaml_model(path, Experiment)
    assert info.value.problems == [(str(path), 13, "training.lr", "Input should be greater than 0")]


def test_overrides(tmp_path):
    path = write(tmp_path, GOOD)
    cfg = load_yaml_model(path, Experiment, overrides={"training.epochs": "3", "network.layers[0].outputs": 2,
                                                       "training.mode": "in_silico"})
    assert (cfg.training.epochs, cfg.network.layers[0].outputs, cfg.training.mode) == (3, 2, "in_silico")
    assert errors(path, overrides={"training.epochs": "0", "twin.colour": "red", "experiment.name": "x"}) == [
        f"{path}: experiment.name: cannot apply override: experiment is not a section; cannot set 'experiment.name'",
        f"{path}: twin.colour: unknown field (allowed: kind, samples)",
        f"{path}: training.epochs: Input should be greater than 0",
    ]


def test_set_by_path_and_parse_override():
    d: dict = {"a": {"b": [{"c": 1}, {"c": 2}]}}
    set_by_path(d, "a.b[1].c", 5)
    set_by_path(d, "new.section.x", [1, 2])
    assert d == {"a": {"b": [{"c": 1}, {"c": 5}]}, "new": {"section": {"x": [1, 2]}}}
    with pytest.raises(ValueError, match="list of 2 items"):
        set_by_path(d, "a.b[7].c", 1)
    assert parse_override("training.lr=1.0e-3") == ("training.lr", 0.001)
    assert parse_override("twin.hidden=[64, 64]") == ("twin.hidden", [64, 64])
    with pytest.raises(ValueError):
        parse_override("training.lr")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_experiment_file_is_valid(path: Path) -> None:
    from orchestrator.config import load_experiment

    cfg = load_experiment(path)
    assert cfg.experiment == path.stem and cfg.setup in ("electronic", "mechanical", "optical")


def test_an_unknown_setup_names_the_field_and_the_choices(tmp_path: Path) -> None:
    from orchestrator.config import ConfigError, load_experiment

    source = (Path(__file__).resolve().parents[1] / "experiments" / "mechanical_digits.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(source.replace("setup: mechanical", "setup: acoustic"))
    with pytest.raises(ConfigError) as err:
        load_experiment(bad)
    line = source.splitlines().index("setup: mechanical") + 1
    assert str(err.value) == f"{bad}:{line}: setup: must be one of 'electronic', 'mechanical', 'optical'"
    # the sections follow the setup: a mechanical-only field in an electronic file is an unknown field
    bad.write_text(source.replace("setup: mechanical", "setup: electronic"))
    with pytest.raises(ConfigError, match=r"instruments\.awg\.ramp_steps: unknown field"):
        load_experiment(bad)
