"""The simulated mechanical bench end to end: the AWG and scope drivers over real pyvisa-py links against
``start_bench("mechanical")``, and raw SCPI for continuous play (``pnn sim serve mechanical`` is tested in test_cli.py).

Expected traces come from the bench's own documented physics (``SpeakerPlate.noiseless``, ``frequency_response``,
the input divider and delays); tolerances from its documented noise, hum and the scope's 8-bit quantization.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from drivers.awg import DAC_FULL_SCALE, Keysight33500B
from drivers.scope import KeysightInfiniiVision
from drivers.transport import open_link
from simulators.benches import BENCHES, ElectronicBench, MechanicalBench, start_bench
from simulators.physics.electronic import ElectronicCircuit
from simulators.physics.mechanical import SpeakerPlate

FS = 20e3


@pytest.fixture
def rig():
    """(bench, link factory) on a running mechanical bench; links are closed after the test."""
    links = []
    with start_bench("mechanical", seed=5) as bench:

        def link(role: str):
            links.append(open_link(bench.resources[role], name=role, timeout_s=10.0))
            return links[-1]

        yield bench, link
        for lk in links:
            lk.close()


def test_registered_and_physics_exposed() -> None:
    assert BENCHES["mechanical"] is MechanicalBench and BENCHES["electronic"] is ElectronicBench
    from click.testing import CliRunner

    from orchestrator.cli import main

    refused = CliRunner().invoke(main, ["sim", "serve", "acoustic"])  # pnn sim serve offers every bench
    assert refused.exit_code == 2 and all(repr(name) in refused.output for name in BENCHES)
    for name, bench_class in BENCHES.items():  # each bench says its instruments' roles before it is built
        with start_bench(name, seed=1) as running:
            assert tuple(running.resources) == bench_class.roles
    with start_bench("mechanical", seed=1) as b:
        assert isinstance(b.physics, SpeakerPlate) and b.circuit is b.physics
        assert set(b.resources) == {"awg", "scope"}
    with start_bench("electronic", seed=1) as b:
        assert isinstance(b.physics, ElectronicCircuit) and b.circuit is b.physics is b.bench.circuit


def _chirp(n: int, fs: float, f0: float, f1: float, start: int, length: int) -> np.ndarray:
    """A linear chirp f0 -> f1 with a Hann envelope over [start, start + length), zero elsewhere (values in [-1, 1])."""
    w = np.zeros(n)
    t = np.arange(length) / fs
    duration = length / fs
    w[start: start + length] = np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / duration * t**2)) * np.hanning(length)
    return w


def test_driver_burst_records_the_plate_on_chan1_and_the_drive_on_chan2(rig) -> None:
    bench, link = rig
    plate: SpeakerPlate = bench.physics
    awg = Keysight33500B(link("awg"), load_ohm="INF", max_abs_volts=1.0)
    scope = KeysightInfiniiVision(link("scope"))
    n = 4000  # 0.2 s at 20 kHz
    w = _chirp(n, FS, 150.0, 2500.0, start=400, length=1600)
    peak = 0.4  # V EMF (high-Z setting: the programmed volts are the EMF)
    awg.output = False
    awg.upload_arb("CHIRP", w)
    awg.sample_rate = FS
    awg.set_levels(2 * peak, 0.0)
    awg.configure_burst(n_cycles=1, trigger_source="BUS")
    scale, ref_scale = 0.1, 0.125  # V/div: +-0.4 V and +-0.5 V on screen
    scope.set_channel(1, scale_v_per_div=scale, offset_v=0.0, coupling="DC", display=True)
    scope.set_channel(2, scale_v_per_div=ref_scale, offset_v=0.0, coupling="DC", display=True)
    duration = n / FS
    scope.set_timebase(range_s=duration, position_s=duration / 10, reference="LEFT")  # record starts at the trigger
    scope.set_edge_trigger(source="EXT", level_v=1.0)
    scope.set_acquisition("NORM")
    awg.output = True
    busy0, time0 = plate.busy_s, plate.bench_time_s
    scope.arm_single(timeout_s=10)
    awg.trigger()
    scope.wait_complete(timeout_s=10)
    assert scope.triggered()
    mic = scope.read_waveform(1, points=8000, fmt="WORD")
    ref = scope.read_waveform(2, points=8000, fmt="WORD")
    assert plate.busy_s > busy0 and plate.bench_time_s > time0 + duration
    assert scope.errors() == [] and awg.errors() == []
    t = mic.t
    np.testing.assert_array_equal(t, ref.t)
    assert t[0] == pytest.approx(0.0, abs=1e-9) and t[-1] == pytest.approx(duration, rel=1e-3)

    # CHAN2: the amplifier input, 10 kohm / (10 kohm + 50 ohm) of the EMF, trigger delay only; the bench hands the
    # scope one value per internal sample (here one per AWG sample), which the scope interpolates linearly
    codes = np.round(w * DAC_FULL_SCALE) / DAC_FULL_SCALE
    drive = codes * peak * plate.values.input_divider  # V at the amplifier input, held per AWG sample
    grid = np.arange(n) / FS

    def at_scope(samples: np.ndarray) -> np.ndarray:  # delayed on the bench's sample grid, interpolated by the scope
        return np.interp(t, grid, np.interp(grid - plate.trigger_delay_s, grid, samples, left=0.0))

    err2 = ref.volts - at_scope(drive)
    assert np.std(err2) < 1.5 * math.hypot(plate.chan2_noise_v, 8 * ref_scale / 256 / math.sqrt(12))
    assert np.ptp(ref.volts) > 0.9 * np.ptp(drive)
    # the divider is real (0.995): a least-squares gain from the EMF to CHAN2 resolves it
    emf = at_scope(codes * peak)
    gain = float(np.dot(ref.volts, emf) / np.dot(emf, emf))
    assert gain == pytest.approx(plate.values.input_divider, abs=0.0015) and gain < 0.998

    # CHAN1: the plate's response from the documented physics, after the acoustic delay, plus noise and hum
    y = plate.noiseless(torch.tensor(drive)[None], FS, temperature_offset_k=plate.temperature_offset_k(),
                        internal_rate=True)[0].numpy()
    internal = FS * plate.oversampling(FS)
    delay = plate.acoustic_delay_s + plate.trigger_delay_s
    expected = np.interp(t - delay, np.arange(y.shape[0]) / internal, y, left=0.0)
    residual = mic.volts - expected
    v = plate.values
    lsb = 8 * scale / 256
    noise = math.sqrt(v.mic_noise_v**2 + (v.hum_v**2 + v.hum3_v**2) / 2 + lsb**2 / 12)
    assert np.std(expected) > 10 * noise  # the plate is loud
    assert np.std(residual) < 2 * noise + 0.03 * np.std(expected)  # noise, hum, quantization; interpolation
    # silence until the sound arrives (the drive starts at 400 / fs; before it only noise and hum)
    before = t < 400 / FS + plate.acoustic_delay_s
    assert np.max(np.abs(mic.volts[before])) < 6 * noise
    # the delay is real: without it the match is much worse
    no_delay = np.interp(t - plate.trigger_delay_s, np.arange(y.shape[0]) / internal, y, left=0.0)
    assert np.std(mic.volts - no_delay) > 3 * np.std(residual)


def test_continuous_tone_reaches_steady_state(rig) -> None:
    """A continuous built-in sine: the scope sees the plate's steady-state response (the bench lets the amplifier's
    AC coupling and the plate settle before the trigger), with the documented small-signal gain."""
    bench, link = rig
    plate: SpeakerPlate = bench.physics
    f_tone = plate.values.mode_hz[2]  # on a resonance
    amplitude = 0.05  # V EMF peak
    awg = link("awg")
    scope = KeysightInfiniiVision(link("scope"))
    awg.write(f"OUTP:LOAD INF;:FUNC SIN;:FREQ {f_tone:.6f};:VOLT {2 * amplitude};:VOLT:OFFS 0")
    scope.set_channel(1, scale_v_per_div=0.02, offset_v=0.0, coupling="DC", display=True)
    scope.set_timebase(range_s=0.02, position_s=0.002, reference="LEFT")
    scope.set_edge_trigger(source="EXT", level_v=1.0)
    awg.write("OUTP ON")
    scope.arm_single(timeout_s=10)
    scope.wait_complete(timeout_s=10)
    record = scope.read_waveform(1, points=4000, fmt="WORD")
    awg.write("OUTP OFF")
    assert awg.query("SYST:ERR?").startswith("+0") and scope.errors() == []
    t, volts = record.t, record.volts
    measured = abs(2 * np.mean(volts * np.exp(-2j * np.pi * f_tone * t)))  # whole periods: 0.02 s
    expected = abs(plate.frequency_response(f_tone)) * amplitude * plate.values.input_divider
    assert expected > 0.005
    assert measured == pytest.approx(expected, rel=0.08)
