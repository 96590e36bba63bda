"""The mechanical bench's ground-truth physics (``simulators.physics.mechanical.SpeakerPlate``).

Every expectation comes from the documented physics (``values``, the module docstring, ``frequency_response``,
which is the continuous-time transfer function written out independently of the discretised simulation), never from
numbers recorded from the simulation itself. All plates are seeded.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.signal
import torch

from simulators.physics.mechanical import NOMINAL_MODE_HZ, PlateValues, SpeakerPlate

FS = 20e3


def quiet(plate: SpeakerPlate, **changes) -> SpeakerPlate:
    """The same plate without microphone noise, hum, scope noise and thermal drift (and with ``changes``)."""
    plate.values = replace(plate.values, mic_noise_v=0.0, hum_v=0.0, hum3_v=0.0, tempco=0.0, **changes)
    plate.chan2_noise_v = 0.0
    return plate


def lock_in(y: np.ndarray, f_hz: float, rate_hz: float, t0_s: float = 0.0) -> complex:
    """Complex amplitude of the f_hz component of y (sample k at t0 + k / rate): y ~ Re(A exp(i 2 pi f t))."""
    t = t0_s + np.arange(y.shape[-1]) / rate_hz
    return 2.0 * np.mean(y * np.exp(-2j * np.pi * f_hz * t), axis=-1)


def transfer_estimate(x: np.ndarray, y: np.ndarray, fs: float, nperseg: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Welch estimate of the transfer function from x to y: (f, H)."""
    f, pxy = scipy.signal.csd(x, y, fs=fs, nperseg=nperseg)
    _, pxx = scipy.signal.welch(x, fs=fs, nperseg=nperseg)
    return f, pxy / pxx


def sine_rows(freqs: np.ndarray, amplitude: float, duration_s: float, fs: float = FS) -> torch.Tensor:
    t = np.arange(int(duration_s * fs)) / fs
    return torch.tensor(amplitude * np.sin(2 * np.pi * np.asarray(freqs)[:, None] * t[None, :]))


# -- linear response and resonances ------------------------------------------------------------------------------------

def test_small_signal_response_is_the_documented_transfer_function() -> None:
    plate = SpeakerPlate(seed=1)
    rng = np.random.default_rng(0)
    drive = rng.uniform(-0.02, 0.02, 80_000)  # 4 s of white drive, far below clipping and Duffing
    y = plate.noiseless(torch.tensor(drive)[None], FS)[0].numpy()
    f, h = transfer_estimate(drive, y, FS, nperseg=8192)
    expected = plate.frequency_response(f, hold_rate_hz=FS)
    band = (f >= 120) & (f <= 8000) & (np.abs(expected) > 0.05 * np.abs(expected).max())
    assert band.sum() > 300
    err = np.abs(h[band] - expected[band]) / np.abs(expected[band])
    assert np.median(err) < 0.01 and np.max(err) < 0.05
    # the response is far from flat: the plate's modes dominate it
    audio = np.abs(expected[(f >= 120) & (f <= 8000)])
    assert audio.max() > 20 * audio.min()


def test_resonances_sit_at_the_mode_frequencies_through_the_noisy_bench() -> None:
    plate = SpeakerPlate(seed=2)  # mic noise, hum, drift and delays all on
    rng = np.random.default_rng(1)
    emf = rng.uniform(-0.05, 0.05, 60_000)
    traces, rate = plate.respond(emf, FS)
    assert rate == FS
    f, h = transfer_estimate(emf * plate.values.input_divider, traces[1], FS, nperseg=4096)
    delay = plate.acoustic_delay_s + plate.trigger_delay_s
    expected = plate.frequency_response(f, hold_rate_hz=FS) * np.exp(-2j * np.pi * f * delay)
    band = (f >= 200) & (f <= 8000) & (np.abs(expected) > 0.1 * np.abs(expected).max())
    err = np.abs(h[band] - expected[band]) / np.abs(expected[band])
    assert np.median(err) < 0.05 and np.percentile(err, 90) < 0.15
    # the measured magnitude peaks at the (off-nominal) mode frequencies: it is larger there than midway between
    modes = np.asarray(plate.values.mode_hz)
    mag = np.abs(h)
    at_modes = np.interp(modes[1:-1], f, mag)
    between = np.sqrt(np.interp(0.5 * (modes[:-2] + modes[1:-1]), f, mag) * np.interp(0.5 * (modes[1:-1] + modes[2:]),
                                                                                        f, mag))
    assert np.mean(np.log(at_modes / between)) > math.log(2.0)
    assert np.mean(at_modes > between) >= 0.75
    # and the values are off nominal, as documented (+-3 %)
    rel = modes / np.asarray(NOMINAL_MODE_HZ) - 1
    assert np.all(np.abs(rel) <= 0.03) and np.std(rel) > 0.005


