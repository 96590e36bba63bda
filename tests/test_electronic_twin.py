"""The electronic physics twin: the nominal circuit gets close to the simulated bench, and fitting its constants
brings it closer."""

import pytest
import torch

from encoding.awg_scope import emf_per_unit
from encoding.electronic import ElectronicEncoding
from orchestrator.perfect_twin import PerfectElectronicTwin
from simulators.physics.electronic import ElectronicCircuit
from twins.data import TwinData
from twins.electronic import ElectronicPhysicsTwin
from twins.fit import fit_twin, nmse

N = 12
ENC = ElectronicEncoding(samples_per_value=2, guard_samples=64)


def _data(n_samples: int, seed: int) -> TwinData:
    circuit = ElectronicCircuit(seed=3)  # values a few percent off nominal
    truth = PerfectElectronicTwin(circuit, ENC, N, emf_per_unit(ENC.drive_volts_per_unit, load_ohm=50.0))
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(n_samples, N, generator=gen) - 1
    theta = 2 * torch.rand(n_samples, N, generator=gen) - 1
    with torch.no_grad():
        y = truth(x, theta)
    return TwinData(x.numpy(), theta.numpy(), y.numpy(), {})


def test_physics_twin_matches_the_bench_after_fitting():
    train, val = _data(160, seed=0), _data(60, seed=1)
    twin = ElectronicPhysicsTwin(N, ENC.model_dump(), emf_per_unit=2.0)
    xv, tv, yv = (torch.as_tensor(a) for a in (val.x, val.theta, val.y))
    with torch.no_grad():
        before = nmse(twin(xv, tv), yv)
    assert before < 0.2  # the nominal circuit is already a decent model
    report = fit_twin(twin, train, val, epochs=8, lr=0.02, batch_size=32, seed=0)
    assert report.val_nmse < before / 2
    constants = twin.constants()
    assert set(constants) >= {"r", "l", "c", "r_d", "v_f_pos", "v_f_neg", "width"}


def test_physics_twin_gradient_is_finite_and_nonzero():
    twin = ElectronicPhysicsTwin(N, ENC.model_dump(), emf_per_unit=2.0)
    x = (2 * torch.rand(4, N) - 1).requires_grad_()
    theta = (2 * torch.rand(N) - 1).requires_grad_()
    twin(x, theta).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0


@pytest.mark.parametrize("fs", [1e6, 0.4e6])  # one integration step per sample, and three
def test_frozen_twin_gradient_equals_autograd_through_the_constants_path(fs: float):
    """PAT freezes the twin; its compiled forward and adjoint gradient must equal the ODE in torch and autograd."""
    torch.manual_seed(2)
    twin = ElectronicPhysicsTwin(N, {**ENC.model_dump(), "sample_rate_hz": fs}, emf_per_unit=2.0)
    x = (2 * torch.rand(3, N, dtype=torch.float64) - 1).requires_grad_()
    theta = (2 * torch.rand(N, dtype=torch.float64) - 1).requires_grad_()
    weights = torch.randn(3, N, dtype=torch.float64)
    y_autograd = twin(x, theta)  # parameters trainable: autograd path
    (y_autograd * weights).sum().backward()
    grads = x.grad.clone(), theta.grad.clone()
    x.grad = theta.grad = None
    twin.requires_grad_(False)
    y_fast = twin(x, theta)
    torch.testing.assert_close(y_fast, y_autograd)
    (y_fast * weights).sum().backward()
    torch.testing.assert_close(x.grad, grads[0])
    torch.testing.assert_close(theta.grad, grads[1])


@pytest.mark.parametrize("fs", [1e6, 0.4e6])  # one integration step per sample, and three
def test_perfect_twin_gradient_equals_autograd_through_the_simulator_physics(fs: float):
    from simulators.physics.electronic import integrate

    circuit = ElectronicCircuit(seed=4)
    emf = (4 * torch.rand(4, 40, dtype=torch.float64) - 2).requires_grad_()
    grad_out = torch.randn(4, 40, dtype=torch.float64)
    (integrate(emf, fs, circuit.values)[0] * grad_out).sum().backward()
    reference = emf.grad.clone()
    emf.grad = None
    (circuit.noiseless(emf, fs) * grad_out).sum().backward()
    torch.testing.assert_close(emf.grad, reference)


def test_a_new_twin_starts_from_weights_set_by_the_experiment_seed_alone() -> None:
    """Calibration fits a freshly built twin: its initial weights must not depend on what used torch's global random
    state before (that made the same `pnn run` give different twins in two processes), and building it must leave
    that state alone."""
    from pathlib import Path

    from orchestrator.calibrate import build_twin
    from orchestrator.experiment_file import load_experiment

    cfg = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "electronic_digits.yaml")
    torch.manual_seed(1)
    first = build_twin("neural", cfg, 12, 12).state_dict()
    torch.manual_seed(2)
    torch.rand(100)
    second = build_twin("neural", cfg, 12, 12).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    other_seed = build_twin("neural", cfg.model_copy(update={"seed": cfg.seed + 1}), 12, 12).state_dict()
    assert not all(torch.equal(first[name], other_seed[name]) for name in first)
    torch.manual_seed(3)
    build_twin("neural", cfg, 12, 12)
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))
