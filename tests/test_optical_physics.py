"""The optical bench's ground-truth physics (``simulators.physics.optical.SHGPulseShaper``).

Expectations come from the documented physics (module docstring, ``values``) and from invariances of second-harmonic
generation, not from numbers recorded from the simulation.  All benches are seeded.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from simulators.physics.optical import (
    C_M_S, DNU_HZ, LUT_NOMINAL, NU_C_HZ, OpticalValues, SHGPulseShaper, fine_frequencies_hz)

COLUMNS = np.arange(1024)


@pytest.fixture(scope="module")
def bench() -> SHGPulseShaper:
    return SHGPulseShaper(seed=0)


def flat(n: int = 1) -> torch.Tensor:
    return torch.zeros(n, 640, dtype=torch.float64)


def half_max_centre(y: np.ndarray, x: np.ndarray = COLUMNS) -> float:
    """Centroid of the part of a single-peaked profile above half its maximum (weights y - max/2: continuous in a
    shift of the profile)."""
    w = np.clip(y - y.max() / 2, 0.0, None)
    return float((x * w).sum() / w.sum())


def fwhm(y: np.ndarray, x: np.ndarray) -> float:
    """Full width at half maximum, by linear interpolation of the two half-maximum crossings."""
    half = y.max() / 2
    above = np.nonzero(y > half)[0]
    i, j = above[0], above[-1]
    left = np.interp(half, [y[i - 1], y[i]], [x[i - 1], x[i]])
    right = np.interp(half, [y[j + 1], y[j]], [x[j + 1], x[j]])
    return abs(right - left)


def random_centre(n: int, seed: int = 1) -> np.ndarray:
    """Patterns [n, 640] with random gray levels on the central 340 pixels, 0 elsewhere."""
    g = np.zeros((n, 640))
    g[:, 150:490] = np.random.default_rng(seed).integers(0, 256, (n, 340))
    return g


# -- the signal: level, location, shape ------------------------------------------------------------------------------

def test_transform_limited_peak_level_scales_with_exposure_and_gain(bench: SHGPulseShaper) -> None:
    v = bench.values
    counts = bench.expected_counts(flat(), exposure_s=1e-3, electrons_per_count=4.0)[0].numpy()
    assert 2_700 < counts.max() < 3_300  # ~12,000 e- in the peak column per ms, 4 e-/count
    assert counts.max() == pytest.approx(v.peak_electrons_per_ms / 4.0, rel=1e-9)
    double = bench.expected_counts(flat(), exposure_s=2e-3, electrons_per_count=1.0)[0].numpy()
    np.testing.assert_allclose(double, 8.0 * counts, rtol=1e-12, atol=1e-12)
    assert counts.min() >= 0.0 and counts[:100].max() < 1e-3 * counts.max()  # nothing far from the SH band


def test_transform_limited_peak_location_follows_the_spectrometer_offset() -> None:
    nominal = SHGPulseShaper(seed=0, values=OpticalValues())
    shifted = SHGPulseShaper(seed=0, values=replace(OpticalValues(), spectrometer_offset_col=4.3))
    a = nominal.expected_counts(flat(), exposure_s=1e-3, electrons_per_count=4.0)[0].numpy()
    b = shifted.expected_counts(flat(), exposure_s=1e-3, electrons_per_count=4.0)[0].numpy()
    assert half_max_centre(a) == pytest.approx(511.5, abs=0.3)
    assert half_max_centre(b) - half_max_centre(a) == pytest.approx(4.3, abs=0.02)
    for seed in (0, 1, 2):  # reality: the laser and phase-matching offsets move it by a few columns at most
        real = SHGPulseShaper(seed=seed)
        c = real.expected_counts(flat(), exposure_s=1e-3, electrons_per_count=4.0)[0].numpy()
        assert -2.0 < half_max_centre(c) - (511.5 + real.values.spectrometer_offset_col) < 6.0


def test_transform_limited_width_is_the_gaussian_autoconvolution_times_phase_matching() -> None:
    """A Gaussian field's SH is Gaussian, sqrt(2) times wider in intensity (cut a little narrower by the SLM aperture);
    the crystal's sinc^2 narrows it.  Reference: a direct convolution in numpy on a 10x finer grid."""
    v = OpticalValues()
    bench = SHGPulseShaper(seed=0, values=v)
    counts = bench.expected_counts(flat(), exposure_s=1e-3, electrons_per_count=4.0)[0].numpy()
    f = C_M_S * v.fwhm_m / v.center_wavelength_m**2                   # fundamental intensity FWHM, Hz
    nu = ((np.arange(6400) + 0.5) / 10 - 320) * DNU_HZ                # the aperture, 10 points per pixel
    amplitude = np.exp(-2 * math.log(2) * (nu / f) ** 2)
    nu_sh = 2 * nu[0] + np.arange(2 * nu.size - 1) * (nu[1] - nu[0])  # minus 2 nu_c
    sh = np.convolve(amplitude, amplitude) ** 2 * np.sinc(0.885892 * nu_sh / v.pm_fwhm_hz) ** 2
    width_columns = fwhm(sh, nu_sh) * (400e-9) ** 2 / C_M_S / 0.02e-9
    assert 140 < width_columns < 145  # the untruncated Gaussian would give 148.5
    assert fwhm(counts, COLUMNS.astype(float)) == pytest.approx(width_columns, rel=0.005)


