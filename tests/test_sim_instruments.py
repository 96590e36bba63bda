"""Simulated AWG and scope: front-panel behaviour, and a bench driven over real pyvisa-py and raw sockets."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import pyvisa

from simulators.benches import start_bench
from simulators.instruments import SimInfiniiVision, SimKeysight33522B
from simulators.scpi import Session


class StubCircuit:
    """Stand-in physics: CHAN1 sees a quarter of the EMF, CHAN2 (the AWG terminal into 50 ohm) half of it."""

    busy_s = 0.0

    def respond(self, emf_v: np.ndarray, sample_rate_hz: float, channels: tuple[int, ...] = (1, 2)
                ) -> dict[int, np.ndarray]:
        emf = np.asarray(emf_v, dtype=np.float64)
        return {ch: trace for ch, trace in {1: 0.25 * emf, 2: 0.5 * emf}.items() if ch in channels}

    def steps_per_sample(self, sample_rate_hz: float) -> int:
        return 1


class Recorder:
    """Records what the AWG plays."""

    def __init__(self) -> None:
        self.played: list[tuple[int, np.ndarray, float, bool]] = []
        self.stopped: list[int] = []

    def on_awg_play(self, channel: int, emf_v: np.ndarray, sample_rate_hz: float, continuous: bool) -> None:
        self.played.append((channel, emf_v, sample_rate_hz, continuous))

    def on_awg_stop(self, channel: int) -> None:
        self.stopped.append(channel)


def run(session: Session, text: str | bytes) -> list[bytes]:
    data = text.encode() if isinstance(text, str) else text
    return [r.data for r in session.feed(data)]


def query(session: Session, text: str) -> str:
    replies = run(session, text + "\n")
    assert len(replies) == 1, f"no reply to {text!r}: {run(session, 'SYST:ERR?' + chr(10))}"
    return replies[0].decode().rstrip("\n")


def error(session: Session) -> str:
    return query(session, "SYST:ERR?")


# -- AWG front panel ---------------------------------------------------------------------------------------------------

@pytest.fixture
def awg() -> tuple[SimKeysight33522B, Session, Recorder]:
    rec = Recorder()
    inst = SimKeysight33522B(listener=rec)
    return inst, inst.session(), rec


def test_awg_identity_and_query_formats(awg) -> None:
    inst, s, _ = awg
    assert query(s, "*IDN?") == "Agilent Technologies,33522B,MY52000001,3.05-1.19-2.00-52-00"
    assert query(s, "VOLT?") == "+1.000000000000000E-01"
    assert query(s, "SOUR2:VOLT:OFFS?") == "+0.000000000000000E+00"
    assert query(s, "OUTP?;OUTP2?") == "0;0"
    assert query(s, "OUTP:LOAD?") == "+5.000000000000000E+01"
    assert query(s, "FUNC?") == "SIN"
    assert query(s, "FUNC:ARB?") == '"INT:\\BUILTIN\\EXP_RISE.ARB"'
    assert query(s, "FORM:BORD?;:TRIG:SOUR?;:BURS:STAT?") == "NORM;IMM;0"
    assert query(s, "DATA:VOL:CAT?;FREE?") == '"";+1000000'
    assert error(s) == '+0,"No error"'


def test_awg_levels_limits_and_load(awg) -> None:
    inst, s, _ = awg
    run(s, "VOLT 2;VOLT:OFFS 0.5\n")
    assert (inst.state[1].amplitude_vpp, inst.state[1].offset_v) == (2.0, 0.5)
    for bad, code in (("VOLT 12", -222), ("VOLT 0.0001", -222), ("VOLT:OFFS 5.5", -222), ("VOLT:OFFS 4.5", -221),
                      ("SOUR3:VOLT 1", -114), ("FUNC:ARB:SRAT 300e6", -222), ("OUTP:LOAD 0", -222)):
        run(s, bad + "\n")
        assert error(s).startswith(f"{code},"), bad
    assert (inst.state[1].amplitude_vpp, inst.state[1].offset_v) == (2.0, 0.5)  # unchanged
    run(s, "OUTP:LOAD INF\n")  # the EMF stays, the displayed levels double
    assert query(s, "VOLT?;VOLT:OFFS?;:OUTP:LOAD?") == \
        "+4.000000000000000E+00;+1.000000000000000E+00;+9.900000000000000E+37"
    run(s, "VOLT 12\n")  # 12 Vpp is fine into high-Z
    assert error(s) == '+0,"No error"'
    run(s, "VOLT:HIGH 3;LOW -1\n")
    assert (inst.state[1].amplitude_vpp, inst.state[1].offset_v) == (4.0, 1.0)
    run(s, "VOLT:OFFS 0;:VOLT MAX;:OUTP:LOAD 50\n")
    assert inst.state[1].amplitude_vpp == pytest.approx(inst.state[1].max_vpp)


def test_awg_arb_upload_ascii_dac_and_blocks_in_both_byte_orders(awg) -> None:
    inst, s, _ = awg
    w = np.linspace(-1, 1, 16)
    run(s, "DATA:ARB A1," + ",".join(f"{v:.6f}" for v in w) + "\n")
    run(s, "SOUR2:DATA:ARB:DAC D1," + ",".join(str(n) for n in range(-8, 8)) + "\n")
    run(s, b"DATA:ARB B1,#264" + w.astype(">f4").tobytes() + b"\n")
    run(s, b"FORM:BORD SWAP;:DATA:ARB:DAC B2,#232" + np.arange(16, dtype="<i2").tobytes() + b"\n")
    assert error(s) == '+0,"No error"'
    assert list(inst.state[1].memory) == ["A1", "B1", "B2"]
    assert np.array_equal(inst.state[1].memory["A1"], np.round(w * 32767).astype(np.int16))
    assert np.array_equal(inst.state[1].memory["A1"], inst.state[1].memory["B1"])
    assert np.array_equal(inst.state[1].memory["B2"], np.arange(16))
    assert np.array_equal(inst.state[2].memory["D1"], np.arange(-8, 8))
    assert query(s, "DATA:VOL:CAT?") == '"A1","B1","B2"'
    assert query(s, "DATA:VOL:FREE?") == "+999952"
    for bad, code in (("DATA:ARB A1,0,0,0,0,0,0,0,0", -221), ("DATA:ARB C,0,0,0", -222),
                      ("DATA:ARB C,0,0,0,0,0,0,0,1.5", -222), ("DATA:ARB:DAC C,0,0,0,0,0,0,0,40000", -222),
                      ("DATA:ARB C,0,0,0,0,0,0,0,x", -104), ("DATA:ARB 9X,0,0,0,0,0,0,0,0", -224),
                      ("FUNC:ARB NOPE", -224)):
        run(s, bad + "\n")
        assert error(s).startswith(f"{code},"), bad
    run(s, b"DATA:ARB C,#17" + b"\x00" * 7 + b"\n")  # not a whole number of float32
    assert error(s).startswith("-161,")
    run(s, "FUNC:ARB B2;:FUNC ARB;:DATA:VOL:CLE\n")
    assert query(s, "DATA:VOL:CAT?;:FUNC:ARB?") == '"";"INT:\\BUILTIN\\EXP_RISE.ARB"'


def test_awg_memory_limit(awg) -> None:
    inst, s, _ = awg
    run(s, b"DATA:ARB:DAC BIG,#7" + b"%07d" % 1_600_000 + bytes(1_600_000) + b"\n")
    assert error(s) == '+0,"No error"'
    run(s, b"DATA:ARB:DAC MORE,#6" + b"%06d" % 400_002 + bytes(400_002) + b"\n")
    assert error(s) == '-225,"Out of memory"'
    run(s, b"DATA:ARB:DAC TOOBIG,#7" + b"%07d" % 4_000_068 + bytes(100) + b"\n")
    assert error(s) == '-223,"Too much data"'
    assert list(inst.state[1].memory) == ["BIG"]


def test_awg_burst_trigger_plays_quantized_emf(awg) -> None:
    inst, s, rec = awg
    w = np.array([0.0, 0.5, 1.0, -1.0, 0.25, 1 / 3, 0.0, 0.0])
    run(s, "DATA:ARB W," + ",".join(map(str, w)) + "\n")
    run(s, "FUNC ARB;:FUNC:ARB W;:FUNC:ARB:SRAT 1e6;:VOLT 2;:VOLT:OFFS 0.1\n")
    run(s, "BURS:MODE TRIG;NCYC 2;:TRIG:SOUR BUS;:BURS:STAT ON;:OUTP ON\n")
    assert error(s) == '+0,"No error"'
    assert inst.output_enabled[1] and not rec.played  # armed, waiting for a trigger
    run(s, "*TRG\n")
    channel, emf, fs, continuous = rec.played[-1]
    quantized = np.round(w * 32767) / 32767
    assert (channel, fs, continuous) == (1, 1e6, False)
    np.testing.assert_allclose(emf, 2 * np.tile(quantized * 1.0 + 0.1, 2))  # 50 ohm load: EMF = 2 v
    run(s, "OUTP:LOAD INF;:TRIG1\n")
    np.testing.assert_allclose(rec.played[-1][1], 2 * np.tile(quantized * 1.0 + 0.1, 2))  # same EMF
    run(s, "OUTP OFF\n")
    assert not inst.output_enabled[1] and rec.stopped[-1] == 1
    run(s, "*TRG\n")
    assert len(rec.played) == 2  # output off: nothing reaches the circuit
    run(s, "TRIG:SOUR IMM\n")
    run(s, "*TRG\n")
    assert error(s) == '-211,"Trigger ignored"'


def test_awg_continuous_play_and_reset(awg) -> None:
    inst, s, rec = awg
    run(s, "FUNC SIN;:FREQ 1 kHz;:VOLT 1;:OUTP ON\n")
    channel, emf, fs, continuous = rec.played[-1]
    assert continuous and fs == pytest.approx(1e6) and emf.max() == pytest.approx(1.0, abs=1e-4)
    run(s, "*RST\n")
    assert inst.output_enabled == {1: False, 2: False}
    assert rec.stopped[-1] == 1


# -- scope front panel -------------------------------------------------------------------------------------------------

@pytest.fixture
def scope() -> tuple[SimInfiniiVision, Session]:
    inst = SimInfiniiVision()
    return inst, inst.session()


def _read_volts(s: Session, fmt: str = "WORD") -> tuple[np.ndarray, list[float]]:
    run(s, f":WAV:FORM {fmt};:WAV:BYT LSBF;:WAV:UNS 1\n")
    pre = [float(v) for v in query(s, ":WAV:PRE?").split(",")]
    raw = run(s, ":WAV:DATA?\n")[0]
    assert raw[:2] == b"#8" and raw.endswith(b"\n")
    payload = raw[10:-1]
    assert int(raw[2:10]) == len(payload)
    if fmt == "ASC":
        return np.array([float(v) for v in payload.split(b",")]), pre
    codes = np.frombuffer(payload, dtype=np.uint8 if fmt == "BYTE" else "<u2").astype(np.float64)
    return (codes - pre[9]) * pre[7] + pre[8], pre


def test_scope_identity_defaults_and_settings(scope) -> None:
    inst, s = scope
    assert query(s, "*IDN?") == "KEYSIGHT TECHNOLOGIES,DSOX1102G,CN57000001,02.12.2021071625"
    run(s, ":CHAN2:SCAL 0.5;OFFS 0.1;COUP AC;DISP ON;:TIM:RANG 2e-3;POS 1e-4;REF LEFT\n")
    assert query(s, ":CHAN2:SCAL?;RANG?;OFFS?;COUP?;DISP?") == "+5.00000000E-01;+4.00000000E+00;+1.00000000E-01;AC;1"
    assert query(s, ":TIM:RANG?;SCAL?;POS?;REF?") == "+2.00000000E-03;+2.00000000E-04;+1.00000000E-04;LEFT"
    run(s, ":TRIG:MODE EDGE;:TRIG:EDGE:SOUR EXT;LEV 0.2;SLOP NEG;:ACQ:TYPE AVER;COUN 16\n")
    assert query(s, ":TRIG:EDGE:SOUR?;LEV?;SLOP?;:ACQ:TYPE?;COUN?") == "EXT;+2.00000000E-01;NEG;AVER;+16"
    for bad, code in ((":CHAN1:SCAL 100", -222), (":CHAN3:SCAL 1", -114), (":TIM:REF TOP", -224),
                      (":WAV:SOUR CHAN5", -224), (":ACQ:COUN 1", -222), (":CHAN1:OFFS 50", -222)):
        run(s, bad + "\n")
        assert error(s).startswith(f"{code},"), bad
    assert inst.chan[1].scale_v == 1.0


def test_scope_capture_scaling_window_and_preamble(scope) -> None:
    inst, s = scope
    run(s, ":CHAN1:SCAL 0.25;OFFS 0.5;:TIM:RANG 1e-3;REF LEFT;POS 0;:TRIG:EDGE:SOUR EXT\n")
    run(s, ":WAV:POIN:MODE RAW;:WAV:POIN 1000;:SING\n")
    assert query(s, ":AER?;:AER?;:OPER:COND?;:TER?") == "+1;+0;+40;+0"
    fs = 1e6
    t = np.arange(2000) / fs - 100e-6
    ramp = np.clip(t * 5e3 - 0.2, -1.0, 2.0)  # volts, sample 0 at -100 us
    assert inst.capture({1: ramp}, fs, start_s=-100e-6)
    assert query(s, ":OPER:COND?;:TER?;:TER?") == "+0;+1;+0"
    volts, pre = _read_volts(s, "WORD")
    assert pre[:4] == [1, 0, 1000, 1]
    assert pre[4] == pytest.approx(1e-6) and pre[5] == pytest.approx(-1e-4)  # LEFT: one division of pre-trigger
    assert (pre[6], pre[8], pre[9]) == (0, 0.5, 32768)
    times = pre[5] + pre[4] * np.arange(len(volts))
    expect = np.clip(np.clip(times * 5e3 - 0.2, -1.0, 2.0), 0.5 - 4 * 0.25, 0.5 + 4 * 0.25)  # screen edges
    lsb = 8 * 0.25 / 256
    assert np.max(np.abs(volts - expect)) <= lsb * (1 + 1e-6)  # within an 8-bit step, saturated at the edges
    assert volts.max() == pytest.approx(0.5 + 127 * lsb) and volts.min() == pytest.approx(0.5 - 128 * lsb)
    byte_volts, pre_b = _read_volts(s, "BYTE")
    assert (pre_b[0], pre_b[9], pre_b[7]) == (0, 128, lsb)
    np.testing.assert_allclose(byte_volts, volts, atol=1e-6)
    ascii_volts, pre_a = _read_volts(s, "ASC")
    assert pre_a[0] == 4
    np.testing.assert_allclose(ascii_volts, volts, atol=1e-6)


def test_scope_signed_word_msbf_and_decimation(scope) -> None:
    inst, s = scope
    run(s, ":TIM:RANG 1e-2;:TRIG:EDGE:SOUR EXT;:RUN\n")
    assert inst.capture({1: np.full(100, 0.5)}, 1e3)
    run(s, ":WAV:FORM WORD;BYT MSBF;UNS OFF;POIN 100000;POIN:MODE NORM\n")
    pre = [float(v) for v in query(s, ":WAV:PRE?").split(",")]
    assert pre[2] == 62_500 and pre[9] == 0  # NORMal points are capped at 62,500
    assert query(s, ":ACQ:SRAT?") == "+1.00000000E+08"  # 1 Mpts over 10 ms
    assert pre[4] == pytest.approx(16 / 1e8)
    codes = np.frombuffer(run(s, ":WAV:DATA?\n")[0][10:-1], dtype=">i2")
    assert codes.shape == (62_500,) and np.all(codes * pre[7] + pre[8] == pytest.approx(0.5, abs=1 / 32))
    run(s, ":WAV:POIN MAX;POIN:MODE RAW\n")
    assert query(s, ":WAV:POIN?") == "+1000000"


def test_scope_ac_coupling_hres_and_averaging(scope) -> None:
    inst, s = scope
    rng = np.random.default_rng(0)
    fs = 1e7  # input samples; the record runs at 1 MSa/s (1 Mpts over 1 s): HRES averages 10 per point
    noisy = 0.3 + 0.02 * rng.standard_normal(500_000)
    covered = slice(1000, 40_000)  # record points within the trace (the rest holds the last value)
    run(s, ":CHAN1:SCAL 0.05;COUP AC;:TIM:RANG 1;REF LEFT;POS 0.1;:TRIG:EDGE:SOUR EXT;:WAV:POIN:MODE RAW\n")
    run(s, ":WAV:POIN 1000000;:SING\n")
    inst.capture({1: noisy}, fs)
    normal, _ = _read_volts(s)
    assert abs(normal.mean()) < 0.01  # AC coupling removed the 0.3 V
    run(s, ":ACQ:TYPE HRES;:SING\n")
    inst.capture({1: noisy}, fs)
    hres, pre = _read_volts(s)
    assert pre[1] == 3 and hres[covered].std() < 0.5 * normal[covered].std()
    assert np.any(np.mod(np.round((hres - pre[8]) / pre[7]), 256) != 0)  # finer than 8-bit steps
    run(s, ":CHAN1:COUP DC;:TIM:RANG 1e-3;POS 0;:ACQ:TYPE NORM;:SING\n")
    inst.capture({1: 0.1 + 0.02 * rng.standard_normal(2000)}, 1e6)
    single, _ = _read_volts(s)
    run(s, ":ACQ:TYPE AVER;COUN 4;:SING\n")
    for _ in range(4):
        assert query(s, ":OPER:COND?") == "+40"
        inst.capture({1: 0.1 + 0.02 * rng.standard_normal(2000)}, 1e6)
    assert query(s, ":OPER:COND?") == "+0"
    avg, pre = _read_volts(s)
    assert pre[1] == 2 and pre[3] == 4 and avg.std() < 0.7 * single.std()
    assert avg.mean() == pytest.approx(0.1, abs=0.005)


def test_scope_edge_trigger_on_a_channel(scope) -> None:
    inst, s = scope
    fs = 1e6
    step = np.zeros(1000)
    step[600:] = 1.0
    run(s, ":CHAN2:DISP 1;:TIM:RANG 1e-4;REF CENT;:TRIG:SWE NORM;:TRIG:SOUR CHAN2;LEV 0.5;SLOP POS;:SING\n")
    assert not inst.capture({1: np.zeros(1000), 2: np.zeros(1000)}, fs)  # no edge: NORMal sweep keeps waiting
    assert query(s, ":OPER:COND?") == "+40"
    assert inst.capture({1: np.zeros(1000), 2: step}, fs)
    run(s, ":WAV:SOUR CHAN2;:WAV:POIN:MODE RAW;POIN 100\n")
    volts, pre = _read_volts(s)
    times = pre[5] + pre[4] * np.arange(len(volts))
    assert np.all(volts[times < -2e-6] < 0.05) and np.all(volts[times > 2e-6] > 0.95)  # the edge sits at t = 0


def test_scope_1m_point_capture_is_vectorised(scope) -> None:
    inst, s = scope
    run(s, ":CHAN2:DISP 1;:TIM:RANG 1e-3;:TRIG:EDGE:SOUR EXT;:SING\n")
    trace = np.sin(np.arange(1000) / 50.0)
    start = time.perf_counter()
    inst.capture({1: trace, 2: trace}, 1e6)
    elapsed = time.perf_counter() - start
    assert inst.record.n_points == 1_000_000 and inst.record.channels() == {1, 2}
    print(f"1M-point two-channel capture: {elapsed * 1e3:.1f} ms")


@pytest.mark.parametrize("acq", ["NORM", "HRES"])
def test_a_decimated_transfer_reads_the_points_of_the_whole_record(scope, acq: str) -> None:
    """DC channels are quantized when read, at the points read: the codes equal the whole record quantized with the
    settings at the trigger (probe 10, an offset) and then decimated, even after the settings change."""
    from simulators.instruments.scope_record import quantize, resample

    inst, s = scope
    run(s, f":CHAN1:PROB 10;:CHAN1:SCAL 0.7;:CHAN1:OFFS 0.3;:ACQ:TYPE {acq};:TIM:RANG 1e-3;"
           ":TRIG:EDGE:SOUR EXT;:SING\n")
    trace = 0.3 * np.sin(np.arange(1000) / 7.0) + np.random.default_rng(0).normal(0, 0.05, 1000)
    assert inst.capture({1: trace}, 1e6, start_s=-2e-5)
    rec = inst.record
    assert 1 in rec.analog and not rec.codes  # nothing quantized yet
    whole = quantize(resample(trace, rec.t0_s, rec.sample_rate_hz, -2e-5, 1e6, rec.n_points) * 10.0, 0.7, 0.3,
                      acq)
    run(s, ":CHAN1:SCAL 2;:CHAN1:OFFS 0;:CHAN1:PROB 1;:WAV:POIN:MODE RAW;:WAV:POIN 200000\n")  # after the trigger
    volts, pre = _read_volts(s)
    assert pre[2] == 200_000 and pre[4] == pytest.approx(5 / rec.sample_rate_hz)
    assert np.array_equal(rec.read(1, 5), whole[::5])
    lsb16 = 8 * 0.7 / 256 / 256
    np.testing.assert_allclose(volts, (whole[::5].astype(float) - 32768) * lsb16 + 0.3, rtol=0, atol=lsb16 / 100)


def test_ac_coupling_and_averaging_quantize_the_whole_record_at_the_trigger(scope) -> None:
    inst, s = scope
    run(s, ":CHAN1:COUP AC;:CHAN2:DISP 1;:ACQ:TYPE NORM;:TIM:RANG 1e-3;:TRIG:EDGE:SOUR EXT;:SING\n")
    trace = 0.5 + 0.1 * np.sin(np.arange(1000) / 9.0)
    assert inst.capture({1: trace, 2: trace}, 1e6)
    assert set(inst.record.codes) == {1} and set(inst.record.analog) == {2}  # AC subtracts the record's mean
    codes1, codes2 = inst.record.read(1, 1), inst.record.read(2, 1)
    assert abs(codes1.astype(float).mean() - 32768) < abs(codes2.astype(float).mean() - 32768)


# -- a bench over real pyvisa-py and raw sockets -----------------------------------------------------------------------

@pytest.fixture
def bench():
    with start_bench("electronic", seed=0) as b:
        b.bench.circuit = StubCircuit()
        yield b


@pytest.fixture
def visa(bench):
    rm = pyvisa.ResourceManager("@py")
    opened = {role: rm.open_resource(res, read_termination="\n", write_termination="\n", timeout=5000)
              for role, res in bench.resources.items()}
    yield opened
    for inst in opened.values():
        inst.close()
    rm.close()


def _configure_burst(awg, srate: float = 1e6) -> None:
    awg.write("OUTP OFF")
    awg.write(f"FUNC ARB;:FUNC:ARB W;:FUNC:ARB:SRAT {srate:g}")
    awg.write("OUTP:LOAD 50;:VOLT:OFFS 0.1;:VOLT 2")
    awg.write("BURS:MODE TRIG;NCYC 1;:TRIG:SOUR BUS;:BURS:STAT ON;:OUTP ON")


def _configure_scope(scope, range_s: float) -> None:
    scope.write(":CHAN1:DISP 1;SCAL 0.2;OFFS 0;COUP DC;PROB 1;:CHAN2:DISP 1;SCAL 0.2;OFFS 0;COUP DC;PROB 1")
    scope.write(f":TIM:RANG {range_s:g};POS 0;REF LEFT;:TRIG:MODE EDGE;:TRIG:EDGE:SOUR EXT;:ACQ:TYPE NORM")
    scope.write(":WAV:FORM WORD;:WAV:BYT LSBF;:WAV:UNS ON;:WAV:POIN:MODE RAW;:WAV:POIN 10000")


def _read_channel(scope, ch: int) -> tuple[np.ndarray, np.ndarray]:
    scope.write(f":WAV:SOUR CHAN{ch}")
    pre = [float(v) for v in scope.query(":WAV:PRE?").split(",")]
    codes = scope.query_binary_values(":WAV:DATA?", datatype="H", is_big_endian=False, header_fmt="ieee",
                                      container=np.array)
    assert len(codes) == pre[2]
    return pre[5] + pre[4] * np.arange(len(codes)), (codes - pre[9]) * pre[7] + pre[8]


@pytest.mark.parametrize("upload", ["ascii", "float_block_norm", "dac_block_swap"])
def test_bench_burst_acquisition_over_pyvisa(bench, visa, upload: str) -> None:
    awg, scope = visa["awg"], visa["scope"]
    assert awg.query("*IDN?").startswith("Agilent Technologies,33522B")
    assert scope.query("*IDN?").startswith("KEYSIGHT TECHNOLOGIES,DSOX1102G")
    w = np.zeros(1000)
    w[100:500] = 0.5
    w[500:900] = -0.25
    awg.write("*CLS;:DATA:VOL:CLE")
    if upload == "ascii":
        awg.write("DATA:ARB W," + ",".join(f"{v:g}" for v in w))
    elif upload == "float_block_norm":
        awg.write("FORM:BORD NORM")
        awg.write_binary_values("DATA:ARB W,", w.astype(np.float32), datatype="f", is_big_endian=True)
    else:
        awg.write("FORM:BORD SWAP")
        awg.write_binary_values("DATA:ARB:DAC W,", np.round(w * 32767).astype(np.int16), datatype="h",
                                is_big_endian=False)
    _configure_burst(awg)
    assert awg.query("SYST:ERR?") == '+0,"No error"'
    assert awg.query("VOLT?;VOLT:OFFS?;:FUNC:ARB:SRAT?;:OUTP:LOAD?") == \
        "+2.000000000000000E+00;+1.000000000000000E-01;+1.000000000000000E+06;+5.000000000000000E+01"
    _configure_scope(scope, 1e-3)
    scope.write(":SING")
    assert int(scope.query(":OPER:COND?")) & 8
    awg.write("*TRG")
    assert awg.query("*OPC?") == "1"
    assert int(scope.query(":OPER:COND?")) & 8 == 0
    assert scope.query(":TER?") == "+1"
    t, chan2 = _read_channel(scope, 2)
    assert t[0] == pytest.approx(-1e-4)  # LEFT: one of ten divisions before the trigger
    v = np.interp(t, np.arange(1000) / 1e6, w * 1.0 + 0.1, left=0.1, right=0.1)  # volts into 50 ohm = emf / 2
    edges = np.abs(np.diff(v, prepend=v[0])) > 0
    lsb = 8 * 0.2 / 256
    assert np.max(np.abs(chan2 - v)[~edges]) <= lsb
    t1, chan1 = _read_channel(scope, 1)
    np.testing.assert_allclose(chan1[~edges], v[~edges] / 2, atol=lsb)  # stub: CHAN1 = emf / 4 = v / 2
    assert scope.query("SYST:ERR?") == '+0,"No error"'
    assert awg.query("SYST:ERR?") == '+0,"No error"'


def test_bench_out_of_range_settings_over_pyvisa(bench, visa) -> None:
    awg = visa["awg"]
    awg.write("VOLT 1")
    awg.write("VOLT 20")
    assert awg.query("SYST:ERR?") == '-222,"Data out of range"'
    assert awg.query("VOLT?") == "+1.000000000000000E+00"
    awg.write("FUNC:ARB:SRAT 1e9")
    assert awg.query("SYST:ERR?") == '-222,"Data out of range"'
    awg.write("NOT:A:COMMAND")
    assert awg.query("SYST:ERR?") == '-113,"Undefined header"'
    assert awg.query("SYST:ERR?") == '+0,"No error"'


def test_bench_digitize_blocks_until_the_awg_triggers(bench, visa) -> None:
    awg, scope = visa["awg"], visa["scope"]
    awg.write("DATA:ARB W," + ",".join(["0.5"] * 100))
    _configure_burst(awg)
    _configure_scope(scope, 1e-4)
    timer = threading.Timer(0.2, lambda: awg.write("*TRG"))
    timer.start()
    start = time.monotonic()
    scope.write(":DIG CHAN2")
    assert scope.query("*OPC?") == "1"  # answered only once the acquisition is complete
    assert time.monotonic() - start >= 0.15
    timer.join()
    t, chan2 = _read_channel(scope, 2)
    assert chan2[(t > 5e-6) & (t < 95e-6)] == pytest.approx(0.6, abs=0.01)
    scope.write(":WAV:SOUR CHAN1")
    assert scope.query(":WAV:PRE?").split(",")[2] == "+0"  # only CHAN2 was digitized


def test_bench_continuous_output_is_captured_when_the_scope_arms(bench, visa) -> None:
    awg, scope = visa["awg"], visa["scope"]
    _configure_scope(scope, 2e-3)
    scope.write(":STOP")
    awg.write("FUNC SIN;:FREQ 1000;:VOLT 1;:VOLT:OFFS 0;:OUTP:LOAD 50;:OUTP ON")
    assert awg.query("*OPC?") == "1"  # writes return before the instrument has acted on them
    scope.write(":SING")
    assert scope.query(":OPER:COND?") == "+0"  # triggered at once on the running sine
    t, chan2 = _read_channel(scope, 2)
    np.testing.assert_allclose(chan2, 0.5 * np.sin(2 * np.pi * 1e3 * t), atol=0.01)
    awg.write("OUTP OFF")
    assert awg.query("*OPC?") == "1"
    scope.write(":SING")
    assert scope.query(":OPER:COND?") == "+40"  # nothing plays: waiting
    assert not bench.instruments["awg"].output_enabled[1]


@pytest.mark.parametrize("name", ["electronic", "mechanical"])
def test_a_waveform_too_slow_to_simulate_leaves_the_bench_responsive(name: str) -> None:
    """The real physics at 1 Hz is simulated (1 MSa/s steps on the circuit, 20 kSa/s on the plate); at 1 uHz
    (FREQ MIN) the scope's window would take ~1e13 physics steps: it is not simulated, the scope does not trigger,
    and both instruments answer at once, as does the bench's lock."""
    with start_bench(name, seed=0) as b:
        rm = pyvisa.ResourceManager("@py")
        awg, scope = (rm.open_resource(b.resources[role], read_termination="\n", write_termination="\n",
                                       timeout=20000) for role in ("awg", "scope"))
        try:
            _configure_scope(scope, 2.0)
            start = time.monotonic()
            awg.write("FUNC SIN;:FREQ 1;:VOLT 1;:VOLT:OFFS 0;:OUTP:LOAD 50;:OUTP ON")
            assert awg.query("*OPC?") == "1"
            scope.write(":SING")
            assert scope.query(":OPER:COND?") == "+0"  # 1 Hz: simulated, triggered
            assert time.monotonic() - start < 10
            t, chan2 = _read_channel(scope, 2)
            assert t[-1] - t[0] > 1.5 and np.ptp(chan2) > 0.5  # most of a period of the sine at the AWG terminal

            start = time.monotonic()
            awg.write("FREQ MIN")  # 1 uHz: a period of 11.6 days
            assert awg.query("*OPC?") == "1"
            scope.write(":SING")
            assert scope.query(":OPER:COND?") == "+40"  # not simulated: still waiting for a trigger
            assert awg.query("*IDN?").startswith("Agilent") and scope.query("*IDN?").startswith("KEYSIGHT")
            assert time.monotonic() - start < 5
        finally:
            awg.write("OUTP OFF")
            awg.close()
            scope.close()
            rm.close()


