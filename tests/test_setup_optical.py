"""OpticalSetup on the simulated optical bench, opened the way the orchestrator opens it (``open_setup``): the SLM and
the camera on real pseudo-terminals through pyserial. Bounds come from the bench's own values or from repeated
measurements, never from hard-coded outputs."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from drivers.errors import InstrumentError, LimitViolation
from drivers.setups.optical import mirror_axis
from encoding.optical import (OpticalEncoding, bin_edges, centroid_column, gray_levels, output_units, output_weights,
                              pixel_values)
from common.faults import FaultPlan
from drivers.slm import PhaseSLM
from drivers.transport import open_link
from orchestrator.calibrate import reuse_calibration
from orchestrator.experiment_file import load_experiment
from orchestrator.lab import open_setup
from orchestrator.kits import setup_kit
from orchestrator.retry import retrying
from orchestrator.trainer import TrainingStopped
from simulators.benches import start_bench
from twins.fit import nmse

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
N = 12


def config(**overrides):
    return load_experiment(EXPERIMENTS / "optical_vowels.yaml",
                           overrides={"network.width": N, "instruments.camera.dark_frames": 8, **overrides})


@pytest.fixture(scope="module")
def bench():
    with start_bench("optical", seed=3) as b:
        yield b


@pytest.fixture(scope="module")
def opened(bench):
    """One calibrated setup for the read-only tests (calibration takes a second)."""
    cfg = config()
    with open_setup(cfg, N, bench=bench) as setup:
        yield cfg, setup


def batch(b: int, seed: int, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(b, n, generator=gen) - 1, 2 * torch.rand(n, generator=gen) - 1


# -- the encoding as functions ------------------------------------------------------------------------------------

def test_pixel_layout_interleaves_x_and_theta_and_leaves_the_rest_at_phase_zero() -> None:
    enc = OpticalEncoding(active_pixels=(100, 148))
    x = torch.tensor([[0.5, -0.25]])
    theta = torch.tensor([0.75, 0.0])
    v = pixel_values(x, theta, enc)[0]
    edges = bin_edges(enc, 2)
    assert list(edges) == [100, 112, 124, 136, 148]
    assert torch.all(v[:100] == -1) and torch.all(v[148:] == -1)
    assert torch.all(v[100:112] == 0.5) and torch.all(v[112:124] == 0.75)
    assert torch.all(v[124:136] == -0.25) and torch.all(v[136:148] == 0.0)
    halves = pixel_values(x, theta, enc.model_copy(update={"layout": "halves"}))[0]
    assert torch.all(halves[112:124] == -0.25) and torch.all(halves[124:136] == 0.75)


def test_gray_levels_invert_the_table_and_pass_gradients() -> None:
    lut = 2 * np.pi * np.arange(256) / 255 * 1.1
    v = torch.linspace(-1, 1, 9, dtype=torch.float64, requires_grad=True)
    g = gray_levels(v, lut, np.pi)
    phase = np.interp(g.detach().numpy(), np.arange(256), lut)
    assert np.allclose(phase, (v.detach().numpy() + 1) / 2 * np.pi, atol=1e-9)
    g.sum().backward()
    assert torch.allclose(v.grad, torch.full_like(v, 255 / (2 * 1.1) / 2, dtype=torch.float64), rtol=1e-6)


def test_output_weights_cover_the_window_once() -> None:
    enc = OpticalEncoding()
    roi = (350, 330)
    w = output_weights(enc, 10, 3.3, roi)
    per_bin = enc.output_span_nm / enc.spectrometer.nm_per_column / 10
    assert np.allclose(w.sum(axis=1), per_bin)
    assert np.all(w.sum(axis=0) <= 1 + 1e-12)  # no column counted twice
    centre = roi[0] + (w.sum(axis=0) * np.arange(roi[1])).sum() / w.sum()
    assert centre == pytest.approx(enc.spectrometer.center_column + 3.3, abs=1e-6)


def test_mirror_axis_finds_the_symmetry_of_a_curve() -> None:
    g = np.arange(0, 256, 2.0)
    spectra = np.stack([np.cos((g - 121.3) / 30) ** 2, np.exp(-((g - 121.3) / 50) ** 2)], axis=1)
    assert mirror_axis(g, spectra, 48) == pytest.approx(121.3, abs=0.25)
    assert mirror_axis(g[:40], spectra[:40], 48) is None  # 0 .. 78: too short for two half windows


# -- calibration on the bench -----------------------------------------------------------------------------------------

def test_calibration_measures_dark_frame_offset_and_the_lookup_table(opened, bench) -> None:
    cfg, setup = opened
    cal = setup.calibration
    physics = bench.physics
    first, count = cal.roi
    expected_dark = physics.dark_counts((first, count), cfg.instruments.camera.exposure_s)
    assert np.abs(setup.dark - expected_dark).max() < 8  # read noise of 2 counts, averaged over 8 frames
    # the transform-limited SH spectrum's centroid, as the noiseless bench puts it (the spectrometer's offset plus
    # the shifts of the SH centre by the laser's spectrum and the crystal's phase matching)
    with torch.no_grad():
        flat = physics.expected_counts(torch.zeros(1, 640, dtype=torch.float64), exposure_s=cal.exposure_s,
                                       electrons_per_count=cal.electrons_per_count, columns=(0, 1024))[0].numpy()
    assert cal.column_offset == pytest.approx(centroid_column(flat) - setup.enc.spectrometer.center_column, abs=0.2)
    assert abs(cal.column_offset - physics.values.spectrometer_offset_col) < 4
    assert first <= setup.enc.spectrometer.center_column + cal.column_offset <= first + count
    # the table's pi gray level is 127.5; the real one follows from the bench's true lookup table
    true_lut = physics.values.lut_true
    true_pi = float(np.interp(np.pi, true_lut, np.arange(256)))
    assert setup.lut_check["pi_gray_measured"] == pytest.approx(true_pi, abs=3.0)
    assert abs(true_pi - setup.lut_check["pi_gray_table"]) > 3  # the check sees a real difference


def test_the_pattern_dwell_follows_the_calibrated_camera_columns(opened, bench) -> None:
    """Fewer columns read out faster (1 ms + 1 us per column): the SLM shows each pattern for that shorter cycle."""
    cfg, setup = opened
    count = setup.calibration.roi[1]
    assert count < 1024
    assert setup.camera.cycle_s == pytest.approx(cfg.instruments.camera.exposure_s + 1e-3 + count * 1e-6)
    assert setup.slm.dwell_s == pytest.approx(setup.slm.settle_s + setup.camera.cycle_s
                                              + cfg.instruments.slm.dwell_margin_s, rel=1e-6)


def test_data_measured_with_other_camera_or_slm_settings_is_not_adopted(opened) -> None:
    _, setup = opened
    cal = setup.calibration
    assert setup.mismatch(cal) is None
    assert "exposure 0.002 s then, 0.001 s now" in setup.mismatch(cal.model_copy(update={"exposure_s": 2e-3}))
    assert "gain 2 then, 1 now" in setup.mismatch(cal.model_copy(update={"electrons_per_count": 2.0}))
    lut = list(cal.lut)
    lut[200] += 0.01
    assert "lookup table" in setup.mismatch(cal.model_copy(update={"lut": lut}))
    other = cal.model_copy(update={"exposure_s": 2e-3, "roi": (0, 500)})
    assert not reuse_calibration(setup, json.dumps({"calibration": other.model_dump()}), "twin_neural.pt")
    assert setup.calibration is cal  # still reading the outputs as calibrated


def test_a_calibration_from_saturated_frames_is_refused() -> None:
    cfg = config(**{"instruments.camera.exposure_s": 0.05})
    with start_bench("optical", seed=4) as own_bench:  # the module's bench keeps its calibrated camera settings
        with pytest.raises(LimitViolation, match="camera, command 'EXP'.*reference spectrum reaches the 12-bit full "
                                                 "scale 4095.*shorten instruments.camera.exposure_s"):
            with open_setup(cfg, N, bench=own_bench):
                pass
        assert own_bench.instruments["slm"].is_blank


def test_forward_is_pipelined_chunks_in_one_series_and_matches_the_perfect_twin(opened, bench) -> None:
    cfg, setup = opened
    x, theta = batch(96, seed=1)
    calls0 = setup.counters.forward_calls
    y = setup.forward(x, theta)
    assert y.shape == (96, N) and y.dtype == torch.float32
    # 16, 38, 42 patterns (38 uploads and 16 frames fit in 0.9 of 16 displays), in banks 1, 2, 1: the last chunk is
    # in bank 1, the one before in bank 2
    assert setup.chunk_sizes(96) == [16, 38, 42]
    assert setup.counters.history[-1] == 3 and setup.counters.forward_calls == calls0 + 1
    gray = setup.patterns(x.double(), theta.double())
    np.testing.assert_array_equal(bench.instruments["slm"].banks[0], gray[54:])
    np.testing.assert_array_equal(bench.instruments["slm"].banks[1], gray[16:54])
    assert bench.instruments["camera"].kinetic_count == 96  # one series for the batch
    again = setup.forward(x, theta)
    noise = nmse(again, y)
    perfect = setup_kit("optical").perfect_twin(cfg, bench, setup)
    with torch.no_grad():
        expected = perfect(x, theta)
    # the noiseless bench predicts the measured outputs up to the measurement noise
    assert nmse(expected, y) < 2 * noise + 0.01
    assert float(y.std()) > 0.2  # the outputs do depend on the inputs


def test_outputs_depend_on_inputs_and_parameters(opened) -> None:
    _, setup = opened
    x, theta = batch(64, seed=2)
    y0 = setup.forward(x, theta)
    y_theta = setup.forward(x, -theta)
    y_x = setup.forward(-x, theta)
    noise = nmse(setup.forward(x, theta), y0)
    assert nmse(y_theta, y0) > 10 * noise and nmse(y_x, y0) > 10 * noise


def test_each_chunk_is_what_the_line_uploads_while_the_previous_one_plays(opened) -> None:
    """While a chunk plays, the next chunk's upload (640 bytes a pattern, 10 bits a byte) and the chunk's frames (two
    bytes a column of the ROI) take at most 0.9 of its display (``dwell_s`` a pattern), and one pattern more would
    not fit; on a line too slow for the display, the chunks keep the first one's size."""
    cfg, setup = opened
    upload_s = 640 * 10 / cfg.instruments.slm.baud_rate
    frame_s = 2 * setup.calibration.roi[1] * 10 / cfg.instruments.camera.baud_rate
    room = 0.9 * (setup.dwell_s() - frame_s)  # a pattern's share of the display the next chunk's upload may take
    assert setup.chunk_growth() == pytest.approx(room / upload_s)
    sizes = setup.chunk_sizes(5000)
    assert sum(sizes) == 5000 and sizes[0] == cfg.instruments.slm.pipeline_chunk
    for previous, size in zip(sizes[:-2], sizes[1:-1]):  # the last chunk takes what is left
        assert previous * room - upload_s < size * upload_s <= previous * room
    slow = cfg.instruments.slm.model_copy(update={"baud_rate": 500_000})  # 12.8 ms a pattern: 1.6 displays
    setup.cfg.slm, fast = slow, setup.cfg.slm
    try:
        assert setup.chunk_growth() < 1 and setup.chunk_sizes(50) == [16, 16, 16, 2]
    finally:
        setup.cfg.slm = fast


