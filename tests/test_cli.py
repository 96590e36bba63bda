"""The ``pnn`` command as a lab operator uses it: help, experiment-file errors, check, sim serve, run and resume.

Commands run in-process through click's CliRunner (``orchestrator.cli.main``), except ``pnn sim serve``, which is
started as a real subprocess so that it can be reached over pyvisa-py and stopped with SIGINT.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import pyvisa
import yaml
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.experiment_file import load_experiment
from simulators.instruments import SimInfiniiVision, SimKeysight33522B

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "electronic_digits.yaml"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SUMMARY_KEYS = {"experiment", "setup", "mode", "twin", "test_accuracy", "train_accuracy", "epochs", "wall_time_s",
                "physical_forward_calls", "samples_per_s"}


def pnn(*args: str):
    """Run ``pnn ARGS`` in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def plain(text: str) -> str:
    return ANSI.sub("", text)


# -- help --------------------------------------------------------------------------------------------------------------

def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, cmd in group.commands.items():
        found.append(prefix + (name,))
        if isinstance(cmd, click.Group):
            found += _commands(cmd, prefix + (name,))
    return found


COMMANDS = _commands(main)


def test_every_documented_command_exists() -> None:
    assert {("check",), ("calibrate",), ("run",), ("bench",), ("sim",), ("sim", "serve"), ("resources",)} <= \
        set(COMMANDS)


@pytest.mark.parametrize("path", [()] + COMMANDS, ids=lambda p: " ".join(p) or "pnn")
def test_help_of_every_command(path: tuple[str, ...]) -> None:
    result = pnn(*path, "--help")
    assert result.exit_code == 0, result.output
    out = plain(result.stdout)
    assert out.startswith("Usage: ") and ("main" if not path else " ".join(path)) in out.splitlines()[0]
    cmd = main
    for name in path:
        cmd = cmd.commands[name]
    summary = (cmd.help or "").split("\n")[0].strip()
    assert summary and " ".join(summary.split()) in " ".join(out.split())  # its own description, not another's
    for param in cmd.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.opts[-1] in out  # every option is documented
    assert pnn(*path, "-h").stdout == result.stdout


def test_run_help_names_the_operator_options() -> None:
    out = plain(pnn("run", "--help").stdout)
    for option in ("--simulate", "--set", "--out", "--resume", "--mode", "--twin", "--epochs", "--data-dir"):
        assert option in out


# -- experiment-file errors ----------------------------------------------------------------------------------------

VALID = """\
experiment: cli_test
setup: electronic
instruments:
  awg:
    resource: TCPIP0::127.0.0.1::5025::SOCKET
    max_abs_volts: 1.5
  scope:
    resource: TCPIP0::127.0.0.1::5026::SOCKET
task:
  dataset: digits
network:
  depth: 2
training:
  lr: 0.05
  epochs: 3
"""


