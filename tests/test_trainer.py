"""The trainer's reliability: a failing device is retried (its recoveries count as attempts), a run that stops early
saves the batches it completed, and ``resume`` then ends exactly like an uninterrupted run.

A cheap differentiable function stands in for the device (deterministic, no instruments), so that an interrupted and
resumed run can be compared with an uninterrupted one number for number.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from drivers.errors import InstrumentError
from orchestrator.config import ConfigError, TrainingConfig
from orchestrator.datasets import Dataset
from orchestrator.network import PhysicalNetwork
from orchestrator.retry import DeviceFailure, RetryCounts, retrying
from orchestrator.trainer import CHECKPOINT, StopRequest, Trainer, TrainingStopped

N_TRAIN, BATCH, EPOCHS, DEPTH = 60, 16, 3, 2
N_BATCHES = 4  # ceil(60 / 16): the last batch of an epoch is short
RETRY_COLUMNS = ("forward_failures", "batches_retried", "recoveries")


def device_fn(x, theta):
    """The 'device': a nonlinearity the twin gets slightly wrong."""
    return torch.tanh(1.5 * x * theta) + 0.05 * x


def twin_fn(x, theta):
    return torch.tanh(1.4 * x * theta)


class FlakyDevice:
    """``device_fn`` that raises an InstrumentError on the calls numbered in ``fail_calls`` (from 1)."""

    def __init__(self, fail_calls=()):
        self.calls = 0
        self.fail_calls = set(fail_calls)

    def __call__(self, x, theta):
        self.calls += 1
        if self.calls in self.fail_calls:
            raise InstrumentError("scope (test)", ":WAV:DATA?", "no answer within 10 s")
        return device_fn(x, theta)


def make_data() -> Dataset:
    gen = np.random.default_rng(0)
    x = gen.random((N_TRAIN + 20, 8), dtype=np.float32)
    y = (x[:, :4].argmax(1)).astype(np.int64)  # learnable: the brightest of the first four features
    return Dataset("toy", x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:], 4, ["a", "b", "c", "d"])


def make_trainer(out: Path, device=device_fn, **kwargs) -> Trainer:
    torch.manual_seed(0)
    net = PhysicalNetwork(8, 4, width=8, depth=DEPTH, seed=0)
    settings = TrainingConfig(epochs=EPOCHS, batch_size=BATCH, lr=0.05, max_retries=2)
    return Trainer(net, make_data(), device, twin_fn, settings, seed=0, out_dir=out, **kwargs)


TIME_COLUMNS = ("seconds", "instrument_s", "twin_s", "optimizer_s", "other_s", "device_busy_share")


def without(rows: list[dict], *keys: str) -> list[dict]:
    """The rows without ``keys`` and without the wall times, which differ from run to run."""
    return [{k: v for k, v in row.items() if k not in keys + TIME_COLUMNS} for row in rows]


def test_each_epoch_accounts_for_its_time(tmp_path: Path) -> None:
    """metrics.csv splits each epoch's wall time: the device's share is what it spent in the physical forwards
    (here a device that takes 5 ms a call), the twin's the backward passes; the parts add up to the epoch."""
    def slow_device(x, theta):
        time.sleep(0.005)
        return device_fn(x, theta)

    rows = make_trainer(tmp_path, device=slow_device).fit()
    for row in rows:
        parts = row["instrument_s"] + row["twin_s"] + row["optimizer_s"] + row["other_s"]
        assert parts == pytest.approx(row["seconds"], rel=1e-6)
        calls = (N_BATCHES + 1) * DEPTH  # each layer of every training batch, and of the one evaluation batch
        assert row["instrument_s"] >= 0.005 * calls
        assert row["twin_s"] > 0 and row["optimizer_s"] > 0
        assert row["device_busy_share"] == pytest.approx(row["instrument_s"] / row["seconds"])


def assert_same_parameters(a: Trainer, b: Trainer) -> None:
    for (name, pa), pb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(pa, pb), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Trainer:
    trainer = make_trainer(tmp_path_factory.mktemp("uninterrupted"))
    trainer.fit()
    return trainer


def stop_after(count: int, request: StopRequest):
    """An on_batch (or per-epoch progress) callback that asks for a stop, as the first Ctrl-C would, on its
    ``count``-th call."""
    calls = [0]

    def callback(*_) -> None:
        calls[0] += 1
        if calls[0] == count:
            request.signal = signal.SIGINT

    return callback


