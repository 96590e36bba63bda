"""The setup of one's own in examples/: a user's file registers it, and ``pnn check`` and ``pnn run`` work on it.

Every command runs in a subprocess (``python -m orchestrator.cli``), not through click's CliRunner as in
test_cli.py: ``--setup-file`` registers the example's kit and twins in the process that loads it, and the other
tests must keep seeing only the built-in setups.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP_FILE = ROOT / "examples" / "coupled_oscillators.py"
EXPERIMENT = ROOT / "examples" / "fashion_mnist_oscillators.yaml"
# CI sets PNN_DATA_DIR; in a checkout the shared data sits next to the repository (../shared/data)
DATA = Path(os.environ.get("PNN_DATA_DIR") or ROOT.parent / "shared" / "data").resolve()
needs_fashion = pytest.mark.skipif(not (DATA / "fashion-mnist").is_dir(),
                                   reason=f"no Fashion-MNIST at {DATA}/fashion-mnist: set PNN_DATA_DIR")

BRIEF = ["--set", "task.n_train=1000", "--set", "task.n_test=500", "--epochs", "2", "--set", "twin.samples=300",
         "--set", "twin.physics.samples=200", "--set", "twin.physics.epochs=5"]
"""A run of a few seconds: 1000 training images, 2 epochs, a twin calibrated on 300 measurements."""


def pnn(*args: str | Path, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    """``pnn ARGS`` in a fresh Python process, with the data directory set."""
    env = {**os.environ, "PNN_DATA_DIR": str(DATA), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *map(str, args)], cwd=cwd, env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)


def python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def brief_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One brief PAT run of the example experiment; its folder holds run/ and artifacts-sim/ (the fitted twin)."""
    if not (DATA / "fashion-mnist").is_dir():
        pytest.skip(f"no Fashion-MNIST at {DATA}/fashion-mnist: set PNN_DATA_DIR")
    folder = tmp_path_factory.mktemp("oscillators")
    result = pnn("--setup-file", SETUP_FILE, "run", EXPERIMENT, "--simulate", "--out", folder / "run",
                 "--set", f"artifacts_dir={folder / 'artifacts'}", *BRIEF)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def test_check_on_the_simulated_device() -> None:
    result = pnn("--setup-file", SETUP_FILE, "check", EXPERIMENT, "--simulate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RK4 step" in result.stdout and "pendula" in result.stdout


def test_a_time_step_too_coarse_for_the_network_is_refused() -> None:
    result = pnn("--setup-file", SETUP_FILE, "check", EXPERIMENT, "--simulate", "--set", "encoding.steps=2")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "encoding.steps: 2 RK4 steps" in result.stderr and "use at least 4" in result.stderr


@needs_fashion
def test_a_brief_pat_run_learns(brief_run: Path) -> None:
    summary = json.loads((brief_run / "run" / "summary.json").read_text())
    assert (summary["status"], summary["setup"], summary["mode"], summary["twin"]) == \
        ("finished", "coupled_oscillators", "pat", "physics")
    # 10 classes: chance is 0.1. This seeded run reaches 0.54; 0.3 leaves room for rounding on other machines
    assert summary["test_accuracy"] > 0.3, summary
    assert (brief_run / "artifacts-sim" / "twin_physics.pt").is_file()


@needs_fashion
def test_the_twin_is_wrong_and_the_perfect_twin_is_not(brief_run: Path) -> None:
    """The fitted physics twin misses the device by far more than the device's own noise; the perfect twin (the
    simulated device's noiseless physics) is within it."""
    result = python(f"""
        import json, torch, yaml
        from orchestrator.kits import load_setup_file, setup_kit
        from twins.artifact import load_twin
        from twins.fit import nmse

        load_setup_file({str(SETUP_FILE)!r})
        kit = setup_kit("coupled_oscillators")
        with open({str(EXPERIMENT)!r}) as file:
            cfg = kit.experiment.model_validate(yaml.safe_load(file))
        twin, meta = load_twin({str(brief_run / "artifacts-sim" / "twin_physics.pt")!r})
        with kit.start_bench(cfg, {{}}) as bench:
            setup = kit.open(cfg, twin.n_inputs, None, bench)
            perfect = kit.perfect_twin(cfg, bench, setup)
            gen = torch.Generator().manual_seed(5)
            x = 2 * torch.rand(400, setup.n_inputs, generator=gen) - 1
            theta = 2 * torch.rand(400, setup.n_params, generator=gen) - 1
            y1, y2 = setup.forward(x, theta), setup.forward(x, theta)
            with torch.no_grad():
                print(json.dumps({{"repeat": nmse(y2, y1), "twin": nmse(twin(x, theta), y1),
                                  "perfect": nmse(perfect(x, theta), y1), "kind": type(twin).kind}}))
    """)
    assert result.returncode == 0, result.stderr
    err = json.loads(result.stdout.strip().splitlines()[-1])
    assert err["kind"] == "coupled_oscillators"
    assert 0 < err["repeat"] < 0.01, err              # the device's noise: small but there
    assert err["perfect"] < err["repeat"], err        # within the noise (half the repeat-to-repeat difference)
    assert err["twin"] > 10 * err["repeat"], err      # the nominal model is wrong (NMSE about 0.14)


def test_without_the_setup_file_the_setup_is_unknown(tmp_path: Path) -> None:
    if "coupled_oscillators" in {ep.name for ep in entry_points(group="pnn_lab.setups")}:
        pytest.skip("the example is installed (pip install -e examples/): its entry point makes the setup known")
    result = pnn("check", EXPERIMENT, "--simulate")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "setup: must be one of 'electronic', 'mechanical', 'optical'" in lines[0]
    assert "--setup-file" in lines[0] and "Traceback" not in result.stderr


@needs_fashion
def test_there_is_no_hardware_behind_it(tmp_path: Path) -> None:
    result = pnn("--setup-file", SETUP_FILE, "run", EXPERIMENT, "--out", tmp_path / "run", *BRIEF)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the coupled_oscillators example has no hardware; use --simulate" in result.stderr
