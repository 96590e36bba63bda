"""The plot worker (orchestrator.plot_worker): a process forked while pnn runs one thread, at the lowest priority,
drawing one set at a time; and a real ``pnn run`` whose plots it draws."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from orchestrator.plot_worker import NICENESS, PlotWorker
from orchestrator.tensorboard import IMAGE_TAG
from test_cli import EXPERIMENT, _pnn_executable, plain

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the worker is forked on Linux only")

# in a process of its own: the test process runs other threads, and a worker is forked only where none do
_WORKER = """
import os, time
from orchestrator.plot_worker import PlotWorker
worker = PlotWorker.start()
assert worker is not None
slow = worker.draw(time.sleep, 0.5)
assert worker.busy and worker.draw(os.getpid) is None    # one set at a time: asked while busy, skipped
slow.result()
assert not worker.busy
pid = worker.draw(os.getpid).result()
after = worker.draw_next(os.nice, 0)                     # queued, never skipped
print(pid != os.getpid(), after.result())
worker.close()
"""


@linux_only
def test_the_worker_draws_in_its_own_process_at_the_lowest_priority_one_set_at_a_time():
    done = subprocess.run([sys.executable, "-c", _WORKER], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", str(NICENESS)]


def test_no_worker_is_forked_while_other_threads_run():
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert PlotWorker.start() is None  # fork would copy this thread's locks, not the thread: drawn here instead
    finally:
        stop.set()
        other.join()


@linux_only
def test_a_run_has_its_plots_drawn_by_the_worker(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["-vv", "run", EXPERIMENT, "--simulate", "--twin", "perfect", "--epochs", "2", "--set", "network.width=64",
            "--set", "network.depth=1", "--set", "task.n_train=300", "--set", "task.n_test=50", "--out", out]
    done = subprocess.run(_pnn_executable() + [str(a) for a in args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    log = plain(done.stderr)
    assert done.returncode == 0, log
    assert "plots are drawn by worker process" in log
    for name in ("learning_curves.png", "confusion_matrix.png", "physical_outputs.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not list(out.glob(".*.tmp"))
    summary = json.loads((out / "summary.json").read_text())
    acc = EventAccumulator(str(out), size_guidance={"images": 0})
    acc.Reload()
    n_batches = 300 // 64 + 1
    # epoch 1's plots (drawn while epoch 2 trains), then the final ones: each at its step, in order
    assert [e.step for e in acc.Images(IMAGE_TAG)] == [n_batches, 2 * n_batches]
    assert summary["status"] == "finished"
