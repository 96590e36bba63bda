"""The plot worker (orchestrator.plot_worker): a process forked while pnn runs one thread, at the lowest priority,
drawing one set at a time; and a real ``pnn run`` whose plots it draws."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
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


# a worker killed mid-run (out of memory, a stray kill): the plots go on in the training process
# a watch of a toy run folder (sys.argv[1]) with a plot worker, one epoch's rows and its evaluation
_TOY_WATCH = """
import os, signal, sys, time
import numpy as np
from pathlib import Path
from orchestrator.plot_worker import PlotWorker
from orchestrator.run_folder import RunFolder, RunWatch
from orchestrator.trainer import Evaluation
out = Path(sys.argv[1])
worker = PlotWorker.start()
rows = [{"epoch": 1, "train_loss": 1.0, "test_accuracy": 0.5}]
evaluation = Evaluation(np.array([0, 1, 1]), np.array([0, 1, 0]), [np.zeros((3, 4))])
"""

_DEAD_WORKER = _TOY_WATCH + """
os.kill(worker.draw(os.getpid).result(), signal.SIGKILL)
time.sleep(0.5)
watch = RunWatch(RunFolder(out, {"experiment": "toy"}, ["a", "b"]), tensorboard=False, plotter=worker)
watch.epoch_evaluated(rows, evaluation)       # the worker is gone: drawn here, with a warning
print(watch.plotter is None, sorted(p.name for p in out.glob("*.png")))
for p in out.glob("*.png"):
    p.unlink()
watch.draw_final(rows, evaluation)
watch.finish_plots(1)
print(sorted(p.name for p in out.glob("*.png")))
"""


@linux_only
def test_plots_go_on_in_the_training_process_when_the_worker_died(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _DEAD_WORKER, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    pngs = str(sorted(["confusion_matrix.png", "learning_curves.png", "physical_outputs.png"]))
    assert done.stdout.splitlines() == [f"True {pngs}", pngs]
    assert "the plot worker ended" in done.stderr


_KILLED_PARENT = """
import os, signal
from orchestrator.plot_worker import PlotWorker
worker = PlotWorker.start()
print(worker.draw(os.getpid).result(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)   # pnn killed outright: no close, no atexit
"""


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (reaped or not, a zombie has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@linux_only
def test_the_worker_ends_when_pnn_is_killed(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _KILLED_PARENT], capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr
    worker = int(done.stdout.strip())
    deadline = time.monotonic() + 10
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(worker)


# the final plots asked for while the worker still draws an epoch's: each image in TensorBoard is its own set's
_FINAL_AFTER_AN_EPOCH = _TOY_WATCH + """
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from orchestrator.tensorboard import IMAGE_TAG
watch = RunWatch(RunFolder(out, {"experiment": "toy"}, ["a", "b"]), plotter=worker)
watch.start(0, resumed=False)
watch.epoch_evaluated(rows, evaluation)
watch.epoch_done(10, rows[-1])          # the worker is still drawing epoch 1's set
watch.draw_final(rows, evaluation)
time.sleep(3)                           # the device measures the training accuracy meanwhile
watch.finish_plots(20)
watch.close()
worker.close()
acc = EventAccumulator(str(out), size_guidance={"images": 0})
acc.Reload()
images = acc.Images(IMAGE_TAG)
final = (out / "physical_outputs.png").read_bytes()
print([e.step for e in images], images[0].encoded_image_string != final, images[1].encoded_image_string == final)
"""


@linux_only
def test_each_image_in_tensorboard_is_its_own_sets_when_the_final_plots_follow_at_once(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _FINAL_AFTER_AN_EPOCH, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[10,", "20]", "True", "True"]
