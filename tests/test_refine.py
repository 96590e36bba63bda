"""Online twin refinement (``twin.refine``): the twin learns from PAT's own device measurements.

A deliberately biased physics twin on the simulated electronic bench gets better within a few batches; the buffer is
bounded; ``resume`` restores the buffer and the refined twin (and ends like an uninterrupted run); PAT's backward
pass always differentiates the weights its forward pass used, even while a refinement runs beside it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from orchestrator.config import RefineConfig, TrainingConfig
from orchestrator.network import PhysicalNetwork
from orchestrator.refine import Refiner, RingBuffer
from orchestrator.trainer import StopRequest, Trainer, TrainingStopped
from orchestrator.retry import DeviceFailure
from tests.test_trainer import FlakyDevice, device_fn, make_data, stop_after


def test_the_buffer_keeps_only_the_newest_samples() -> None:
    buffer = RingBuffer(20)
    for k in range(10):
        x = np.full((7, 3), k, np.float32)
        buffer.add(x + np.arange(7)[:, None] / 10, x[:, :2], x[:, :1])
        assert len(buffer) == min(20, 7 * (k + 1))
    data = buffer.data()
    assert len(data) == 20 and buffer.arrays[0].shape == (20, 3)  # bounded: the storage never grows
    newest = np.concatenate([np.full(7, k) + np.arange(7) / 10 for k in range(10)])[-20:]
    np.testing.assert_allclose(data.x[:, 0], newest, rtol=1e-6)  # the newest 20, oldest first
    big = RingBuffer(5)
    big.add(np.arange(12, dtype=np.float32)[:, None], np.zeros((12, 1)), np.zeros((12, 1)))  # more than it holds
    assert big.data().x[:, 0].tolist() == [7, 8, 9, 10, 11]


@pytest.mark.parametrize("capacity", [100, 30, 50], ids=["grown", "shrunk", "same"])
def test_a_buffer_resized_between_sessions_keeps_its_newest_samples_in_order(capacity: int) -> None:
    """Saved full and wrapped around (70 samples through 50 places), loaded with another buffer_size: the samples
    come back oldest first, the newest ``capacity`` of them when it shrank, and new ones go after them."""
    saved = RingBuffer(50)
    values = np.arange(70, dtype=np.float32)[:, None]
    saved.add(values, values * 2, values * 3)
    resized = RingBuffer(capacity)
    resized.load_state(saved.state())
    kept = list(range(70))[-min(50, capacity):]
    data = resized.data()
    assert data.x[:, 0].tolist() == kept and data.theta[:, 0].tolist() == [2 * v for v in kept]
    assert data.y[:, 0].tolist() == [3 * v for v in kept]
    resized.add(np.full((3, 1), 70, np.float32), np.zeros((3, 1)), np.zeros((3, 1)))
    assert resized.data().x[:, 0].tolist() == (kept + [70] * 3)[-capacity:]
    assert resized.capacity == capacity and resized.arrays[0].shape == (capacity, 1)


class ToyTwin(nn.Module):
    """tanh(a x θ) + b x: the test device is a = 1.5, b = 0.05; this twin starts biased at a = 1, b = 0. Its forward
    pass records the weights it used, and its backward pass the weights then (``seen``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(0.0))
        self.seen: list[tuple[str, tuple[float, float]]] = []

    def weights(self) -> tuple[float, float]:
        return float(self.a), float(self.b)

    def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.a * x * theta) + self.b * x
        if y.requires_grad and not self.training:  # inside PAT (not the refinement's own fine-tuning)
            self.seen.append(("forward", self.weights()))
            y.register_hook(lambda g: self.seen.append(("backward", self.weights())) or g)
        return y


def make_refining_trainer(out: Path, twin: ToyTwin, epochs: int = 2, device=device_fn, theta_bounds=None,
                          **refine) -> Trainer:
    torch.manual_seed(0)
    net = PhysicalNetwork(8, 4, width=8, depth=2, seed=0)
    settings = TrainingConfig(epochs=epochs, batch_size=8, lr=0.05)
    twin.requires_grad_(False).eval()
    cfg = RefineConfig(enabled=True, **{"every_batches": 2, "buffer_size": 64, "steps": 15, "batch_size": 32,
                                        "lr": 0.05, "mix_fraction": 0.0, **refine})
    return Trainer(net, make_data(), device, twin, settings, seed=0, out_dir=out,
                   refiner=Refiner(twin, cfg, out, seed=0, theta_bounds=theta_bounds))


