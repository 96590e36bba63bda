"""Physics twin of the optical setup: a femtosecond pulse shaped by a phase SLM, frequency-doubled, and read out by a
camera behind a spectrometer. The nominal physics of the lab notebook in torch (float64), with fitted constants.

The model (x [B, n], θ [n] or [B, n] -> y [B, n_outputs]; nothing taken from the simulator)::

    values    v = pixel_values(x, θ)                                   [B, P] in [-1, 1]  (P = 640 SLM pixels)
    gray      g = gray_levels(v, LUT_reported, phase_span)              fractional gray, the setup's own inverse table
              g_r = round(g)  (straight-through: forward = the device's integer gray levels, gradient of the identity)
    LUT       phi_p = (lambda_LUT / lambda_p) [s LUT_reported(g_r) + b 2 pi u (1 - u)],   u = g_r / 255   rad
              (LUT_reported interpolated linearly between gray levels, so its slope carries the gradient; the phase
              of a liquid crystal scales as 1 / wavelength: lambda_LUT = 800 nm, lambda_p the pixel's wavelength)
    crosstalk phi(z) = sum_p phi_p int_{pixel p} G_sigma(z - z') dz'     at Q = 4 points per pixel, z in pixels
              (the phase staircase smoothed by a Gaussian of sigma ``crosstalk_px``: fringing fields)
    field     E(z) = sqrt(S(lambda(z))) exp(i phi(z)),  S(lambda) = exp(-4 ln2 (lambda - lambda_L)^2 / W_L^2)
              E_p = (1 / Q) sum_{z in pixel p} E(z)                     the field per pixel (see below)
              nu_p = nu_c + (p - (P - 1) / 2) dnu  (pixels linear in optical frequency, ``ShaperNominal``)
    SHG       E_SH(nu_k) = (1 / P) sum_p E_p E_{k-p},  nu_k = 2 nu_0 + k dnu    autoconvolution by zero-padded FFT
              I(nu_k) = |E_SH(nu_k)|^2 sinc^2(0.8859 (nu_k - 2 nu_c - d_pm) / B_pm)   (sinc(t) = sin(pi t) / (pi t);
              the intensity factor has FWHM B_pm in SH frequency)
    camera    column(nu_k) = c_0 + offset + shift + (c / nu_k - lambda_L / 2) / nm_per_column
              C_m = sum_k I(nu_k) [Phi((m + 1/2 - column_k) / sigma_ls) - Phi((m - 1/2 - column_k) / sigma_ls)]
              (Gaussian line spread integrated over each camera column m of the calibrated ROI)
    outputs   y = output_gain * gain * output_weights(encoding, n_outputs, offset, roi) @ C / reference_mean
                  - output_offset          (output_gain, output_offset: the setup's encoding, as in output_units)

Units: lambda in nm, nu in Hz (THz in the constants), z and sigma in SLM pixels, columns in camera columns; c_0 =
``SpectrometerNominal.center_column``, offset = the calibration's ``column_offset`` (measured: where the
transform-limited SH spectrum lands), roi and reference_mean from ``OpticalCalibration``. The laser spectrum is a
Gaussian in wavelength (as the notebook gives it), sampled at the fine points' wavelengths.

SHG on the pixel grid: the field averaged over each pixel gives the main pulse; what the crosstalk bends inside a
pixel goes into replicas delayed by multiples of 1 / dnu (57 ps), whose own SH is negligible and whose fringes with
the main pulse are far finer than the spectrometer resolves. So the autoconvolution runs on the P pixels rather than
the P Q fine points (the camera spectra agree to ~1e-3; tests/test_optical_twin.py), 10x faster. Only the SH
frequencies that reach the ROI (plus a margin) are kept, so the FFT may alias onto the others and is ~1.7 P long.

Fitted constants (10 scalars; positive ones stored as logs, so gradient steps are relative):

    lut_scale            s       the real phase over the reported table (1: the table is right)
    lut_curvature        b       a bow of the table, in units of 2 pi (the real LUT's deviation from linear)
    crosstalk_px         sigma   Gaussian width of the pixel crosstalk, SLM pixels (initial 0.2: a typical value)
    laser_center_nm      lambda_L  centre of the laser spectrum, nm (nominal 800)
    laser_fwhm_nm        W_L     intensity FWHM of the laser spectrum, nm (nominal 10)
    pm_offset_thz        d_pm    phase-matching centre minus 2 nu_c, THz (nominal 0)
    pm_fwhm_thz          B_pm    phase-matching FWHM in SH frequency, THz (nominal 10)
    column_shift         shift   spectrometer mapping beyond the calibration's offset, columns (initial: below)
    line_spread_columns  sigma_ls  Gaussian sigma of the spectrometer's line spread, columns (nominal 1)
    gain                 gain    camera counts per model unit (initial: below)

The spectrometer mapping is anchored at the twin's own SH centre lambda_L / 2 (not at 400 nm): the calibration's
offset is where the transform-limited SH spectrum lands, i.e. near half the laser's wavelength, so moving the laser
centre in a fit does not drag the modelled spectrum across the camera. Unless ``init`` gives them, the shift and
the gain are calibrated at construction like the setup calibrates the bench: the shift puts the centroid of the
modelled transform-limited spectrum (``centroid_column``, as the setup computes it) at c_0 + offset (a column or so:
the columns are linear in wavelength, the SH spectrum is symmetric in frequency), and the gain makes the
transform-limited pattern (all gray 0) give the reference, i.e. outputs 1 on average, as the setup's normalisation
does.

Identifiability: the outputs pin down the LUT's phase curve, the phase matching, the spectral width and the camera
position of the spectrum well; the split between lut_scale, lut_curvature and crosstalk_px (all change how much
phase contrast the bins show), and between laser_center_nm, pm_offset_thz and column_shift, are loosely determined
by short minibatch fits.

What the twin ignores: laser power fluctuation and drift, camera noise, dark frame, saturation and the ADC (the
setup subtracts the dark frame), asymmetry or ripple of the spectrum, the vertical profile on the sensor (the setup
bins all rows), the conversion from energy to photon counts, and wavelength-dependent spectrometer efficiency.

Speed (one thread): forward + backward of 512 items takes ~0.1 s in float64 and ~0.08 s in float32 (frozen, as in
PAT); a fitting step on 64 items ~35 ms.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft
import torch
from torch import Tensor, nn

from encoding.optical import (C_M_PER_S, OpticalCalibration, OpticalEncoding, centroid_column, gray_levels,
                              output_weights, pixel_values)
from twins.registry import broadcast_theta, register_twin

OVERSAMPLE = 4
"""Points per SLM pixel of the fine grid the crosstalk-smoothed phase is evaluated on."""

LUT_WAVELENGTH_NM = 800.0
"""Wavelength the SLM's lookup table is given for (``LUT:WAV?``), nm."""