@pytest.mark.parametrize("pipeline, uploads", [(False, [40, 40, 20]), (True, [16, 38, 40, 6])])
def test_batches_beyond_the_sequence_memory_are_split(bench, pipeline: bool, uploads: list[int]) -> None:
    cfg = config(**{"instruments.slm.max_sequence": 40, "instruments.slm.pipeline": pipeline})
    with open_setup(cfg, N, bench=bench, calibrate=True) as setup:
        x, theta = batch(100, seed=3)
        y = setup.forward(x, theta)
        assert y.shape == (100, N)
        assert setup.counters.history[-1] == len(uploads)
        if pipeline:
            assert setup.chunk_sizes(100) == uploads


# -- safety -------------------------------------------------------------------------------------------------------

def test_inputs_outside_their_range_never_reach_the_slm(opened, bench) -> None:
    _, setup = opened
    before = [bank.copy() for bank in bench.instruments["slm"].banks]
    x, theta = batch(8, seed=4)
    with pytest.raises(LimitViolation, match="slm"):
        setup.forward(x * 1.5, theta)
    with pytest.raises(LimitViolation, match="param_bounds"):
        setup.forward(x, theta * 1.5)
    after = bench.instruments["slm"].banks
    assert all(np.array_equal(b, a) for b, a in zip(before, after))


