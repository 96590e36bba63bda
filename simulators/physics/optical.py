"""Ground truth of the optical bench: femtosecond laser -> 4f pulse shaper (phase SLM) -> SHG -> spectrometer -> CCD.

This is "reality" for the simulated bench. The twins never import it (see docs/architecture.md).

The chain, top to bottom (SI units; frequencies in Hz; nu_c = c / 800 nm, c = 299792458 m/s)::

    laser       Gaussian power spectrum S(nu), centre c / lambda_0, FWHM converted to frequency at the centre
                (F = c FWHM_lambda / lambda_0^2), the red half (nu < centre) (1 + a) times wider than F / 2 and the blue
                half (1 - a) times, times a ripple 1 + r cos(2 pi (nu - centre) / P + phi).  Field amplitude sqrt(S),
                flat spectral phase (transform-limited).
    shaper      the 640 SLM pixels are linear in optical frequency: pixel p is centred on nu_p = nu_c + (p - 319.5) dnu,
                dnu = c 24 nm / (800 nm)^2 / 640 = 17.58 GHz; the aperture is exactly the 640 pixels (the spectrum
                outside is cut off; at the edges it is down to ~3 % of its peak).  The field is sampled on a grid of
                OVERSAMPLE = 3 points per pixel (pixel centre and +-1/3 pixel), 1920 points, spacing d = dnu / 3.
    SLM phase   gray g (0..255, fractional allowed) -> phase at 800 nm from the TRUE lookup table
                phi_800(g) = 2 pi (a_1 u - a_2 u^2), u = g / 255, tabulated at the 256 integer gray levels and
                interpolated linearly between them (the nominal table is 2 pi g / 255);
                pixel crosstalk (fringing fields): the retardance staircase over the pixels is smoothed by a Gaussian
                of sigma_x pixels (evaluated exactly on the fine grid with erf weights of the neighbouring pixels;
                outside the aperture the edge pixels continue); the liquid crystal's retardance gives a phase that
                scales with frequency: phi(nu) = phi_800 nu / nu_c.  Shaped field E(nu) = sqrt(S(nu)) exp(i phi(nu)).
    SHG         E_SH(nu) = sum_nu' E(nu') E(nu - nu') (the linear autoconvolution, by FFT with zero padding to
                2 x 1920 points; SH grid 2 nu_0 + k d, k = 0..3838), intensity |E_SH|^2 times the phase-matching
                factor sinc^2(0.8859 (nu - 2 nu_c - delta_pm) / B_pm) (np.sinc convention, FWHM B_pm).
    spectrometer  SH frequency nu lands on camera column x(nu) = 511.5 + offset + (c / nu - 400 nm) / 0.02 nm,
                spread by a Gaussian line spread of sigma_ls columns, integrated over each column's width (erf).
                Numerically: the SH intensity is summed over groups of 3 SH grid points (one bin per dnu, 0.47 column)
                and each bin is placed at its centre with sigma_ls reduced by the bins' own second moment
                ((2/3) d^2, 0.016 column^2), so the blur is sigma_ls in the second moment; one fixed matrix per
                column window (cached), a batch is one matmul per group of 32 columns (each group's few bins).
    camera      1024 columns x 128 rows; the light is spread over rows as a Gaussian (row centre r_0, sigma_r rows,
                normalised over the sensor).  FVB bins all 128 rows in the serial register (one read per column);
                IMAGE reads every pixel of the ROI.

Signal level: the transform-limited pattern (all gray 0) gives ``peak_electrons_per_ms`` photoelectrons (~12,000) in
its brightest column per 1 ms of exposure (linear in exposure), at the mean laser energy: ~3,000 counts above the dark
frame at gain 1 (4 e-/count), about 140 columns FWHM.  Its centre is the laser's doubled centre (red-shifted by the
laser's +0.3 nm: +7.5 columns) pulled blue by the phase matching (+0.8 THz) and skewed by the laser's asymmetry and
ripple: -1.5 to +5.5 columns (median +1.9 over seeds) from 511.5 + offset; exactly 511.5 with the nominal values.
Random phases over the central ~340 pixels spread the SH into speckle under the same envelope: peaks ~20x lower
(~150 counts at 1 ms, gain 1), rms width ~10 % larger.

Reality (``values``, drawn once from the seed; the twin never sees these; nominal in brackets):
- laser centre 800.3 +- 0.05 nm [800], FWHM 10.6 +- 0.1 nm [10], asymmetry a = 0.05 +- 0.02 [0], ripple r = 3 +- 1 %
  [0] with period P = 1.1 THz +- 10 % and a random phase;
- LUT a_1 = 1.07 +- 0.005 [1], a_2 = 0.06 +- 0.005 [0] (phase of gray 255 is 2 pi 1.01 at 800 nm), scaling as
  800 nm / lambda across the pixels; crosstalk sigma_x = 0.35 +- 0.03 pixel [0];
- phase matching FWHM B_pm = 9.0 +- 0.2 THz [10], centre delta_pm = +0.8 +- 0.1 THz [0];
- spectrometer offset +4.3 +- 0.3 columns [0], line spread sigma_ls = 1.3 +- 0.05 columns [1.0];
- rows: centre 64 +- 1 [63.5], sigma 10 +- 0.5 rows [10];
- laser energy: a 1 kHz amplifier; a frame integrates n = max(1, round(exposure * 1 kHz)) shots and its SH signal is
  multiplied by (D(t) (1 + eps))^2 with eps ~ N(0, 1 % / sqrt(n)) (shot-to-shot jitter, SH ~ energy^2) and the slow
  drift D(t) = 1 + 0.3 % (0.7 sin(2 pi t / 600 s + phi_1) + 0.3 sin(2 pi t / 130 s + phi_2)) of bench time t
  (``relative_energy``); ``expected_counts`` is at D = 1, eps = 0 (mean over frames is higher by (1 %)^2 / n);
- peak level 12,000 e- per ms +- 5 %;
- camera: photoelectrons Poisson, dark current 0.2 e-/pixel/s (Poisson, x128 rows in FVB), read noise 8 e- rms per
  read (per column in FVB, per pixel in IMAGE), then counts = column bias + electrons / (e-/count), rounded, clipped to
  the 12-bit range 0..4095, uint16.  Column bias = 100 +- 1 counts + a fixed pattern uniform in +-3 counts per column
  (the same for every row), independent of gain.  Shutter closed: bias, fixed pattern, dark current and read noise.

Bench time advances by K frame periods per ``frames`` call (default period = exposure).

Numerics: torch, vectorised over the batch (``frames`` works in blocks of ``chunk`` = 64 patterns, which keeps the
arrays in cache).  3 field points per pixel are converged: against 8 points per pixel the SH spectrum differs by
0.1-0.3 % of its peak for random patterns (2 points: 2-5 %, 1 point: 30 %).  ``expected_counts`` (the perfect twin's
differentiable signal) is float64.  ``frames`` computes the signal in single precision (``frames_dtype``; relative
error ~3e-7 of the peak, about 1.6x faster than float64): the signal enters the frames only as the mean of the
photoelectrons' Poisson draw, whose integer outcome such a change of the mean rarely moves, so the counts are those of
a float64 computation but for a one-count difference in a few pixels in 100,000 (``tests/test_fast_physics.py``
compares them).  ``SHGPulseShaper(seed, values=OpticalValues())`` runs the nominal bench (for tests).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from scipy.special import ndtr
from torch import Tensor

log = logging.getLogger(__name__)

C_M_S = 299_792_458.0
N_PIXELS = 640
N_COLUMNS, N_ROWS = 1024, 128
ADC_MAX = 4095
LAMBDA_C_M = 800e-9
NU_C_HZ = C_M_S / LAMBDA_C_M
DNU_HZ = C_M_S * 24e-9 / LAMBDA_C_M**2 / N_PIXELS   # 17.58 GHz per pixel
OVERSAMPLE = 3                                      # field samples per pixel
N_FINE = N_PIXELS * OVERSAMPLE                      # 1920
N_FFT = 2 * N_FINE                                  # room for the linear autoconvolution (2 N_FINE - 1 points)
COLUMN_GROUP = 32                                   # camera columns per block of the spectrometer's product
SH_CENTRE_M, NM_PER_COLUMN, COLUMN_CENTRE = 400e-9, 0.02e-9, 511.5
PM_FWHM_CONSTANT = 0.885892                         # np.sinc(x)^2 = 1/2 at x = 0.442946
LUT_NOMINAL = 2.0 * math.pi * np.arange(256) / 255.0


@dataclass(frozen=True)
class OpticalValues:
    """Constants of the optical bench (SI units unless stated); the defaults are the nominal (lab notebook) values."""

    # laser
    center_wavelength_m: float = 800e-9
    fwhm_m: float = 10e-9                 # intensity FWHM, converted to frequency at the centre
    asymmetry: float = 0.0                # red half-width (1 + a) F/2, blue half-width (1 - a) F/2
    ripple: float = 0.0                   # relative intensity ripple amplitude
    ripple_period_hz: float = 1.1e12
    ripple_phase_rad: float = 0.0
    rep_rate_hz: float = 1e3              # shots per second
    energy_jitter: float = 0.01           # shot-to-shot relative std of the pulse energy
    energy_drift: float = 0.003           # amplitude of the slow relative energy drift
    # SLM
    lut_linear: float = 1.0               # phase(g) = 2 pi (lut_linear u - lut_quadratic u^2) at 800 nm, u = g / 255
    lut_quadratic: float = 0.0
    crosstalk_sigma_px: float = 0.0       # Gaussian smoothing of the pixel staircase, pixels
    # SHG crystal
    pm_fwhm_hz: float = 10e12             # phase-matching sinc^2 FWHM in SH frequency
    pm_offset_hz: float = 0.0             # phase-matching centre minus 2 nu_c
    # spectrometer and camera
    spectrometer_offset_col: float = 0.0  # columns; the spectrum appears this much higher
    line_spread_col: float = 1.0          # Gaussian sigma, columns
    row_center: float = 63.5
    row_sigma: float = 10.0
    peak_electrons_per_ms: float = 12_000.0  # transform-limited peak column, mean energy
    read_noise_e: float = 8.0             # rms per read
    bias_counts: float = 100.0
    fixed_pattern_counts: float = 3.0     # half-range of the per-column bias pattern (uniform)
    dark_current_e_per_s: float = 0.2     # per pixel

    def off_nominal(self, rng: np.random.Generator) -> "OpticalValues":
        """Reality: the systematic offsets listed in the module docstring, each with a small seeded spread."""
        u = lambda centre, spread: float(centre + rng.uniform(-spread, spread))  # noqa: E731
        return replace(
            self, center_wavelength_m=u(800.3e-9, 0.05e-9), fwhm_m=u(10.6e-9, 0.1e-9), asymmetry=u(0.05, 0.02),
            ripple=u(0.03, 0.01), ripple_period_hz=u(1.1e12, 0.11e12), ripple_phase_rad=u(math.pi, math.pi),
            lut_linear=u(1.07, 0.005), lut_quadratic=u(0.06, 0.005), crosstalk_sigma_px=u(0.35, 0.03),
            pm_fwhm_hz=u(9.0e12, 0.2e12), pm_offset_hz=u(0.8e12, 0.1e12), spectrometer_offset_col=u(4.3, 0.3),
            line_spread_col=u(1.3, 0.05), row_center=u(64.0, 1.0), row_sigma=u(10.0, 0.5),
            peak_electrons_per_ms=u(12_000.0, 600.0), bias_counts=u(100.0, 1.0),
        )

    @property
    def lut_true(self) -> np.ndarray:
        """The real phase (rad at 800 nm) of gray 0..255: [256]."""
        u = np.arange(256) / 255.0
        return 2.0 * math.pi * (self.lut_linear * u - self.lut_quadratic * u * u)


def fine_frequencies_hz() -> np.ndarray:
    """Optical frequencies of the oversampled field grid [N_FINE]: pixel p's samples at nu_p + (-1/3, 0, +1/3) dnu."""
    return NU_C_HZ + ((np.arange(N_FINE) + 0.5) / OVERSAMPLE - N_PIXELS / 2) * DNU_HZ