# -- nonlinearities ----------------------------------------------------------------------------------------------------

def test_amplifier_clips_softly_and_its_output_is_bounded() -> None:
    plate = SpeakerPlate(seed=3)
    amplitudes = [0.05, 0.1, 0.5, 2.0, 20.0, 200.0, 2000.0]
    t = np.arange(int(0.1 * FS)) / FS
    drive = torch.tensor(np.array([a * np.sin(2 * np.pi * 700 * t) for a in amplitudes]))
    y = plate.noiseless(drive, FS).numpy()
    rms = dict(zip(amplitudes, np.sqrt(np.mean(y[:, t > 0.05] ** 2, axis=1))))
    assert rms[0.1] / rms[0.05] == pytest.approx(2.0, rel=0.01)  # linear at small drive
    assert rms[2.0] / rms[0.5] < 0.6 * 4.0                       # 0.5 V -> 2 V: clearly sub-linear
    assert rms[20.0] / rms[2.0] < 1.25                           # hard clipping
    # the amplifier's output cannot exceed v_clip: beyond full clipping, more drive changes (almost) nothing
    assert rms[2000.0] / rms[20.0] < 1.05
    assert np.abs(y[-1]).max() < 1.1 * np.abs(y[-3]).max()
    # the documented gain and clip level: the fundamental of v_clip tanh(gain * 0.5 V sin / v_clip) is compressed
    # against the linear 4 V by a factor the plate passes on to the microphone; at 2 kHz the plate is linear (at
    # 700 Hz, just above the 5th mode, its stiffening adds 2 %)
    v = plate.values
    phase = np.linspace(0, 2 * np.pi, 4096, endpoint=False)
    clipped = v.v_clip * np.tanh(v.amp_gain * 0.5 * np.sin(phase) / v.v_clip)
    compression = 2 * np.mean(clipped * np.sin(phase)) / (v.amp_gain * 0.5)
    assert 0.85 < compression < 0.95
    tone = plate.noiseless(torch.tensor(np.array([a * np.sin(2 * np.pi * 2000 * t) for a in (0.05, 0.5)])), FS)
    fundamental = np.abs(lock_in(tone.numpy()[:, t > 0.05], 2000.0, FS))
    assert fundamental[1] / (10 * fundamental[0]) == pytest.approx(compression, abs=0.005)


def _resonance_peak_hz(plate: SpeakerPlate, amplitude: float, f_center: float) -> float:
    """Frequency of the largest steady-state response (stepped sine, lock-in, parabolic peak fit)."""
    freqs = np.arange(0.85 * f_center, 1.2 * f_center, 0.5)
    y = plate.noiseless(sine_rows(freqs, amplitude, 0.12), FS).numpy()
    settled = int(0.07 * FS)
    gain = np.array([abs(lock_in(y[i, settled:], f, FS, settled / FS)) for i, f in enumerate(freqs)]) / amplitude
    k = int(np.argmax(gain))
    assert 0 < k < len(freqs) - 1, "peak at the edge of the sweep"
    a, b, c = np.log(gain[k - 1: k + 2])
    return float(freqs[k] + 0.5 * 0.5 * (a - c) / (a - 2 * b + c))


def test_duffing_stiffening_shifts_the_lowest_resonance_up() -> None:
    plate = SpeakerPlate(seed=2)
    f1 = plate.values.mode_hz[0]
    small, large = _resonance_peak_hz(plate, 0.01, f1), _resonance_peak_hz(plate, 0.5, f1)
    assert abs(small / f1 - 1) < 0.1  # the lowest mode's peak (shifted a little by its neighbours and high-passes)
    assert large / small - 1 > 0.01   # stiffening: up by more than 1 % at 0.5 V
    assert large / small - 1 < 0.15   # ... and still a perturbation (beta q^2 ~ 0.1), not chaos
    # control: without the Duffing term the same clipping amplifier does not move the peak
    linear_plate = SpeakerPlate(seed=2)
    linear_plate.values = replace(linear_plate.values, beta=tuple(0.0 for _ in linear_plate.values.beta))
    shift = _resonance_peak_hz(linear_plate, 0.5, f1) / _resonance_peak_hz(linear_plate, 0.01, f1) - 1
    assert abs(shift) < 0.003