def test_pat_backward_never_sees_weights_other_than_its_forward_pass(tmp_path: Path) -> None:
    """Refinement after every batch, overlapping the next: every backward pass sees exactly the weights its forward
    pass used, and the weights do change between batches (the refinements are swapped in)."""
    twin = ToyTwin()
    trainer = make_refining_trainer(tmp_path, twin, epochs=1, every_batches=1)
    trainer.fit()
    forwards = [w for what, w in twin.seen if what == "forward"]
    backwards = [w for what, w in twin.seen if what == "backward"]
    assert len(forwards) == len(backwards) == 8 * 2  # 8 batches, 2 layers
    pairs = list(zip(forwards, backwards))
    assert all(f == b for f, b in pairs), pairs
    assert len(set(forwards)) >= 4  # refined weights arrived between batches
    assert trainer.refiner.refinements >= 7
    assert twin.a > 1.1  # towards the device's 1.5


def test_resume_restores_the_buffer_and_the_refined_twin(tmp_path: Path) -> None:
    """Stopped inside epoch 2 with a refinement still pending, then resumed: the buffer, the twin and the pending
    refinement come back as saved, and the run ends exactly like an uninterrupted one."""
    whole = make_refining_trainer(tmp_path / "whole", ToyTwin())
    whole.fit()

    request = StopRequest()
    twin = ToyTwin()
    first = make_refining_trainer(tmp_path / "cut", twin)
    first.on_batch, first.stop = stop_after(11, request), request  # epoch 2, batch 3: after an odd batch
    with pytest.raises(TrainingStopped):
        first.fit()
    saved_buffer = first.refiner.buffer.data()
    saved_twin = twin.weights()
    assert first.refiner.refinements == 4 and len(first.refiner.buffer) == 64  # full: bounded at 64 samples

    again_twin = ToyTwin()
    again = make_refining_trainer(tmp_path / "cut", again_twin)
    again.load_checkpoint()
    np.testing.assert_array_equal(again.refiner.buffer.data().x, saved_buffer.x)
    np.testing.assert_array_equal(again.refiner.buffer.data().y, saved_buffer.y)
    assert again_twin.weights() == saved_twin != (1.0, 0.0)
    assert again.refiner.pending is not None  # the refinement started after batch 10 waits for batch 12
    resumed = make_refining_trainer(tmp_path / "cut", ToyTwin())
    resumed.fit(resume=True)
    assert resumed.twin.weights() == whole.twin.weights()
    for (name, a), b in zip(whole.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), name
    cols = ("twin_nmse_recent_before", "twin_nmse_recent_after", "refinements", "device_samples_training")
    assert [[r[c] for c in cols] for r in resumed.rows] == [[r[c] for c in cols] for r in whole.rows]
    parts = sorted((tmp_path / "cut" / "refine_data").glob("part-*.h5"))
    from twins.data import load_twin_data

    assert sum(len(load_twin_data(p)) for p in parts) == resumed.refiner.samples == 2 * 60 * 2


def test_a_batch_that_fails_in_its_second_layer_records_nothing(tmp_path: Path) -> None:
    """Two layers, refinement on: the device fails for good in layer 2 of batch 3 (calls 5, 6; 6, 7, 8 fail), after
    layer 1 was measured. The checkpoint's buffer, sample count and HDF5 parts hold only batches 1 and 2; resumed,
    the run measures batch 3 again and records every training sample exactly once."""
    from common.files import read_torch_file
    from orchestrator.trainer import CHECKPOINT
    from twins.data import load_twin_data

    first = make_refining_trainer(tmp_path, ToyTwin(), epochs=1, device=FlakyDevice(fail_calls={6, 7, 8}))
    with pytest.raises(DeviceFailure):
        first.fit()
    assert first.saved_position == (1, 2)
    completed = 2 * 8 * 2  # 2 batches of 8, 2 layers
    state = read_torch_file(tmp_path / CHECKPOINT, "checkpoint", "")["refine"]
    assert state["samples"] == completed and state["buffer"]["size"] == completed
    parts = sorted((tmp_path / "refine_data").glob("part-*.h5"))
    assert sum(len(load_twin_data(p)) for p in parts) == completed

    resumed = make_refining_trainer(tmp_path, ToyTwin(), epochs=1)
    resumed.fit(resume=True)
    parts = sorted((tmp_path / "refine_data").glob("part-*.h5"))
    assert resumed.refiner.samples == sum(len(load_twin_data(p)) for p in parts) == 60 * 2