def sh_frequencies_hz() -> np.ndarray:
    """SH frequencies of the autoconvolution's points [N_FFT] (the last one is padding and always zero)."""
    nu = fine_frequencies_hz()
    return 2.0 * nu[0] + np.arange(N_FFT) * (nu[1] - nu[0])


class SHGPulseShaper:
    """The optical bench's physics as the simulated SLM and camera see it (see the module docstring).

    ``frames(patterns, ...)`` -> noisy uint16 camera frames; ``expected_counts(gray, ...)`` -> the noiseless,
    differentiable signal above the dark frame; ``dark_counts(...)`` -> the expected dark frame.
    """

    n_pixels = N_PIXELS
    lut_nominal: np.ndarray = LUT_NOMINAL
    chunk = 64  # patterns computed at once by ``frames`` (cache-sized blocks: ~1.5x faster than 512 at once)
    frames_dtype = torch.float32  # 1.6x faster than float64; counts off by one in a few pixels per 100,000

    def __init__(self, seed: int = 0, values: OpticalValues | None = None):
        self.rng = np.random.default_rng(seed)
        drawn = OpticalValues().off_nominal(self.rng)
        self.values = drawn if values is None else values
        self.bench_time_s = 0.0
        self.busy_s = 0.0  # wall time spent computing physics (for overhead reports)
        v = self.values
        half = v.fixed_pattern_counts
        self.column_bias = v.bias_counts + self.rng.uniform(-half, half, N_COLUMNS)  # counts [1024]
        self._drift_phase = self.rng.uniform(0, 2 * math.pi, 2)
        self._noise = np.random.default_rng(int(seed) + 424242)
        self._spectrometers: dict[tuple, tuple[int, int, Tensor]] = {}  # the matrix per column window and dtype
        self._groups: dict[tuple, list[tuple[int, int, Tensor]]] = {}  # its column groups (``_column_groups``)
        self._constants: dict[torch.dtype, dict[str, Tensor]] = {}
        self._build_constants()
        log.info("optical bench values (seed %d): %s", seed, asdict(v))

    # -- fixed parts of the chain ----------------------------------------------------------------------------------

    def _build_constants(self) -> None:
        v = self.values
        nu = fine_frequencies_hz()
        # laser amplitude on the fine grid
        centre = C_M_S / v.center_wavelength_m
        fwhm = C_M_S * v.fwhm_m / v.center_wavelength_m**2
        x = nu - centre
        width = np.where(x < 0, 1.0 + v.asymmetry, 1.0 - v.asymmetry) * fwhm
        power = np.exp(-4.0 * math.log(2.0) * (x / width) ** 2)
        power *= 1.0 + v.ripple * np.cos(2 * math.pi * x / v.ripple_period_hz + v.ripple_phase_rad)
        lut = v.lut_true
        c = {"amplitude": np.sqrt(power), "retardance_scale": nu / NU_C_HZ,   # phase ~ 1 / lambda
             "lut": lut, "lut_slope": np.append(np.diff(lut), 0.0)}
        # crosstalk: fine point s of pixel p = sum_d w[s, d] phase[p + d], d = -reach..reach (Gaussian-smoothed steps)
        sigma = v.crosstalk_sigma_px
        self._reach = int(math.ceil(0.5 + 6.0 * sigma))
        offsets = (np.arange(OVERSAMPLE) + 0.5) / OVERSAMPLE - 0.5        # fine point within its pixel, pixels
        d = np.arange(-self._reach, self._reach + 1)
        lo, hi = d[None, :] - 0.5 - offsets[:, None], d[None, :] + 0.5 - offsets[:, None]
        if sigma > 0:
            w = ndtr(hi / sigma) - ndtr(lo / sigma)
        else:
            w = ((lo < 0) & (hi > 0)).astype(float)
        c["crosstalk"] = w / w.sum(axis=1, keepdims=True)                 # [OVERSAMPLE, 2 reach + 1]
        # phase matching on the SH grid
        nu_sh = sh_frequencies_hz()
        pm = np.sinc(PM_FWHM_CONSTANT * (nu_sh - 2 * NU_C_HZ - v.pm_offset_hz) / v.pm_fwhm_hz) ** 2
        pm[-1] = 0.0
        c["phase_matching"] = pm
        self._constants[torch.float64] = {name: torch.tensor(value) for name, value in c.items()}
        # SH bins (OVERSAMPLE grid points each) and their columns; calibration of the signal level
        self.bin_frequencies_hz = nu_sh.reshape(-1, OVERSAMPLE).mean(axis=1)
        self.bin_columns = self.column_of_frequency(self.bin_frequencies_hz)
        self._electrons_per_unit_s = 1.0
        flat = self._sh_columns(torch.zeros(1, N_PIXELS, dtype=torch.float64), (0, N_COLUMNS))
        self._electrons_per_unit_s = v.peak_electrons_per_ms * 1e3 / float(flat.max())

    def column_of_frequency(self, nu_sh_hz: np.ndarray | float) -> np.ndarray:
        """True (fractional) camera column where SH frequency ``nu_sh_hz`` (Hz) lands (centre of its line spread)."""
        lam = C_M_S / np.asarray(nu_sh_hz, dtype=np.float64)
        return COLUMN_CENTRE + self.values.spectrometer_offset_col + (lam - SH_CENTRE_M) / NM_PER_COLUMN

    def _const(self, dtype: torch.dtype) -> dict[str, Tensor]:
        """The chain's constant vectors (float64 masters, cast once per dtype)."""
        constants = self._constants.get(dtype)  # read once: a perfect twin in another thread may ask at once
        if constants is None:
            constants = self._constants[dtype] = {k: t.to(dtype) for k, t in self._constants[torch.float64].items()}
        return constants

    def _spectrometer(self, columns: tuple[int, int], dtype: torch.dtype = torch.float64) -> tuple[int, int, Tensor]:
        """(first bin, end bin, matrix [bins, count]): share of each SH bin's energy landing in each column."""
        first, count = _check_window(columns, N_COLUMNS, "columns")
        key = (first, count, dtype)
        if key not in self._spectrometers:
            d_col = float(np.abs(np.diff(self.bin_columns)).mean()) / OVERSAMPLE  # one SH grid step, columns
            sigma = math.sqrt(max(self.values.line_spread_col**2 - (OVERSAMPLE**2 - 1) / 12 * d_col**2, 1e-6))
            x = self.bin_columns
            reach = 8.0 * sigma + 1.0
            used = np.nonzero((x > first - reach) & (x < first + count - 1 + reach))[0]
            lo, hi = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
            k = first + np.arange(count)
            m = ndtr((k[None, :] + 0.5 - x[lo:hi, None]) / sigma) - ndtr((k[None, :] - 0.5 - x[lo:hi, None]) / sigma)
            m[m < 1e-15] = 0.0  # far tails: no denormals in the matmul
            self._spectrometers[key] = (lo, hi, torch.tensor(m, dtype=dtype))
        return self._spectrometers[key]

    def _column_groups(self, columns: tuple[int, int], dtype: torch.dtype) -> list[tuple[int, int, Tensor]]:
        """The spectrometer matrix (``_spectrometer``) cut into groups of ``COLUMN_GROUP`` columns, each with only the
        rows of the bins that reach one of its columns: [(first row, end row, matrix [rows, group's columns])], rows
        counted from the matrix's first. A column sees the ~45 bins within 8 line spreads of it, ~6 % of the matrix:
        ``bins @ matrix`` group by group (``_spectrometer_image``) is 3x faster than the full product. The rows left
        out hold exact zeros (``_spectrometer`` zeroes the far tails), so the sums differ only in their rounding."""
        key = (*columns, dtype)
        if key not in self._groups:
            matrix = self._spectrometer(columns, dtype)[2]
            reach = matrix != 0
            groups = []
            for c0 in range(0, matrix.shape[1], COLUMN_GROUP):
                rows = torch.nonzero(reach[:, c0:c0 + COLUMN_GROUP].any(dim=1)).flatten()
                r0, r1 = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 1)
                groups.append((r0, r1, matrix[r0:r1, c0:c0 + COLUMN_GROUP].contiguous()))
            self._groups[key] = groups
        return self._groups[key]

    def _spectrometer_image(self, bins: Tensor, columns: tuple[int, int]) -> Tensor:
        """SH bin energies [B, bins of ``_spectrometer``] -> the energy on each camera column [B, count]."""
        groups = self._column_groups(columns, bins.dtype)
        return torch.cat([bins[:, r0:r1] @ part for r0, r1, part in groups], dim=1)

    # -- the chain (torch float64, differentiable, vectorised over the batch) ------------------------------------

    def slm_phase(self, gray: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        """Spectral phase (rad) on the fine grid [B, N_FINE] for gray levels [B, 640]: true LUT (linear between gray
        levels; an integer tensor is looked up directly), pixel crosstalk, retardance ~ frequency."""
        c = self._const(dtype)
        if gray.dtype.is_floating_point:
            g = gray.to(dtype).clamp(0.0, 255.0)
            i0 = g.detach().floor().clamp_(max=254.0)
            index = i0.long()
            phase = torch.addcmul(c["lut"][index], c["lut_slope"][index], g - i0)                # [B, 640] at 800 nm
        else:
            phase = c["lut"][gray.long().clamp(0, 255)]
        r = self._reach
        padded = torch.cat([phase[:, :1].expand(-1, r), phase, phase[:, -1:].expand(-1, r)], dim=1)
        # fine point s of pixel p: sum_d crosstalk[s, d] padded[p + d], a convolution (2x faster than unfold @)
        fine = torch.nn.functional.conv1d(padded[:, None, :], c["crosstalk"][:, None, :])    # [B, OVERSAMPLE, 640]
        return fine.transpose(1, 2).reshape(gray.shape[0], N_FINE) * c["retardance_scale"]

    def sh_bins(self, phase: Tensor, bins: tuple[int, int] = (0, N_FFT // OVERSAMPLE)) -> Tensor:
        """Phase-matched SH energy per SH bin (arbitrary units) [B, bins count] for a spectral phase on the fine grid
        [B, N_FINE] (rad): E = sqrt(S) exp(i phase), |autoconvolution|^2 x sinc^2, summed over each bin's points.

        Args:
            bins: (first, end) bins to return (bin b holds SH grid points OVERSAMPLE b .. OVERSAMPLE b + 2).
        """
        c = self._const(phase.dtype)
        field = torch.complex(c["amplitude"] * torch.cos(phase), c["amplitude"] * torch.sin(phase))
        # sum_nu' E(nu') E(nu - nu') by FFTs of the zero-padded field; "forward" norms make it exact. The field is
        # padded here rather than by ifft's n= (the same numbers, faster). A circular autoconvolution of n points
        # wraps point nu + n of the linear one (2 N_FINE - 1 points) onto nu: n = ``_circular_size`` keeps every
        # wrapped point out of the bins returned (the FFTs 30 % cheaper than at N_FFT for a camera window)
        lo, hi = bins[0] * OVERSAMPLE, bins[1] * OVERSAMPLE
        n = _circular_size(lo, hi)
        time_domain = torch.fft.ifft(torch.nn.functional.pad(field, (0, n - N_FINE)), norm="forward")
        sh = torch.fft.fft(time_domain * time_domain, norm="forward")
        window = sh[:, lo:hi]
        power = torch.mul(window.real, window.real).addcmul_(window.imag, window.imag) * c["phase_matching"][lo:hi]
        binned = power[:, 0::OVERSAMPLE]
        for s in range(1, OVERSAMPLE):
            binned = binned + power[:, s::OVERSAMPLE]
        return binned

    def _sh_columns(self, gray: Tensor | None, columns: tuple[int, int], phase: Tensor | None = None,
                    dtype: torch.dtype = torch.float64) -> Tensor:
        """Signal photoelectrons per second of exposure at mean laser energy, FVB, [B, count]."""
        phase = self.slm_phase(gray, dtype) if phase is None else phase
        lo, hi, _ = self._spectrometer(columns, phase.dtype)
        bins = self.sh_bins(phase, (lo, hi))
        return self._spectrometer_image(bins, columns) * self._electrons_per_unit_s

    def expected_counts(self, gray: Tensor, *, exposure_s: float, electrons_per_count: float,
                        columns: tuple[int, int] = (0, N_COLUMNS)) -> Tensor:
        """Noiseless FVB counts above the dark frame [B, count] (float64) for gray levels [B, 640] (fractional
        allowed), at the mean laser energy, without ADC clipping; differentiable in ``gray`` by autograd."""
        gray = torch.as_tensor(gray, dtype=torch.float64)
        return self._sh_columns(gray, columns) * (exposure_s / electrons_per_count)

    def counts_from_phase(self, phase: Tensor, *, exposure_s: float, electrons_per_count: float,
                          columns: tuple[int, int] = (0, N_COLUMNS)) -> Tensor:
        """As ``expected_counts`` for a spectral phase (rad) given directly on the fine grid [B, N_FINE]
        (``fine_frequencies_hz``), bypassing the SLM: for physics checks."""
        return self._sh_columns(None, columns, phase=phase.to(torch.float64)) * (exposure_s / electrons_per_count)

    # -- the camera ------------------------------------------------------------------------------------------------

    def relative_energy(self, bench_time_s: float | np.ndarray) -> np.ndarray:
        """Slow drift D(t) of the mean pulse energy (relative, mean 1) at bench time t (s)."""
        t = np.asarray(bench_time_s, dtype=np.float64)
        p1, p2 = self._drift_phase
        return 1.0 + self.values.energy_drift * (0.7 * np.sin(2 * math.pi * t / 600.0 + p1)
                                                 + 0.3 * np.sin(2 * math.pi * t / 130.0 + p2))

    def row_profile(self, rows: tuple[int, int] = (0, N_ROWS)) -> np.ndarray:
        """Share of the light falling on each row of ``rows`` [count] (sums to 1 over the whole sensor)."""
        first, count = _check_window(rows, N_ROWS, "rows")
        edges = (np.arange(N_ROWS + 1) - 0.5 - self.values.row_center) / self.values.row_sigma
        share = np.diff(ndtr(edges))
        return (share / share.sum())[first:first + count]

    def dark_counts(self, columns: tuple[int, int] = (0, N_COLUMNS), exposure_s: float = 1e-3, *,
                    electrons_per_count: float = 4.0, mode: str = "FVB") -> np.ndarray:
        """Expected dark frame (counts, float) [count]: column bias + dark current; in IMAGE mode per pixel (the same
        for every row), in FVB summed over the 128 binned rows."""
        first, count = _check_window(columns, N_COLUMNS, "columns")
        pixels = N_ROWS if _check_mode(mode) == "FVB" else 1
        dark_e = self.values.dark_current_e_per_s * exposure_s * pixels
        return self.column_bias[first:first + count] + dark_e / electrons_per_count

    def frames(self, patterns: np.ndarray, *, exposure_s: float, electrons_per_count: float,
               columns: tuple[int, int] = (0, N_COLUMNS), rows: tuple[int, int] = (0, N_ROWS), mode: str = "FVB",
               shutter_open: bool = True, frame_period_s: float | None = None) -> np.ndarray:
        """One camera frame per SLM pattern, with all noise; advances bench time by K frame periods.

        Args:
            patterns: uint8 [K, 640] gray levels, one pattern per frame.
            exposure_s: exposure time, s; electrons_per_count: 4, 2 or 1 (gain 1, 2, 4).
            columns, rows: (first, count) windows of the sensor (FVB bins all 128 rows whatever ``rows`` says).
            mode: "FVB" or "IMAGE"; shutter_open: False gives dark frames.
            frame_period_s: time between frames (default ``exposure_s``).
        Returns:
            uint16 [K, count] (FVB) or [K, rows count, columns count] (IMAGE), 0..4095.
        """
        start = time.perf_counter()
        v = self.values
        mode = _check_mode(mode)
        patterns = np.asarray(patterns)
        if patterns.ndim != 2 or patterns.shape[1] != N_PIXELS:
            raise ValueError(f"patterns must be [K, {N_PIXELS}], got {patterns.shape}")
        if not exposure_s > 0 or not electrons_per_count > 0:
            raise ValueError("exposure and electrons per count must be positive")
        first, count = _check_window(columns, N_COLUMNS, "columns")
        k = patterns.shape[0]
        period = exposure_s if frame_period_s is None else float(frame_period_s)
        times = self.bench_time_s + period * np.arange(k)
        if shutter_open and k:
            gray = torch.from_numpy(patterns.astype(np.int64))
            signal = np.empty((k, count))
            with torch.no_grad():  # in chunks: bounded memory for long sequences (4096 patterns)
                for i in range(0, k, self.chunk):
                    signal[i:i + self.chunk] = self._sh_columns(gray[i:i + self.chunk], (first, count),
                                                                dtype=self.frames_dtype).numpy()
            shots = max(1, round(exposure_s * v.rep_rate_hz))
            eps = self._noise.normal(0.0, v.energy_jitter / math.sqrt(shots), k)
            signal *= ((self.relative_energy(times) * (1.0 + eps)) ** 2 * exposure_s)[:, None]   # e- [K, count]
        else:
            signal = np.zeros((k, count))
        if mode == "IMAGE":
            signal = signal[:, None, :] * self.row_profile(rows)[None, :, None]          # e- [K, h, count]
        dark_e = v.dark_current_e_per_s * exposure_s * (N_ROWS if mode == "FVB" else 1)
        signal += dark_e
        shot = self._noise.poisson(signal)
        # in place, the same numbers as bias + (poisson + normal) / (e- per count), rounded and clipped
        counts = self._noise.normal(0.0, v.read_noise_e, signal.shape)
        counts += shot
        counts /= electrons_per_count
        counts += self.column_bias[first:first + count]
        np.rint(counts, out=counts)
        np.clip(counts, 0, ADC_MAX, out=counts)
        self.bench_time_s += k * period
        self.busy_s += time.perf_counter() - start
        return counts.astype(np.uint16)


@functools.lru_cache(maxsize=64)
def _circular_size(first: int, end: int) -> int:
    """FFT length n for SH points first .. end - 1 of the autoconvolution, free of wrap-around: n >= end, and the
    linear points nu + n (nu >= first) lie beyond the last one, 2 N_FINE - 2. The smallest 2^a or 3 2^a that does
    (lengths the FFT is fastest at), or N_FFT where that is shorter."""
    need = max(end, 2 * N_FINE - 1 - first, N_FINE)
    fast = min(m << max(0, (need - 1) // m).bit_length() for m in (1, 3))
    return min(fast, N_FFT)


def _check_window(window: tuple[int, int], size: int, name: str) -> tuple[int, int]:
    first, count = (int(w) for w in window)
    if first < 0 or count < 1 or first + count > size:
        raise ValueError(f"{name} window {window} does not fit 0..{size - 1}")
    return first, count


def _check_mode(mode: str) -> str:
    mode = str(mode).upper()
    if mode not in ("FVB", "IMAGE"):
        raise ValueError(f"mode must be FVB or IMAGE, got {mode!r}")
    return mode