# -- noise, hum, delays ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mains_hz", [50.0, 60.0])
def test_mains_hum_and_self_noise_in_silence(mains_hz: float) -> None:
    plate = SpeakerPlate(seed=4, nominal=PlateValues(mains_hz=mains_hz))
    v = plate.values
    n = 60_000  # 3 s
    time0 = plate.bench_time_s
    mic = plate.respond(np.zeros(n), FS)[0][1]
    hum1 = lock_in(mic, mains_hz, FS)
    hum3 = lock_in(mic, 3 * mains_hz, FS)
    assert abs(hum1) == pytest.approx(v.hum_v, rel=0.1)
    assert abs(hum3) == pytest.approx(v.hum3_v, rel=0.2)
    assert abs(lock_in(mic, 2 * mains_hz, FS)) < 0.15e-3  # no 2nd harmonic
    other = 60.0 if mains_hz == 50.0 else 50.0
    assert abs(lock_in(mic, other, FS)) < 0.15e-3
    t = np.arange(n) / FS
    residual = mic - np.real(hum1 * np.exp(2j * np.pi * mains_hz * t) + hum3 * np.exp(6j * np.pi * mains_hz * t))
    assert np.std(residual) == pytest.approx(v.mic_noise_v, rel=0.1)
    # mains is not locked to the AWG: the hum's phase follows bench time from one acquisition to the next
    elapsed = plate.bench_time_s - time0
    assert elapsed == pytest.approx(n / FS + 0.02)
    again = lock_in(plate.respond(np.zeros(n), FS)[0][1], mains_hz, FS)
    advance = np.angle(again / hum1)
    expected = math.remainder(2 * math.pi * mains_hz * elapsed, 2 * math.pi)
    assert math.remainder(advance - expected, 2 * math.pi) == pytest.approx(0.0, abs=0.1)


def test_sound_arrives_after_the_acoustic_delay() -> None:
    plate = quiet(SpeakerPlate(seed=5))
    assert plate.acoustic_delay_s == pytest.approx(0.10 / 343.0, rel=0.06)  # 10 cm of air, +-5 %
    emf = np.zeros(2000)
    k0 = 100
    emf[k0] = 0.5  # one sample: the AWG holds 0.5 V from k0 / fs to (k0 + 1) / fs
    traces, rate = plate.respond(emf, FS)
    mic = traces[1]
    delay = (plate.acoustic_delay_s + plate.trigger_delay_s) * FS  # samples, ~5.7
    arrival = k0 + math.floor(delay) + 1  # the first sample instant after the sound arrives
    peak = np.abs(mic).max()
    assert peak > 0.01
    assert np.all(np.abs(mic[:arrival]) < 1e-6 * peak)  # silence (up to the bench's single-precision convolution)
    first = int(np.nonzero(np.abs(mic) > 1e-5 * peak)[0][0])
    assert first in (arrival, arrival + 1)  # the response rises smoothly (low-passes): maybe tiny at the first
    # the AWG terminal (CHAN2) has only the trigger delay: 10 kohm / (10 kohm + 50 ohm) of the EMF from k0 on
    chan2 = traces[2]
    assert np.all(chan2[:k0] == 0.0) and chan2[k0] > 0.9 * 0.5 * plate.values.input_divider


# -- seeds, carry-over, agreement of the two entry points -----------------------------------------------------------

def test_seeded_reproducible_and_different_between_seeds() -> None:
    emf = np.random.default_rng(2).uniform(-0.5, 0.5, 5000)
    a, b, c = SpeakerPlate(seed=7), SpeakerPlate(seed=7), SpeakerPlate(seed=8)
    assert a.values == b.values and a.values != c.values
    ta, tb, tc = a.respond(emf, FS)[0], b.respond(emf, FS)[0], c.respond(emf, FS)[0]
    for ch in (1, 2):
        np.testing.assert_array_equal(ta[ch], tb[ch])
    assert np.std(ta[1] - tc[1]) > 0.1 * np.std(ta[1])  # another bench, another response
    assert a.values.mode_hz != PlateValues().mode_hz


def _items_waveform(items: list[np.ndarray], guard: int, lead: int = 64) -> tuple[np.ndarray, list[int]]:
    """Items back to back, each followed by ``guard`` zeros; returns the waveform and where each item starts."""
    parts, starts, pos = [np.zeros(lead)], [], lead
    for item in items:
        starts.append(pos)
        parts += [item, np.zeros(guard)]
        pos += item.shape[0] + guard
    return np.concatenate(parts + [np.zeros(lead)]), starts


@pytest.mark.parametrize("guard, independent", [(600, True), (40, False)])
def test_items_are_independent_only_with_a_long_enough_guard(guard: int, independent: bool) -> None:
    plate = quiet(SpeakerPlate(seed=6))
    rng = np.random.default_rng(3)
    a, b = rng.uniform(-0.5, 0.5, 64), rng.uniform(-0.5, 0.5, 64)
    emf, starts = _items_waveform([a, b, a], guard)
    mic = plate.respond(emf, FS)[0][1]
    shift = math.ceil((plate.acoustic_delay_s + plate.trigger_delay_s) * FS)
    first, third = (mic[s + shift: s + shift + 64] for s in (starts[0], starts[2]))
    difference = np.max(np.abs(first - third)) / np.max(np.abs(first))
    if independent:
        assert difference < 0.03  # the plate rang down to ~1 % within the 30 ms guard
    else:
        assert difference > 0.1   # inter-symbol carry-over is real