SINC_FWHM = 0.885893
"""sinc^2(SINC_FWHM t) (sinc(t) = sin(pi t) / (pi t)) has its half maximum at t = +-1/2."""

WINDOW_MARGIN_COLUMNS = 24.0
"""Camera columns beyond the ROI whose SH frequencies are kept (room for the fitted shift and line spread)."""

NOMINAL: dict[str, float] = {
    "lut_scale": 1.0,             # the reported table is right
    "lut_curvature": 0.0,         # and linear
    "crosstalk_px": 0.2,          # fringing fields: a fraction of a pixel (a typical value, not in the notebook)
    "pm_offset_thz": 0.0,         # phase matching centred on 2 nu_c
    "column_shift": 0.0,          # the start of the self-calibration (module docstring)
}
"""Initial values of the constants the notebook has no number for; the others come from the encoding's nominal
shaper (laser centre and FWHM, phase-matching FWHM) and spectrometer (line spread); the gain is calibrated."""

_POSITIVE = ("lut_scale", "crosstalk_px", "laser_fwhm_nm", "pm_fwhm_thz", "line_spread_columns", "gain")
_SIGNED = ("lut_curvature", "laser_center_nm", "pm_offset_thz", "column_shift")
CONSTANTS = ("lut_scale", "lut_curvature", "crosstalk_px", "laser_center_nm", "laser_fwhm_nm", "pm_offset_thz",
             "pm_fwhm_thz", "column_shift", "line_spread_columns", "gain")
"""Names of the fitted constants (``constants()`` keys; also the keys ``init`` accepts)."""


def straight_through_round(g: Tensor) -> Tensor:
    """round(g) in the forward pass, the identity in the backward pass."""
    return g + (torch.round(g) - g).detach()


