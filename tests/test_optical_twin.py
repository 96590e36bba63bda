"""The optical physics twin: the data as the setup sees it (gray levels, straight-through rounding), gradients against
finite differences, global-phase invariance, the pixel-grid SHG against a fine-grid reference, the camera mapping,
fitting perturbed constants back, artifacts and the hybrid twin."""

import math

import numpy as np
import pytest
import torch

import twins.optical as optical
from encoding.optical import OpticalCalibration, OpticalEncoding, gray_levels, output_roi, pixel_values
from twins import twin_class
from twins.artifact import load_twin, save_twin
from twins.data import TwinData
from twins.fit import fit_twin, nmse
from twins.hybrid import HybridTwin
from twins.neural import NeuralTwin
from twins.optical import OVERSAMPLE, OpticalPhysicsTwin, smooth_phase

ENC = OpticalEncoding().model_dump()
LUT = 2 * np.pi * np.arange(256) / 255
CAL = OpticalCalibration(lut=list(LUT), column_offset=4.0, roi=output_roi(OpticalEncoding(), 4.0, 1024),
                         reference_mean=1500.0).model_dump()
TRUE = {"lut_scale": 1.06, "lut_curvature": 0.03, "crosstalk_px": 0.35, "laser_center_nm": 800.3,
        "laser_fwhm_nm": 10.6, "pm_offset_thz": 0.8, "pm_fwhm_thz": 9.0, "column_shift": 1.5,
        "line_spread_columns": 1.3}
"""Perturbed constants of a 'device' (the kind of errors the lab expects; not the simulator's values)."""


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these are small tensors, and torch's threads slow down many-fold on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _inputs(batch, n, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (2 * torch.rand(batch, n, generator=gen) - 1).to(dtype), (2 * torch.rand(n, generator=gen) - 1).to(dtype)


