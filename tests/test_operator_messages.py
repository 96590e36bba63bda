"""What ``pnn`` tells a lab operator when something goes wrong before or around training (issue 15, item 2): no
traceback for a mistake the operator can fix, no claim about outputs or saved batches that did not happen, and the
exit codes the README gives (2 bad file or usage, 3 instrument failure, 130 interrupted).

The commands run through the real CLI (in-process, or as a subprocess where a signal is sent) on the simulated bench;
an unreachable instrument is a loopback port nobody listens on.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import pyvisa

from drivers.errors import NotConnected
from drivers.resources import is_placeholder
from drivers.transport import open_link
from orchestrator.experiment_file import load_experiment
from orchestrator.yamlconfig import ConfigError
from test_cli import EXPERIMENT, _pnn_executable, plain, pnn
from test_interrupts import PnnProcess

SMALL = ["--set", "network.width=64", "--set", "network.depth=1", "--set", "task.n_train=100",
         "--set", "task.n_test=50", "--set", "training.batch_size=50"]


def closed_port() -> int:
    """A loopback port that refuses connections."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return listener.getsockname()[1]


def at(port: int) -> str:
    return f"TCPIP0::127.0.0.1::{port}::SOCKET"


def unreachable() -> list[str]:
    """--set options that point both instruments at ports nobody listens on."""
    return ["--set", f"instruments.awg.resource={at(closed_port())}", "--set", "instruments.awg.timeout_s=0.5",
            "--set", f"instruments.scope.resource={at(closed_port())}", "--set", "instruments.scope.timeout_s=0.5"]