def crosstalk_kernel(sigma_px: Tensor, halo: int, oversample: int = OVERSAMPLE) -> Tensor:
    """Weights [oversample, 2 halo + 1] of pixels p + d (d = -halo .. halo) at the fine points s of pixel p.

    Fine point s of pixel p sits at p + (s + 1/2) / oversample - 1/2 (pixels); pixel p + d covers [p + d - 1/2,
    p + d + 1/2]; the weight is the Gaussian (sigma_px) integrated over that pixel, normalised over d (so a constant
    phase stays constant). Differentiable in sigma_px."""
    d = torch.arange(-halo, halo + 1, dtype=sigma_px.dtype)[None, :]
    o = (torch.arange(oversample, dtype=sigma_px.dtype)[:, None] + 0.5) / oversample - 0.5
    root2 = math.sqrt(2.0) * sigma_px
    w = 0.5 * (torch.erf((d + 0.5 - o) / root2) - torch.erf((d - 0.5 - o) / root2))
    return w / w.sum(dim=1, keepdim=True)


def smooth_phase(phase: Tensor, sigma_px: Tensor, oversample: int = OVERSAMPLE) -> Tensor:
    """Pixel phases [B, P] -> the phase at the fine points [B, oversample, P] (point s of pixel p at [:, s, p]): the
    staircase smoothed by a Gaussian of sigma_px pixels (``crosstalk_kernel``); the edge pixels continue beyond the
    SLM."""
    halo = int(min(16, max(2, math.ceil(4 * float(sigma_px.detach()) + 1))))
    kernel = crosstalk_kernel(sigma_px, halo, oversample).to(phase.dtype)
    padded = torch.cat([phase[:, :1].expand(-1, halo), phase, phase[:, -1:].expand(-1, halo)], dim=1)
    return nn.functional.conv1d(padded[:, None, :], kernel[:, None, :])