def test_noiseless_is_respond_without_noise_delay_and_drift() -> None:
    for fs, internal in ((20e3, 20e3), (8e3, 24e3)):
        plate = SpeakerPlate(seed=9)
        # put the microphone where the delay is a whole number of internal samples, so the traces can be compared
        # sample by sample; noise, hum and drift off
        distance = (7 / internal - plate.trigger_delay_s) * plate.values.sound_speed_m_s
        plate = quiet(plate, mic_distance_m=distance)
        emf = np.random.default_rng(4).uniform(-1.0, 1.0, 3000)  # clipping and Duffing included
        traces, rate = plate.respond(emf, fs)
        assert rate == internal and traces[1].shape == (3000 * round(internal / fs),)
        drive = torch.tensor(emf * plate.values.input_divider)[None]
        y = plate.noiseless(drive, fs, internal_rate=True)[0].numpy()
        # (the bench convolves in single precision: errors of ~1e-6 of the signal, a few uV against 1 mV of noise)
        np.testing.assert_allclose(traces[1][7:], y[:-7], rtol=0, atol=1e-5 * np.abs(y).max())
        assert np.all(traces[1][:7] == 0.0)
        # at the AWG's sample instants
        y_awg = plate.noiseless(drive, fs)[0].numpy()
        np.testing.assert_array_equal(y_awg, y[:: round(internal / fs)])


def test_noiseless_rows_are_independent_waveforms_from_rest() -> None:
    plate = SpeakerPlate(seed=10)
    drive = torch.tensor(np.random.default_rng(5).uniform(-0.6, 0.6, (3, 400)))
    together = plate.noiseless(drive, FS)
    for i in range(3):
        np.testing.assert_allclose(plate.noiseless(drive[i: i + 1], FS)[0].numpy(), together[i].numpy(), rtol=0,
                                   atol=1e-12)
    assert together.dtype == drive.dtype and together.shape == drive.shape


@pytest.mark.parametrize("fs", [20e3, 8e3])
def test_noiseless_gradient_matches_finite_differences(fs: float) -> None:
    plate = SpeakerPlate(seed=11)
    rng = np.random.default_rng(6)
    drive = torch.tensor(rng.uniform(-0.8, 0.8, (2, 150)), requires_grad=True)  # clipping, Duffing active
    weights = torch.tensor(rng.standard_normal((2, 150)))
    (plate.noiseless(drive, fs) * weights).sum().backward()
    grad = drive.grad.numpy()

    def loss(d: np.ndarray) -> float:
        return float((plate.noiseless(torch.tensor(d), fs) * weights).sum())

    base = drive.detach().numpy()
    eps = 1e-6
    for i, j in [(0, 3), (0, 75), (1, 140), (1, 20)]:
        step = np.zeros_like(base)
        step[i, j] = eps
        fd = (loss(base + step) - loss(base - step)) / (2 * eps)
        assert grad[i, j] == pytest.approx(fd, rel=1e-5, abs=1e-9)
    direction = rng.standard_normal(base.shape)
    fd = (loss(base + 1e-5 * direction) - loss(base - 1e-5 * direction)) / 2e-5
    assert float((grad * direction).sum()) == pytest.approx(fd, rel=1e-6)
    # with respect to the internal-rate trace too
    d2 = drive.detach()[:1, :40].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda d: plate.noiseless(d, fs, internal_rate=True), (d2,), eps=1e-6,
                                    atol=1e-7, rtol=1e-5)


def test_temperature_wanders_about_a_kelvin_and_moves_the_modes() -> None:
    plate = SpeakerPlate(seed=12)
    temps = []
    for _ in range(600):
        temps.append(plate.temperature_offset_k())
        plate.bench_time_s += 1.0
    assert max(temps) - min(temps) > 0.5 and max(abs(t) for t in temps) <= 1.1
    # the modes move with temperature (-2.5e-4 / K): the response to a tone at the steep flank of a sharp
    # resonance changes by a small, consistent amount
    f_mode = plate.values.mode_hz[12]
    zeta = plate.values.mode_zeta[12]
    f = f_mode * (1 + zeta)  # half a bandwidth above the resonance
    drive = sine_rows([f], 0.02, 0.1)
    cold, warm = (abs(lock_in(plate.noiseless(drive, FS, temperature_offset_k=dt)[0, 1000:].numpy(), f, FS))
                  for dt in (-1.0, 1.0))
    # warm: the mode moves down, away from the tone above it; expected about 2 * 2.5e-4 / zeta relative
    assert 0.3 < (cold / warm - 1) / (2 * 2.5e-4 / zeta) < 3