def test_warm_up_refines_the_twin_before_the_first_step(tmp_path: Path) -> None:
    """warmup_batches: 3: the device measures 3 batches (2 layers each) before training, and the first PAT forward
    already uses a twin moved towards the device (a = 1.5); without it, the first forward uses the biased twin."""
    warm_twin, cold_twin = ToyTwin(), ToyTwin()
    warm = make_refining_trainer(tmp_path / "warm", warm_twin, epochs=1, warmup_batches=3, warmup_steps=60)
    cold = make_refining_trainer(tmp_path / "cold", cold_twin, epochs=1)
    warm_row, cold_row = warm.fit()[0], cold.fit()[0]
    first_warm = next(w for what, w in warm_twin.seen if what == "forward")
    first_cold = next(w for what, w in cold_twin.seen if what == "forward")
    assert first_cold == (1.0, 0.0)
    assert first_warm[0] > 1.1, first_warm
    before, after = warm.refiner.history[0]
    assert after < before / 2  # on its own data
    assert warm_row["device_samples_refinement"] == 3 * 8 * 2 and cold_row["device_samples_refinement"] == 0
    assert warm_row["device_samples_training"] == cold_row["device_samples_training"]
    assert warm.refiner.samples == cold.refiner.samples + 3 * 8 * 2
    assert warm_row["refinements"] == cold_row["refinements"] + 1


def test_a_warm_up_that_fails_keeps_nothing_and_is_done_again_on_resume(tmp_path: Path) -> None:
    """The device fails for good in the second warm-up batch (calls 4, 5, 6): the checkpoint holds no measurement
    and no refinement; resumed, the run warms up again and then trains."""
    from common.files import read_torch_file
    from orchestrator.trainer import CHECKPOINT

    first = make_refining_trainer(tmp_path, ToyTwin(), epochs=1, device=FlakyDevice(fail_calls={4, 5, 6}),
                                  warmup_batches=3, warmup_steps=60)
    with pytest.raises(DeviceFailure):
        first.fit()
    state = read_torch_file(tmp_path / CHECKPOINT, "checkpoint", "")
    assert state["refine"]["samples"] == 0 and state["refine"]["refinements"] == 0
    assert not list((tmp_path / "refine_data").glob("part-*.h5"))

    twin = ToyTwin()
    resumed = make_refining_trainer(tmp_path, twin, epochs=1, warmup_batches=3, warmup_steps=60)
    resumed.fit(resume=True)
    assert next(w for what, w in twin.seen if what == "forward")[0] > 1.1  # warmed up before its first step
    assert resumed.refiner.samples == (3 * 8 + 60) * 2  # the warm-up's 3 batches once, then the 60 samples


def test_jitter_measures_points_near_the_batch_in_bounds_and_counts_them_as_refinement(tmp_path: Path) -> None:
    """jitter 0.2, 3 samples: after each layer's measurement of a batch the device measures 3 of its points moved a
    little (x in [-1, 1], θ in the given bounds, one θ per point), recorded for the twin and counted as refinement."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def device(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        calls.append((x.clone(), theta.clone()))
        return device_fn(x, theta)

    bounds = (torch.full((8,), -0.9), torch.full((8,), 0.9))
    trainer = make_refining_trainer(tmp_path, ToyTwin(), epochs=1, device=device, theta_bounds=bounds, jitter=0.2,
                                    jitter_samples=3)
    row = trainer.fit()[0]
    training = calls[: 2 * 8 * 2]  # 8 batches, 2 layers: a batch's measurement, then its nearby points
    for (x, theta), (x_near, theta_near) in zip(training[0::2], training[1::2]):
        assert x_near.shape == (3, 8) and theta_near.shape == (3, 8) and theta.shape == (8,)
        assert x_near.abs().max() <= 1.0 and theta_near.abs().max() <= 0.9
        moved = (x_near - x[:3]).abs().mean()
        assert 0.02 < moved < 0.4  # near the batch's points, not on them
        assert not torch.equal(theta_near[0], theta_near[1])  # each point its own θ
    assert row["device_samples_refinement"] == 3 * 8 * 2
    assert trainer.refiner.samples == (60 + 3 * 8) * 2
    assert len(trainer.refiner.buffer) == 64  # bounded as ever


def test_refinement_without_overlap_is_counted_as_twin_time(tmp_path: Path, monkeypatch) -> None:
    """overlap: false fine-tunes on the training thread at once: that time is the twin's (twin_s), not other_s. Each
    of the epoch's 4 refinements (8 batches, every 2) is made to take at least 0.1 s."""
    import orchestrator.refine as refine

    original = refine._refine

    def slow_refine(*args):
        time.sleep(0.1)
        return original(*args)

    monkeypatch.setattr(refine, "_refine", slow_refine)
    trainer = make_refining_trainer(tmp_path, ToyTwin(), epochs=1, overlap=False, steps=2)
    row = trainer.fit()[0]
    assert trainer.refiner.refinements == 4
    assert trainer.refiner.wait_s >= 0.4
    assert row["twin_s"] >= 0.4 and row["other_s"] < row["seconds"] - 0.4