def line_of(text: str, needle: str) -> int:
    """1-based number of the line that starts with ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle))


def test_the_valid_base_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(VALID)
    cfg = load_experiment(path)
    assert (cfg.experiment, cfg.training.lr, cfg.network.depth) == ("cli_test", 0.05, 2)


CASES = {
    "unknown key with a suggestion": (
        ("  lr: 0.05", "  lrr: 0.05"), "  lrr:", "training.lrr: unknown field (did you mean 'lr'?)"),
    "wrong type": (
        ("  epochs: 3", "  epochs: three"), "  epochs:",
        "training.epochs: Input should be a valid integer, unable to parse string as an integer"),
    "out of range": (
        ("    max_abs_volts: 1.5", "    max_abs_volts: 20"), "    max_abs_volts:",
        "instruments.awg.max_abs_volts: Input should be less than or equal to 10"),
    "missing required field (reported at its section)": (
        ("    resource: TCPIP0::127.0.0.1::5025::SOCKET\n", ""), "  awg:",
        "instruments.awg.resource: Field required"),
    "brackets in a message survive": (
        ("  depth: 2", "  depth: 2\n  theta_bounds: [1.0, -1.0]"), "  theta_bounds:",
        "network.theta_bounds: must be [low, high] with low < high"),
    "YAML syntax error": (
        ("  lr: 0.05", "  lr: [0.05"), "  epochs:",
        "YAML syntax error: expected ',' or ']', but got ':'"),
}


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("case", list(CASES))
def test_config_errors_are_file_line_field_message(tmp_path: Path, monkeypatch, case: str, command: str) -> None:
    monkeypatch.chdir(tmp_path)
    (old, new), where, message = CASES[case]
    assert old in VALID
    text = VALID.replace(old, new)
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    result = pnn(command, path)
    assert result.exit_code == 2, result.output
    lines = plain(result.stderr).splitlines()
    expected = f"{path}:{line_of(text, where)}: {message}"
    assert any(line.startswith(expected) for line in lines), (expected, lines)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "artifacts").exists()  # nothing was written


def test_all_problems_are_reported_each_on_one_unwrapped_line(tmp_path: Path) -> None:
    folder = tmp_path / ("a_folder_with_a_long_name_so_that_every_message_is_wider_than_a_terminal_" + "x" * 40)
    folder.mkdir()
    text = VALID.replace("  lr: 0.05", "  lrr: 0.05").replace("  epochs: 3", "  epochs: -3")
    path = folder / "exp.yaml"
    path.write_text(text)
    result = pnn("check", path)
    assert result.exit_code == 2
    lines = [line for line in plain(result.stderr).splitlines() if line.strip()]
    assert lines == [f"{path}:{line_of(text, '  lrr:')}: training.lrr: unknown field (did you mean 'lr'?)",
                     f"{path}:{line_of(text, '  epochs:')}: training.epochs: Input should be greater than 0"]


def test_bad_command_line_override_has_no_line(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(VALID)
    result = pnn("check", path, "--set", "training.lr=-1")
    assert result.exit_code == 2
    assert f"{path}: training.lr: Input should be greater than 0" in plain(result.stderr).splitlines()
    result = pnn("check", path, "--set", "training.lr")  # not FIELD=VALUE
    assert result.exit_code == 2 and "FIELD=VALUE" in plain(result.stderr)


def test_nonexistent_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    result = pnn("check", path)
    assert result.exit_code == 2
    assert plain(result.stderr).splitlines() == [f"{path}: file not found"]


# -- check -------------------------------------------------------------------------------------------------------------

def test_check_on_the_simulated_bench_prints_both_identities(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = pnn("check", EXPERIMENT, "--simulate")
    assert result.exit_code == 0, result.output
    out = plain(result.stdout)
    for sim in (SimKeysight33522B, SimInfiniiVision):
        manufacturer, model = sim.idn.split(",")[:2]
        assert model in out
        assert all(word in out for word in manufacturer.split())
    assert out.count("127.0.0.1") == 2  # the in-process bench, not the lab addresses in the file
    assert "error queue" in out and "errors pending" not in out
    assert list(tmp_path.iterdir()) == []  # check writes nothing


def test_an_instrument_that_cannot_be_reached_is_exit_3_without_a_resume_hint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as listener:  # a port that is surely closed once we let it go
        port = listener.getsockname()[1]
    result = pnn("calibrate", EXPERIMENT, "--set", f"instruments.awg.resource=TCPIP0::127.0.0.1::{port}::SOCKET",
                 "--set", "instruments.awg.timeout_s=0.5",
                 "--set", f"instruments.scope.resource=TCPIP0::127.0.0.1::{port}::SOCKET")
    assert result.exit_code == 3, result.output
    text = plain(result.output)
    assert "instrument error: awg" in text and f"127.0.0.1::{port}" in text and "Connection refused" in text
    assert "resume" not in text  # calibrate trains nothing to resume


# -- sim serve ---------------------------------------------------------------------------------------------------------

def _pnn_executable() -> list[str]:
    script = shutil.which("pnn", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "orchestrator.cli"]


@contextlib.contextmanager
def _sim_serve(tmp_path: Path, bench: str, line_pattern: str) -> Iterator[dict[str, str]]:
    """Run `pnn sim serve BENCH` as a subprocess; yield {role: resource} from the lines it prints.

    On leaving the block it sends SIGINT (as Ctrl-C would) and expects a clean exit.
    """
    proc = subprocess.Popen(_pnn_executable() + ["sim", "serve", bench, "--seed", "2"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        resources = {}
        deadline = time.monotonic() + 60
        while len(resources) < 2:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic())).rstrip("\n")
            match = re.fullmatch(line_pattern, line)
            assert match, line
            resources[match.group(1)] = match.group(2)
        yield resources
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("bench", ["electronic", "mechanical"])
def test_sim_serve_prints_resources_answers_visa_and_stops_on_sigint(tmp_path: Path, bench: str) -> None:
    with _sim_serve(tmp_path, bench, r"(awg|scope) (TCPIP0::127\.0\.0\.1::(\d+)::SOCKET)") as resources:
        rm = pyvisa.ResourceManager("@py")
        try:
            for role, sim in (("awg", SimKeysight33522B), ("scope", SimInfiniiVision)):
                inst = rm.open_resource(resources[role], read_termination="\n", write_termination="\n", timeout=5000)
                assert inst.query("*IDN?") == sim.idn
                assert inst.query("SYST:ERR?") == '+0,"No error"'
                inst.close()
        finally:
            rm.close()
    for res in resources.values():
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(res.split("::")[2])), timeout=1).close()


# -- run ---------------------------------------------------------------------------------------------------------------

N_TRAIN, N_TEST, BATCH, DEPTH = 300, 100, 16, 1
RUN = ["--simulate", "--set", "network.width=64", "--set", f"network.depth={DEPTH}",
       "--set", f"task.n_train={N_TRAIN}", "--set", f"task.n_test={N_TEST}", "--set", f"training.batch_size={BATCH}"]


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_then_resume_on_the_simulated_bench(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    result = pnn("run", EXPERIMENT, *RUN, "--twin", "perfect", "--out", out, "--epochs", 3)
    assert result.exit_code == 0, result.output

    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert (summary["experiment"], summary["setup"], summary["mode"], summary["twin"]) == \
        ("electronic_digits", "electronic", "pat", "perfect")
    assert summary["epochs"] == 3
    assert 0 <= summary["train_accuracy"] <= 1 and 0 <= summary["test_accuracy"] <= 1
    # 10 classes: chance is 0.1; this run reaches about 0.4 on the device
    assert summary["test_accuracy"] > 0.25 and summary["train_accuracy"] > 0.25, summary
    assert summary["wall_time_s"] > 0 and summary["samples_per_s"] > 0
    # PAT: every training batch goes through the device once per layer, evaluations are batched as well
    train_calls = 3 * math.ceil(N_TRAIN / BATCH) * DEPTH
    assert train_calls <= summary["physical_forward_calls"] <= train_calls + 3 * (3 + 2) * DEPTH

    rows = read_metrics(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_loss", "test_accuracy"} <= rows[0].keys()
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])  # it learns
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["training"]["epochs"] == 3 and resolved["network"]["width"] == 64
    assert resolved["twin"]["kind"] == "perfect" and resolved["task"]["n_train"] == N_TRAIN
    assert load_experiment(out / "config.yaml").training.batch_size == BATCH  # the resolved file is reusable
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"learning_curves.png", "confusion_matrix.png", "physical_outputs.png"} <= set(pngs)
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    snapshot = json.loads((out / "instruments.json").read_text())
    assert "33522B" in snapshot["awg"]["identity"] and "DSOX1102G" in snapshot["scope"]["identity"]
    assert (out / "checkpoint.pt").exists()

    result = pnn("run", EXPERIMENT, *RUN, "--twin", "perfect", "--out", out, "--epochs", 4, "--resume")
    assert result.exit_code == 0, result.output
    resumed = read_metrics(out / "metrics.csv")
    assert [int(r["epoch"]) for r in resumed] == [1, 2, 3, 4]
    assert resumed[:3] == rows  # finished epochs are kept as they were
    summary2 = json.loads((out / "summary.json").read_text())
    assert summary2["epochs"] == 4
    assert summary2["wall_time_s"] > sum(float(r["seconds"]) for r in resumed)  # all sessions plus the evaluation
    # the resumed session trained one epoch on the device, not four
    assert summary2["physical_forward_calls"] < 2 * math.ceil(N_TRAIN / BATCH) * DEPTH


def test_in_silico_run_calibrates_a_twin_and_evaluates_on_the_device(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "insilico"
    result = pnn("run", EXPERIMENT, *RUN, "--mode", "in_silico", "--twin", "neural", "--out", out, "--epochs", 1,
                 "--set", "twin.samples=300", "--set", "twin.neural.epochs=3")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert (summary["mode"], summary["twin"], summary["epochs"]) == ("in_silico", "neural", 1)
    assert 0 <= summary["twin_test_accuracy"] <= 1 and 0 <= summary["test_accuracy"] <= 1
    # trained on the twin: the device is used only to evaluate (a few batched calls, not one per training batch)
    assert 0 < summary["physical_forward_calls"] < math.ceil(N_TRAIN / BATCH)
    rows = read_metrics(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1] and "twin_test_accuracy" in rows[0]
    # the missing twin was calibrated first, into ./artifacts (the working directory), not next to the run
    artifacts = tmp_path / "artifacts" / "electronic_digits-sim"
    assert (artifacts / "twin_neural.pt").exists() and (artifacts / "twin_data.h5").exists()
    report = json.loads((artifacts / "report.json").read_text())
    assert report["samples"] == 300 and [t["kind"] for t in report["twins"]] == ["neural"]


def _calibrate_three_twins(experiment: Path, *settings: str) -> tuple[Path, dict]:
    """`pnn calibrate --simulate` with short twin fits into ./cal-sim; returns that folder and its report."""
    sets = [arg for setting in settings for arg in ("--set", setting)]
    result = pnn("calibrate", experiment, "--simulate", "--twins", "neural,physics,hybrid", *sets,
                 "--set", "twin.neural.epochs=2", "--set", "twin.physics.epochs=2",
                 "--set", "twin.physics.samples=100", "--set", "artifacts_dir=cal")
    assert result.exit_code == 0, result.output
    report = json.loads(Path("cal-sim", "report.json").read_text())
    assert {t["kind"] for t in report["twins"]} == {"neural", "physics", "hybrid"}
    assert all(0 < t["val_nmse"] < 1 for t in report["twins"])  # each twin explains most of the outputs
    return Path.cwd() / "cal-sim", report


def test_calibrate_the_plate_writes_its_response_and_three_twins(tmp_path: Path, monkeypatch) -> None:
    """The mechanical calibration: delays, the plate's frequency response (CSV + plot), twin data (HDF5) and the
    neural, physics and hybrid twins, each with its held-out error."""
    monkeypatch.chdir(tmp_path)
    mech = EXPERIMENT.with_name("mechanical_digits.yaml")
    art, report = _calibrate_three_twins(mech, "network.width=24", "twin.samples=200", "instruments.awg.ramp_s=0")
    assert 0 < report["response_delay_s"] < 1e-3 and report["delay_s"] > 0
    rows = list(csv.DictReader((art / "frequency_response.csv").open()))
    assert len(rows) > 100 and {"f_hz", "magnitude", "phase_rad", "coherence"} <= set(rows[0])
    for name in ("frequency_response.png", "twin_data.h5", "twin_neural.pt", "twin_physics.pt", "twin_hybrid.pt",
                 "twin_hybrid_vs_device.png"):
        assert (art / name).stat().st_size > 0, name


# -- the optical bench ---------------------------------------------------------------------------------------------------

OPTICAL = EXPERIMENT.with_name("optical_vowels.yaml")


def test_check_the_optical_bench_over_its_pseudo_terminals(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = pnn("check", OPTICAL, "--simulate", "--set", "network.width=12")
    assert result.exit_code == 0, result.output
    out = plain(result.stdout)
    assert "PS-SLM640" in out and "SPEC-CCD1024" in out
    assert out.count("/dev/pts/") == 2  # the in-process bench's serial ports, not the lab's USB adapters
    assert "active SLM pixels" in out and "errors pending" not in out


def test_calibrate_the_optical_bench_writes_its_calibration_and_three_twins(tmp_path: Path, monkeypatch) -> None:
    """Dark frame, spectrometer offset and LUT check (JSON + plot), twin data (HDF5), neural, physics and hybrid twins."""
    monkeypatch.chdir(tmp_path)
    art, report = _calibrate_three_twins(OPTICAL, "network.width=8", "twin.samples=300",
                                         "instruments.camera.dark_frames=4")
    optical = report["optical"]
    assert optical["roi"][1] > 0 and abs(optical["column_offset"]) < 20 and optical["reference_mean"] > 0
    assert 100 < report["lut_check"]["pi_gray_measured"] < 150
    calibration = json.loads((art / "calibration.json").read_text())
    assert len(calibration["instruments"]["calibration"]["lut"]) == 256  # the SLM's table, as it reported it
    for name in ("optical_calibration.png", "twin_data.h5", "twin_neural.pt", "twin_physics.pt", "twin_hybrid.pt",
                 "twin_physics_vs_device.png"):
        assert (art / name).stat().st_size > 0, name


def test_sim_serve_optical_prints_pseudo_terminals_that_pyserial_opens(tmp_path: Path) -> None:
    import serial

    with _sim_serve(tmp_path, "optical", r"(slm|camera) (/dev/pts/\d+)") as ports:
        for role, model in (("slm", "PS-SLM640"), ("camera", "SPEC-CCD1024")):
            with serial.Serial(ports[role], baudrate=3_000_000, timeout=5) as port:
                port.write(b"*IDN?\n")
                assert model in port.readline().decode()