def test_uniform_gray_is_a_global_phase_plus_delay_so_the_sh_spectrum_is_unchanged(bench: SHGPulseShaper) -> None:
    """phi(nu) = LUT(g) nu / nu_c: a constant and a linear ramp in frequency, so the SH intensity is that of gray 0."""
    ref = bench.expected_counts(flat(), exposure_s=1e-3, electrons_per_count=4.0)
    gray = torch.tensor([[60.0], [128.0], [255.0]]).expand(3, 640)
    uniform = bench.expected_counts(gray, exposure_s=1e-3, electrons_per_count=4.0)
    np.testing.assert_allclose(uniform.numpy(), ref.expand(3, -1).numpy(), rtol=1e-9, atol=1e-9 * float(ref.max()))


def test_random_phases_give_a_lower_structured_sh_spectrum(bench: SHGPulseShaper) -> None:
    tl = bench.expected_counts(flat(), exposure_s=1e-3, electrons_per_count=4.0)[0].numpy()
    rand = bench.expected_counts(torch.tensor(random_centre(4)), exposure_s=1e-3, electrons_per_count=4.0).numpy()

    def rms_width(y: np.ndarray) -> float:
        c = (COLUMNS * y).sum() / y.sum()
        return float(np.sqrt(((COLUMNS - c) ** 2 * y).sum() / y.sum()))

    def local_maxima(y: np.ndarray) -> int:
        band = y[y.argmax() - 60:y.argmax() + 60]
        return int(((band[1:-1] > band[:-2]) & (band[1:-1] > band[2:])).sum())

    assert local_maxima(tl) == 1
    for r in rand:
        assert r.max() < 0.15 * tl.max() and r.sum() < 0.1 * tl.sum()
        assert rms_width(r) > rms_width(tl)
        assert local_maxima(r) >= 5  # speckle


# -- SHG invariances on the field itself -----------------------------------------------------------------------------

def test_global_phase_and_time_delay_leave_the_sh_spectrum_unchanged(bench: SHGPulseShaper) -> None:
    phase = bench.slm_phase(torch.tensor(random_centre(2, seed=5)))   # a structured spectral phase [2, N_FINE]
    kw = dict(exposure_s=1e-3, electrons_per_count=4.0)
    ref = bench.counts_from_phase(phase, **kw)
    nu = torch.tensor(fine_frequencies_hz() - NU_C_HZ)
    scale = 1e-10 * float(ref.max())
    np.testing.assert_allclose(bench.counts_from_phase(phase + 1.7, **kw).numpy(), ref.numpy(), atol=scale)
    for delay_s in (1.3e-12, -25e-12, 60e-12):  # a linear ramp: exact only for the zero-padded (linear) convolution
        moved = bench.counts_from_phase(phase + 2 * math.pi * delay_s * nu, **kw)
        np.testing.assert_allclose(moved.numpy(), ref.numpy(), atol=scale)
    # ... while a chirp (quadratic phase) does change it: the check above can fail
    chirped = bench.counts_from_phase(phase + 2 * math.pi * 2e-25 * nu**2, **kw)
    assert float((chirped - ref).abs().max()) > 0.05 * float(ref.max())


