"""The pulse shaper's encoding: how x and θ become SLM phases on spectral bins, and how the camera's SH spectrum
becomes outputs; and the nominal calibration of the shaper and the spectrometer, and what the instrument calibration
measures (``OpticalCalibration``), which twins need to see the data as the setup does.

Encoding (all in "units"; x and θ each in [-1, 1])::

    spectral bins   the SLM's ``active_pixels`` are cut into 2n equal bins: x_1 θ_1 x_2 θ_2 ... (layout interleave)
                    or x_1 .. x_n then θ_1 .. θ_n (layout halves); pixels outside hold gray 0
    phase           value v -> phase (v + 1) / 2 * phase_span_rad -> gray level through the SLM's own lookup table
                    (``LUT:DATA?``, inverted by linear interpolation, rounded); the real phase is whatever the LC does
    output          the SH spectrum on the camera (full vertical binning, dark frame subtracted), summed over n equal
                    wavelength bins spanning ``output_span_nm`` around the measured SH centre, in units of the mean
                    bin R of the transform-limited (all gray 0) reference spectrum: y = output_gain bins / R
                    - output_offset (the defaults spread the outputs of random phases over about -1 .. 2)

How a batch is shown and read, and the calibration: ``drivers.setups.optical``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, Field, PositiveFloat, PositiveInt, model_validator
from torch import Tensor

from common.models import FieldError, StrictModel

C_M_PER_S = 299_792_458.0


class ShaperNominal(StrictModel):
    """The pulse shaper's nominal calibration: pixels linear in optical frequency."""

    n_pixels: PositiveInt = 640
    center_nm: PositiveFloat = 800.0
    span_nm: PositiveFloat = Field(24.0, description="wavelength span of all pixels at center_nm")
    laser_center_nm: PositiveFloat = 800.0
    laser_fwhm_nm: PositiveFloat = Field(10.0, description="intensity FWHM of the laser spectrum")
    phase_matching_fwhm_thz: PositiveFloat = Field(10.0, description="SHG phase-matching FWHM in SH frequency")

    def pixel_frequencies_hz(self) -> np.ndarray:
        """Optical frequency of each pixel centre [n_pixels], Hz."""
        nu_c = C_M_PER_S / (self.center_nm * 1e-9)
        dnu = C_M_PER_S * self.span_nm * 1e-9 / (self.center_nm * 1e-9) ** 2 / self.n_pixels
        return nu_c + (np.arange(self.n_pixels) - (self.n_pixels - 1) / 2) * dnu


class SpectrometerNominal(StrictModel):
    """The spectrometer's nominal calibration: column k sees center_nm + (k - center_column) * nm_per_column."""

    center_nm: PositiveFloat = 400.0
    nm_per_column: PositiveFloat = 0.02
    center_column: float = 511.5
    line_spread_columns: PositiveFloat = Field(1.0, description="Gaussian sigma of the line spread, columns")


class OpticalEncoding(StrictModel):
    """Spectral encoding of inputs, parameters and outputs (see module docstring)."""

    active_pixels: tuple[int, int] = Field((150, 490), description="[first, end) SLM pixels carrying x and θ")
    layout: Literal["interleave", "halves"] = "interleave"
    phase_span_rad: PositiveFloat = Field(math.pi, description="phase of value +1 (value -1 is phase 0), rad")
    output_span_nm: PositiveFloat = Field(6.0, description="SH wavelength window split into the output bins, nm")
    output_bins: PositiveInt | None = Field(None, description="outputs per item; default n")
    roi_margin_columns: int = Field(8, ge=0, description="camera columns read beyond the output window")
    output_gain: PositiveFloat = Field(8.0, description="output units per reference level (see output_units)")
    output_offset: float = Field(1.0, description="subtracted after the gain, units")
    shaper: ShaperNominal = ShaperNominal()
    spectrometer: SpectrometerNominal = SpectrometerNominal()

    @model_validator(mode="after")
    def _pixels(self) -> "OpticalEncoding":
        first, end = self.active_pixels
        if not 0 <= first < end <= self.shaper.n_pixels:
            raise FieldError("active_pixels", f"[{first}, {end}] must satisfy 0 <= first < end <= "
                                              f"{self.shaper.n_pixels} (shaper.n_pixels)")
        return self

    def n_outputs(self, n_inputs: int) -> int:
        return self.output_bins or n_inputs


class OpticalCalibration(BaseModel):
    """What the instrument calibration measured; twins need it to see the data as the setup does."""

    lut: list[float] = Field(description="the SLM's lookup table: phase (rad) of gray 0..255, as it reports it")
    column_offset: float = Field(0.0, description="measured SH centre minus the nominal 400 nm column, columns")
    roi: tuple[int, int] = Field((0, 1024), description="camera columns read: first, count")
    reference_mean: float = Field(1.0, description="mean output bin of the transform-limited reference, counts")
    exposure_s: float = 1e-3
    electrons_per_count: float = 4.0


def bin_edges(enc: OpticalEncoding, n: int) -> np.ndarray:
    """Pixel edges of the 2n spectral bins [2n + 1] (ints; bin b is pixels edges[b] .. edges[b+1]-1)."""
    first, end = enc.active_pixels
    if end - first < 2 * n:
        raise ValueError(f"{end - first} active pixels cannot hold {2 * n} spectral bins")
    return first + np.floor(np.arange(2 * n + 1) * (end - first) / (2 * n)).astype(int)