def test_bench_realtime_acquisition_takes_the_waveform_duration() -> None:
    with start_bench("electronic", seed=0, realtime=True) as b:
        b.bench.circuit = StubCircuit()
        awg, scope = b.instruments["awg"].session(), b.instruments["scope"].session()
        run(awg, "DATA:ARB W," + ",".join(["0.5"] * 300) + "\n")
        run(awg, "FUNC ARB;:FUNC:ARB W;:FUNC:ARB:SRAT 1000;:BURS:STAT ON;:TRIG:SOUR BUS;:OUTP ON\n")
        run(scope, ":TIM:RANG 0.3;REF LEFT;:TRIG:EDGE:SOUR EXT;:SING\n")
        start = time.monotonic()
        run(awg, "*TRG\n")
        assert query(scope, ":TER?") == "+1" and query(scope, ":OPER:COND?") == "+8"
        while query(scope, ":OPER:COND?") != "+0":
            time.sleep(0.01)
        assert time.monotonic() - start >= 0.29


def test_bench_with_real_physics_and_raw_socket() -> None:
    with start_bench("electronic", seed=1) as b:
        host, port = b.resources["awg"].split("::")[1:3]
        awg = socket.create_connection((host, int(port)), timeout=5)
        host, port = b.resources["scope"].split("::")[1:3]
        scope = socket.create_connection((host, int(port)), timeout=5)
        w = np.zeros(400, dtype=">i2")
        w[50:250] = 16384
        awg.sendall(b"DATA:ARB:DAC W,#3800" + w.tobytes() + b"\n")
        awg.sendall(b"FUNC ARB;:FUNC:ARB W;:FUNC:ARB:SRAT 1e6;:VOLT 2;:BURS:STAT ON;:TRIG:SOUR BUS;:OUTP ON\n")
        scope.sendall(b":CHAN2:DISP 1;:TIM:RANG 4e-4;REF LEFT;:TRIG:EDGE:SOUR EXT;:WAV:POIN 400;POIN:MODE RAW\n")
        scope.sendall(b":WAV:FORM BYTE;SOUR CHAN2;:SING;*OPC?\n")
        assert scope.recv(100) == b"1\n"
        awg.sendall(b"*TRG;*OPC?\n")
        assert awg.recv(100) == b"1\n"
        scope.sendall(b":WAV:DATA?\n")
        data = b""
        while len(data) < 10 + 400 + 1:
            data += scope.recv(65536)
        assert data[:10] == b"#800000400" and data.endswith(b"\n")
        volts = (np.frombuffer(data[10:-1], np.uint8) - 128.0) * (8 * 1.0 / 256)
        emf = 2 * 0.5  # 16384 / 32767 of 1 V peak into 50 ohm, doubled
        during = volts[(np.arange(400) >= 100) & (np.arange(400) < 200)]
        assert 0.3 * emf < during.mean() <= 1.05 * emf  # the terminal sags under the circuit's load
        assert abs(volts[:30].mean()) < 0.05
        awg.close()
        scope.close()
    assert b.bench.circuit.bench_time_s > 0


