"""The mechanical physics twin: exact discretisation, its own frequency response, gradients, mode extraction from a
frequency response, fitting perturbed constants back, clipping, output bins and artifacts."""

import math

import numpy as np
import pytest
import torch

from encoding.awg_scope import bin_outputs
from encoding.mechanical import drive_units
from twins.artifact import load_twin, save_twin
from twins.data import TwinData
from twins.fit import fit_twin, nmse
from twins.mechanical import (MechanicalPhysicsTwin, _mode_basis, modes_from_response, oscillator_impulse_responses,
                              zoh_impulse_response)

FS = 20e3
ENC = {"sample_rate_hz": FS}
MODES = [[420.0, 0.04, 30.0], [910.0, 0.02, -60.0], [1650.0, 0.012, 90.0], [2600.0, 0.008, -120.0],
         [3900.0, 0.006, 150.0], [5600.0, 0.005, -150.0], [7400.0, 0.004, 120.0]]


def _rk4(deriv, state, pulse_steps, steps, h):
    """Fixed-step RK4 of state' = deriv(state, u) from rest, u = 1 for the first ``pulse_steps`` steps, then 0;
    returns the states [steps + 1, ...] at the step boundaries."""
    out = [state.copy()]
    for i in range(steps):
        u = 1.0 if i < pulse_steps else 0.0
        k1 = deriv(state, u)
        k2 = deriv(state + h / 2 * k1, u)
        k3 = deriv(state + h / 2 * k2, u)
        k4 = deriv(state + h * k3, u)
        state = state + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(state.copy())
    return np.array(out)


def test_zoh_oscillator_impulse_response_matches_fine_integration():
    f, zeta, length, sub = 2300.0, 0.03, 24, 400
    w, dt = 2 * math.pi * f, 1 / FS
    disp, vel = oscillator_impulse_responses(torch.tensor(f, dtype=torch.float64),
                                             torch.tensor(zeta, dtype=torch.float64), FS, length)
    disp_avg, _ = oscillator_impulse_responses(torch.tensor(f, dtype=torch.float64),
                                               torch.tensor(zeta, dtype=torch.float64), FS, length, average=True)

    def deriv(s, u):  # q'' + 2 zeta w q' + w^2 q = w^2 u, a unit pulse held for the first sample
        return np.array([s[1], w**2 * (u - s[0]) - 2 * zeta * w * s[1]])

    h = dt / sub
    path = _rk4(deriv, np.zeros(2), sub, length * sub, h)
    at_samples = path[::sub][:length]
    np.testing.assert_allclose(disp.numpy(), at_samples[:, 0], atol=1e-9)
    np.testing.assert_allclose(vel.numpy(), at_samples[:, 1], atol=1e-9 * w)
    # interval means over [k dt, (k + 1) dt) by the trapezoid rule on the fine path
    q = path[: length * sub + 1, 0]
    means = np.array([np.trapezoid(q[k * sub:(k + 1) * sub + 1], dx=h) / dt for k in range(length)])
    np.testing.assert_allclose(disp_avg.numpy(), means, atol=2e-6)
    assert np.abs(disp.numpy()).max() > 0.05  # not trivially zero


def test_coil_mode_microphone_cascade_matches_fine_integration():
    """The impulse response the twin convolves with (coil low-pass -> plate velocity -> mic high-pass) is exact."""
    twin = MechanicalPhysicsTwin(4, ENC, modes=MODES[2:3], nonlinear_modes=0)
    c = twin.constants()
    w_c, w_h = 2 * math.pi * c["coil_hz"], 2 * math.pi * c["mic_highpass_hz"]
    m = c["modes"][0]
    w, zeta, g = 2 * math.pi * m["f_hz"], m["zeta"], m["weight"] / (2 * math.pi * m["f_hz"])
    length, sub, dt = 40, 200, 1 / FS
    with torch.no_grad():
        ir = zoh_impulse_response(*twin._systems()["lin"], dt, length)[0].numpy()

    def deriv(s, u):  # s = [force, q, q', z]; pickup p = g q'/w (b = 1, c = g); mic = s/(s + w_h) p = p - w_h z
        force, q, v, z = s
        return np.array([w_c * (u - force), v, w**2 * (force - q) - 2 * zeta * w * v, g * v / w - w_h * z])

    path = _rk4(deriv, np.zeros(4), sub, length * sub, dt / sub)[::sub]
    mic = g * path[:length, 2] / w - w_h * path[:length, 3]
    np.testing.assert_allclose(ir, mic, atol=1e-8 * np.abs(mic).max())
    assert np.abs(mic).max() > 1e-3