def test_a_phase_range_beyond_the_gray_limit_is_refused_and_the_slm_left_blank(bench) -> None:
    cfg = config(**{"instruments.slm.gray_max": 100})  # pi needs gray 128 by the SLM's table
    with open_link(bench.resources["slm"], name="slm", baud_rate=3_000_000, timeout_s=2.0) as link:
        PhaseSLM(link).show(np.full(640, 50, np.uint8))
    assert not bench.instruments["slm"].is_blank
    with pytest.raises(LimitViolation, match="gray_max"):
        with open_setup(cfg, N, bench=bench):
            pass
    assert bench.instruments["slm"].is_blank


@pytest.mark.parametrize("leaving", [RuntimeError("operator pressed stop"), KeyboardInterrupt(),
                                     TrainingStopped(1, 3, 10, signal.SIGTERM)],
                         ids=["error", "second Ctrl-C", "first Ctrl-C or SIGTERM"])
def test_leaving_the_setup_on_an_error_or_a_signal_blanks_the_slm(bench, leaving: BaseException) -> None:
    cfg = config()
    with pytest.raises(type(leaving)):
        with open_setup(cfg, N, bench=bench) as setup:
            setup.slm.show(np.full(640, 200, np.uint8))
            assert not bench.instruments["slm"].is_blank
            raise leaving
    assert bench.instruments["slm"].is_blank
    assert bench.instruments["camera"].status == "IDLE"