@contextmanager
def listening() -> Iterator[tuple[socket.socket, int]]:
    """A loopback port that accepts connections (to tell whether anything connected)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.2)
        yield listener, listener.getsockname()[1]


def test_opening_a_link_to_a_closed_port_says_could_not_connect() -> None:
    port = closed_port()
    with pytest.raises(NotConnected, match=rf"could not connect to awg at {at(port)}: .*Connection refused"):
        open_link(at(port), name="awg", timeout_s=0.5)


def test_run_against_an_unreachable_instrument_claims_nothing_that_did_not_happen(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = pnn("run", EXPERIMENT, *unreachable(), "--out", tmp_path / "run")
    assert result.exit_code == 3, result.output
    text = plain(result.output)
    assert "could not connect to awg at TCPIP0::127.0.0.1::" in text and "Connection refused" in text
    assert "lost" not in text and "Traceback" not in text
    assert "outputs off" not in text and "are saved" not in text and "resume with" not in text
    assert "no instrument was reached, nothing was switched on; no batch was trained" in text


def test_perturbative_run_on_real_instruments_ignores_twin_kind_perfect(tmp_path: Path, monkeypatch) -> None:
    """Perturbative training uses no twin: twin.kind perfect does not refuse real instruments (it goes on to open
    them, which here fails as an unreachable instrument does)."""
    monkeypatch.chdir(tmp_path)
    result = pnn("run", EXPERIMENT, *unreachable(), "--mode", "perturbative", "--twin", "perfect",
                 "--out", tmp_path / "run")
    text = plain(result.output)
    assert "perfect twin exists only" not in text, text
    assert result.exit_code == 3 and "could not connect to awg" in text, text


def test_check_exits_3_when_an_instrument_cannot_be_reached(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = pnn("check", EXPERIMENT, *unreachable())
    assert result.exit_code == 3, result.output
    assert "awg connection" in plain(result.output) and "could not" in plain(result.output)


def test_check_fails_a_missing_data_set(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    mnist = EXPERIMENT.with_name("electronic_mnist.yaml")
    result = pnn("check", mnist, "--simulate", "--data-dir", tmp_path)
    assert result.exit_code == 2, result.output
    row = next(line for line in plain(result.stdout).splitlines() if "data set" in line)
    assert "mnist" in row and "cannot be loaded" in row
    assert pnn("check", EXPERIMENT, "--simulate").exit_code == 0  # digits ships with scikit-learn


def test_the_perfect_twin_without_simulate_is_refused_before_any_instrument_is_touched(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with listening() as (awg, awg_port), listening() as (scope, scope_port):
        result = pnn("run", EXPERIMENT, "--twin", "perfect", "--set", f"instruments.awg.resource={at(awg_port)}",
                     "--set", f"instruments.scope.resource={at(scope_port)}", "--out", tmp_path / "run")
        for listener in (awg, scope):
            with pytest.raises(TimeoutError):
                listener.accept()[0].close()  # nobody connected
    assert result.exit_code == 2, result.output
    assert "the perfect twin exists only on a simulated bench (use --simulate)" in plain(result.output)
    assert not (tmp_path / "run").exists()


def test_resume_into_a_folder_without_a_checkpoint_is_an_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = pnn("run", EXPERIMENT, "--simulate", *SMALL, "--out", tmp_path / "nothing", "--resume")
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'nothing'} holds no checkpoint" in plain(result.output)
    assert not (tmp_path / "nothing").exists()  # nothing was trained from scratch


def test_resuming_a_finished_run_says_so_and_leaves_its_files_as_they_are(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    args = ["run", EXPERIMENT, "--simulate", "--twin", "perfect", *SMALL, "--epochs", 1, "--out", out]
    assert pnn(*args).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    summary = json.loads(before["summary.json"])
    result = pnn(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert f"{out} holds a finished run (1 of 1 epochs" in plain(result.output)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert json.loads((out / "summary.json").read_text())["physical_forward_calls"] == \
        summary["physical_forward_calls"]


@pytest.mark.parametrize("delay_s", [0.3, 1.0])
def test_ctrl_c_while_starting_ends_quietly(tmp_path: Path, delay_s: float) -> None:
    with PnnProcess(tmp_path, "run", EXPERIMENT, "--simulate", "--out", tmp_path / "run") as run:
        time.sleep(delay_s)  # the libraries are loading (torch takes seconds)
        run.proc.send_signal(signal.SIGINT)
        assert run.finish() == 130, run.text
    assert "Traceback" not in run.text and "interrupted" in run.text, run.text
    assert "is saved" not in run.text and "outputs off" not in run.text


def test_ctrl_c_during_calibration_says_that_nothing_was_trained(tmp_path: Path) -> None:
    with PnnProcess(tmp_path, "run", EXPERIMENT, "--simulate", *SMALL, "--out", tmp_path / "run") as run:
        run.wait_for("calibrating first")
        time.sleep(0.5)
        run.proc.send_signal(signal.SIGINT)
        assert run.finish() == 130, run.text
    last = run.text.strip().splitlines()[-1]
    assert last.startswith("interrupted: outputs off; no batch was trained, so no checkpoint was saved"), run.text
    assert "finished epochs are saved" not in run.text and "Traceback" not in run.text



class _SignalledWhileCollected:
    """An object whose finalizer is where Ctrl-C lands: the handler's KeyboardInterrupt is raised inside ``__del__``."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)
        for _ in range(100):  # the handler runs at the next bytecode boundary, still inside this finalizer
            pass


def test_ctrl_c_inside_a_finalizer_is_recorded_without_a_traceback(capfd, monkeypatch) -> None:
    from orchestrator.cli import stop_on_signals

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's own, not pytest's: it prints

    with stop_on_signals() as request:
        _SignalledWhileCollected()  # collected at once: the interrupt is raised, and lost, inside __del__
        assert request.signal == signal.SIGINT  # recorded, so the trainer refuses to start
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_other_errors_in_finalizers_are_still_reported(capfd, monkeypatch) -> None:
    from orchestrator.cli import stop_on_signals

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)

    class Broken:
        def __del__(self) -> None:
            raise ValueError("a finalizer's own error")

    with stop_on_signals() as request:
        Broken()
    assert request.signal is None
    assert "a finalizer's own error" in capfd.readouterr().err


# -- the shipped experiment files name no instrument's address (issue 15, item 3) ----------------------------------