def test_gradient_matches_finite_differences(bench: SHGPulseShaper) -> None:
    rng = np.random.default_rng(3)
    base = torch.tensor(rng.integers(0, 255, (1, 640)) + rng.uniform(0.2, 0.8, (1, 640)))
    free = slice(300, 316)  # the gradient of 40 columns with respect to 16 pixels (away from integer gray levels)

    def f(part: torch.Tensor) -> torch.Tensor:
        gray = torch.cat([base[:, :free.start], part, base[:, free.stop:]], dim=1)
        return bench.expected_counts(gray, exposure_s=1e-3, electrons_per_count=4.0, columns=(495, 40))

    assert torch.autograd.gradcheck(f, (base[:, free].clone().requires_grad_(),), eps=1e-6, atol=1e-4, rtol=1e-4)
    # a directional derivative over all pixels, the whole sensor
    gray = base.clone().requires_grad_()
    direction = torch.tensor(rng.uniform(-0.1, 0.1, (1, 640)))
    weights = torch.tensor(rng.uniform(0, 1, 1024))
    loss = (bench.expected_counts(gray, exposure_s=1e-3, electrons_per_count=4.0)[0] * weights).sum()
    (grad,) = torch.autograd.grad(loss, gray)
    h = 1e-4
    with torch.no_grad():
        up, down = ((bench.expected_counts(base + step, exposure_s=1e-3, electrons_per_count=4.0)[0] * weights).sum()
                    for step in (h * direction, -h * direction))
    assert float((grad * direction).sum()) == pytest.approx(float(up - down) / (2 * h), rel=1e-6)


def test_lut_is_off_nominal_and_integer_patterns_use_it_exactly(bench: SHGPulseShaper) -> None:
    np.testing.assert_allclose(bench.lut_nominal, 2 * np.pi * np.arange(256) / 255)
    assert bench.lut_nominal is LUT_NOMINAL and bench.n_pixels == 640
    true = bench.values.lut_true
    assert np.all(np.diff(true) > 0) and 0.05 < abs(true[128] - LUT_NOMINAL[128]) < 0.5
    gray = np.random.default_rng(4).integers(0, 256, (3, 640))
    as_int = bench.slm_phase(torch.tensor(gray))
    as_float = bench.slm_phase(torch.tensor(gray, dtype=torch.float64))
    np.testing.assert_allclose(as_int.numpy(), as_float.numpy(), atol=1e-12)
    assert DNU_HZ == pytest.approx(17.58e9, rel=1e-3)


def test_batch_items_are_independent(bench: SHGPulseShaper) -> None:
    gray = torch.tensor(random_centre(6, seed=9)) + 0.37
    batch = bench.expected_counts(gray, exposure_s=1e-3, electrons_per_count=2.0, columns=(300, 400))
    assert batch.shape == (6, 400) and batch.dtype == torch.float64
    for k in (0, 3, 5):
        alone = bench.expected_counts(gray[k:k + 1], exposure_s=1e-3, electrons_per_count=2.0, columns=(300, 400))
        np.testing.assert_allclose(batch[k].numpy(), alone[0].numpy(), rtol=1e-10, atol=1e-9)
    # a column window is the same columns of the full sensor
    full = bench.expected_counts(gray[:2], exposure_s=1e-3, electrons_per_count=2.0)
    np.testing.assert_allclose(batch[:2].numpy(), full[:, 300:700].numpy(), rtol=1e-10, atol=1e-9)


# -- the camera: noise, dark frame, clipping -------------------------------------------------------------------------

def test_frames_minus_dark_average_to_expected_counts() -> None:
    bench = SHGPulseShaper(seed=11)
    columns, exposure, epc, k = (420, 200), 5e-4, 4.0, 2000
    gray = np.tile(np.round(40 * np.sin(np.arange(640) / 40.0) ** 2).astype(np.uint8), (k, 1))
    t0 = bench.bench_time_s
    frames = bench.frames(gray, exposure_s=exposure, electrons_per_count=epc, columns=columns)
    assert frames.shape == (k, 200) and frames.dtype == np.uint16
    assert bench.bench_time_s == pytest.approx(t0 + k * exposure)
    energy = float(np.mean(bench.relative_energy(t0 + exposure * np.arange(k)) ** 2)) * (1 + 0.01**2)
    expected = bench.expected_counts(torch.tensor(gray[:1], dtype=torch.float64), exposure_s=exposure,
                                     electrons_per_count=epc, columns=columns)[0].numpy() * energy
    assert expected.max() > 500
    signal = frames - bench.dark_counts(columns, exposure, electrons_per_count=epc)
    mean, se = signal.mean(axis=0), signal.std(axis=0) / math.sqrt(k)
    assert np.all(np.abs(mean - expected) < 5 * se + 0.05)
    assert mean.sum() / expected.sum() == pytest.approx(1.0, abs=2e-3)


