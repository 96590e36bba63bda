"""MechanicalSetup: speaker safety on the wire (exact bytes), and the plate on the simulated bench, opened the way the
orchestrator opens it (``orchestrator.lab.open_setup``). Noise bounds come from repeated measurements, never from
hard-coded outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import find_peaks

from drivers.awg import Keysight33500B
from drivers.errors import LimitViolation
from orchestrator.experiment_file import load_experiment
from orchestrator.lab import open_setup
from orchestrator.kits import setup_kit
from simulators.benches import start_bench
from twins.fit import nmse

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
N = 16


def config(**overrides):
    return load_experiment(EXPERIMENTS / "mechanical_digits.yaml",
                           overrides={"network.width": N, "instruments.awg.ramp_s": 0.0, **overrides})


@pytest.fixture(scope="module")
def bench():
    with start_bench("mechanical", seed=4) as b:
        yield b


def batch(b: int, seed: int, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(b, n, generator=gen) - 1, 2 * torch.rand(n, generator=gen) - 1


def rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


# -- speaker safety, exact bytes ---------------------------------------------------------------------------------

AWG_SCRIPT = {"SOUR1:VOLT?": "+1.0E-01", "SOUR1:VOLT:OFFS?": "+0.0E+00", "OUTP1?": "0", "OUTP1:LOAD?": "+9.9E+37"}


def speaker_setup(wire_server, wire_link, **awg_kwargs):
    from drivers.setups.mechanical import MechanicalSetup

    cfg = config(**{"instruments.awg.ramp_steps": 4})
    server = wire_server(AWG_SCRIPT)
    awg = Keysight33500B(wire_link(server, name="awg", timeout_s=0.5), load_ohm="INF", max_abs_volts=1.0,
                         **awg_kwargs)
    return server, MechanicalSetup(awg, None, cfg.instruments, cfg.encoding, n=N)


def test_switching_the_speaker_on_ramps_the_amplitude_up(wire_server, wire_link) -> None:
    server, setup = speaker_setup(wire_server, wire_link, max_abs_offset_volts=0.0)
    mark = server.mark()
    setup.enable_output()
    sent = server.since(mark).decode().replace("SYST:ERR?\n", "").splitlines()
    # 4 steps from 1 % of the working amplitude (2 x 0.5 V per unit = 1 Vpp) up to it, geometrically; the output
    # goes on at the lowest level, with the offset at 0 V
    assert sent[:3] == ["SOUR1:VOLT 0.01", "SOUR1:VOLT:OFFS 0.0", "OUTP1 ON"]
    assert all(line.startswith("SOUR1:VOLT ") for line in sent[3:]) and len(sent) == 7
    amplitudes = [float(line.split()[1]) for line in [sent[0]] + sent[3:]]
    assert amplitudes == pytest.approx(np.geomspace(0.01, 1.0, 5))


def test_the_setup_refuses_an_awg_that_would_allow_a_dc_offset(wire_server, wire_link) -> None:
    with pytest.raises(LimitViolation, match="must refuse any DC offset"):
        speaker_setup(wire_server, wire_link)  # driver built without max_abs_offset_volts=0


def test_the_config_pins_the_offset_limit_at_zero() -> None:
    from orchestrator.config import ConfigError

    assert config().instruments.awg.max_abs_offset_volts == 0.0
    with pytest.raises(ConfigError, match="max_abs_offset_volts"):
        config(**{"instruments.awg.max_abs_offset_volts": 0.5})


def test_drive_above_the_speaker_limit_is_refused_and_the_output_switched_off(bench) -> None:
    awg = bench.instruments["awg"].state[1]
    awg.output = True  # left on by someone else
    from orchestrator.config import ConfigError

    with pytest.raises(ConfigError, match="encoding.drive_volts_per_unit: 1.5 V is above the safety limit"):
        config(**{"encoding.drive_volts_per_unit": 1.5})  # the experiment file is refused first
    cfg = config()  # a configuration built in code meets the driver's own check
    cfg = cfg.model_copy(update={"encoding": cfg.encoding.model_copy(update={"drive_volts_per_unit": 1.5})})
    with pytest.raises(LimitViolation, match="speaker's safety limit"):
        with open_setup(cfg, N, bench=bench):
            pass
    assert not awg.output


def test_uploads_happen_at_the_quietest_amplitude(wire_server, wire_link) -> None:
    server, setup = speaker_setup(wire_server, wire_link, max_abs_offset_volts=0.0)
    setup.enable_output()
    mark = server.mark()
    setup.before_upload()
    setup.awg.upload_arb("PNNBATCH", np.zeros(16))
    setup.before_trigger()
    sent = [m for m in server.since(mark).split(b"\n") if m and m != b"SYST:ERR?"]
    assert sent[0] == b"SOUR1:VOLT 0.01" and sent[-1] == b"SOUR1:VOLT 1.0"
    assert any(m.startswith(b"SOUR1:DATA:ARB:DAC PNNBATCH,#") for m in sent[1:-1])


# -- on the simulated bench ----------------------------------------------------------------------------------------

def test_forward_is_repeatable_depends_on_inputs_and_parameters_and_leaves_the_output_off(bench) -> None:
    x, theta = batch(24, seed=1)
    x2, _ = batch(24, seed=2)
    awg = bench.instruments["awg"].state[1]
    with open_setup(config(), N, bench=bench) as setup:
        assert awg.output and awg.offset_v == 0.0  # on (ramped) while the setup is open, no offset
        assert (setup.n_inputs, setup.n_params, setup.n_outputs) == (N, N, N)
        y1, y2 = setup.forward(x, theta), setup.forward(x, theta)
        y3, y4 = setup.forward(x2, theta), setup.forward(x, -theta)
        assert setup.counters.history == [1, 1, 1, 1]  # one upload per batch
    assert not awg.output  # off on the way out
    noise = rms(y1 - y2)
    assert y1.shape == (24, N) and torch.isfinite(y1).all()
    assert rms(y1) > 10 * noise
    assert rms(y1 - y3) > 5 * noise and rms(y1 - y4) > 5 * noise


def test_calibration_finds_the_delays_and_the_plate_s_resonances(bench) -> None:
    plate = bench.physics
    with open_setup(config(), N, bench=bench) as setup:
        assert abs(setup.delay_s - plate.trigger_delay_s) < 0.1 / setup.enc.sample_rate_hz  # a tenth of a sample
        # items are cut early, by at most 2 samples and the onset's rise (the twins fit what is left), never late
        fs = setup.enc.sample_rate_hz
        assert 0 <= plate.acoustic_delay_s - setup.response_delay_s < 3 / fs
        fr = setup.frequency_response
    band = (fr.f_hz > 200) & (fr.f_hz < 3000)  # above, the scope's interpolation between samples lowers the top end
    assert np.median(fr.coherence[band]) > 0.95
    # the true small-signal response as the measurement sees it: the AWG holds each sample, the setup averages the
    # microphone over each sample period (sinc)
    truth = plate.frequency_response(fr.f_hz, hold_rate_hz=fs) * np.sinc(fr.f_hz / fs)
    db = 20 * np.log10(np.abs(fr.response[band]) / np.abs(truth[band]))
    assert np.median(np.abs(db)) < 1.0, np.median(np.abs(db))
    # and its peaks are the plate's modes: the 5 most prominent peaks each lie within 5 % of a mode frequency
    # (neighbouring modes pull an apparent peak a little)
    peaks, props = find_peaks(np.abs(fr.response[band]), prominence=0)
    top = fr.f_hz[band][peaks[np.argsort(props["prominences"])[-5:]]]
    modes = np.asarray(plate.values.mode_hz)
    assert all(np.min(np.abs(modes - p) / modes) < 0.05 for p in top), (top, modes)


def test_the_perfect_twin_predicts_the_device_to_the_noise(bench) -> None:
    cfg = config()
    x, theta = batch(48, seed=3)
    with open_setup(cfg, N, bench=bench) as setup:
        y, y_again = setup.forward(x, theta), setup.forward(x, theta)
        twin = setup_kit("mechanical").perfect_twin(cfg, bench, setup)
        wrong_theta = setup.forward(x, torch.roll(theta, 3))
    with torch.no_grad():
        pred = twin(x, theta)
    # closer to a measurement than a second measurement is (which carries the noise twice)
    assert nmse(pred, y) < nmse(y_again, y), (nmse(pred, y), nmse(y_again, y))
    assert nmse(pred, wrong_theta) > 10 * nmse(pred, y)


def test_the_batch_size_does_not_change_a_sample_s_output(bench) -> None:
    x, theta = batch(12, seed=5)
    with open_setup(config(), N, bench=bench) as setup:
        y12 = setup.forward(x, theta)
        y12_again = setup.forward(x, theta)
        y5 = setup.forward(x[:5], theta)
    assert rms(y12[:5] - y5) < 2 * rms(y12 - y12_again) + 1e-6


def test_sound_and_parameter_waveform_played_together_give_rms_bins(bench) -> None:
    """The raw-audio layout: x and θ added, 4 rms bins over 64 slots."""
    cfg = config(**{"encoding.combine": "add", "encoding.output_bins": 4, "encoding.bin_statistic": "rms",
                    "encoding.sample_rate_hz": 8000, "encoding.guard_samples": 240})
    t = torch.arange(64) / 8000.0
    tone = 0.8 * torch.sin(2 * torch.pi * 700 * t)
    x = torch.stack([tone, 0.25 * tone, torch.zeros(64)])
    with open_setup(cfg, 64, bench=bench) as setup:
        assert setup.n_outputs == 4 and setup.n_inputs == 64
        y = setup.forward(x, torch.zeros(64))
    assert y.shape == (3, 4) and (y >= 0).all()  # sound levels
    loud, quiet, silent = y.mean(1)
    assert loud > 2 * quiet > 2 * silent  # louder sound, louder microphone; silence is only noise and hum


def test_with_keep_output_on_false_every_batch_is_ramped_up_and_measures_the_same(bench) -> None:
    x, theta = batch(8, seed=6)
    awg = bench.instruments["awg"].state[1]
    with open_setup(config(), N, bench=bench) as setup:
        y_on, y_on_again = setup.forward(x, theta), setup.forward(x, theta)
    with open_setup(config(**{"instruments.awg.keep_output_on": False}), N, bench=bench) as setup:
        y_toggled = setup.forward(x, theta)
        assert awg.output and awg.amplitude_vpp == pytest.approx(1.0)  # ramped up to the working amplitude
        setup.before_upload()
        assert not awg.output  # off while the next waveform is uploaded
    assert rms(y_toggled - y_on) < 2 * rms(y_on - y_on_again) + 1e-6


def test_a_reused_twin_brings_its_own_cut() -> None:
    """The cut is re-derived from a noisy onset at every opening; a reused twin (or twin data) sets it back to the
    cut it was fitted with, which its fitted delay assumes."""
    from types import SimpleNamespace

    from drivers.setups.awg_scope import AwgScopeSetup

    setup = SimpleNamespace(response_delay_s=250e-6)
    assert AwgScopeSetup.reuse_calibration(setup, {"response_delay_s": 300e-6, "delay_s": 6e-6}, "twin.pt")
    assert setup.response_delay_s == 300e-6
    AwgScopeSetup.reuse_calibration(setup, {"delay_s": 6e-6}, "an electronic twin")  # nothing stored: left alone
    AwgScopeSetup.reuse_calibration(setup, None, "data without metadata")
    assert setup.response_delay_s == 300e-6


def test_a_record_at_the_screen_edge_is_counted_and_reported(bench, caplog) -> None:
    x, theta = batch(8, seed=7)
    with open_setup(config(**{"instruments.scope.volts_per_div": 0.02}), N, bench=bench) as setup:  # +-80 mV
        with caplog.at_level("WARNING"):
            setup.forward(x, theta)
            setup.forward(x, theta)
        assert setup.counters.clipped_records == 2
    assert sum("at the screen edge" in r.getMessage() for r in caplog.records) == 1  # warned once
    with open_setup(config(), N, bench=bench) as setup:
        setup.forward(x, theta)
        assert setup.counters.clipped_records == 0