def test_start_bench_rejects_unknown_names_and_roles() -> None:
    with pytest.raises(ValueError, match="unknown bench"):
        start_bench("acoustic")
    with pytest.raises(ValueError, match="no instrument"):
        start_bench("electronic", ports={"camera": 0})


def test_bench_close_releases_ports_and_threads() -> None:
    before = {t.name for t in threading.enumerate()}
    with start_bench("electronic") as b:
        res = b.resources
        c = socket.create_connection(("127.0.0.1", int(res["awg"].split("::")[2])), timeout=2)
        c.sendall(b"*IDN?\n")
        assert c.recv(100).startswith(b"Agilent")
    assert {t.name for t in threading.enumerate()} - before == set()
    c.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(res["awg"].split("::")[2])), timeout=0.5)


# -- robustness --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [SimKeysight33522B, SimInfiniiVision])
def test_mutated_commands_never_break_an_instrument(make) -> None:
    """Random mutations of valid commands: only SCPI errors, never an internal error, and the panel keeps answering."""
    inst = make()
    s = inst.session()
    s.peer_alive = lambda: False  # nobody would trigger: a :DIGitize must not wait
    corpus = [c.pattern.replace("[", "").replace("]", "").replace("#", "1") for c in inst.commands.commands]
    rng = np.random.default_rng(0)
    args = [b"", b" 1", b" -1e9", b" MAX", b" ON", b" CHAN2", b' "x"', b" A,1,2,3,4,5,6,7,8", b" #14abcd", b" NORM"]
    for _ in range(1500):
        msg = bytearray(corpus[rng.integers(len(corpus))].encode() + args[rng.integers(len(args))])
        for _ in range(rng.integers(0, 3)):
            op, pos = rng.integers(3), int(rng.integers(len(msg) + 1))
            if op == 0:
                msg[pos:pos] = bytes([rng.integers(256)])
            elif op == 1 and msg:
                del msg[min(pos, len(msg) - 1)]
            else:
                msg[pos:pos] = rng.choice([b";", b",", b":", b"?", b"#", b'"', b"\r", b" "])
        for reply in s.feed(bytes(msg).replace(b"\n", b"") + b"\n"):
            assert reply.data.endswith(b"\n")
        while s.errors:
            code, _ = s.errors.popleft()
            assert code != -200, f"internal error on {bytes(msg)!r}"
    assert query(s, "*IDN?") == inst.idn