def test_a_stop_asked_for_before_training_began_aborts_without_a_batch(tmp_path: Path) -> None:
    """A Ctrl-C during calibration is recorded on the request as well as raised; should its KeyboardInterrupt be lost
    (raised inside a finalizer, which Python ignores), the trainer aborts before its first batch."""
    calls = []

    def device(x, theta):
        calls.append(1)
        return device_fn(x, theta)

    trainer = make_trainer(tmp_path, device=device, stop=StopRequest(signal=signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert calls == [] and trainer.rows == [] and not (tmp_path / CHECKPOINT).exists()


@pytest.mark.parametrize("when, count, position, rows_saved", [
    ("batch", 2, (1, 2), 0), ("batch", 4, (1, 4), 0), ("epoch", 1, (1, 4), 1), ("batch", 7, (2, 3), 1)],
    ids=["inside epoch 1", "after its last batch", "after its evaluation", "inside epoch 2"])
def test_stop_then_resume_ends_like_an_uninterrupted_run(tmp_path: Path, uninterrupted: Trainer, when: str, count: int,
                                                         position: tuple[int, int], rows_saved: int) -> None:
    request = StopRequest()
    stop = stop_after(count, request)
    first = make_trainer(tmp_path, stop=request, on_batch=stop if when == "batch" else None)
    with pytest.raises(TrainingStopped) as stopped:
        first.fit(progress=stop if when == "epoch" else None)
    assert (stopped.value.epoch, stopped.value.batch, stopped.value.n_batches) == (*position, N_BATCHES)
    assert str(stopped.value) == f"stopped after epoch {position[0]} batch {position[1]} of {N_BATCHES}"
    assert stopped.value.signal == signal.SIGINT and not request.training
    # an epoch's row is written once it is evaluated; one stopped after its last batch is evaluated on resume
    assert [r["epoch"] for r in first.rows] == list(range(1, rows_saved + 1))
    assert (tmp_path / CHECKPOINT).exists()

    second = make_trainer(tmp_path)  # a new process: new network and optimizer, state from the checkpoint
    rows = second.fit(resume=True)
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # each epoch once
    assert without(rows, "seconds") == without(uninterrupted.rows, "seconds")
    assert_same_parameters(second, uninterrupted)
    assert second.opt.state_dict()["state"][0]["step"] == uninterrupted.opt.state_dict()["state"][0]["step"]


def test_a_device_that_keeps_failing_stops_the_run_with_its_batches_saved(tmp_path: Path,
                                                                          uninterrupted: Trainer) -> None:
    # two device calls per batch (two layers); calls 7, 8, 9: the 4th (short) batch's first layer and both of its retries
    device = FlakyDevice(fail_calls={7, 8, 9})
    recoveries = []
    trainer = make_trainer(tmp_path, device, recover=lambda: recoveries.append(device.calls))
    with pytest.raises(DeviceFailure) as failure:
        trainer.fit()
    message = str(failure.value)
    assert message.startswith("scope (test), command ':WAV:DATA?': the physical forward of a batch of 12 inputs "
                              "of width 8, θ in [")
    assert "failed on all 3 attempt(s)" in message and message.count("no answer within 10 s") == 3
    assert isinstance(failure.value, InstrumentError)  # the CLI's instrument error: exit code 3
    assert recoveries == [7, 8]
    assert trainer.retries == RetryCounts(forward_failures=3, batches_retried=1, recoveries=2)
    assert trainer.saved_position == (1, 3)  # the batches before the failed one are saved

    resumed = make_trainer(tmp_path)
    rows = resumed.fit(resume=True)
    assert without(rows, "seconds", *RETRY_COLUMNS) == without(uninterrupted.rows, "seconds", *RETRY_COLUMNS)
    assert [(r["forward_failures"], r["batches_retried"], r["recoveries"]) for r in rows] == \
        [(3, 1, 2), (0, 0, 0), (0, 0, 0)]  # the failures are counted in the epoch they happened in
    assert_same_parameters(resumed, uninterrupted)


def test_a_failure_that_a_retry_cures_changes_nothing(tmp_path: Path, uninterrupted: Trainer) -> None:
    trainer = make_trainer(tmp_path, FlakyDevice(fail_calls={3, 11}), recover=lambda: None)
    rows = trainer.fit()
    assert trainer.retries == RetryCounts(forward_failures=2, batches_retried=2, recoveries=2)
    assert without(rows, "seconds", *RETRY_COLUMNS) == without(uninterrupted.rows, "seconds", *RETRY_COLUMNS)
    assert_same_parameters(trainer, uninterrupted)


def test_a_failed_recovery_is_a_failed_attempt() -> None:
    x, theta = torch.rand(5, 8), torch.rand(8)
    outcomes: list = []

    def recover() -> None:
        if outcomes.pop(0):
            raise InstrumentError("awg (test)", "*IDN?", "connection refused")

    # the forward fails, the first recovery fails, the second recovery and the forward work
    outcomes[:] = [True, False]
    counts = RetryCounts()
    y = retrying(FlakyDevice(fail_calls={1}), 2, recover, counts)(x, theta)
    assert torch.equal(y, device_fn(x, theta))
    assert counts == RetryCounts(forward_failures=2, batches_retried=1, recoveries=1)

    # with one retry, the failed recovery uses it up: the run stops, naming both failures
    outcomes[:] = [True]
    with pytest.raises(DeviceFailure) as failure:
        retrying(FlakyDevice(fail_calls={1}), 1, recover)(x, theta)
    message = str(failure.value)
    assert message.startswith("awg (test), command '*IDN?': the physical forward of a batch of 5 inputs of width 8")
    assert "failed on all 2 attempt(s)" in message
    assert "attempt 1: forward failed: scope (test), command ':WAV:DATA?': no answer" in message
    assert "attempt 2: recovery failed: awg (test), command '*IDN?': connection refused" in message


def test_a_long_command_is_cut_short_in_the_message() -> None:
    def ascii_upload(x, theta):
        raise InstrumentError("awg (test)", "DATA:ARB PNNBATCH, " + ", ".join(["0.5"] * 100_000), "no answer")

    with pytest.raises(DeviceFailure) as failure:
        retrying(ascii_upload, 1, None)(torch.rand(5, 8), torch.rand(8))
    assert str(failure.value).startswith("awg (test), command 'DATA:ARB PNNBATCH, 0.5, 0.5")
    assert len(str(failure.value)) < 1000


def test_resume_inside_an_epoch_needs_the_same_batches(tmp_path: Path) -> None:
    request = StopRequest()
    with pytest.raises(TrainingStopped):
        make_trainer(tmp_path, stop=request, on_batch=stop_after(2, request)).fit()
    other = make_trainer(tmp_path)
    other.s = other.s.model_copy(update={"batch_size": 8})
    with pytest.raises(ConfigError, match="training.batch_size: stopped inside epoch 1 with batch size 16 and 60 "
                                          "training samples"):
        other.fit(resume=True)


def test_a_fresh_run_into_an_old_folder_drops_the_old_checkpoint(tmp_path: Path, uninterrupted: Trainer) -> None:
    """A new run (no resume) that crashes before its first checkpoint must not leave the previous run's checkpoint
    for ``--resume`` to continue as if it were this run's."""
    old = make_trainer(tmp_path)
    old.fit()
    assert (tmp_path / CHECKPOINT).exists()

    def crashing_device(x, theta):
        raise RuntimeError("the process dies here (a bug, a power cut)")

    with pytest.raises(RuntimeError):
        make_trainer(tmp_path, crashing_device).fit()
    assert not (tmp_path / CHECKPOINT).exists()
    resumed = make_trainer(tmp_path)
    rows = resumed.fit(resume=True)  # nothing to resume: trains from the start, like an uninterrupted run
    assert without(rows, "seconds") == without(uninterrupted.rows, "seconds")


def test_evaluation_every_n_epochs_leaves_the_device_to_training_in_between(tmp_path: Path) -> None:
    calls = []

    def counting_device(x, theta):
        calls.append(x.shape[0])
        return device_fn(x, theta)

    torch.manual_seed(0)
    net = PhysicalNetwork(8, 4, width=8, depth=DEPTH, seed=0)
    settings = TrainingConfig(epochs=3, batch_size=BATCH, lr=0.05, eval_every=2)
    rows = Trainer(net, make_data(), counting_device, twin_fn, settings, seed=0, out_dir=tmp_path).fit()
    assert [row["test_accuracy"] is None for row in rows] == [True, False, False]  # epoch 2, and the last
    assert len(calls) == (3 * N_BATCHES + 2) * DEPTH  # two evaluations of one batch each, not three
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].split(",")[3] == ""  # an empty cell in the CSV
