"""The AWG and scope drivers end to end against the simulated electronic bench, over real pyvisa-py TCP links.

What the driver sets, what the simulated front panel holds and what a query answers must agree; uploads must arrive
as the DAC codes the driver computed; a triggered burst recorded by a single-shot acquisition must show the AWG's
terminal voltage on CHAN2; refused values must leave the instrument untouched; instrument errors must surface.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from drivers.awg import DAC_FULL_SCALE, Keysight33500B
from drivers.errors import InstrumentReportedError, InstrumentWasReset, LimitViolation
from drivers.scope import KeysightInfiniiVision
from drivers.transport import open_link
from simulators.benches import start_bench


@pytest.fixture
def rig():
    """(bench, link factory): a running electronic bench; every link opened through the factory is closed after."""
    links = []
    with start_bench("electronic", seed=5) as bench:

        def link(role: str):
            links.append(open_link(bench.resources[role], name=role, timeout_s=5.0))
            return links[-1]

        yield bench, link
        for lk in links:
            lk.close()


def make_awg(rig, **kwargs) -> tuple[Keysight33500B, object]:
    """A driver on the bench's AWG and the simulated AWG's channel-1 state."""
    bench, link = rig
    kwargs.setdefault("max_abs_volts", 2.0)
    awg = Keysight33500B(link("awg"), **kwargs)
    return awg, bench.instruments["awg"]


def idn_fields(sim) -> list[str]:
    return [f.strip() for f in sim.idn.split(",")]


def test_identities_are_the_simulated_instruments(rig) -> None:
    bench, link = rig
    awg, sim_awg = make_awg(rig)
    scope = KeysightInfiniiVision(link("scope"))
    for dev, sim in ((awg, sim_awg), (scope, bench.instruments["scope"])):
        ident = dev.identity
        assert [ident.manufacturer, ident.model, ident.serial, ident.firmware] == idn_fields(sim)
    assert awg.identity.model == "33522B" and scope.identity.model == "DSOX1102G"


@pytest.mark.parametrize("load", [50.0, "INF", 1000.0])
def test_load_levels_and_sample_rate_round_trip(rig, load) -> None:
    awg, sim = make_awg(rig, load_ohm=load, max_abs_volts=2.0)
    st = sim.state[1]
    assert st.load_ohm == (math.inf if load == "INF" else load)
    assert awg.load == load
    awg.set_levels(amplitude_vpp=1.2, offset_v=-0.3)
    awg.sample_rate = 2.5e6
    assert (st.amplitude_vpp, st.offset_v, st.sample_rate_hz) == (1.2, -0.3, 2.5e6)
    assert (awg.amplitude, awg.offset, awg.sample_rate) == (1.2, -0.3, 2.5e6)
    assert float(awg.link.query("SOUR1:VOLT?")) == 1.2
    assert float(awg.link.query("SOUR1:VOLT:OFFS?")) == -0.3
    assert float(awg.link.query("SOUR1:FUNC:ARB:SRAT?")) == 2.5e6
    # the separate setters too, and nothing else on the channel moved
    awg.amplitude = 0.5
    awg.offset = 0.25
    assert (st.amplitude_vpp, st.offset_v) == (0.5, 0.25) == (awg.amplitude, awg.offset)
    assert awg.settings["amplitude"] == 0.5 and awg.settings["offset"] == 0.25
    assert sim.state[2].amplitude_vpp == 0.1  # channel 2 untouched (its power-on default)


def test_changing_the_load_rescales_levels_like_the_instrument(rig) -> None:
    awg, sim = make_awg(rig, load_ohm=50.0, max_abs_volts=3.0)
    awg.set_levels(1.0, 0.2)
    awg.load = "INF"  # same EMF, so the voltage at a high-Z load doubles
    st = sim.state[1]
    assert st.load_ohm == math.inf and (st.amplitude_vpp, st.offset_v) == pytest.approx((2.0, 0.4))
    assert awg.settings["amplitude"] == pytest.approx(2.0) and awg.settings["offset"] == pytest.approx(0.4)
    assert awg.load == "INF"
    awg.load = 50.0
    assert (st.amplitude_vpp, st.offset_v) == pytest.approx((1.0, 0.2))


@pytest.mark.parametrize("how", ["binary", "ascii"])
def test_arb_upload_arrives_as_the_dac_codes(rig, how: str) -> None:
    awg, sim = make_awg(rig)
    rng = np.random.default_rng(11)
    samples = np.concatenate([[-1.0, 1.0, 0.0, 0.5 / DAC_FULL_SCALE], rng.uniform(-1, 1, 996)])
    upload = awg.upload_arb if how == "binary" else awg.upload_arb_ascii
    for name in ("PNN_A", "PNN_A"):  # the same name twice: the driver clears volatile memory before each upload
        upload(name, samples)
    st = sim.state[1]
    expected = np.round(samples * DAC_FULL_SCALE).astype(np.int16)
    assert list(st.memory) == ["PNN_A"]
    np.testing.assert_array_equal(st.memory["PNN_A"], expected)
    assert st.memory["PNN_A"][0] == -32767 and st.memory["PNN_A"][1] == 32767
    assert (st.function, st.arb) == ("ARB", "PNN_A")
    if how == "binary":
        assert sim.byte_order == "SWAP"  # little-endian int16 block, as announced with FORM:BORD SWAP
    # what the simulated AWG would play is the upload, to DAC resolution
    played, fs = sim.waveform(1)
    np.testing.assert_allclose(played, samples, atol=0.5 / DAC_FULL_SCALE + 1e-12)
    assert awg.errors() == []


def test_output_on_and_off_are_the_instrument_state(rig) -> None:
    awg, sim = make_awg(rig, max_abs_volts=1.0)
    awg.set_levels(0.5, 0.0)
    assert sim.output_enabled == {1: False, 2: False} and awg.output is False
    awg.output = True
    assert sim.output_enabled == {1: True, 2: False} and awg.output is True
    awg.output = False
    assert sim.output_enabled[1] is False and awg.output is False
    awg.output = True
    with awg:  # leaving the context switches the output off
        pass
    assert sim.output_enabled[1] is False


def test_burst_on_bus_trigger_is_recorded_on_chan2_in_word_and_byte(rig) -> None:
    bench, link = rig
    awg, sim = make_awg(rig, load_ohm="INF", max_abs_volts=1.0)  # high-Z: the programmed volts are the EMF
    scope = KeysightInfiniiVision(link("scope"))
    fs, n = 1e6, 1000
    k = np.arange(n)
    # smooth and slow next to the circuit (50 kHz resonance) so the circuit barely loads the AWG terminal
    w = 0.7 * np.sin(2 * np.pi * 2 * k / n) * np.sin(np.pi * k / n) + 0.25 * np.sin(2 * np.pi * 5 * k / n)
    amp = 0.8  # Vpp: +-0.4 V, below the diodes' forward voltage
    awg.output = False
    awg.upload_arb("PROBE", w)
    awg.sample_rate = fs
    awg.set_levels(amp, 0.0)
    awg.configure_burst(n_cycles=1, trigger_source="BUS")
    scale = 0.125  # V/div: the screen spans +-0.5 V
    scope.set_channel(2, scale_v_per_div=scale, offset_v=0.0, coupling="DC", display=True)
    scope.set_channel(1, scale_v_per_div=0.25, offset_v=0.0, coupling="DC", display=True)
    duration = n / fs
    scope.set_timebase(range_s=1.25 * duration, position_s=0.0, reference="LEFT")
    scope.set_edge_trigger(source="EXT", level_v=1.0)
    scope.set_acquisition("NORM")
    awg.output = True
    scope.arm_single(timeout_s=5)
    assert not scope.triggered()
    awg.trigger()
    scope.wait_complete(timeout_s=5)
    assert scope.triggered()

    word = scope.read_waveform(2, points=2500, fmt="WORD")
    byte = scope.read_waveform(2, points=2500, fmt="BYTE")
    assert (word.preamble.format, byte.preamble.format) == ("WORD", "BYTE")
    assert word.volts.size == byte.volts.size == word.preamble.points == 2500
    np.testing.assert_array_equal(word.t, byte.t)
    np.testing.assert_allclose(word.volts, byte.volts, atol=1e-6)  # the same 8-bit record, two encodings
    t = word.t
    assert t[0] == pytest.approx(-0.1 * 1.25 * duration)  # LEFT reference: one division before the trigger
    assert t[1] - t[0] == pytest.approx(1.25 * duration / 2500)

    # expected: the DAC values times Vpp/2, reaching the scope trigger_delay_s after the trigger
    delay = bench.circuit.trigger_delay_s
    codes = np.round(w * DAC_FULL_SCALE) / DAC_FULL_SCALE
    expected = np.interp(t - delay, k / fs, codes * amp / 2, left=codes[0] * amp / 2, right=codes[0] * amp / 2)
    lsb = 8 * scale / 256
    noise = bench.circuit.noise_v[2]
    err = word.volts - expected
    assert np.max(np.abs(err)) <= lsb / 2 + 5 * noise + 1e-3  # quantization + input noise + a little loading
    assert abs(np.mean(err)) < lsb / 4
    # the recording is not trivially near zero: it follows the waveform over its full swing
    assert np.ptp(word.volts) > 0.9 * np.ptp(codes * amp / 2)
    # without accounting for the documented delay the match is clearly worse: the time axis is real
    shifted = np.interp(t, k / fs, codes * amp / 2, left=0.0, right=0.0)
    assert np.max(np.abs(word.volts - shifted)) > np.max(np.abs(err))
    # CHAN1 (the circuit output; far below resonance it follows the drive) was recorded in the same acquisition
    chan1 = scope.read_waveform(1, points=2500, fmt="WORD")
    np.testing.assert_array_equal(chan1.t, t)
    assert np.ptp(chan1.volts) > 0.5 * np.ptp(expected)
    assert scope.errors() == [] and awg.errors() == []


def test_values_beyond_the_safety_limit_are_refused_before_sending(rig) -> None:
    awg, sim = make_awg(rig, load_ohm=50.0, max_abs_volts=1.0)
    awg.set_levels(1.0, 0.1)
    st = sim.state[1]
    before = (st.amplitude_vpp, st.offset_v)
    with pytest.raises(LimitViolation, match="max_abs_volts") as info:
        awg.amplitude = 2.0  # peak 0.1 + 1.0 = 1.1 V
    assert info.value.instrument == "awg" and "SOUR1:VOLT" in info.value.command
    with pytest.raises(LimitViolation):
        awg.offset = 0.6  # 0.6 + 0.5
    with pytest.raises(LimitViolation):
        awg.set_levels(0.2, -0.95)
    with pytest.raises(LimitViolation):
        awg.set_levels(4.0, 0.0)
    assert (st.amplitude_vpp, st.offset_v) == before == (awg.amplitude, awg.offset)
    # an out-of-range waveform is refused too, leaving the memory as it was
    awg.upload_arb("KEEP", np.linspace(-1, 1, 64))
    kept = st.memory["KEEP"].copy()
    with pytest.raises(LimitViolation, match=r"outside \[-1, 1\]"):
        awg.upload_arb("OTHER", np.linspace(-1.5, 1, 64))
    assert list(st.memory) == ["KEEP"]
    np.testing.assert_array_equal(st.memory["KEEP"], kept)
    assert awg.errors() == []  # nothing reached the instrument to complain about


def test_instrument_errors_are_read_and_raised_naming_instrument_and_command(rig) -> None:
    bench, link = rig
    awg, sim = make_awg(rig)
    awg.link.write("SOUR1:BOGUS 1")  # raw: no error check by the driver
    assert awg.errors() == [(-113, "Undefined header")]
    assert awg.errors() == []  # the queue was drained
    with pytest.raises(InstrumentReportedError) as info:
        awg.write("SOUR1:VOLT:BOGUS 2")
    err = info.value
    assert err.instrument == "awg" and err.command == "SOUR1:VOLT:BOGUS 2"
    assert err.errors == [(-113, "Undefined header")]
    assert str(err).startswith("awg, command 'SOUR1:VOLT:BOGUS 2': ") and '-113,"Undefined header"' in str(err)
    # the scope: a time range the driver accepts but this model does not (500 s at most)
    scope = KeysightInfiniiVision(link("scope"))
    before = bench.instruments["scope"].time_range_s
    with pytest.raises(InstrumentReportedError) as info:
        scope.set_timebase(range_s=5000.0)
    assert info.value.instrument == "scope" and ":TIM:RANG 5000.0" in info.value.command
    assert info.value.errors[0][0] == -222
    assert bench.instruments["scope"].time_range_s == before
    assert scope.errors() == []


def test_status_check_on_the_simulators_reports_errors_and_resets(rig) -> None:
    """``check_status``' one compound query, ``*ESR?;:SYST:ERR?``, as the simulated instruments answer it over
    pyvisa-py: quiet after a clean batch; an error left in the queue is raised with the rest of the queue; a reset
    the instrument did on its own is raised once and the driver forgets its settings."""
    bench, link = rig
    awg, _ = make_awg(rig)
    scope = KeysightInfiniiVision(link("scope"))
    for inst in (awg, scope):
        inst.check_status()
    awg.link.write("SOUR1:BOGUS 1")  # raw: no error check by the driver
    awg.link.write("SOUR1:VOLT:BOGUS 2")
    with pytest.raises(InstrumentReportedError) as info:
        awg.check_status()
    assert info.value.instrument == "awg" and info.value.errors == [(-113, "Undefined header")] * 2
    awg.check_status()  # the queue was drained
    awg.sample_rate = 2e5
    assert awg.settings["sample_rate"] == 2e5
    sim = bench.instruments["awg"]
    with sim.lock:  # a brown-out, as the simulator's fault injection makes one: the power-on state, unasked
        sim.reset()
        sim.powered_on = True
    with pytest.raises(InstrumentWasReset, match="awg"):
        awg.check_status()
    assert awg.settings == {}
    awg.check_status()  # the power-on bit is read once
    scope.check_status()  # the other instrument saw nothing