def test_registered_shapes_dtypes_and_the_reference():
    assert twin_class("optical_physics") is OpticalPhysicsTwin
    twin = OpticalPhysicsTwin(6, ENC, CAL)
    assert (twin.n_inputs, twin.n_params, twin.n_outputs) == (6, 6, 6)
    assert OpticalPhysicsTwin(6, ENC, CAL, n_outputs=4).n_outputs == 4
    assert OpticalPhysicsTwin(6, {**ENC, "output_bins": 5}, CAL).n_outputs == 5
    x, theta = _inputs(5, 6)
    with torch.no_grad():
        y64 = twin(x, theta)
        y32 = twin(x.float(), theta.float())
        y_rows = twin(x, theta.expand(5, -1))
    assert y64.shape == (5, 6) and y64.dtype == torch.float64 and y32.dtype == torch.float32
    torch.testing.assert_close(y32, y64.float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(y_rows, y64, rtol=0, atol=0)
    enc = OpticalEncoding(**ENC)
    assert torch.isfinite(y64).all() and (y64 >= -enc.output_offset).all()  # SH powers are not negative
    # the transform-limited pattern (value -1 everywhere: gray 0) gives the reference: mean bin 1 reference unit
    with torch.no_grad():
        tl = twin(-torch.ones(1, 6), -torch.ones(6))
    assert float(tl.mean()) == pytest.approx(enc.output_gain * 1.0 - enc.output_offset, rel=1e-6)
    assert set(twin.constants()) == set(optical.CONSTANTS)
    assert len([p for p in twin.parameters()]) == 10


def test_gray_levels_are_the_setups():
    for layout in ("interleave", "halves"):
        enc = {**ENC, "layout": layout}
        twin = OpticalPhysicsTwin(5, enc, CAL)
        x, theta = _inputs(7, 5, seed=3)
        sent = torch.round(gray_levels(pixel_values(x, theta, OpticalEncoding(**enc)), LUT, np.pi))
        assert torch.equal(twin.gray(x, theta), sent)
        assert torch.equal(twin.gray(x.float(), theta.float()), sent)  # float32 x: the setup's float64 gray levels


def test_straight_through_rounding():
    twin = OpticalPhysicsTwin(4, ENC, CAL)
    x, theta = _inputs(1, 4, seed=1)
    sweep = x.repeat(400, 1)
    sweep[:, 0] = torch.linspace(-0.3, 0.3, 400, dtype=torch.float64)
    with torch.no_grad():
        y = twin(sweep, theta)
        gray = twin.bin_gray(sweep, theta.expand(400, -1))[:, 0]
    steps = torch.diff(gray) != 0
    changes = (torch.diff(y, dim=0).abs().amax(dim=1) > 0)
    assert steps.sum() >= 10 and torch.equal(changes, steps)  # y changes exactly where the gray level steps
    xg = sweep[:5].clone().requires_grad_()
    twin(xg, theta).sum().backward()
    assert torch.isfinite(xg.grad).all() and (xg.grad[:, 0].abs() > 0).all()


def test_rounding_gradient_is_that_of_the_identity(monkeypatch):
    """At inputs on exact gray levels, the gradient with rounding equals the gradient without it."""
    twin = OpticalPhysicsTwin(4, ENC, CAL)
    gen = torch.Generator().manual_seed(2)
    gray = torch.randint(0, 128, (3, 8), generator=gen).double()
    values = 2 * torch.as_tensor(LUT)[gray.long()] / math.pi - 1  # value -> phase (v + 1) pi / 2 = LUT[gray]
    x, theta = values[:, :4].clone(), values[:, 4:].clone()

    def grads():
        xg, tg = x.clone().requires_grad_(), theta.clone().requires_grad_()
        (twin(xg, tg) * torch.arange(1.0, 5.0, dtype=torch.float64)).sum().backward()
        return xg.grad, tg.grad

    rounded = grads()
    monkeypatch.setattr(optical, "straight_through_round", lambda g: g)
    smooth = grads()
    for a, b in zip(rounded, smooth):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        assert a.abs().min() > 0


def test_gradients_in_the_constants_match_finite_differences():
    init = {**TRUE, "gain": 2000.0}
    twin = OpticalPhysicsTwin(6, ENC, CAL, init=init)
    x, theta = _inputs(4, 6, seed=5)
    weights = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)

    def loss():
        return (twin(x, theta) * weights).sum()

    twin.zero_grad()
    loss().backward()
    for name, p in twin.named_parameters():
        h = 1e-6 if name.startswith("log_") else 1e-5
        with torch.no_grad():
            p += h
            up = float(loss())
            p -= 2 * h
            down = float(loss())
            p += h
        numeric = (up - down) / (2 * h)
        assert float(p.grad) == pytest.approx(numeric, rel=1e-5, abs=1e-9 * abs(up)), name
    assert all(float(p.grad) != 0 for p in twin.parameters())


def test_gradient_in_the_phase_matches_finite_differences():
    twin = OpticalPhysicsTwin(4, ENC, CAL, init=TRUE)
    gen = torch.Generator().manual_seed(4)
    phase = (torch.rand(2, 640, generator=gen, dtype=torch.float64) * math.pi).requires_grad_()
    assert torch.autograd.gradcheck(twin.outputs_from_phase, (phase,), eps=1e-6, atol=1e-7, rtol=1e-4,
                                    fast_mode=True)


