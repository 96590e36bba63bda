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
    from orchestrator.experiment_file import load_experiment

    cfg = load_experiment(path)
    assert cfg.experiment == path.stem and cfg.setup in ("electronic", "mechanical", "optical")


def test_an_unknown_setup_names_the_field_and_the_choices(tmp_path: Path) -> None:
    from orchestrator.config import ConfigError
    from orchestrator.experiment_file import load_experiment

    source = (Path(__file__).resolve().parents[1] / "experiments" / "mechanical_digits.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(source.replace("setup: mechanical", "setup: acoustic"))
    with pytest.raises(ConfigError) as err:
        load_experiment(bad)
    line = source.splitlines().index("setup: mechanical") + 1
    assert str(err.value) == (f"{bad}:{line}: setup: must be one of 'electronic', 'mechanical', 'optical' (a setup of "
                              f"your own: pnn --setup-file FILE, or an entry point in the group 'pnn_lab.setups')")
    # the sections follow the setup: a mechanical-only field in an electronic file is an unknown field
    bad.write_text(source.replace("setup: mechanical", "setup: electronic"))
    with pytest.raises(ConfigError, match=r"instruments\.awg\.ramp_steps: unknown field"):
        load_experiment(bad)


# -- the shipped experiment files with one mistake each: exactly one problem, at the right file, line and field ------

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# id: (experiment file, text to replace, replacement, line holding the problem, field, message)
EXPERIMENT_CASES = {
    "resource no transport can open": (
        "electronic_digits.yaml", "resource: <your AWG's VISA resource>", "resource: my-awg",
        "resource: my-awg", "instruments.awg.resource",
        "cannot tell how to open 'my-awg'; expected a VISA resource ('TCPIP0::host::5025::SOCKET', 'USB0::...::INSTR', "
        "'ASRL/dev/ttyUSB0::INSTR'), a serial port ('/dev/ttyUSB0', 'COM3') or a pyserial URL ('socket://host:port')"),
    "bare ASRL": (
        "optical_vowels.yaml", "resource: <your camera's serial port>", "resource: ASRL", "ASRL   # spectroscopy CCD",
        "instruments.camera.resource", "cannot tell how to open 'ASRL'; expected a VISA resource"),
    "VISA socket without a host": (
        "mechanical_digits.yaml", "resource: <your scope's VISA resource>", "resource: TCPIP0::::SOCKET",
        "resource: TCPIP0::::SOCKET", "instruments.scope.resource",
        "not a valid VISA resource: Could not parse 'TCPIP0::::SOCKET'. The syntax is "
        "'TCPIP[board]::host address::port::SOCKET' (host_address part is mandatory)."),
    "VISA socket port out of range": (
        "electronic_mnist.yaml", "resource: <your scope's VISA resource>", "resource: TCPIP0::192.168.1.21::70000::SOCKET", "::70000::",
        "instruments.scope.resource", "'TCPIP0::192.168.1.21::70000::SOCKET': the port must be a number from 1 to "
                                      "65535, got '70000'"),
    "empty resource": (
        "optical_mnist.yaml", "resource: <your SLM's serial port>", "resource: ''", "resource: ''",
        "instruments.slm.resource", "is empty; give a VISA resource, a serial port or a pyserial URL"),
    "gray level above 255": (
        "optical_vowels.yaml", "gray_max: 255", "gray_max: 300", "gray_max:", "instruments.slm.gray_max",
        "Input should be less than or equal to 255"),
    "gray levels out of order": (
        "optical_vowels.yaml", "gray_max: 255", "gray_max: 0", "gray_max:", "instruments.slm.gray_max",
        "gray_min 0 must be below gray_max 0"),
    "negative exposure": (
        "optical_vowels.yaml", "exposure_s: 1.0e-3", "exposure_s: -1.0e-3", "exposure_s:",
        "instruments.camera.exposure_s", "Input should be greater than or equal to 0.00001"),
    "exposure above the camera's safety limit": (
        "optical_mnist.yaml", "exposure_s: 1.0e-3", "exposure_s: 0.5", "exposure_s:",
        "instruments.camera.exposure_s", "exposure_s 0.5 s is above the safety limit max_exposure_s 0.1 s"),
    "optical theta_bounds outside the SLM's range": (
        "optical_vowels.yaml", "theta_bounds: [-1.0, 1.0]", "theta_bounds: [-2.0, 1.0]", "theta_bounds:",
        "network.theta_bounds", "[-2, 1] must lie inside [-1, 1] for the optical setup"),
    "electronic theta_bounds outside the DAC range": (
        "electronic_digits.yaml", "theta_bounds: [-1.0, 1.0]", "theta_bounds: [-1.0, 1.5]", "theta_bounds:",
        "network.theta_bounds", "[-1, 1.5] must lie inside [-1, 1] for the electronic setup"),
    "theta_bounds reversed": (
        "mechanical_fsdd.yaml", "theta_bounds: [-0.5, 0.5]", "theta_bounds: [0.5, -0.5]", "theta_bounds:",
        "network.theta_bounds", "must be [low, high] with low < high"),
    "drive above the AWG's safety limit": (
        "mechanical_fsdd.yaml", "drive_volts_per_unit: 1.0", "drive_volts_per_unit: 2.5", "drive_volts_per_unit:",
        "encoding.drive_volts_per_unit", "2.5 V is above the safety limit instruments.awg.max_abs_volts 1 V"),
    "an item longer than the scope record": (
        "electronic_digits.yaml", "max_points: 1000000", "max_points: 1000", "width: 320", "network.width",
        "one item of width 320 needs 1600 AWG samples; instruments.awg.memory_points and instruments.scope.max_points "
        "leave room for 936"),
    "more spectral bins than SLM pixels": (
        "optical_vowels.yaml", "width: 28", "width: 400", "width: 400", "network.width",
        "width 400 needs 800 spectral bins (x and θ); encoding.active_pixels [150, 490] holds 340 pixels"),
    "active pixels beyond the SLM": (
        "optical_mnist.yaml", "active_pixels: [150, 490]", "active_pixels: [150, 700]", "active_pixels:",
        "encoding.active_pixels", "[150, 700] must satisfy 0 <= first < end <= 640 (shaper.n_pixels)"),
    "negative load": (
        "electronic_digits.yaml", "load_ohm: 50", "load_ohm: -50", "load_ohm:", "instruments.awg.load_ohm",
        "Input should be greater than or equal to 1 or 'INF'"),
    "infinite learning rate": (
        "mechanical_mnist.yaml", "  lr: 0.02", "  lr: .inf", "  lr: .inf", "training.lr",
        "Input should be a finite number"),
    "unknown trigger source": (
        "mechanical_digits.yaml", "trigger_source: EXT", "trigger_source: EXTRA", "trigger_source:",
        "instruments.scope.trigger_source", "'EXTRA' is not one of CHAN1, CHAN2, CHAN3, CHAN4, EXT, LINE, WGEN"),
    "wrong type": (
        "optical_vowels.yaml", "dark_frames: 32", "dark_frames: many", "dark_frames:", "instruments.camera.dark_frames",
        "Input should be a valid integer, unable to parse string as an integer"),
    "yes for a number (YAML reads it as true)": (
        "electronic_digits.yaml", "seed: 0\n", "seed: yes\n", "seed: yes", "seed",
        "expected a number or a name, not yes/no/true/false"),
    "no in a list of numbers": (
        "electronic_digits.yaml", "theta_bounds: [-1.0, 1.0]", "theta_bounds: [no, 1.0]", "theta_bounds:",
        "network.theta_bounds", "expected a number or a name, not yes/no/true/false"),
    "true for a channel number": (
        "electronic_mnist.yaml", "    channel: 1\n", "    channel: true\n", "    channel: true", "instruments.awg.channel",
        "expected a number or a name, not yes/no/true/false"),
    "a section given as a value": (
        "electronic_digits.yaml", "task:\n  dataset: digits", "task: digits", "task: digits", "task",
        "Input should be a valid dictionary or instance of TaskConfig"),
    "unknown key at the top": (
        "electronic_digits.yaml", "seed: 0\n", "seed: 0\ncolour: red\n", "colour:", "colour",
        "unknown field (allowed: experiment, description, setup, seed, instruments, encoding, task, network, twin, "
        "training, simulate, artifacts_dir)"),
    "unknown key in an instrument": (
        "optical_vowels.yaml", "dark_frames: 32", "dark_frame: 32", "dark_frame:", "instruments.camera.dark_frame",
        "unknown field (did you mean 'dark_frames'?)"),
    "unknown key two sections down": (
        "optical_mnist.yaml", "  output_span_nm: 6.0", "  output_span_nm: 6.0\n  shaper:\n    n_pixel: 640",
        "    n_pixel:", "encoding.shaper.n_pixel", "unknown field (did you mean 'n_pixels'?)"),
    "unknown key in the twin's neural section": (
        "mechanical_digits.yaml", "    channels: 16", "    chanels: 16", "chanels:", "twin.neural.chanels",
        "unknown field (did you mean 'channels'?)"),
    "duplicate key in an instrument": (
        "electronic_mnist.yaml", "    channel: 1\n    load_ohm: 50", "    channel: 1\n    channel: 2\n    load_ohm: 50",
        "    channel: 2", "instruments.awg.channel", "duplicate key (first given on line 15; only one is allowed)"),
}


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("name, old, new, where, field, message", EXPERIMENT_CASES.values(), ids=EXPERIMENT_CASES)
def test_one_mistake_in_an_experiment_file(tmp_path, name, old, new, where, field, message):
    from orchestrator.experiment_file import load_experiment

    text = (EXPERIMENTS / name).read_text()
    assert text.count(old) == 1
    text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    (problem,) = info.value.problems
    assert problem[:3] == (str(path), _line_of(text, where), field)
    assert problem[3].startswith(message)
    assert str(info.value).startswith(f"{path}:{problem[1]}: {field}: {message}")


FILE_CASES = {
    "empty file": ("", None, "the file is empty (expected 'key: value' lines)"),
    "only comments": ("# nothing yet\n", None, "the file is empty (expected 'key: value' lines)"),
    "a list": ("- setup: optical\n- seed: 1\n", 1,
               "the file is a list, not a mapping of sections (expected 'key: value' lines)"),
    "YAML syntax error": ("experiment: x\nsetup: optical\ninstruments: {slm: [1, 2}\n", 3,
                          "YAML syntax error: expected ',' or ']', but got '}' "
                          "(while parsing a flow sequence started on line 3)"),
}


def test_yes_and_no_still_set_the_switches(tmp_path):
    """The yes/no check above refuses true/false only where the field has no use for it."""
    from orchestrator.experiment_file import load_experiment

    cfg = load_experiment(EXPERIMENTS / "optical_vowels.yaml",
                          overrides={"simulate.realtime": "yes", "network.shuffle_slots": "no"})
    assert cfg.simulate.realtime is True and cfg.network.shuffle_slots is False


@pytest.mark.parametrize("text, line, message", FILE_CASES.values(), ids=FILE_CASES)
def test_unusable_experiment_files(tmp_path, text, line, message):
    from orchestrator.experiment_file import load_experiment

    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert info.value.problems == [(str(path), line, "", message)]


def test_a_data_set_problem_points_at_task_dataset(tmp_path):
    from orchestrator.config import task_data_error

    text = (EXPERIMENTS / "optical_vowels.yaml").read_text()
    path = tmp_path / "vowels.yaml"
    path.write_text(text)
    err = task_data_error(path, ValueError("data directory /nope does not exist"))
    assert str(err) == f"{path}:{_line_of(text, 'dataset: vowels')}: task.dataset: data directory /nope does not exist"