def test_float32_frames_agree_with_the_float64_core() -> None:
    bench = SHGPulseShaper(seed=11)
    gray = torch.tensor(random_centre(4, seed=2), dtype=torch.int64)
    a = bench._sh_columns(gray, (300, 400))
    b = bench._sh_columns(gray, (300, 400), dtype=torch.float32)
    assert b.dtype == torch.float32
    assert float((a - b).abs().max()) < 1e-5 * float(a.max())


def test_shutter_closed_gives_the_dark_frame_only() -> None:
    bench = SHGPulseShaper(seed=12)
    v = bench.values
    for exposure in (1e-3, 10.0):
        frames = bench.frames(np.zeros((1500, 640), np.uint8), exposure_s=exposure, electrons_per_count=4.0,
                              shutter_open=False)
        dark = bench.dark_counts((0, 1024), exposure, electrons_per_count=4.0)
        dark_current = v.dark_current_e_per_s * exposure * 128
        expected_std = math.sqrt((v.read_noise_e**2 + dark_current) / 16.0 + 1 / 12)
        assert np.abs(frames.mean(axis=0) - dark).max() < 5 * expected_std / math.sqrt(1500)
        assert frames.std(axis=0).mean() == pytest.approx(expected_std, rel=0.03)
    assert dark.mean() - bench.column_bias.mean() == pytest.approx(v.dark_current_e_per_s * 10 * 128 / 4, rel=1e-9)
    # the fixed pattern is the same in every frame: +-3 counts around ~100
    assert 99 < v.bias_counts < 101 and 1.2 < bench.column_bias.std() < 2.2
    assert np.abs(bench.column_bias - v.bias_counts).max() <= 3.0


def test_saturation_clips_at_4095() -> None:
    bench = SHGPulseShaper(seed=0)
    frames = bench.frames(np.zeros((20, 640), np.uint8), exposure_s=5e-3, electrons_per_count=4.0)
    expected = bench.expected_counts(flat(), exposure_s=5e-3, electrons_per_count=4.0)[0].numpy()
    assert frames.dtype == np.uint16 and frames.max() == 4095
    saturated = expected > 4095 * 1.2
    assert saturated.sum() > 50 and np.all(frames[:, saturated] == 4095)
    assert np.all(frames[:, expected < 1] < 200)


def test_noise_is_shot_noise_plus_read_noise() -> None:
    """Per column, variance = mean / (e-/count) + (read noise / (e-/count))^2 + 1/12 once the frame-to-frame laser
    energy (common to all columns) is divided out."""
    for epc, exposure in ((1.0, 2e-4), (4.0, 1e-3)):
        bench = SHGPulseShaper(seed=13)
        columns = (430, 170)
        frames = bench.frames(np.zeros((1500, 640), np.uint8), exposure_s=exposure, electrons_per_count=epc,
                              columns=columns).astype(float)
        signal = frames - bench.dark_counts(columns, exposure, electrons_per_count=epc)
        mean = signal.mean(axis=0)
        assert 300 < mean.max() < 3500  # bright, not clipped
        energy = signal.sum(axis=1) / mean.sum()                 # each frame's common factor
        residual = signal - energy[:, None] * mean
        var = residual.var(axis=0)
        bright = mean > 0.3 * mean.max()
        shot = var - (bench.values.read_noise_e / epc) ** 2 - 1 / 12
        assert np.median(shot[bright] / mean[bright]) == pytest.approx(1.0 / epc, rel=0.07)
        assert np.polyfit(mean, var, 1)[0] == pytest.approx(1.0 / epc, rel=0.1)
        # without dividing the energy out, the 1 % shot-to-shot jitter (2 % on SH) adds (0.02 mean)^2
        raw_excess = signal.var(axis=0) - var
        assert np.median(raw_excess[bright] / mean[bright] ** 2) == pytest.approx(4e-4, rel=0.35)