def test_a_global_phase_changes_nothing():
    twin = OpticalPhysicsTwin(4, ENC, CAL, init=TRUE)
    gen = torch.Generator().manual_seed(6)
    phase = torch.rand(3, 640, generator=gen, dtype=torch.float64) * 2 * math.pi
    with torch.no_grad():
        field, shifted = twin.field(phase), twin.field(phase + 1.234)
        torch.testing.assert_close(shifted, field * np.exp(1.234j), rtol=0, atol=1e-12)
        torch.testing.assert_close(twin.sh_power(shifted), twin.sh_power(field), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(twin.outputs_from_phase(phase + 1.234), twin.outputs_from_phase(phase),
                                   rtol=1e-10, atol=1e-12)


def test_pixel_grid_shg_agrees_with_the_fine_grid_autoconvolution():
    """The autoconvolution of the pixel-averaged field gives the camera spectrum of the full fine-grid one."""
    twin = OpticalPhysicsTwin(8, ENC, CAL, init=TRUE)
    x, theta = _inputs(4, 8, seed=7)
    with torch.no_grad():
        phase = twin.pixel_phase(twin.gray(x, theta))
        smooth = smooth_phase(phase, twin.log_crosstalk_px.exp())  # [B, Q, P]
        fine = (twin._fixed()["amplitude"] * torch.exp(1j * smooth)).transpose(1, 2).reshape(4, -1)
        m = fine.shape[1]
        spec = torch.fft.fft(fine, n=2 * m)
        sh = torch.fft.ifft(spec * spec)[:, : 2 * m - 1] / m  # (1 / PQ) sum_j E_j E_{k-j}
        nu = 2 * (twin.nu_c + ((0.5 / OVERSAMPLE - 0.5) - 319.5) * twin.dnu) + np.arange(2 * m - 1) * twin.dnu / OVERSAMPLE
        detuning = (torch.as_tensor(nu * 1e-12) - 2e-12 * twin.nu_c - twin.pm_offset_thz) / twin.log_pm_fwhm_thz.exp()
        intensity = sh.abs() ** 2 * torch.sinc(optical.SINC_FWHM * detuning) ** 2
        lsf = twin.line_spread(torch.as_tensor(299_792_458.0 / nu * 1e9))
        fine_counts = intensity @ lsf * (twin.log_gain.exp() * twin.calibration.reference_mean) / OVERSAMPLE
        counts = twin.camera_counts(phase)
    assert counts.shape == (4, CAL["roi"][1])
    error = (fine_counts - counts).norm(dim=1) / counts.norm(dim=1)
    assert error.max() < 5e-3


def test_camera_mapping_and_retardance():
    twin = OpticalPhysicsTwin(4, ENC, CAL)
    # by default the transform-limited SH lands where the calibration measured it (the setup's centroid)
    assert twin.transform_limited_centroid() == pytest.approx(511.5 + 4.0, abs=0.01)
    shift = twin.constants()["column_shift"]
    assert 0 < shift < 2  # columns are linear in wavelength, the SH spectrum is not symmetric in wavelength
    moved = OpticalPhysicsTwin(4, ENC, CAL, init={"column_shift": shift + 3.0})
    assert moved.transform_limited_centroid() - 515.5 == pytest.approx(3.0, abs=0.05)
    # the mapping is anchored at half the laser's wavelength: a laser 0.2 nm to the red does not move the SH image
    # by 0.1 nm = +5 columns (only the phase matching, fixed at 2 nu_c, pulls it back a little)
    red = OpticalPhysicsTwin(4, ENC, CAL, init={"column_shift": shift, "laser_center_nm": 800.2})
    assert -2.5 < red.transform_limited_centroid() - 515.5 < 0
    with torch.no_grad():
        phase = twin.pixel_phase(torch.full((1, 640), 100.0, dtype=torch.float64))[0]
    # a liquid crystal's phase goes as 1 / wavelength: more at the blue end (high pixel: high frequency)
    assert float(phase[639] / phase[0]) == pytest.approx(float(twin.retardance[639] / twin.retardance[0]))
    assert float(phase[639] / phase[0]) == pytest.approx((800 + 12) / (800 - 12), rel=2e-3)


def test_frozen_cache_follows_the_constants():
    twin = OpticalPhysicsTwin(4, ENC, CAL).requires_grad_(False)
    x, theta = _inputs(3, 4, seed=8)
    before = twin(x, theta)
    twin.load_state_dict({**twin.state_dict(), "log_pm_fwhm_thz": torch.tensor(math.log(7.0), dtype=torch.float64)})
    after = twin(x, theta)
    assert (after - before).abs().max() > 1e-3
    assert twin.constants()["pm_fwhm_thz"] == pytest.approx(7.0)
    torch.testing.assert_close(after, OpticalPhysicsTwin(4, ENC, CAL, init=twin.constants())(x, theta))


def test_fit_recovers_perturbed_constants():
    n = 8
    device = OpticalPhysicsTwin(n, ENC, CAL, init=TRUE)
    gen = torch.Generator().manual_seed(0)
    x, theta = 2 * torch.rand(320, n, generator=gen) - 1, 2 * torch.rand(320, n, generator=gen) - 1
    with torch.no_grad():
        y = device(x.double(), theta.double()).float()
    train, val = TwinData(x.numpy(), theta.numpy(), y.numpy()).split(0.2, seed=0)
    twin = OpticalPhysicsTwin(n, ENC, CAL)
    xv, tv, yv = (torch.as_tensor(a).double() for a in (val.x, val.theta, val.y))
    with torch.no_grad():
        unfitted = nmse(twin(xv, tv), yv)
    report = fit_twin(twin, train, val, epochs=20, lr=0.03, batch_size=64, patience=None)
    fitted = twin.constants()
    assert unfitted > 0.1
    assert report.val_nmse < unfitted / 300
    assert fitted["lut_scale"] == pytest.approx(TRUE["lut_scale"], rel=0.02)
    # the phase at the top of the range used (value +1: pi on the table) comes back to < 1 %
    u = 0.5

    def top(c):
        return c["lut_scale"] * u + c["lut_curvature"] * u * (1 - u)

    assert top(fitted) == pytest.approx(top(TRUE), rel=0.01)
    assert fitted["pm_fwhm_thz"] == pytest.approx(TRUE["pm_fwhm_thz"], rel=0.05)
    assert fitted["laser_fwhm_nm"] == pytest.approx(TRUE["laser_fwhm_nm"], rel=0.05)


def test_artifact_round_trip(tmp_path):
    twin = OpticalPhysicsTwin(6, ENC, CAL, n_outputs=4, init={"crosstalk_px": 0.3})
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.01)
    path = save_twin(tmp_path / "optical.pt", twin, {"setup": "optical"})
    loaded, meta = load_twin(path)
    assert isinstance(loaded, OpticalPhysicsTwin) and meta == {"setup": "optical"}
    assert loaded.config() == twin.config()
    x, theta = _inputs(5, 6, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, theta), twin(x, theta), rtol=0, atol=0)
        rebuilt = OpticalPhysicsTwin(6, ENC, CAL, n_outputs=4, init=twin.constants())
        torch.testing.assert_close(rebuilt(x, theta), twin(x, theta), rtol=1e-12, atol=1e-14)


def test_hybrid_with_a_neural_residual(tmp_path):
    physics = OpticalPhysicsTwin(6, ENC, CAL)
    hybrid = HybridTwin(physics=physics, residual=NeuralTwin(6, 6, 6, hidden=(16,)))
    x, theta = _inputs(3, 6, seed=10, dtype=torch.float32)
    x.requires_grad_()
    y = hybrid(x, theta)
    assert y.shape == (3, 6) and y.dtype == torch.float32
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    loaded, _ = load_twin(save_twin(tmp_path / "hybrid.pt", hybrid, {}))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, theta), hybrid(x, theta))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown constant"):
        OpticalPhysicsTwin(4, ENC, CAL, init={"lut_scal": 1.0})
    with pytest.raises(ValueError, match="positive"):
        OpticalPhysicsTwin(4, ENC, CAL, init={"crosstalk_px": 0.0})
    with pytest.raises(ValueError, match="strictly increasing"):
        OpticalPhysicsTwin(4, ENC, {**CAL, "lut": [0.0] * 256})
    with pytest.raises(ValueError, match="spectral bins"):
        OpticalPhysicsTwin(200, ENC, CAL)