@pytest.mark.parametrize("where", ["on_mode", "between_modes"])
def test_sine_through_the_linear_path_matches_frequency_response(where):
    twin = MechanicalPhysicsTwin(8, ENC, modes=MODES)
    f = MODES[2][0] if where == "on_mode" else math.sqrt(MODES[2][0] * MODES[3][0])
    n_samples = 6000
    t = np.arange(n_samples) / FS
    amplitude = 1e-3  # small signal: tanh and the Duffing terms are linear to ~1e-7
    drive = torch.as_tensor(amplitude * np.sin(2 * np.pi * f * t))[None]
    with torch.no_grad():
        out = twin.trace(drive)[0, n_samples // 2:].numpy()  # steady state (all decays < 10 ms)
    basis = np.stack([np.sin(2 * np.pi * f * t[n_samples // 2:]), np.cos(2 * np.pi * f * t[n_samples // 2:])], 1)
    a, b = np.linalg.lstsq(basis, out, rcond=None)[0]
    measured = (a + 1j * b) / amplitude  # sin in, Re(H) sin + Im(H) cos out
    expected = twin.frequency_response(np.array([f]))[0]
    assert abs(measured - expected) < 1e-5 * abs(expected)
    # the continuous-time response is close but not equal: the held drive and the sampling
    continuous = twin.frequency_response(np.array([f]), discrete=False)[0]
    assert abs(continuous - expected) < 0.5 * abs(expected)
    if where == "on_mode":
        off = twin.frequency_response(np.array([math.sqrt(MODES[2][0] * MODES[3][0])]))[0]
        assert abs(expected) > 2 * abs(off)  # the resonance is a peak


def test_gradients_match_finite_differences_in_x_theta_and_a_constant():
    twin = MechanicalPhysicsTwin(6, ENC, modes=MODES[:4], nonlinear_modes=3,
                                 nominal={"duffing_eta": 0.3, "kappa": 0.5, "clip_v": 1.5})
    gen = torch.Generator().manual_seed(0)
    x = (2 * torch.rand(2, 6, generator=gen, dtype=torch.float64) - 1).requires_grad_()
    theta = (2 * torch.rand(6, generator=gen, dtype=torch.float64) - 1).requires_grad_()
    # the nonlinear terms are active, so the check covers them
    with torch.no_grad():
        linear = bin_outputs(twin.trace(drive_units(x, theta, twin.encoding) * 0.5, nonlinear=False), 6) / 0.1
        assert (twin(x, theta) - linear).abs().max() > 0.05 * linear.abs().max()
    assert torch.autograd.gradcheck(twin, (x, theta), eps=1e-6, atol=1e-6, rtol=1e-4)
    names = ["log_f", "log_zeta", "log_beta", "log_kappa", "log_clip_v", "log_coil_hz", "weight_raw"]
    for name in names:
        value = getattr(twin, name).detach().clone().requires_grad_()

        def f(v, name=name):
            return torch.func.functional_call(twin, {name: v}, (x.detach(), theta.detach()))

        assert torch.autograd.gradcheck(f, (value,), eps=1e-6, atol=1e-6, rtol=1e-4), name


def test_modes_from_response_recovers_known_modes():
    f = np.arange(60.0, 9900.0, 1.0)
    true = np.array(MODES)
    response = _mode_basis(2 * np.pi * f, true[:, 0], true[:, 1]) @ true[:, 2]
    # seen through a chain with a phase of -100 degrees at the top: divided out before the signs are read
    chain = 3.0 / (1 + 1j * f / 3000.0) / (1 + 1j * f / 12000.0)
    noise = np.random.default_rng(0).normal(scale=1e-3 * np.abs(response).max(), size=(2, f.size))
    measured = response * chain + (noise[0] + 1j * noise[1])
    found = np.array(modes_from_response(f, measured, len(MODES), chain=chain))
    assert found.shape == true.shape
    np.testing.assert_allclose(found[:, 0], true[:, 0], rtol=2e-3)
    np.testing.assert_allclose(found[:, 1], true[:, 1], rtol=0.1)
    np.testing.assert_allclose(found[:, 2], true[:, 2], rtol=0.1)
    assert np.all(np.sign(found[:, 2]) == np.sign(true[:, 2]))
    # without refinement the half-power estimates are already close
    rough = np.array(modes_from_response(f, response, len(MODES), refine=False))
    np.testing.assert_allclose(rough[:, 1], true[:, 1], rtol=0.2)
    assert np.all(np.sign(rough[:, 2]) == np.sign(true[:, 2]))


def test_from_response_initialises_the_twin_close_to_a_measured_response():
    truth = MechanicalPhysicsTwin(8, ENC, modes=MODES)
    f = np.arange(60.0, 9900.0, 1.0)
    measured = truth.frequency_response(f)
    twin = MechanicalPhysicsTwin.from_response(8, ENC, f, measured, n_modes=len(MODES))
    found = np.array(twin.modes())
    np.testing.assert_allclose(found[:, 0], np.array(MODES)[:, 0], rtol=5e-3)
    np.testing.assert_allclose(found[:, 2], np.array(MODES)[:, 2], rtol=0.15)
    err = np.abs(twin.frequency_response(f) - measured).max() / np.abs(measured).max()
    assert err < 0.15


def _data(twin, n, n_samples, seed):
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(n_samples, n, generator=gen) - 1
    theta = 2 * torch.rand(n_samples, n, generator=gen) - 1
    with torch.no_grad():
        y = twin(x.double(), theta.double()).float()
    return TwinData(x.numpy(), theta.numpy(), y.numpy(), {})


def test_fit_recovers_perturbed_constants():
    n = 48
    rng = np.random.default_rng(1)
    true_modes = [[f * (1 + 0.02 * rng.choice([-1, 1])), z, w * (1 + 0.05 * rng.choice([-1, 1]))]
                  for f, z, w in MODES]
    truth = MechanicalPhysicsTwin(n, ENC, modes=true_modes, nonlinear_modes=2,
                                  nominal={"amp_gain": 8.4, "coil_hz": 2850.0, "clip_v": 5.7})
    train, val = _data(truth, n, 192, seed=0), _data(truth, n, 64, seed=1)
    twin = MechanicalPhysicsTwin(n, ENC, modes=MODES, nonlinear_modes=2)
    xv, tv, yv = (torch.as_tensor(a).double() for a in (val.x, val.theta, val.y))
    with torch.no_grad():
        before = nmse(twin(xv, tv), yv)
    assert before > 0.1  # 2 % off in frequency is a lot for modes this sharp
    report = fit_twin(twin, train, val, epochs=30, lr=0.01, batch_size=32, seed=0, patience=None)
    assert report.val_nmse < before / 100
    fitted = np.array(twin.modes())[:, 0]
    assert np.abs(fitted / np.array(true_modes)[:, 0] - 1).max() < 0.005  # frequencies within 0.5 %


def test_clipping_makes_the_output_grow_sublinearly():
    enc = {**ENC, "drive_volts_per_unit": 2.0}  # 1 unit -> 16 V before the 6 V rails
    twin = MechanicalPhysicsTwin(16, enc, modes=MODES, nominal={"duffing_eta": 1e-12})
    gen = torch.Generator().manual_seed(3)
    x = 2 * torch.rand(8, 16, generator=gen, dtype=torch.float64) - 1
    theta = 2 * torch.rand(8, 16, generator=gen, dtype=torch.float64) - 1

    def level(scale):
        with torch.no_grad():
            return float((twin(scale * x, scale * theta) - twin.output_offset).square().mean().sqrt())

    assert level(0.02) / level(0.01) == pytest.approx(2.0, rel=2e-3)  # small signal: linear
    assert level(1.0) / level(0.5) < 1.6  # into the rails: compressed


@pytest.mark.parametrize("statistic", ["mean", "rms"])
def test_fewer_outputs_than_slots_use_the_encodings_bin_statistic(statistic):
    enc = {**ENC, "output_bins": 4, "bin_statistic": statistic}
    twin = MechanicalPhysicsTwin(32, enc, modes=MODES)
    assert twin.n_outputs == 4
    gen = torch.Generator().manual_seed(4)
    x = 2 * torch.rand(3, 32, generator=gen, dtype=torch.float64) - 1
    theta = 2 * torch.rand(32, generator=gen, dtype=torch.float64) - 1
    with torch.no_grad():
        y = twin(x, theta)
        trace = twin.trace(drive_units(x, theta, twin.encoding) * 0.5)  # [3, 64]
    assert y.shape == (3, 4)
    bins = trace.reshape(3, 4, 16)
    expected = bins.square().mean(dim=2).sqrt() if statistic == "rms" else bins.mean(dim=2)
    torch.testing.assert_close(y, expected / 0.1)
    if statistic == "rms":
        assert torch.all(y > 0)
    assert MechanicalPhysicsTwin(32, ENC, modes=MODES, n_outputs=8)(x, theta).shape == (3, 8)


def test_combine_modes():
    gen = torch.Generator().manual_seed(5)
    x = 2 * torch.rand(3, 16, generator=gen, dtype=torch.float64) - 1
    theta = 2 * torch.rand(3, 16, generator=gen, dtype=torch.float64) - 1
    add = MechanicalPhysicsTwin(16, {**ENC, "combine": "add"}, modes=MODES)
    assert add.samples == 16
    with torch.no_grad():
        # "add" plays (x + θ)/2: symmetric in x and θ, and only their sum matters
        torch.testing.assert_close(add(x, theta), add(theta, x))
        torch.testing.assert_close(add(x, theta), add((x + theta) / 2, (x + theta) / 2))
        inter = MechanicalPhysicsTwin(16, {**ENC, "combine": "interleave"}, modes=MODES)
        assert inter.samples == 32
        assert (inter(x, theta) - inter(theta, x)).abs().max() > 1e-3
        y = inter(x, theta)
    assert y.shape == (3, 16)
    # the output of slot i depends on slots <= i only (causal, from rest)
    x2 = x.clone()
    x2[:, 10:] = 0
    with torch.no_grad():
        torch.testing.assert_close(inter(x2, theta)[:, :10], y[:, :10])


def test_artifact_round_trip(tmp_path):
    twin = MechanicalPhysicsTwin(12, {**ENC, "output_bins": 6, "bin_statistic": "rms"}, modes=MODES,
                                 nonlinear_modes=3)
    with torch.no_grad():  # move the constants away from their initial values: the weights must be saved
        for p in twin.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_twin(tmp_path / "mech.pt", twin, {"setup": "mechanical"})
    loaded, meta = load_twin(path)
    assert isinstance(loaded, MechanicalPhysicsTwin) and meta == {"setup": "mechanical"}
    x = 2 * torch.rand(4, 12, dtype=torch.float64) - 1
    theta = 2 * torch.rand(12, dtype=torch.float64) - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, theta), twin(x, theta), rtol=0, atol=0)
    assert loaded.constants() == twin.constants()


def test_default_modes_and_float32_inputs():
    twin = MechanicalPhysicsTwin(64, ENC, n_modes=24, nonlinear_modes=6)
    modes = np.array(twin.modes())
    assert modes.shape == (24, 3) and 140 < modes[0, 0] < 160 and 8500 < modes[-1, 0] < 9500
    x = (2 * torch.rand(5, 64) - 1).requires_grad_()
    theta = (2 * torch.rand(64) - 1).requires_grad_()
    twin.requires_grad_(False)  # as in PAT
    y = twin(x, theta)
    assert y.dtype == torch.float32 and y.shape == (5, 64)
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 and theta.grad.abs().sum() > 0
    with torch.no_grad():
        y64 = twin(x.double(), theta.double())
    torch.testing.assert_close(y.detach().double(), y64, rtol=1e-4, atol=1e-5 * float(y64.abs().max()))
    with pytest.raises(ValueError):
        twin(x[:, :10], theta)
