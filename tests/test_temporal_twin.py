"""The temporal convolutional neural twin: causal, fits a time-invariant system, survives an artifact round trip."""

import numpy as np
import torch

from twins.artifact import load_twin, save_twin
from twins.data import TwinData
from twins.fit import fit_twin
from twins.neural import TemporalConvTwin


def test_output_depends_only_on_past_and_present_slots():
    torch.manual_seed(0)
    twin = TemporalConvTwin(12, 12, 12, channels=8, dilations=(1, 2))
    x = torch.randn(3, 12, requires_grad=True)
    twin(x, torch.zeros(12))[:, 5].sum().backward()
    assert torch.all(x.grad[:, 6:] == 0)  # the future never reaches slot 5
    assert torch.any(x.grad[:, :6] != 0)
    assert twin.receptive_field == 1 + 2 * 3


def _causal_system(x, theta):
    """A toy time-invariant device: y_i = tanh(x_i + 0.5 x_{i-1} + θ_i)."""
    prev = torch.nn.functional.pad(x, (1, 0))[:, :-1]
    return torch.tanh(x + 0.5 * prev + theta)


def test_fits_a_causal_system_with_few_samples_and_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(1)
    x = 2 * torch.rand(300, 16, generator=gen) - 1
    theta = 2 * torch.rand(300, 16, generator=gen) - 1
    data = TwinData(x.numpy(), theta.numpy(), _causal_system(x, theta).numpy(), {"setup": "toy"})
    train, val = data.split(0.2, seed=0)
    twin = TemporalConvTwin(16, 16, 16, channels=8, dilations=(1, 2))
    report = fit_twin(twin, train, val, epochs=60, lr=1e-2, batch_size=32, seed=0)
    assert report.val_nmse < 0.05
    path = save_twin(tmp_path / "t.pt", twin, {"val_nmse": report.val_nmse})
    loaded, meta = load_twin(path)
    assert meta["val_nmse"] == report.val_nmse
    np.testing.assert_allclose(loaded(x[:5], theta[:5]).detach(), twin(x[:5], theta[:5]).detach(), rtol=1e-6)