def test_resuming_a_refined_run_without_refinement_is_refused(tmp_path: Path) -> None:
    """A checkpoint with a refined twin, resumed by a trainer without twin.refine: refused (ConfigError, the CLI's
    exit 2) before anything is loaded, instead of silently training on with the unrefined twin."""
    from orchestrator.config import ConfigError

    first = make_refining_trainer(tmp_path, ToyTwin(), epochs=1)
    first.fit()
    assert first.refiner.refinements > 0
    torch.manual_seed(0)
    plain = Trainer(PhysicalNetwork(8, 4, width=8, depth=2, seed=0), make_data(), device_fn, ToyTwin(),
                    TrainingConfig(epochs=2, batch_size=8, lr=0.05), seed=0, out_dir=tmp_path)
    with pytest.raises(ConfigError) as refused:
        plain.fit(resume=True)
    assert str(refused.value).startswith(f"{tmp_path / 'checkpoint.pt'}: twin.refine: this run was trained with "
                                         "twin.refine")
    assert "\n" not in str(refused.value) and plain.rows == [] and plain.step == 0

def test_resuming_a_plain_run_with_refinement_is_refused_like_the_reverse(tmp_path: Path) -> None:
    """A checkpoint without a refined twin, resumed by a trainer with twin.refine: the same kind of refusal as the
    reverse (ConfigError, exit 2), before the network is touched."""
    from orchestrator.config import ConfigError

    torch.manual_seed(0)
    Trainer(PhysicalNetwork(8, 4, width=8, depth=2, seed=0), make_data(), device_fn, ToyTwin(),
            TrainingConfig(epochs=1, batch_size=8, lr=0.05), seed=0, out_dir=tmp_path).fit()
    refining = make_refining_trainer(tmp_path, ToyTwin(), epochs=2)
    before = [p.clone() for p in refining.net.parameters()]
    with pytest.raises(ConfigError) as refused:
        refining.fit(resume=True)
    assert str(refused.value).startswith(f"{tmp_path / 'checkpoint.pt'}: twin.refine: this run was trained without "
                                         "twin.refine")
    assert all(torch.equal(a, b) for a, b in zip(before, refining.net.parameters()))


def test_refinement_improves_a_biased_physics_twin_on_the_bench(tmp_path: Path) -> None:
    """The electronic bench's nominal physics twin with its output gain and offset deliberately wrong (x0.6, +0.1):
    after a few PAT batches with refinement every 2 batches, its NMSE on the newest device measurements (before each
    refinement: data it has not seen) falls at least four-fold; and the device samples PAT counted are all the setup
    measured."""
    from orchestrator.experiment_file import load_experiment
    from orchestrator.kits import setup_kit
    from orchestrator.session import open_session
    from tests.test_cli import EXPERIMENT

    cfg = load_experiment(EXPERIMENT, {"network.width": 32, "network.depth": 2})
    with open_session(cfg, 32, simulate=True) as session:
        setup = session.setup
        twin = setup_kit(cfg.setup).physics_twin(cfg, setup, 32, 32)
        with torch.no_grad():
            twin.output_gain.mul_(0.6)
            twin.output_offset.add_(0.1)
        twin.requires_grad_(False).eval()
        gen = np.random.default_rng(0)
        x = gen.random((96, 32), dtype=np.float32)
        from orchestrator.datasets import Dataset

        data = Dataset("toy", x[:64], (x[:64, :4].argmax(1)).astype(np.int64), x[64:],
                       (x[64:, :4].argmax(1)).astype(np.int64), 4, list("abcd"))
        net = PhysicalNetwork(32, 4, width=32, depth=2, seed=0)
        refine = RefineConfig(enabled=True, every_batches=2, steps=30, lr=0.02, batch_size=64, mix_fraction=0.0,
                              overlap=False)
        trainer = Trainer(net, data, setup.forward, twin, TrainingConfig(epochs=1, batch_size=8, lr=0.02), seed=0,
                          out_dir=tmp_path, refiner=Refiner(twin, refine, tmp_path, seed=0))
        before = setup.counters.samples
        trainer.fit()
        stats = trainer.rows[0]
        assert trainer.refiner.refinements == 4
        first, last = trainer.refiner.history[0][0], trainer.refiner.history[-1][0]
        assert last < first / 4, trainer.refiner.history
        assert stats["twin_nmse_recent_after"] < stats["twin_nmse_recent_before"]
        s = trainer.samples
        assert s.training == 64 * 2 and s.training + s.evaluation == setup.counters.samples - before
