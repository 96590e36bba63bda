"""Ctrl-C and SIGTERM during ``pnn run``, end to end: a real ``pnn`` subprocess on its in-process simulated bench.

- The first SIGINT (or SIGTERM) finishes the current batch, saves the checkpoint, switches the outputs off and exits
  with 130 (143); ``--resume`` then trains only the batches that were left, and every epoch is in metrics.csv once.
- A second SIGINT aborts at once (exit 130), outputs off.
Once the setup has closed, the run logs what the simulated AWG's front panel shows ("simulated awg after the run:
outputs off"): the outputs were switched off over the wire, as on the real instrument.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from test_cli import EXPERIMENT, _pnn_executable, plain, pnn, read_metrics

RUN = [EXPERIMENT, "--simulate", "--twin", "perfect", "--epochs", 2, "--set", "network.width=64",
       "--set", "network.depth=1", "--set", "task.n_train=300", "--set", "task.n_test=50"]
N_BATCHES = 19  # 300 samples in batches of 16
# acquisitions take their real duration at a low sample rate: a batch takes about 70 ms, so the signal sent 0.25 s
# into epoch 2 lands inside it (on the simulated bench's own pace the whole epoch can take less than that)
SMALL_BATCHES = ["--set", "training.batch_size=16", "--set", "simulate.realtime=true",
                 "--set", "encoding.sample_rate_hz=2e5"]
# two batches of 150 that take most of a second each (acquisitions take their real duration, at a low sample rate):
# time enough to send a second signal while the batch is still running
SLOW_BATCHES = ["--set", "training.batch_size=150", "--set", "simulate.realtime=true",
                "--set", "encoding.sample_rate_hz=2e5"]
OUTPUTS_OFF = "simulated awg after the run: outputs off"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class PnnProcess:
    """``pnn ARGS`` as a subprocess; its stderr lines are collected as they arrive."""

    def __init__(self, cwd: Path, *args):
        # Ctrl-C's default action in the child, as in a terminal: a test run started in the background by a
        # non-interactive shell ignores SIGINT, and a child would inherit that
        self.proc = subprocess.Popen(_pnn_executable() + [str(a) for a in args], cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
                                     preexec_fn=_default_sigint)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"pnn ended before printing {text!r}:\n{self.text}"
            if text in line:
                return

    def finish(self, timeout_s: float = 30) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return code

    @property
    def text(self) -> str:
        return plain("".join(self.stderr))

    def __enter__(self) -> "PnnProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_second_epoch(tmp_path: Path, out: Path, batches: list[str]) -> PnnProcess:
    run = PnnProcess(tmp_path, "run", *RUN, *batches, "--out", out)
    run.wait_for("epoch 1: loss")  # epoch 1 is saved
    time.sleep(0.25)  # and the first batch of epoch 2 is being trained
    return run


def resume_to_the_end(out: Path, rows: list[dict], batches_left: int) -> None:
    """``pnn run --resume`` finishes the 2-epoch run in ``out``: epoch 1's row as it was, each epoch once, and this
    session's physical forwards are the ``batches_left`` of epoch 2, its evaluation and the final one (test, train)."""
    result = pnn("run", *RUN, *SMALL_BATCHES, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    resumed = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in resumed] == ["1", "2"] and resumed[0] == rows[0]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["epochs"]) == ("finished", 2)
    assert summary["physical_forward_calls"] == batches_left + 1 + 2


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_after_the_batch_and_resume_finishes_the_run(tmp_path: Path, monkeypatch, sig) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    with start_second_epoch(tmp_path, out, SMALL_BATCHES) as run:
        run.proc.send_signal(sig)
        run.wait_for("finishing the current batch")
        code = run.finish()
    assert code == 128 + sig, run.text
    stopped = re.search(rf"stopped after epoch 2 batch (\d+) of {N_BATCHES}; outputs off; resume with --resume",
                        run.text)
    assert stopped, run.text
    batch = int(stopped.group(1))
    assert 1 <= batch < N_BATCHES  # inside the epoch: resume must continue with its next batch
    assert OUTPUTS_OFF in run.text
    rows = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["epochs"]) == ("stopped", 1)
    assert summary["checkpoint"] == {"epoch": 2, "batch": batch, "batches_per_epoch": N_BATCHES}
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch_progress"]["epoch"] == 1 and checkpoint["epoch_progress"]["batches_done"] == batch

    # the resumed session trains the batches that were left
    resume_to_the_end(out, rows, N_BATCHES - batch)


def test_a_second_ctrl_c_aborts_at_once_with_the_outputs_off(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with start_second_epoch(tmp_path, out, SLOW_BATCHES) as run:
        run.proc.send_signal(signal.SIGINT)
        run.wait_for("finishing the current batch")
        run.proc.send_signal(signal.SIGINT)
        code = run.finish()
    assert code == 130, run.text
    assert "interrupted" in run.text and "stopped after" not in run.text
    assert OUTPUTS_OFF in run.text
    summary = json.loads((out / "summary.json").read_text())
    # the batch in progress is not saved: the checkpoint is still the one after epoch 1
    assert summary["status"] == "aborted"
    assert summary["checkpoint"] == {"epoch": 1, "batch": 2, "batches_per_epoch": 2}
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == ["1"]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch_progress"] == \
        {"epoch": 1, "batches_done": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0,
         "retries_at_start": {"forward_failures": 0, "batches_retried": 0, "recoveries": 0}, "time_parts": {}}


def test_a_run_killed_with_sigkill_resumes_with_every_epoch_once(tmp_path: Path, monkeypatch) -> None:
    """SIGKILL runs no handler: the run folder keeps what was saved before (epoch 1's row and checkpoint), and
    ``--resume`` trains epoch 2 again from its start; metrics.csv still holds each epoch once."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    with start_second_epoch(tmp_path, out, SMALL_BATCHES) as run:
        run.proc.send_signal(signal.SIGKILL)
        code = run.finish()
    assert code == -signal.SIGKILL
    rows = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1"]
    assert json.loads((out / "summary.json").read_text())["status"] == "running"  # nobody could say otherwise
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (checkpoint["epoch_progress"]["epoch"], checkpoint["epoch_progress"]["batches_done"]) == (1, 0)

    resume_to_the_end(out, rows, N_BATCHES)  # all of epoch 2: its batches before the kill were not saved
