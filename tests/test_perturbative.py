"""The model-free in-situ baseline (``training.mode: perturbative``, SPSA) and device samples as the currency.

SPSA's estimate is checked against the true gradient of a smooth function, in expectation; perturbative training is
checked to learn on the simulated electronic bench without any twin; the run's device samples by purpose are checked
to add up to what the setup measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from orchestrator.trainer import spsa_gains, spsa_gradient
from tests.test_cli import EXPERIMENT, N_TEST, N_TRAIN, RUN, BATCH, pnn, read_metrics


def test_spsa_gains_follow_spalls_sequences() -> None:
    a_k, c_k = spsa_gains(9, a=0.5, c=0.1, A=10, alpha=0.602, gamma=0.101)
    assert a_k == pytest.approx(0.5 / 20 ** 0.602) and c_k == pytest.approx(0.1 / 10 ** 0.101)


def test_spsa_gradient_agrees_with_the_true_gradient_in_expectation() -> None:
    """f(p) = sum(w sin p) + p^T Q p / 2 in 12 dimensions, c = 1e-3. Each draw is g_i + sum_{j != i} g_j Δ_j Δ_i + O(c^2)
    (Spall 1992), so the mean of N draws has per-element standard deviation sqrt((|g|^2 - g_i^2) / N); the O(c^2)
    bias is below 1e-5 here. Every element of the mean of N = 6000 draws must lie within 4.5 of those standard
    deviations of the true gradient (a per-element chance of about 7e-6 to fail when correct; the draws are seeded,
    so the test is deterministic), and the mean must point along the gradient (cosine > 0.98)."""
    gen = torch.Generator().manual_seed(0)
    dim, draws, c = 12, 6000, 1e-3
    w = torch.randn(dim, generator=gen, dtype=torch.float64)
    m = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    q = (m @ m.T) / dim
    p = torch.randn(dim, generator=gen, dtype=torch.float64)

    def f() -> float:
        return float((w * torch.sin(p)).sum() + 0.5 * p @ q @ p)

    true = w * torch.cos(p) + q @ p
    start = p.clone()
    total = torch.zeros(dim, dtype=torch.float64)
    for _ in range(draws):
        (g,), _, _ = spsa_gradient(f, [p], c, gen)
        total += g
    mean = total / draws
    assert torch.equal(p, start)  # the parameters end as they started
    sd = torch.sqrt((true.pow(2).sum() - true.pow(2)) / draws)
    assert ((mean - true).abs() <= 4.5 * sd).all(), (mean, true, sd)
    assert float(torch.nn.functional.cosine_similarity(mean, true, dim=0)) > 0.98
    # one draw alone is far off: the agreement comes from the expectation, not from a trivially exact estimate
    (one,), _, _ = spsa_gradient(f, [p], c, gen)
    assert float((one - true).norm()) > 0.3 * float(true.norm())


def test_a_device_failure_in_the_second_spsa_forward_leaves_the_parameters_unperturbed(tmp_path: Path) -> None:
    """The device fails for good in the second (minus) forward of the second SPSA step: the failure propagates, and
    the network and the checkpoint hold the parameters after the first step, not the perturbed ones."""
    from drivers.errors import InstrumentError
    from common.files import read_torch_file
    from orchestrator.config import TrainingConfig
    from orchestrator.network import PhysicalNetwork
    from orchestrator.retry import DeviceFailure
    from orchestrator.trainer import CHECKPOINT, Trainer
    from tests.test_trainer import FlakyDevice, make_data

    # two layers: a step is device calls (+) 1, 2 and (-) 3, 4; the 2nd step's minus forward starts at call 7, and
    # with two retries calls 7, 8, 9 are its three attempts
    device = FlakyDevice(fail_calls={7, 8, 9})
    net = PhysicalNetwork(8, 4, width=8, depth=2, seed=0)
    settings = TrainingConfig(mode="perturbative", epochs=1, batch_size=16, max_retries=2)
    after_first: list[dict] = []
    trainer = Trainer(net, make_data(), device, None, settings, seed=0, out_dir=tmp_path, recover=lambda: None,
                      on_batch=lambda *_: after_first.append({k: v.clone() for k, v in net.state_dict().items()}))
    with pytest.raises(DeviceFailure) as failure:
        trainer.fit()
    assert isinstance(failure.value, InstrumentError) and device.calls == 9 and len(after_first) == 1
    saved = read_torch_file(tmp_path / CHECKPOINT, "checkpoint", "")["net"]
    for name, before in after_first[0].items():
        assert torch.equal(net.state_dict()[name], before), name
        assert torch.equal(saved[name], before), name


def test_perturbative_training_learns_on_the_bench_without_a_twin(tmp_path: Path, monkeypatch) -> None:
    """SPSA on the simulated electronic bench: no twin is calibrated, the training loss falls over the epochs, every
    step is two device forwards of the network, and the device samples add up."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "spsa"
    epochs = 3
    result = pnn("run", EXPERIMENT, *RUN, "--out", out, "--epochs", epochs, "--set", "training.mode=perturbative",
                 "--set", "training.spsa.a=0.3", "--set", "training.spsa.c=0.05", "--set", "training.spsa.A=5")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "artifacts").exists()  # no twin: nothing calibrated
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["mode"], summary["twin"]) == ("perturbative", "-")
    rows = read_metrics(out / "metrics.csv")
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.05, losses
    depth = 1
    by = summary["device_samples_by_purpose"]
    assert by["training"] == epochs * N_TRAIN * 2 * depth  # two perturbed forwards of every batch
    assert by["refinement"] == 0 and by["twin_data"] == 0
    assert by["training"] + by["evaluation"] == summary["device_samples"]  # what the setup counted
    assert summary["device_samples_budget"] == by["training"]
    # per epoch: running totals
    assert [int(r["device_samples_training"]) for r in rows] == [N_TRAIN * 2 * depth * (e + 1) for e in range(epochs)]
    assert int(rows[-1]["device_samples_evaluation"]) == epochs * N_TEST * depth