def slot_values(x: Tensor, theta: Tensor, enc: OpticalEncoding) -> Tensor:
    """x [B, n] and θ [n] or [B, n] -> the values of the 2n pixel bins in their order on the SLM, then the
    background's -1 (phase 0): [B, 2 n + 1]. Each pixel shows one of them (``pixel_slots``)."""
    theta = theta.expand(x.shape[0], -1) if theta.dim() == 1 else theta
    if enc.layout == "interleave":
        values = torch.stack([x, theta], dim=2).reshape(x.shape[0], 2 * x.shape[1])
    else:
        values = torch.cat([x, theta], dim=1)
    return torch.cat([values, values.new_full((x.shape[0], 1), -1.0)], dim=1)


def pixel_slots(enc: OpticalEncoding, n: int) -> Tensor:
    """Which of ``slot_values`` each SLM pixel shows [n_pixels] (index 2n: the background, outside the bins)."""
    edges = bin_edges(enc, n)
    which = np.full(enc.shaper.n_pixels, 2 * n)
    for b in range(2 * n):
        which[edges[b]:edges[b + 1]] = b
    return torch.as_tensor(which)


def pixel_values(x: Tensor, theta: Tensor, enc: OpticalEncoding) -> Tensor:
    """x [B, n] and θ [n] or [B, n] -> the value each SLM pixel shows [B, n_pixels]; inactive pixels get -1 (phase 0).
    Differentiable (a gather)."""
    return slot_values(x, theta, enc)[:, pixel_slots(enc, x.shape[1])]


def gray_levels(values: Tensor, lut: Tensor | np.ndarray, phase_span_rad: float) -> Tensor:
    """Pixel values in [-1, 1] -> fractional gray levels through the inverse of the (monotonic) lookup table ``lut``
    [256] (rad). Differentiable, piecewise linear. The setup rounds the result; twins round it straight-through."""
    lut = torch.as_tensor(lut, dtype=values.dtype)
    phase = (values + 1) * (0.5 * phase_span_rad)
    k = torch.searchsorted(lut, phase.detach().contiguous()).clamp(1, len(lut) - 1)
    lo, hi = lut[k - 1], lut[k]
    return (k - 1).to(values.dtype) + (phase - lo) / (hi - lo)


def output_bin_edges(enc: OpticalEncoding, n_outputs: int, column_offset: float) -> np.ndarray:
    """Camera columns (fractional) of the edges of the output bins [n_outputs + 1]: equal in wavelength over
    ``output_span_nm`` around the SH centre (the nominal 400 nm column shifted by ``column_offset``)."""
    sp = enc.spectrometer
    centre = sp.center_column + column_offset
    return centre + (np.arange(n_outputs + 1) / n_outputs - 0.5) * enc.output_span_nm / sp.nm_per_column


def output_weights(enc: OpticalEncoding, n_outputs: int, column_offset: float, roi: tuple[int, int]) -> np.ndarray:
    """[n_outputs, roi count]: weight of each camera column in each output bin (fractional at the bin edges).
    The bins are equal in wavelength over ``output_span_nm`` around the SH centre, shifted by ``column_offset``."""
    edges = output_bin_edges(enc, n_outputs, column_offset)
    cols = roi[0] + np.arange(roi[1])
    # column k covers [k - 0.5, k + 0.5): overlap with each bin
    lo = np.maximum(edges[:-1, None], cols[None, :] - 0.5)
    hi = np.minimum(edges[1:, None], cols[None, :] + 0.5)
    return np.clip(hi - lo, 0.0, None)


def output_units(bins: Tensor, enc: OpticalEncoding, reference_mean: float) -> Tensor:
    """Output bins in counts above the dark frame -> output units: output_gain bins / reference_mean - output_offset."""
    return enc.output_gain * bins / reference_mean - enc.output_offset


def output_roi(enc: OpticalEncoding, column_offset: float, sensor_columns: int) -> tuple[int, int]:
    """Camera columns (first, count) covering the output window plus the margin."""
    sp = enc.spectrometer
    half = 0.5 * enc.output_span_nm / sp.nm_per_column
    centre = sp.center_column + column_offset
    first = max(0, math.floor(centre - half) - enc.roi_margin_columns)
    end = min(sensor_columns, math.ceil(centre + half) + 1 + enc.roi_margin_columns)
    return first, end - first


def centroid_column(spectrum: np.ndarray, fraction: float = 0.2) -> float:
    """Centroid (column) of the part of a spectrum above ``fraction`` of its peak, around the peak."""
    peak = int(np.argmax(spectrum))
    above = spectrum >= fraction * spectrum[peak]
    lo = peak
    while lo > 0 and above[lo - 1]:
        lo -= 1
    hi = peak
    while hi < len(spectrum) - 1 and above[hi + 1]:
        hi += 1
    cols = np.arange(lo, hi + 1)
    w = spectrum[lo: hi + 1] - fraction * spectrum[peak]
    return float((cols * w).sum() / w.sum())
