"""The hybrid twin (physics + neural residual): fitting the residual, artifacts of nested twins; and the temporal
convolutional twin with fewer outputs than slots."""

import numpy as np
import pytest
import torch

from twins.artifact import load_twin, save_twin
from twins.data import TwinData
from twins.electronic import ElectronicPhysicsTwin
from twins.fit import fit_twin, nmse
from twins.hybrid import HybridTwin, fit_hybrid
from twins.mechanical import MechanicalPhysicsTwin
from twins.neural import TemporalConvTwin

N = 16
ENC = {"sample_rate_hz": 20e3}
MODES = [[600.0, 0.03, 40.0], [1500.0, 0.015, -90.0], [3200.0, 0.008, 120.0], [6100.0, 0.005, -150.0]]


def _device_data(n_samples, seed):
    """A 'device': the mechanical physics plus an effect the physics twin lacks (a drive leak into the output)."""
    physics = MechanicalPhysicsTwin(N, ENC, modes=MODES, nonlinear_modes=2)
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(n_samples, N, generator=gen) - 1
    theta = 2 * torch.rand(n_samples, N, generator=gen) - 1
    with torch.no_grad():
        y = physics(x.double(), theta.double()).float() + 0.5 * torch.tanh(2 * x) * theta
    return TwinData(x.numpy(), theta.numpy(), y.numpy(), {"setup": "toy"})


def test_fit_hybrid_learns_what_the_physics_misses():
    train, val = _device_data(320, seed=0), _device_data(80, seed=1)
    physics = MechanicalPhysicsTwin(N, ENC, modes=MODES, nonlinear_modes=2)
    xv, tv, yv = (torch.as_tensor(a) for a in (val.x, val.theta, val.y))
    with torch.no_grad():
        physics_only = nmse(physics(xv, tv), yv)
    assert physics_only > 0.05
    torch.manual_seed(0)
    hybrid, report = fit_hybrid(physics, lambda i, p, o: TemporalConvTwin(i, p, o, channels=16, dilations=(1, 2)),
                                train, val, epochs=40, lr=1e-2, batch_size=32, seed=0)
    assert isinstance(hybrid, HybridTwin) and hybrid.physics is physics
    assert report.val_nmse < physics_only / 5
    with torch.no_grad():
        assert nmse(hybrid(xv, tv), yv) == pytest.approx(report.val_nmse, rel=1e-4)
    # the residual's output standardisation comes from the residuals (~0.5 tanh(2x) θ), not from the outputs
    with torch.no_grad():
        residuals = torch.as_tensor(train.y) - physics(torch.as_tensor(train.x), torch.as_tensor(train.theta))
    torch.testing.assert_close(hybrid.residual.y_std, residuals.std(dim=0, unbiased=False), rtol=1e-3, atol=1e-4)
    assert all(p.requires_grad for p in physics.parameters())  # flags restored after the frozen fit
    assert physics.log_f.grad is None  # and the physics constants were not touched


def test_hybrid_artifact_round_trip(tmp_path):
    physics = MechanicalPhysicsTwin(N, {**ENC, "output_bins": 4}, modes=MODES, nonlinear_modes=2)
    residual = TemporalConvTwin(N, N, 4, channels=8, dilations=(1, 2))
    with torch.no_grad():
        for p in list(physics.parameters()) + list(residual.parameters()):
            p.add_(0.01 * torch.randn_like(p))
        residual.y_std.fill_(0.3)
    hybrid = HybridTwin(physics, residual)
    assert hybrid.config()["physics"]["kind"] == "mechanical_physics"
    assert hybrid.config()["residual"]["kind"] == "temporal_conv"
    path = save_twin(tmp_path / "hybrid.pt", hybrid, {"twin": "hybrid"})
    loaded, meta = load_twin(path)
    assert isinstance(loaded, HybridTwin) and isinstance(loaded.physics, MechanicalPhysicsTwin)
    assert meta == {"twin": "hybrid"}
    x, theta = 2 * torch.rand(3, N) - 1, 2 * torch.rand(N) - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, theta), hybrid(x, theta), rtol=0, atol=0)
        assert (hybrid(x, theta) - physics(x, theta)).abs().max() > 1e-3  # the residual contributes


def test_hybrid_works_with_the_electronic_physics_twin(tmp_path):
    physics = ElectronicPhysicsTwin(6, {"samples_per_value": 1, "guard_samples": 8}, emf_per_unit=2.0)
    hybrid = HybridTwin(physics, TemporalConvTwin(6, 6, 6, channels=4, dilations=(1,)))
    x = (2 * torch.rand(2, 6) - 1).requires_grad_()
    theta = 2 * torch.rand(6) - 1
    y = hybrid(x, theta)
    assert y.shape == (2, 6) and y.dtype == torch.float32
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    loaded, _ = load_twin(save_twin(tmp_path / "h.pt", hybrid, {}))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, theta), hybrid(x, theta))


def test_hybrid_rejects_parts_of_different_widths():
    with pytest.raises(ValueError, match="differ"):
        HybridTwin(MechanicalPhysicsTwin(N, ENC, modes=MODES), TemporalConvTwin(8, 8, 8))
    with pytest.raises(TypeError):
        HybridTwin({"config": {}}, TemporalConvTwin(8, 8, 8))


def test_temporal_twin_pools_slot_outputs_into_fewer_outputs():
    torch.manual_seed(0)
    per_slot = TemporalConvTwin(32, 32, 32, channels=8, dilations=(1, 2))
    pooled = TemporalConvTwin(32, 32, 8, channels=8, dilations=(1, 2))
    state = {k: v for k, v in per_slot.state_dict().items() if k not in ("y_mean", "y_std")}
    pooled.load_state_dict(state, strict=False)
    x, theta = torch.randn(5, 32), torch.randn(32)
    with torch.no_grad():
        y = pooled(x, theta)
        assert y.shape == (5, 8)
        torch.testing.assert_close(y, per_slot(x, theta).reshape(5, 8, 4).mean(dim=2))
        pooled.y_mean.fill_(2.0)
        pooled.y_std.fill_(3.0)
        torch.testing.assert_close(pooled(x, theta), 3.0 * y + 2.0)
    assert pooled.config()["n_outputs"] == 8
    with pytest.raises(ValueError):
        TemporalConvTwin(32, 32, 7)


def test_pooled_temporal_twin_fits_a_binned_system():
    gen = torch.Generator().manual_seed(2)
    x = 2 * torch.rand(300, 16, generator=gen) - 1
    theta = 2 * torch.rand(300, 16, generator=gen) - 1
    y = torch.tanh(x + 0.5 * theta).reshape(300, 4, 4).mean(dim=2) * 3 + 1
    train, val = TwinData(x.numpy(), theta.numpy(), y.numpy()).split(0.2, seed=0)
    twin = TemporalConvTwin(16, 16, 4, channels=8, dilations=(1, 2))
    report = fit_twin(twin, train, val, epochs=40, lr=1e-2, batch_size=32, seed=0)
    assert report.val_nmse < 0.05
    np.testing.assert_allclose(twin.y_mean.numpy(), train.y.mean(axis=0), rtol=1e-5)