@pytest.mark.parametrize("pipelined", [False, True])
def test_missed_camera_triggers_are_reported_not_padded(opened, pipelined: bool) -> None:
    _, setup = opened
    x, theta = batch(40, seed=6)
    setup.slm.dwell_s = max(1e-3, 0.6 * setup.camera.cycle_s)  # shorter than the camera's cycle: it misses triggers
    measure = setup.measure_pipelined if pipelined else setup.measure
    try:
        with pytest.raises(InstrumentError, match="camera, command 'DATA:NEXT\\?'" if pipelined else "camera"):
            measure(setup.patterns(x, theta))
    finally:
        setup.recover()
    assert setup.forward(x, theta).shape == (40, N)  # recovered: the series works again


def test_the_bench_over_socket_urls_works_too() -> None:
    cfg = config()
    with start_bench("optical", seed=5, serial="socket") as b:
        assert all(r.startswith("socket://127.0.0.1:") for r in b.resources.values())
        with open_setup(cfg, N, bench=b) as setup:
            x, theta = batch(8, seed=7)
            assert torch.isfinite(setup.forward(x, theta)).all()


# -- pipelining: the next chunk uploaded while one plays, frames read while the next ones are taken ----------------

class FrameLog:
    """Stands in for the bench physics' ``frames``: records each call's patterns and the frames it gave, and calls
    ``on_call(number of calls so far)`` after each."""

    def __init__(self, physics, on_call=None):
        self.frames, self.on_call = physics.frames, on_call
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, patterns: np.ndarray, **kwargs) -> np.ndarray:
        frames = self.frames(patterns, **kwargs)
        self.calls.append((np.array(patterns), frames.copy()))
        if self.on_call is not None:
            self.on_call(len(self.calls))
        return frames


def outputs_from(setup, frames: np.ndarray) -> torch.Tensor:
    """What the setup makes of camera frames [K, ROI columns]: the outputs [K, n_outputs]."""
    spectra = torch.as_tensor(frames.astype(np.float64) - setup.dark)
    return output_units(spectra @ setup.output_weights.T, setup.enc, setup.calibration.reference_mean).float()


def test_pipelined_outputs_equal_the_sequential_ones_for_the_same_chunks() -> None:
    """The same chunks (16, 16, 8), once uploaded, played and read strictly in turn on a bench without realtime, once
    pipelined on a realtime bench (uploads into the other bank while a chunk plays, frames read as they come): two
    benches of one seed give the same numbers, bit for bit."""
    x, theta = batch(40, seed=9)
    outputs, bench_time = {}, {}
    for pipeline in (False, True):
        cfg = config(**{"instruments.slm.max_sequence": 16, "instruments.slm.pipeline": pipeline})
        with start_bench("optical", seed=8, realtime=pipeline) as b, open_setup(cfg, N, bench=b) as setup:
            log = FrameLog(b.physics)
            b.physics.frames = log
            outputs[pipeline] = setup.forward(x, theta)
            assert [len(p) for p, _ in log.calls] == [16, 16, 8]
            assert len(b.instruments["slm"].banks[1]) == (16 if pipeline else 0)  # bank 2 only when pipelined
            bench_time[pipeline] = b.physics.bench_time_s
    assert torch.equal(outputs[True], outputs[False])
    assert bench_time[True] == bench_time[False]


def test_pipelined_outputs_are_the_physics_frames_of_this_batch(opened, bench, monkeypatch) -> None:
    """Every frame read while the series went on is the bench's frame for that pattern, in order, none twice."""
    _, setup = opened
    log = FrameLog(bench.physics)
    monkeypatch.setattr(bench.physics, "frames", log)
    x, theta = batch(100, seed=10)
    y = setup.forward(x, theta)
    assert [len(p) for p, _ in log.calls] == setup.chunk_sizes(100) == [16, 38, 46]
    np.testing.assert_array_equal(np.concatenate([p for p, _ in log.calls]), setup.patterns(x.double(),
                                                                                             theta.double()))
    assert torch.equal(y, outputs_from(setup, np.concatenate([f for _, f in log.calls])))