def test_image_mode_spreads_the_spectrum_over_rows() -> None:
    bench = SHGPulseShaper(seed=14)
    v = bench.values
    columns, exposure, epc, k = (450, 120), 1e-3, 4.0, 200
    frames = bench.frames(np.zeros((k, 640), np.uint8), exposure_s=exposure, electrons_per_count=epc,
                          columns=columns, rows=(0, 128), mode="IMAGE")
    assert frames.shape == (k, 128, 120) and frames.dtype == np.uint16
    dark = bench.dark_counts(columns, exposure, electrons_per_count=epc, mode="IMAGE")
    signal = frames - dark[None, None, :]
    fvb = signal.sum(axis=1).mean(axis=0)
    expected = bench.expected_counts(flat(), exposure_s=exposure, electrons_per_count=epc, columns=columns)[0]
    assert fvb.sum() / expected.sum().item() == pytest.approx(1.0, abs=0.01)
    profile = signal.mean(axis=(0, 2))
    rows = np.arange(128)
    centre = (rows * profile).sum() / profile.sum()
    assert centre == pytest.approx(v.row_center, abs=0.3)
    assert math.sqrt(((rows - centre) ** 2 * profile).sum() / profile.sum()) == pytest.approx(v.row_sigma, rel=0.05)
    # per-pixel read noise: far from the light, the std is that of one read
    assert signal[:, :5, :].std() == pytest.approx(math.sqrt((v.read_noise_e / epc) ** 2 + 1 / 12), rel=0.05)
    roi = bench.frames(np.zeros((3, 640), np.uint8), exposure_s=exposure, electrons_per_count=epc,
                       columns=columns, rows=(50, 10), mode="IMAGE")
    assert roi.shape == (3, 10, 120)


# -- bookkeeping -----------------------------------------------------------------------------------------------------

def test_same_seed_same_bench_and_frames() -> None:
    patterns = np.random.default_rng(0).integers(0, 256, (16, 640)).astype(np.uint8)
    kw = dict(exposure_s=1e-3, electrons_per_count=2.0, columns=(400, 200))
    a, b, c = SHGPulseShaper(seed=7), SHGPulseShaper(seed=7), SHGPulseShaper(seed=8)
    assert a.values == b.values and a.values != c.values
    np.testing.assert_array_equal(a.frames(patterns, **kw), b.frames(patterns, **kw))
    np.testing.assert_array_equal(a.frames(patterns, **kw), b.frames(patterns, **kw))
    assert not np.array_equal(a.frames(patterns, **kw), c.frames(patterns, **kw))
    assert 3.5 < a.values.spectrometer_offset_col < 5.0 and 800.2e-9 < a.values.center_wavelength_m < 800.4e-9


def test_bench_time_drift_and_busy_time() -> None:
    bench = SHGPulseShaper(seed=15)
    bench.frames(np.zeros((10, 640), np.uint8), exposure_s=2e-3, electrons_per_count=4.0, frame_period_s=0.01)
    assert bench.bench_time_s == pytest.approx(0.1) and bench.busy_s > 0
    drift = bench.relative_energy(np.linspace(0, 1200, 5000))
    assert 0.002 < drift.max() - drift.min() < 0.01 and abs(drift.mean() - 1) < 0.002
    assert abs(bench.relative_energy(0.0) - bench.relative_energy(1.0)) < 1e-4  # slow: minutes, not seconds


def test_bad_arguments_raise(bench: SHGPulseShaper) -> None:
    with pytest.raises(ValueError):
        bench.frames(np.zeros((2, 600), np.uint8), exposure_s=1e-3, electrons_per_count=4.0)
    with pytest.raises(ValueError):
        bench.frames(np.zeros((2, 640), np.uint8), exposure_s=1e-3, electrons_per_count=4.0, columns=(1000, 100))
    with pytest.raises(ValueError):
        bench.frames(np.zeros((2, 640), np.uint8), exposure_s=1e-3, electrons_per_count=4.0, mode="FOO")
    with pytest.raises(ValueError):
        bench.row_profile((120, 20))