def test_in_silico_refine_counts_every_device_sample_once(tmp_path: Path, monkeypatch) -> None:
    """In silico with refinement on the simulated bench: the twin's data (calibrated in the run), the refinement's
    measurements of every other training batch, and the evaluations add up to all the setup measured; the refined
    twin is saved with its lineage."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "insilico-refine"
    result = pnn("run", EXPERIMENT, *RUN, "--mode", "in_silico", "--twin", "neural", "--out", out, "--epochs", 1,
                 "--set", "twin.samples=300", "--set", "twin.neural.epochs=2", "--set", "twin.refine.enabled=true",
                 "--set", "twin.refine.every_batches=4", "--set", "twin.refine.measure_every=2",
                 "--set", "twin.refine.steps=5")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    by = summary["device_samples_by_purpose"]
    n_batches = math.ceil(N_TRAIN / BATCH)
    measured_batches = range(0, n_batches, 2)
    assert by["twin_data"] == 300 and summary["twin_data_samples"] == 300
    assert by["training"] == 0
    assert by["refinement"] == sum(min(BATCH, N_TRAIN - b * BATCH) for b in measured_batches)
    assert by["training"] + by["evaluation"] + by["refinement"] == summary["device_samples"]
    assert summary["device_samples_budget"] == 300 + by["refinement"]
    rows = read_metrics(out / "metrics.csv")
    assert int(rows[0]["refinements"]) == n_batches // 4
    assert float(rows[0]["twin_nmse_recent_after"]) >= 0
    assert summary["refine"]["refinements"] == n_batches // 4
    from twins.artifact import load_twin

    _, meta = load_twin(out / "twin_refined.pt")
    assert meta["refined_from"].endswith("twin_neural.pt") and meta["refine_samples"] == by["refinement"]
    assert meta["refined_in_run"] == str(out.resolve())
    parts = sorted((out / "refine_data").glob("part-*.h5"))
    from twins.data import load_twin_data

    data = [load_twin_data(p) for p in parts]
    assert sum(len(d) for d in data) == by["refinement"]
    assert data[0].metadata["setup"] == "electronic" and "encoding" in data[0].metadata


def test_pnn_run_resume_without_the_refinement_a_run_was_trained_with_is_exit_2(tmp_path: Path, monkeypatch) -> None:
    """A run trained with twin.refine, resumed without it: one line naming the checkpoint and twin.refine, exit 2;
    the checkpoint is left as it was."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "refined"
    common = (EXPERIMENT, *RUN, "--mode", "in_silico", "--twin", "neural", "--out", out, "--set", "task.n_train=64",
              "--set", "task.n_test=16", "--set", "twin.samples=100", "--set", "twin.neural.epochs=1")
    result = pnn("run", *common, "--epochs", 1, "--set", "twin.refine.enabled=true",
                 "--set", "twin.refine.every_batches=2", "--set", "twin.refine.steps=2")
    assert result.exit_code == 0, result.output
    checkpoint = (out / "checkpoint.pt").read_bytes()
    result = pnn("run", *common, "--epochs", 2, "--resume")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if "twin.refine" in line]
    assert len(lines) == 1 and lines[0].startswith(f"{out / 'checkpoint.pt'}: twin.refine: this run was trained "
                                                   "with twin.refine"), result.stderr
    assert (out / "checkpoint.pt").read_bytes() == checkpoint

def test_bench_adds_the_perturbative_row_and_plots_accuracy_against_device_samples(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench"
    result = pnn("bench", EXPERIMENT, *RUN, "--set", "training.epochs=2", "--out", out,
                 "--rows", "pat:perfect,perturbative")
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "bench.json").read_text())
    assert [(r["mode"], r["twin"]) for r in rows] == [("pat", "perfect"), ("perturbative", "-")]
    pat, spsa = rows
    assert pat["device_samples_budget"] == 2 * N_TRAIN * 1  # the perfect twin cost no measurements
    assert spsa["device_samples_budget"] == 2 * 2 * N_TRAIN * 1  # two forwards per step
    assert (out / "perturbative" / "metrics.csv").is_file()
    provenance = json.loads((out / "perturbative" / "summary.json").read_text())["provenance"]
    assert provenance["twin"] == {"kind": None, "note": "perturbative training uses no twin"}  # as pnn run's
    assert "device samples (twin data + training + refinement)" in (out / "bench.md").read_text()
    assert (out / "bench_samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