SHIPPED = sorted(EXPERIMENT.parent.glob("*.yaml")) + sorted(EXPERIMENT.parents[1].joinpath("examples").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_a_shipped_experiment_file_holds_placeholders_not_addresses(path: Path) -> None:
    cfg = load_experiment(path, overrides=None) if "oscillators" not in path.name else None
    if cfg is None:  # the example setup of one's own has no instruments (and needs its --setup-file to load)
        assert "resource:" not in path.read_text()
        return
    resources = {role: getattr(cfg.instruments, role).resource for role in type(cfg.instruments).model_fields}
    assert resources and all(is_placeholder(r) for r in resources.values()), resources


@pytest.mark.parametrize("command", ["check", "calibrate", "run", "bench"])
def test_a_shipped_file_without_simulate_names_the_line_to_set_and_touches_nothing(tmp_path: Path, monkeypatch,
                                                                                 command: str) -> None:
    monkeypatch.chdir(tmp_path)
    result = pnn(command, EXPERIMENT)
    assert result.exit_code == 2, result.output
    lines = plain(result.stderr).splitlines()
    text = EXPERIMENT.read_text().splitlines()
    for role in ("awg", "scope"):
        line = next(i for i, t in enumerate(text, 1) if t.strip().startswith(f"resource: <your {role.upper()}")
                    or t.strip().startswith(f"resource: <your {role}"))
        assert any(entry.startswith(f"{EXPERIMENT}:{line}: instruments.{role}.resource: <your ")
                   and "is a placeholder" in entry and "--simulate" in entry for entry in lines), lines
    assert list(tmp_path.iterdir()) == []


def test_nothing_can_be_opened_at_a_placeholder() -> None:
    with pytest.raises(NotConnected, match="is a placeholder, not an address"):
        open_link("<your AWG's VISA resource>", name="awg")
    for placeholder in ("<your AWG's VISA resource>", "<your AWG's serial port>"):  # no read_termination either:
        with pytest.raises(NotConnected, match="is a placeholder, not an address"):  # the placeholder is the problem
            open_link(placeholder, name="awg", read_termination="")


# -- set-up notes a newcomer can follow (issue 15, item 7) ---------------------------------------------------------

ROOT = EXPERIMENT.parents[1]


def test_the_readme_walkthrough_commands_run_as_written_on_the_shipped_files() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"pnn (?:check|calibrate|run|bench) experiments/[^`\n]+", readme)  # spans and blocks
    assert len(commands) >= 4, commands
    assert all("--simulate" in command for command in commands), commands
    for name in sorted({command.split()[2] for command in commands}):  # the files they name exist and load
        path = ROOT / name
        assert path.is_file(), f"README.md names {name}, which does not exist"
        try:
            load_experiment(path)
        except ConfigError as err:
            pytest.fail(f"README.md names {name}, which does not load: {err}")
    assert "`pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu`" in readme
    assert "read_termination" in readme


def test_virtual_environments_are_not_tracked() -> None:
    for folder in (".venv", ".ci-venv"):
        probe = subprocess.run(["git", "check-ignore", "-q", f"{folder}/bin/python"], cwd=ROOT, check=False)
        assert probe.returncode == 0, folder


def test_pnn_resources_prints_no_python_warnings(tmp_path: Path) -> None:
    done = subprocess.run(_pnn_executable() + ["resources"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "Warning:" not in done.stderr and "warnings.warn" not in done.stderr, done.stderr
    assert "instruments" in done.stdout


def test_sim_serve_says_how_plain_pyvisa_reaches_it(tmp_path: Path) -> None:
    proc = subprocess.Popen(_pnn_executable() + ["sim", "serve", "electronic"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        hint, deadline = "", time.monotonic() + 60
        while "read_termination" not in hint and select.select([proc.stderr], [], [],
                                                               max(0.0, deadline - time.monotonic()))[0]:
            hint = proc.stderr.readline()  # log lines may come first
            if not hint:
                break
        assert "read_termination='\\n'" in hint and "write_termination='\\n'" in hint, hint
        resource = proc.stdout.readline().split()[1]
        rm = pyvisa.ResourceManager("@py")
        try:  # the hint, followed as printed, works
            inst = rm.open_resource(resource, read_termination="\n", write_termination="\n", timeout=5000)
            assert "33522B" in inst.query("*IDN?")
            inst.close()
        finally:
            rm.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