def test_a_fault_in_the_middle_of_a_pipelined_batch_is_retried_whole(monkeypatch, caplog) -> None:
    """The camera's block is cut short while the third of four chunks plays: the attempt fails naming the camera and
    DATA:NEXT?, PAT's retry recovers and measures the whole batch again, and the outputs are that second
    measurement's frames only (none of the first attempt's), as close to an unfaulted batch as the noise allows."""
    cfg = config(**{"instruments.slm.timeout_s": 1.0, "instruments.camera.timeout_s": 1.0})
    x, theta = batch(240, seed=11)
    with start_bench("optical", seed=6) as b, open_setup(cfg, N, bench=b) as setup:
        clean = setup.forward(x, theta)
        again = setup.forward(x, theta)
        injector = b.servers["camera"].injector

        def third_chunk_started(calls: int) -> None:
            if calls == 3:
                injector.set_plan(FaultPlan(short_block=1.0, max_faults=1))

        log = FrameLog(b.physics, third_chunk_started)
        monkeypatch.setattr(b.physics, "frames", log)
        recovered_after: list[int] = []

        def recover() -> None:
            recovered_after.append(len(log.calls))
            setup.recover()

        with caplog.at_level(logging.WARNING, logger="orchestrator.retry"):
            y = retrying(setup.forward, max_retries=2, recover=recover)(x, theta)
        assert injector.counts["short_block"] == 1 and recovered_after == [3]
        assert "physical forward failed (camera, command 'DATA:NEXT?'" in caplog.text
        sizes = setup.chunk_sizes(240)
        assert sizes == [16, 38, 91, 95]
        first, second = log.calls[:3], log.calls[3:]
        assert [len(p) for p, _ in first] == sizes[:3] and [len(p) for p, _ in second] == sizes
        np.testing.assert_array_equal(np.concatenate([p for p, _ in second]),
                                      setup.patterns(x.double(), theta.double()))
        assert torch.equal(y, outputs_from(setup, np.concatenate([f for _, f in second])))
        assert nmse(y, clean) < 2 * nmse(again, clean) + 0.01


def test_an_slm_without_sequence_banks_is_told_to_go_without_pipelining(bench, monkeypatch) -> None:
    """An SLM that does not know SEQ:BANK<n> refuses the first upload (-113): the error says how to go without."""
    from simulators.instruments import SimPhaseSLM
    from simulators.scpi.commands import CommandTree

    tree = CommandTree()
    for command in SimPhaseSLM.commands.commands:
        if "BANK" not in command.pattern:
            tree.add(command.pattern, command.handler, command.nargs)
    monkeypatch.setattr(SimPhaseSLM, "commands", tree)
    x, theta = batch(8, seed=12)
    with open_setup(config(), N, bench=bench) as setup:
        with pytest.raises(InstrumentError, match=r"slm, command 'SEQ:BANK1 #<.* byte block> \(set "
                                                  r"instruments.slm.pipeline: false .*\): .*-113"):
            setup.forward(x, theta)
    with open_setup(config(**{"instruments.slm.pipeline": False}), N, bench=bench) as setup:
        assert setup.forward(x, theta).shape == (8, N)


def test_a_camera_without_data_next_is_told_to_go_without_pipelining(bench, monkeypatch) -> None:
    """A camera that does not know DATA:NEXT? does not answer it (an unknown query has no reply): the timeout says
    how to go without pipelining, and the sequential path works on the same camera."""
    from simulators.instruments import SimSpectroscopyCamera
    from simulators.scpi.commands import CommandTree

    tree = CommandTree()
    for command in SimSpectroscopyCamera.commands.commands:
        if command.pattern != "DATA:NEXT?":
            tree.add(command.pattern, command.handler, command.nargs)
    monkeypatch.setattr(SimSpectroscopyCamera, "commands", tree)
    x, theta = batch(8, seed=12)
    with open_setup(config(**{"instruments.camera.timeout_s": 1}), N, bench=bench) as setup:
        with pytest.raises(InstrumentError, match=r"camera, command 'DATA:NEXT\?'.*if the camera does not know "
                                                  r"DATA:NEXT\?, set instruments.slm.pipeline: false"):
            setup.forward(x, theta)
    with open_setup(config(**{"instruments.slm.pipeline": False}), N, bench=bench) as setup:
        assert setup.forward(x, theta).shape == (8, N)
