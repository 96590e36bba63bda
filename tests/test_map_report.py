"""The map of issue 17: the sweep files of experiments/sweeps/map_*.yaml load and span what the map needs (four
modes, depth 1-5, twins from a few hundred to 16k samples), and experiments/map_report.py turns run folders into
the map's table rows and PNGs.

The run folders come from one real tiny ``pnn run`` (PAT on the simulated electronic bench: 64 slots, one layer, a
200-sample twin, one epoch; a few seconds); its copies play the other modes and points, with config.yaml and
summary.json edited in their own formats.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.sweep_file import expand_settings, load_sweep
from tests.test_cli import EXPERIMENT, RUN, pnn

ROOT = Path(__file__).resolve().parents[1]
MAPS = sorted((ROOT / "experiments" / "sweeps").glob("map_*.yaml"))


def load_report():
    spec = importlib.util.spec_from_file_location("map_report", ROOT / "experiments" / "map_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["map_report"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", MAPS, ids=[p.stem for p in MAPS])
def test_the_map_sweep_files_load_and_span_the_map(path: Path) -> None:
    sweep = load_sweep(path)
    assert sweep.config.simulate and sweep.base.artifacts_dir  # the map's own twins
    space = sweep.config.model_dump(mode="json")["space"]
    modes = [expand_settings(space, {"mode": label}) for label in space["mode"]["grid"]]
    assert {(m["training.mode"], m.get("twin.refine.enabled", False)) for m in modes} == {
        ("in_silico", False), ("pat", False), ("pat", True), ("perturbative", False)}
    points = [expand_settings(space, {"point": label}) for label in space["point"]["grid"]]
    assert {p.get("network.depth", sweep.base.network.depth) for p in points} == {1, 2, 3, 4, 5}
    samples = {p.get("twin.samples", sweep.base.twin.samples) for p in points}
    assert min(samples) <= 500 and max(samples) == 16000
    assert any(k.startswith("twin.neural.") for p in points for k in p)  # the twin's size varies too
    for label in space["point"]["grid"]:  # every trial validates
        for mode in space["mode"]["grid"]:
            sweep.trial_config({"mode": mode, "point": label})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One real PAT run folder: 64 slots, one layer, a 200-sample neural twin, one epoch."""
    out = tmp_path_factory.mktemp("map") / "pat"
    artifacts = out.parent / "artifacts"
    result = pnn("run", EXPERIMENT, *RUN, "--out", out, "--epochs", 1, "--set", "task.n_train=64", "--set",
                 "twin.samples=200", "--set", "twin.neural.epochs=1", "--set", f"artifacts_dir={artifacts}")
    assert result.exit_code == 0, result.output
    return out


def variant(run: Path, folder: Path, *, mode: str, refine: bool = False, depth: int | None = None,
            samples: int | None = None, nmse: float | None = None, accuracy: float) -> Path:
    """A copy of ``run`` as another mode or point: its config.yaml and summary.json edited."""
    shutil.copytree(run, folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    config["training"]["mode"] = mode
    config["twin"]["refine"]["enabled"] = refine
    if depth is not None:
        config["network"]["depth"] = depth
    if samples is not None:
        config["twin"]["samples"] = samples
    if mode == "perturbative":
        summary["provenance"]["twin"] = {"kind": None, "note": "perturbative training uses no twin"}
    elif nmse is not None:
        summary["provenance"]["twin"]["val_nmse"] = nmse
    summary.update(mode=mode, refine=refine, test_accuracy=accuracy)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_the_report_writes_the_table_rows_and_the_plot(tiny_run: Path, tmp_path: Path) -> None:
    report = load_report()
    real = json.loads((tiny_run / "summary.json").read_text())
    nmse = real["provenance"]["twin"]["val_nmse"]
    trials = tmp_path / "sweep" / "trials"
    trials.mkdir(parents=True)
    shutil.copytree(tiny_run, trials / "pat-d1")
    variant(tiny_run, trials / "insilico-d1", mode="in_silico", accuracy=0.5)
    variant(tiny_run, trials / "insilico-d2", mode="in_silico", depth=2, accuracy=0.25)
    variant(tiny_run, trials / "refine-d1", mode="pat", refine=True, accuracy=0.75)
    variant(tiny_run, trials / "pat-s50", mode="pat", samples=50, nmse=0.5, accuracy=0.125)
    variant(tiny_run, trials / "spsa-d1", mode="perturbative", accuracy=0.1)
    variant(tiny_run, trials / "spsa-s50", mode="perturbative", samples=50, accuracy=0.1)  # the same run again
    unfinished = variant(tiny_run, trials / "unfinished", mode="pat", depth=3, accuracy=0.9)
    summary = json.loads((unfinished / "summary.json").read_text())
    (unfinished / "summary.json").write_text(json.dumps({**summary, "status": "stopped"}))

    md = tmp_path / "results_map.md"
    md.write_text("# kept\n\nprose\n")
    assert report.main([str(tmp_path / "sweep"), "--md", str(md), "--png-dir", str(tmp_path)]) == 0
    assert (tmp_path / "results_map_electronic.png").stat().st_size > 10_000
    text = md.read_text()
    assert text.startswith("# kept\n\nprose\n") and "7 finished, 1 pending" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| depth | twin | twin NMSE (held out) | in silico | PAT | PAT + refine | perturbative |"
    training = real["device_samples_by_purpose"]["training"]  # the copies keep the real run's counts
    k, spsa = report.samples_text(training + 200), report.samples_text(training)  # + the twin's 200 samples, or not
    assert rows[1] == (f"| 1 | neural 200, 16 ch (base) | {nmse:.4f} | 0.500 ({k}) | {real['test_accuracy']:.3f} "
                       f"({k}) | 0.750 ({k}) | 0.100 ({spsa}) |")
    assert rows[2] == f"| 2 | neural 200, 16 ch (base) | {nmse:.4f} | 0.250 ({k}) |  |  |  |"
    assert rows[3] == (f"| 1 | neural 50, 16 ch | 0.5000 |  | 0.125 ({report.samples_text(training + 50)}) |  |  |")
    assert len(rows) == 4
    # a second report replaces its own part of the file, and nothing else
    assert report.main([str(tmp_path / "sweep"), "--md", str(md), "--png-dir", str(tmp_path)]) == 0
    assert md.read_text() == text
