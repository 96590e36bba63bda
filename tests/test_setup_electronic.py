"""ElectronicSetup on the simulated bench, opened the way the orchestrator opens it (``orchestrator.lab.open_setup``).

Noise bounds come from the bench's documented scope noise and the scope's 8-bit quantization at the configured
V/div, propagated through the encoding's output bins; nothing is compared against hard-coded outputs.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from drivers.errors import InstrumentReportedError, LimitViolation
from orchestrator.checks import settings_problems
from orchestrator.config import ExperimentConfig
from orchestrator.experiment_file import load_experiment
from orchestrator.lab import open_setup
from orchestrator.kits.awg_scope import awg_emf_per_unit
from orchestrator.perfect_twin import PerfectElectronicTwin
from simulators.benches import start_bench
from simulators.scpi import SCPIError
from simulators.physics.electronic import ElectronicCircuit
from twins.fit import nmse

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "electronic_digits.yaml"
N = 16


def config(**overrides) -> ExperimentConfig:
    return load_experiment(EXPERIMENT, overrides={"network.width": N, **overrides})


@pytest.fixture
def bench():
    with start_bench("electronic", seed=4) as b:
        yield b


def batch(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(b, N, generator=gen) - 1, 2 * torch.rand(N, generator=gen) - 1


def diff_sigma(cfg: ExperimentConfig, bench) -> float:
    """Standard deviation of the difference of two measurements of one output bin (units): scope input noise and
    quantization per sample, averaged over the 2 * samples_per_value samples of a bin, twice."""
    lsb = 8 * cfg.instruments.scope.volts_per_div / 256
    per_sample = math.sqrt(bench.circuit.noise_v[cfg.instruments.scope.channel] ** 2 + lsb ** 2 / 12)
    per_bin = per_sample / math.sqrt(2 * cfg.encoding.samples_per_value) / cfg.encoding.output_volts_per_unit
    return math.sqrt(2) * per_bin


def rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


def sim_awg_state(bench) -> dict:
    st = bench.instruments["awg"].state[1]
    return {"memory": {k: v.copy() for k, v in st.memory.items()}, "output": st.output, "arb": st.arb,
            "levels": (st.amplitude_vpp, st.offset_v), "bench_time": bench.circuit.bench_time_s}


def assert_same_state(a: dict, b: dict) -> None:
    assert a["memory"].keys() == b["memory"].keys()
    for k in a["memory"]:
        np.testing.assert_array_equal(a["memory"][k], b["memory"][k])
    assert {k: v for k, v in a.items() if k != "memory"} == {k: v for k, v in b.items() if k != "memory"}


def test_forward_shape_repeatability_and_input_dependence(bench) -> None:
    cfg = config()
    sigma = diff_sigma(cfg, bench)
    x, theta = batch(24, seed=1)
    x2, _ = batch(24, seed=2)
    with open_setup(cfg, N, bench=bench) as setup:
        assert (setup.n_inputs, setup.n_params, setup.n_outputs) == (N, N, N)
        y1 = setup.forward(x, theta)
        y2 = setup.forward(x, theta)
        y3 = setup.forward(x2, theta)
        y4 = setup.forward(x, -theta)
    assert y1.shape == (24, N) and y1.dtype == torch.float32
    assert torch.isfinite(y1).all() and torch.isfinite(y3).all()
    assert rms(y1 - y2) < 1.5 * sigma and float((y1 - y2).abs().max()) < 6 * sigma  # the same up to noise
    assert rms(y1 - y3) > 20 * sigma  # other inputs, other outputs
    assert rms(y1 - y4) > 20 * sigma  # other parameters, other outputs
    assert rms(y1) > 20 * sigma  # and the outputs are not just noise around zero


def test_one_upload_per_forward_and_a_split_only_when_memory_is_too_small(bench) -> None:
    cfg = config()
    enc = cfg.encoding
    per_item, lead = enc.samples_per_item(N), enc.lead_samples
    sigma = diff_sigma(cfg, bench)
    x, theta = batch(24, seed=3)
    sim = bench.instruments["awg"].state[1]
    with open_setup(cfg, N, bench=bench) as setup:
        uploads0 = setup.counters.uploads
        y_whole = setup.forward(x, theta)
        assert setup.counters.uploads - uploads0 == 1 and setup.counters.history[-1] == 1
        assert len(sim.memory["PNNBATCH"]) == 2 * lead + 24 * per_item  # the whole batch in one waveform
        y_again = setup.forward(x, theta)
    # an AWG with little memory (still enough for the delay calibration's waveform)
    memory = 4416
    assert 24 * per_item + 2 * lead > memory
    small = config(**{"instruments.awg.memory_points": memory})
    with open_setup(small, N, bench=bench) as setup:
        per_upload = setup.items_per_upload()
        assert per_upload == (memory - 2 * lead) // per_item
        expected_uploads = math.ceil(24 / per_upload)
        assert expected_uploads >= 3
        y_split = setup.forward(x, theta)
        assert setup.counters.history == [expected_uploads]
        assert setup.counters.forward_calls == 1 and setup.counters.samples == 24
        last = 24 - (expected_uploads - 1) * per_upload
        assert len(sim.memory["PNNBATCH"]) == 2 * lead + last * per_item  # the last chunk was played last
    assert y_split.shape == y_whole.shape
    # split or not, the same measurement: as close to the unsplit outputs as a repeat of the unsplit batch
    assert rms(y_split - y_whole) < 1.5 * sigma, (rms(y_split - y_whole), rms(y_again - y_whole), sigma)
    assert float((y_split - y_whole).abs().max()) < 6 * sigma


def test_batch_size_does_not_change_a_sample_s_output(bench) -> None:
    """The same item measured in batches of different length (different scope records) agrees within noise."""
    cfg = config()
    sigma = diff_sigma(cfg, bench)
    x, theta = batch(12, seed=5)
    with open_setup(cfg, N, bench=bench) as setup:
        y12 = setup.forward(x, theta)
        y11 = setup.forward(x[:11], theta)
    assert rms(y12[:11] - y11) < 1.5 * sigma


def test_calibrated_delay_is_the_bench_trigger_delay(bench) -> None:
    with open_setup(config(), N, bench=bench) as setup:
        assert abs(setup.delay_s - bench.circuit.trigger_delay_s) < 0.5e-6  # calibrated on opening
        delay = setup.calibrate_delay(seed=3)
        assert delay == setup.delay_s
    assert abs(delay - bench.circuit.trigger_delay_s) < 0.5e-6


def test_device_agrees_with_the_perfect_twin(bench) -> None:
    cfg = config()
    x, theta = batch(32, seed=7)
    twin = PerfectElectronicTwin(bench.circuit, cfg.encoding, N, awg_emf_per_unit(cfg))
    with open_setup(cfg, N, bench=bench) as setup:
        y = setup.forward(x, theta)
        y_theta_batch = setup.forward(x, theta.expand(32, -1).clone())  # θ per sample: the same thing
    with torch.no_grad():
        y_twin = twin(x.double(), theta.double()).float()
    assert y_twin.var() > 0.1  # a nontrivial response to compare
    err = nmse(y, y_twin)
    assert err < 0.02, err  # measured about 0.002: noise, drift and the twin's from-rest start remain
    assert nmse(y_theta_batch, y_twin) < 0.02
    # and a twin of another circuit would not pass: the comparison is sharp enough to matter
    wrong = PerfectElectronicTwin(ElectronicCircuit(seed=99), cfg.encoding, N,
                                  awg_emf_per_unit(cfg))
    with torch.no_grad():
        assert nmse(y, wrong(x.double(), theta.double()).float()) > 2 * err


def test_out_of_range_inputs_or_parameters_are_refused_before_anything_is_sent(bench) -> None:
    cfg = config(**{"network.theta_bounds": "[-0.5, 0.5]"})
    x, _ = batch(6, seed=9)
    theta = torch.full((N,), 0.25)
    with open_setup(cfg, N, bench=bench) as setup:
        low, high = setup.param_bounds
        assert torch.equal(low, torch.full((N,), -0.5)) and torch.equal(high, torch.full((N,), 0.5))
        setup.forward(x, theta)  # a valid batch: the AWG now holds its waveform and plays
        before, counters = sim_awg_state(bench), (setup.counters.uploads, setup.counters.forward_calls)
        assert before["output"] is True and "PNNBATCH" in before["memory"]
        bad_theta = theta.clone()
        bad_theta[3] = 0.7  # inside [-1, 1] but outside this experiment's bounds
        bad_x = x.clone()
        bad_x[2, 5] = 1.2
        nan_x = x.clone()
        nan_x[0, 0] = float("nan")
        per_sample = theta.expand(6, -1).clone()
        per_sample[4, 1] = -0.8
        for xs, th in ((x, bad_theta), (bad_x, theta), (nan_x, theta), (x, per_sample), (-bad_x, theta)):
            with pytest.raises(LimitViolation) as info:
                setup.forward(xs, th)
            assert info.value.instrument == "awg"
        assert_same_state(sim_awg_state(bench), before)  # nothing uploaded, played or switched
        assert (setup.counters.uploads, setup.counters.forward_calls) == counters
        assert "[-1, 1]" in str(pytest.raises(LimitViolation, setup.forward, bad_x, theta).value)


def test_awg_output_is_off_after_the_setup_closes(bench) -> None:
    cfg = config()
    x, theta = batch(4, seed=11)
    sim = bench.instruments["awg"]
    with open_setup(cfg, N, bench=bench) as setup:
        setup.forward(x, theta)
        assert sim.output_enabled[1] is True
    assert sim.output_enabled[1] is False

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with open_setup(cfg, N, bench=bench) as setup:
            setup.forward(x, theta)
            assert sim.output_enabled[1] is True
            raise Boom("the training loop failed")
    assert sim.output_enabled[1] is False
    # after an instrument-side refusal inside the block, too
    with pytest.raises(LimitViolation):
        with open_setup(cfg, N, bench=bench) as setup:
            setup.forward(x, theta)
            setup.forward(x * 2, theta)
    assert sim.output_enabled[1] is False


def resonant_drive(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x and θ at full scale, switching sign every 5 values (near the circuit's resonance): the largest output."""
    t = torch.arange(n)
    square = torch.where((t // 5) % 2 == 0, 1.0, -1.0)
    return square.repeat(4, 1), square


@pytest.mark.parametrize("volts_per_div", [0.35, None])  # None: the shipped experiment file's range
def test_pnn_check_and_the_runtime_clipping_count_agree(bench, volts_per_div) -> None:
    overrides = {} if volts_per_div is None else {"instruments.scope.volts_per_div": volts_per_div}
    cfg = config(**overrides)
    verdict = dict((item, status) for item, _, status in settings_problems(cfg, N))["scope range"]
    with open_setup(cfg, N, bench=bench) as setup:
        setup.forward(*resonant_drive(N))
        clipped = setup.counters.clipped_records
    assert (verdict == "ok") == (clipped == 0), (verdict, clipped)
    if volts_per_div is None:  # the README's main job: nothing clips
        assert verdict == "ok" and clipped == 0


def test_a_record_clipped_at_the_top_edge_only_is_counted_and_reported_with_its_share(bench, caplog) -> None:
    with open_setup(config(**{"instruments.scope.volts_per_div": 0.35}), N, bench=bench) as setup:  # +-1.4 V
        with caplog.at_level("WARNING"):
            setup.forward(torch.ones(4, N), torch.ones(N))  # a positive drive: the output rises past +1.39 V
        assert setup.counters.clipped_records == 1
    [message] = [r.getMessage() for r in caplog.records if "screen edge" in r.getMessage()]
    clipped, total = (int(v) for v in re.search(r"(\d+) of (\d+) points", message).groups())
    share = float(re.search(r"\(([\d.e+-]+) %\)", message).group(1))
    assert 0 < clipped < total and share == pytest.approx(100 * clipped / total, rel=0.05)


def _replace_handler(monkeypatch, instrument, pattern: str, query: bool, make) -> None:
    """Give the simulated ``instrument``'s command ``pattern`` the handler ``make(original)`` for this test."""
    commands = list(instrument.commands.commands)
    i = next(i for i, c in enumerate(commands) if c.pattern == pattern and c.query == query)
    commands[i] = dataclasses.replace(commands[i], handler=make(commands[i].handler))
    monkeypatch.setattr(instrument.commands, "commands", commands)
    monkeypatch.setattr(instrument.commands, "_found", {})  # the headers looked up so far


def test_a_refused_output_switch_fails_the_batch_before_its_record_is_read(bench, monkeypatch) -> None:
    """The AWG's error queue is read once for the output switch and the trigger: an AWG that refuses OUTP ON fails
    the batch, naming both commands, and the scope's record is never read."""
    cfg = config()
    x, theta = batch(4, seed=12)
    reads = []

    def refusing_on(switch):
        def handler(instrument, call):
            if call.boolean(0):
                raise SCPIError(-221, "the test's AWG refuses to switch on")
            return switch(instrument, call)
        return handler

    def counted(data):
        return lambda instrument, call: reads.append(1) or data(instrument, call)

    with open_setup(cfg, N, bench=bench) as setup:
        setup.forward(x, theta)  # the setup works: the refusal below is the only fault
        _replace_handler(monkeypatch, bench.instruments["awg"], "OUTPut#[:STATe]", False, refusing_on)
        _replace_handler(monkeypatch, bench.instruments["scope"], ":WAVeform:DATA?", True, counted)
        with pytest.raises(InstrumentReportedError, match=r"awg.*OUTP1 ON; \*TRG.*-221"):
            setup.forward(x, theta)
    assert reads == []
