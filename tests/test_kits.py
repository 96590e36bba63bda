"""The registry of setups: built-in kits, a kit registered in a setup file, and a kit an installed package offers
through the entry point group ``pnn_lab.setups`` (a real distribution's metadata on sys.path, found by
importlib.metadata)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator import kits
from orchestrator.config import ExperimentConfig
from orchestrator.experiment_file import load_experiment
from orchestrator.kits import ENTRY_POINT_GROUP, KitError, SetupKit, known_setups, register_setup, setup_kit
from orchestrator.yamlconfig import ConfigError

KIT_SOURCE = '''
from typing import Literal

from common.models import StrictModel
from orchestrator.config import ExperimentConfig
from orchestrator.kits import SetupKit, register_setup


class {cls}Encoding(StrictModel):
    gain: float = 1.0

    def n_outputs(self, n_inputs: int) -> int:
        return n_inputs


class {cls}Experiment(ExperimentConfig):
    setup: Literal["{name}"]
    instruments: StrictModel = StrictModel()
    encoding: {cls}Encoding = {cls}Encoding()


class {cls}Kit(SetupKit):
    name = "{name}"
    experiment = {cls}Experiment
'''

EXPERIMENT = """\
experiment: plugin_test
setup: {name}
encoding:
  gain: {gain}
task:
  dataset: digits
"""


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, restored after the test (kits registered by the test are forgotten)."""
    monkeypatch.setattr(kits, "_KITS", dict(kits._KITS))
    return kits._KITS


def test_the_built_in_setups_are_known_and_each_kit_has_its_experiment_model(registry) -> None:
    assert {"electronic", "mechanical", "optical"} <= set(known_setups())
    for name in ("electronic", "mechanical", "optical"):
        kit = setup_kit(name)
        assert kit.name == name and issubclass(kit.experiment, ExperimentConfig)
        assert kit.experiment.model_fields["setup"].annotation.__args__ == (name,)


def test_register_refuses_what_is_not_a_kit_and_a_second_kit_for_a_taken_name(registry) -> None:
    with pytest.raises(TypeError, match="not a SetupKit"):
        register_setup(object())  # type: ignore[arg-type]

    class Nameless(SetupKit):
        pass

    with pytest.raises(TypeError, match="not a SetupKit with a name"):
        register_setup(Nameless)

    class Impostor(SetupKit):
        name = "electronic"

    setup_kit("electronic")
    with pytest.raises(ValueError, match="already registered by orchestrator.kits.electronic.ElectronicKit"):
        register_setup(Impostor)


def test_a_kit_without_a_simulator_or_twins_says_so_in_one_line(registry) -> None:
    class Bare(SetupKit):
        name = "bare"

    kit = register_setup(Bare)
    for call in (lambda: kit.start_bench(None, {}), lambda: kit.physics_twin(None, None, 1, 1),
                 lambda: kit.perfect_twin(None, None, None)):
        with pytest.raises(KitError, match="the bare setup has no"):
            call()


def test_a_setup_file_registers_its_kit_and_its_experiments_load(registry, tmp_path: Path) -> None:
    setup_file = tmp_path / "my_setup.py"
    setup_file.write_text(KIT_SOURCE.format(cls="Spring", name="spring_network")
                          + "\nregister_setup(SpringKit)\n")
    exp = tmp_path / "spring.yaml"
    exp.write_text(EXPERIMENT.format(name="spring_network", gain=2.5))
    with pytest.raises(ConfigError, match="setup: must be one of"):
        load_experiment(exp)
    kits.load_setup_file(setup_file)
    cfg = load_experiment(exp)
    assert cfg.setup == "spring_network" and cfg.encoding.gain == 2.5
    exp.write_text(EXPERIMENT.format(name="spring_network", gain=2.5) + "  offset: 1\n")
    with pytest.raises(ConfigError, match=r"spring\.yaml:7: task\.offset: unknown field"):
        load_experiment(exp)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kits.load_setup_file(tmp_path / "missing.py")


def test_an_installed_package_offers_its_setup_through_the_entry_point(registry, tmp_path: Path,
                                                                       monkeypatch) -> None:
    (tmp_path / "lab_plugin.py").write_text(KIT_SOURCE.format(cls="Chip", name="photonic_chip"))
    dist = tmp_path / "lab_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [{ENTRY_POINT_GROUP}]
        photonic_chip = lab_plugin:ChipKit
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "photonic_chip" in known_setups() and "photonic_chip" not in registry
    exp = tmp_path / "chip.yaml"
    exp.write_text(EXPERIMENT.format(name="photonic_chip", gain=0.5))
    cfg = load_experiment(exp)  # loads the entry point on first use
    assert type(setup_kit("photonic_chip")).__name__ == "ChipKit" and cfg.encoding.gain == 0.5