@register_twin
class OpticalPhysicsTwin(nn.Module):
    """SLM (reported LUT, fitted LUT error, crosstalk) -> SHG (autoconvolution, phase matching) -> spectrometer ->
    output bins, with fitted constants (module docstring). x [B, n], θ [n] or [B, n] -> y [B, n_outputs].

    Args:
        n: inputs (and parameters) per item; the SLM's active pixels are cut into 2n spectral bins.
        encoding: the setup's ``OpticalEncoding`` as a dict.
        calibration: the setup's ``OpticalCalibration`` as a dict (the SLM's reported LUT, the spectrometer offset,
            the camera ROI and the reference mean the outputs are divided by).
        n_outputs: output bins (default ``encoding.n_outputs(n)``).
        init: initial constants (``CONSTANTS`` keys, natural units, e.g. a previous ``constants()``); the others
            start nominal. Without ``"column_shift"`` the shift is set so that the modelled transform-limited
            spectrum lands where the calibration measured it, without ``"gain"`` so that it gives the reference
            (outputs 1 on average).
    Raises:
        ValueError: the active pixels cannot hold 2n bins, the table is not 256 increasing phases, the ROI sees no
            SH frequency, or ``init`` has unknown or invalid constants.
    """

    kind = "optical_physics"

    def __init__(self, n: int, encoding: dict, calibration: dict, n_outputs: int | None = None,
                 init: dict | None = None):
        super().__init__()
        self.encoding = OpticalEncoding(**encoding)
        self.calibration = OpticalCalibration(**calibration)
        self.n_inputs = self.n_params = int(n)
        self.n_outputs = int(n_outputs or self.encoding.n_outputs(self.n_inputs))
        if self.n_inputs < 1 or self.n_outputs < 1:
            raise ValueError(f"need n >= 1 and n_outputs >= 1, got n={n}, n_outputs={n_outputs}")
        enc, cal = self.encoding, self.calibration
        shaper, spec = enc.shaper, enc.spectrometer
        lut = np.asarray(cal.lut, dtype=np.float64)
        if lut.shape != (256,) or np.any(np.diff(lut) <= 0):
            raise ValueError("calibration['lut'] must be 256 strictly increasing phases (rad)")
        unknown = set(init or {}) - set(CONSTANTS)
        if unknown:
            raise ValueError(f"unknown constant(s) {sorted(unknown)} in init; known: {', '.join(CONSTANTS)}")
        self.init = {key: float(value) for key, value in (init or {}).items()}
        start = {**NOMINAL, "laser_center_nm": shaper.laser_center_nm, "laser_fwhm_nm": shaper.laser_fwhm_nm,
                 "pm_fwhm_thz": shaper.phase_matching_fwhm_thz, "line_spread_columns": spec.line_spread_columns,
                 **self.init}
        bad = [key for key in _POSITIVE if key in start and not (start[key] > 0 and math.isfinite(start[key]))]
        bad += [key for key in _SIGNED if not math.isfinite(start[key])]
        if bad:
            raise ValueError(f"initial constant(s) {bad} must be finite (and positive: {', '.join(_POSITIVE)})")

        # fixed geometry (float64 buffers derived from the config, not saved in the state dict)
        p = shaper.n_pixels
        nu_pixel = shaper.pixel_frequencies_hz()
        self.nu_c = C_M_PER_S / (shaper.center_nm * 1e-9)
        self.dnu = float(nu_pixel[1] - nu_pixel[0])
        z = (np.arange(p * OVERSAMPLE) + 0.5) / OVERSAMPLE - 0.5  # fine points, pixels
        nu_fine = self.nu_c + (z - (p - 1) / 2) * self.dnu
        nu_sh = 2 * nu_pixel[0] + np.arange(2 * p - 1) * self.dnu  # SH frequencies of the autoconvolution, Hz
        column_nominal = spec.center_column + cal.column_offset + (C_M_PER_S / nu_sh * 1e9 - 0.5 * start[
            "laser_center_nm"]) / spec.nm_per_column
        first, count = cal.roi
        keep = np.flatnonzero((column_nominal > first - 0.5 - WINDOW_MARGIN_COLUMNS)
                              & (column_nominal < first + count - 0.5 + WINDOW_MARGIN_COLUMNS))
        if keep.size == 0:
            raise ValueError(f"no SH frequency of the shaper reaches the camera ROI {cal.roi}")
        self.sh_window = (int(keep[0]), int(keep[-1]) + 1)  # SH indices [a, b) used
        a, b = self.sh_window
        # a circular autoconvolution of length N equals the linear one on [a, b) when N >= b and N + a > 2p - 2
        self.n_fft = scipy.fft.next_fast_len(max(b, 2 * p - 1 - a))
        # which bin value each pixel shows: the setup's own pixel_values on bin codes (x_i -> i, θ_i -> n + i);
        # raises if the active pixels cannot hold 2n bins
        n = self.n_inputs
        codes = pixel_values(torch.arange(n, dtype=torch.float64)[None], n + torch.arange(n, dtype=torch.float64),
                             enc)[0]
        pixel_bin = torch.where(codes < 0, 2 * n, codes.round().long())
        background = gray_levels(torch.tensor([-1.0], dtype=torch.float64), lut, enc.phase_span_rad).round()

        def buffer(name: str, value: np.ndarray | Tensor) -> None:
            self.register_buffer(name, torch.as_tensor(value), persistent=False)

        buffer("lut", lut)
        buffer("pixel_bin", pixel_bin)
        buffer("background_gray", background)
        buffer("retardance", nu_pixel / (C_M_PER_S / (LUT_WAVELENGTH_NM * 1e-9)))  # lambda_LUT / lambda_pixel
        buffer("lambda_fine_nm", (C_M_PER_S / nu_fine * 1e9).reshape(p, OVERSAMPLE).T)  # [Q, P]
        buffer("nu_sh_thz", nu_sh[a:b] * 1e-12)
        buffer("lambda_sh_nm", C_M_PER_S / nu_sh[a:b] * 1e9)
        buffer("column_edges", torch.arange(count + 1, dtype=torch.float64) + (first - 0.5))
        buffer("out_weights", output_weights(enc, self.n_outputs, cal.column_offset, cal.roi))
        self._cache: tuple[tuple[tuple[int, int], ...], dict[str, Tensor]] | None = None

        def param(value: float) -> nn.Parameter:
            return nn.Parameter(torch.tensor(value, dtype=torch.float64))

        self.log_lut_scale = param(math.log(start["lut_scale"]))
        self.lut_curvature = param(start["lut_curvature"])
        self.log_crosstalk_px = param(math.log(start["crosstalk_px"]))
        self.laser_center_nm = param(start["laser_center_nm"])
        self.log_laser_fwhm_nm = param(math.log(start["laser_fwhm_nm"]))
        self.pm_offset_thz = param(start["pm_offset_thz"])
        self.log_pm_fwhm_thz = param(math.log(start["pm_fwhm_thz"]))
        self.column_shift = param(start["column_shift"])
        self.log_line_spread_columns = param(math.log(start["line_spread_columns"]))
        self.log_gain = param(0.0)
        with torch.no_grad():
            flat = self.pixel_phase(self.lut.new_zeros(1, p))  # the transform-limited pattern: all gray 0
            if "column_shift" not in self.init:  # it lands where the calibration measured it
                target = spec.center_column + cal.column_offset
                for _ in range(2):
                    self.column_shift += target - self.transform_limited_centroid()
            if "gain" in self.init:
                self.log_gain.fill_(math.log(start["gain"] / cal.reference_mean))
            else:  # and gives the reference
                self.log_gain.fill_(-math.log(float(self.outputs_from_phase(flat).mean())))

    # --- bookkeeping -------------------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"n": self.n_inputs, "encoding": self.encoding.model_dump(),
                "calibration": self.calibration.model_dump(), "n_outputs": self.n_outputs, "init": dict(self.init)}

    @torch.no_grad()
    def constants(self) -> dict[str, float]:
        """Current fitted constants in natural units (module docstring); ``init=constants()`` rebuilds them."""
        out = {}
        for key in CONSTANTS:
            value = getattr(self, key) if key in _SIGNED else getattr(self, f"log_{key}").exp()
            out[key] = float(value)
        out["gain"] *= self.calibration.reference_mean  # counts per model unit
        return out

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, n={self.n_inputs}, n_outputs={self.n_outputs}, "
                f"roi={tuple(self.calibration.roi)}, n_fft={self.n_fft}")

    # --- the model ---------------------------------------------------------------------------------------------
    def bin_gray(self, x: Tensor, theta: Tensor) -> Tensor:
        """Gray levels [B, 2n + 1] of the spectral bins x_1..x_n, θ_1..θ_n and the background (inactive pixels), as
        the setup computes them (``gray_levels`` of the SLM's reported table, float64), rounded straight-through:
        the forward values are the device's integer gray levels, the gradient that of the fractional ones."""
        values = torch.cat([x.double(), theta.double()], dim=1)
        g = straight_through_round(gray_levels(values, self.lut, self.encoding.phase_span_rad))
        return torch.cat([g, self.background_gray.expand(len(g), 1)], dim=1)

    def gray(self, x: Tensor, theta: Tensor) -> Tensor:
        """Gray level of each SLM pixel [B, P] (what ``OpticalSetup.patterns`` sends, straight-through rounded) for
        x [B, n], θ [n] or [B, n]."""
        theta = broadcast_theta(x, theta, self.n_inputs, self.n_params)
        return self.bin_gray(x, theta)[:, self.pixel_bin]

    def lut_phase(self, gray: Tensor) -> Tensor:
        """Phase (rad at lambda_LUT) of gray levels (any shape, float64; fractional allowed): the reported table,
        linearly interpolated (its slope carries the gradient), times lut_scale, plus the curvature term."""
        k = gray.detach().floor().clamp(0, 254).long()
        lut = self.lut
        table = lut[k] + (gray - k) * (lut[k + 1] - lut[k])
        u = gray / 255.0
        return self.log_lut_scale.exp() * table + self.lut_curvature * (2 * math.pi) * u * (1 - u)

    def pixel_phase(self, gray: Tensor) -> Tensor:
        """Phase of each pixel [B, P] (rad at the pixel's wavelength) for its gray levels [B, P]."""
        return self.lut_phase(gray) * self.retardance

    def _fixed(self) -> dict[str, Tensor]:
        """The parts that depend on the constants only: the fine-grid amplitude [Q, P], the phase-matching factor
        [K] (divided by P^2, the autoconvolution's normalisation) and the output matrix [K, n_outputs] (that factor,
        the line spread, the output bins and the gain). Cached while no graph is built through the constants (a
        frozen twin, or no_grad), keyed on the parameters' versions."""
        building = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        key = tuple((id(p), p._version) for p in self.parameters())
        if not building and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        fwhm = self.log_laser_fwhm_nm.exp()
        amplitude = torch.exp(-2 * math.log(2) * ((self.lambda_fine_nm - self.laser_center_nm) / fwhm) ** 2)
        detuning = (self.nu_sh_thz - 2e-12 * self.nu_c - self.pm_offset_thz) / self.log_pm_fwhm_thz.exp()
        pm = torch.sinc(SINC_FWHM * detuning) ** 2 / self.encoding.shaper.n_pixels**2
        matrix = pm[:, None] * (self.line_spread() @ self.out_weights.T) * self.log_gain.exp()
        fixed = {"amplitude": amplitude, "phase_matching": pm, "outputs": matrix}
        if not building:
            self._cache = (key, {name: t.detach() for name, t in fixed.items()})
        return fixed

    def field(self, phase: Tensor) -> Tensor:
        """Shaped field per pixel [B, P] (complex) for pixel phases [B, P] (rad): sqrt(laser spectrum) times exp(i
        crosstalk-smoothed phase) on the fine grid, averaged over each pixel (what the SHG of the main pulse sees;
        module docstring). Computed in the dtype of ``phase``."""
        smooth = smooth_phase(phase, self.log_crosstalk_px.exp())  # [B, Q, P]
        amplitude = self._fixed()["amplitude"].to(phase.dtype)  # [Q, P]
        return torch.complex((amplitude * torch.cos(smooth)).mean(dim=1), (amplitude * torch.sin(smooth)).mean(dim=1))

    def sh_power(self, field: Tensor) -> Tensor:
        """|sum_j E_j E_{k-j}|^2 [B, K] at the SH frequencies ``nu_sh_thz`` [K] that reach the camera, for the
        per-pixel field [B, P] (autoconvolution by a zero-padded FFT; before phase matching)."""
        a, b = self.sh_window
        spec = torch.fft.fft(field, n=self.n_fft)
        sh = torch.fft.ifft(spec * spec)[:, a:b]
        return torch.view_as_real(sh).square().sum(dim=-1)

    def sh_intensity(self, field: Tensor) -> Tensor:
        """SH intensity [B, K] (phase matching included) at the SH frequencies ``nu_sh_thz`` [K] that reach the
        camera, for the per-pixel field [B, P]: |(1 / P) sum_j E_j E_{k-j}|^2 sinc^2(...)."""
        power = self.sh_power(field)
        return power * self._fixed()["phase_matching"].to(power.dtype)

    def line_spread(self, lambda_sh_nm: Tensor | None = None) -> Tensor:
        """[K, columns]: the share of the intensity at each SH wavelength [K] (default ``lambda_sh_nm``) on each
        camera column of the ROI (a Gaussian line spread integrated over the column)."""
        spec = self.encoding.spectrometer
        lam = self.lambda_sh_nm if lambda_sh_nm is None else lambda_sh_nm
        column = (spec.center_column + self.calibration.column_offset + self.column_shift
                  + (lam - 0.5 * self.laser_center_nm) / spec.nm_per_column)
        sigma = self.log_line_spread_columns.exp() * math.sqrt(2.0)
        cdf = 0.5 * torch.erf((self.column_edges[None, :] - column[:, None]) / sigma)
        return cdf[:, 1:] - cdf[:, :-1]

    def camera_counts(self, phase: Tensor) -> Tensor:
        """Modelled camera spectrum [B, columns of the ROI] (counts above the dark frame) for pixel phases [B, P]."""
        intensity = self.sh_intensity(self.field(phase))
        return intensity @ self.line_spread() * (self.log_gain.exp() * self.calibration.reference_mean)

    @torch.no_grad()
    def transform_limited_centroid(self) -> float:
        """Camera column of the modelled transform-limited SH spectrum, found the way the setup's calibration finds
        it (``centroid_column``)."""
        flat = self.pixel_phase(self.lut.new_zeros(1, self.encoding.shaper.n_pixels))  # all gray 0
        counts = self.camera_counts(flat)[0]
        return self.calibration.roi[0] + centroid_column(counts.numpy())

    def outputs_from_phase(self, phase: Tensor) -> Tensor:
        """y [B, n_outputs] for pixel phases [B, P] (rad): the smooth part of the forward pass."""
        power = self.sh_power(self.field(phase))
        return power @ self._fixed()["outputs"].to(power.dtype)

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        """y [B, n_outputs] (units of the transform-limited reference) from x [B, n] and θ [B, n] or [n].

        The gray levels are always computed in float64 (as the setup does); the optics run in the dtype of x
        (float32 in PAT: faster; float64 when fitting, where ``fit_twin`` passes the parameters' dtype)."""
        theta = broadcast_theta(x, theta, self.n_inputs, self.n_params)
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float64
        phase = self.lut_phase(self.bin_gray(x, theta))[:, self.pixel_bin] * self.retardance
        enc = self.encoding
        return enc.output_gain * self.outputs_from_phase(phase.to(dtype)) - enc.output_offset
