"""Faults injected by the simulated instruments, seen through the real drivers and setups: each kind is detected,
named, and recovered from by the retry that the trainer uses (reconnect, set-up again, settings read back)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from drivers.errors import InstrumentError, InstrumentReportedError, InstrumentWasReset, NotMadeSafe
from orchestrator.config import SimulateConfig
from orchestrator.experiment_file import load_experiment
from orchestrator.lab import open_setup
from orchestrator.retry import DeviceFailure, retrying
from simulators.benches import start_bench
from common.faults import FaultPlan
from twins.fit import nmse

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SHORT = {"latency_s": 0.1, "stuck_s": 0.3, "unplug_s": 0.3}  # faults shorter than the links' timeouts


def _batch(b: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(b, n, generator=gen) - 1, 0.5 * (2 * torch.rand(n, generator=gen) - 1)


@pytest.fixture(scope="module", params=["electronic", "optical"])
def rig(request):
    """A calibrated setup on its simulated bench, links with short timeouts so that a silent instrument is noticed
    quickly; yields (bench, setup, clean outputs of a reference batch)."""
    name = request.param
    experiment = {"electronic": "electronic_digits.yaml", "optical": "optical_vowels.yaml"}[name]
    roles = {"electronic": ("awg", "scope"), "optical": ("slm", "camera")}[name]
    overrides = {"network.width": 12, **{f"instruments.{role}.timeout_s": 1.0 for role in roles}}
    if name == "optical":
        overrides["instruments.camera.dark_frames"] = 4
    cfg = load_experiment(EXPERIMENTS / experiment, overrides=overrides)
    with start_bench(name, seed=5) as bench, open_setup(cfg, 12, bench=bench) as setup:
        x, theta = _batch(16, 12, seed=1)
        yield bench, setup, roles, (x, theta, setup.forward(x, theta))


@pytest.mark.parametrize("kind", FaultPlan.KINDS)
def test_each_fault_is_detected_or_harmless_and_the_retry_recovers(rig, kind: str) -> None:
    bench, setup, roles, (x, theta, clean) = rig
    # binary blocks come back from the scope and the camera only
    for role in roles[1:] if kind in ("garble_block", "short_block") else roles:
        injector = bench.servers[role].injector
        injector.set_plan(FaultPlan(**{kind: 1.0}, max_faults=1, seed=2, **SHORT))
        failures: list[InstrumentError] = []

        def recover() -> None:
            failures.append(None)
            setup.recover()

        y = retrying(setup.forward, max_retries=3, recover=recover)(x, theta)
        assert injector.counts[kind] == 1, (role, injector.counts)
        assert torch.isfinite(y).all()
        # the batch that came through is a real measurement: as close to the clean one as two clean ones are
        assert nmse(y, clean) < 0.05, (role, kind, float(nmse(y, clean)))
        if kind in ("no_reply", "drop_connection", "stuck", "reset", "error"):
            assert failures, f"{kind} on the {role} went unnoticed"
        injector.set_plan(FaultPlan())


@pytest.mark.parametrize("which", [0, 1])
def test_a_reset_is_noticed_and_the_settings_come_back(rig, which: int, caplog) -> None:
    """A reset stops the batch in its tracks (a timeout, a refused command) or, if the batch still completes, is
    reported by the power-on bit; recover() says which instrument reset and applies its settings again."""
    bench, setup, roles, (x, theta, clean) = rig
    role = roles[which]
    injector = bench.servers[role].injector
    injector.set_plan(FaultPlan(reset=1.0, max_faults=1))
    with pytest.raises(InstrumentError, match=role) as err:
        setup.forward(x, theta)
    if isinstance(err.value, InstrumentWasReset):
        assert "the instrument reset itself" in str(err.value)
    else:
        setup.recover()  # re-applies the set-up and reads it back
        assert f"{role} had reset itself" in caplog.text
    assert nmse(setup.forward(x, theta), clean) < 0.05


def test_an_instrument_error_during_a_batch_names_the_instrument_and_the_error(rig) -> None:
    bench, setup, roles, (x, theta, _) = rig
    role = roles[0]
    injector = bench.servers[role].injector
    injector.set_plan(FaultPlan(error=1.0, max_faults=1))
    with pytest.raises(InstrumentReportedError, match=rf'{role}, command .*: instrument reported error\(s\): -300,"Device-specific error"'):
        setup.forward(x, theta)
    injector.set_plan(FaultPlan())


def test_after_a_reset_the_settings_read_back_wrong_until_the_recovery_applies_them(rig) -> None:
    """Each instrument loses its settings in a power-on reset: verify_settings (the read-back after a recovery) names
    the first one that differs; recover() applies them again, and they read back right."""
    bench, setup, roles, (x, theta, clean) = rig
    for role in roles:
        with bench.instruments[role].lock:
            bench.instruments[role].reset()  # back to the power-on settings, unasked
        driver = getattr(setup, role)
        with pytest.raises(InstrumentError, match=rf"^{role}, command '.*\?': reads back .*, .* was applied"):
            driver.verify_settings()
        setup.recover()
        driver.verify_settings()
    assert nmse(setup.forward(x, theta), clean) < 0.05


def test_the_experiment_file_knows_every_kind_of_fault_the_simulators_inject() -> None:
    # one description: the experiment file's simulate.faults entries are the simulators' own FaultPlan
    plan = SimulateConfig.model_validate({"faults": {"all": {"rate": 0.1, "stuck": 0.5}}}).faults["all"]
    assert isinstance(plan, FaultPlan)
    assert plan.probabilities() == {**{kind: 0.1 for kind in FaultPlan.KINDS}, "stuck": 0.5}


def test_faults_name_the_experiments_own_instruments() -> None:
    """The roles of simulate.faults are the setup's instruments (or all); another role is an error at its field, and
    each instrument's plan draws from its own seed."""
    from orchestrator.lab import fault_plans
    from orchestrator.yamlconfig import ConfigError

    with pytest.raises(ConfigError, match=r"simulate\.faults\.slm: this electronic experiment has no instrument "
                                          r"'slm'; its instruments are awg, scope \(or all\)"):
        load_experiment(EXPERIMENTS / "electronic_digits.yaml", overrides={"simulate.faults.slm.rate": "0.1"})
    cfg = load_experiment(EXPERIMENTS / "optical_vowels.yaml", overrides={
        "simulate.faults.all.rate": "0.1", "simulate.faults.all.seed": "7", "simulate.faults.camera.stuck": "0.5"})
    plans = fault_plans(cfg)
    assert set(plans) == {"slm", "camera"}
    assert (plans["slm"].seed, plans["camera"].seed) == (7, 1)  # the camera's own entry (seed 0), second role
    assert plans["slm"].probabilities()["stuck"] == 0.1 and plans["camera"].probabilities()["stuck"] == 0.5


@pytest.mark.parametrize("leaving", [None, "error", "interrupt"])
def test_an_output_that_cannot_be_switched_off_is_reported(leaving: str | None) -> None:
    """The AWG goes away (its server closes) while the setup is open: switching its output off on the way out fails.
    A normal exit then raises NotMadeSafe; an error or Ctrl-C on its way out carries the failure as ``unsafe``,
    which the CLI prints instead of "outputs off"."""
    cfg = load_experiment(EXPERIMENTS / "electronic_digits.yaml", overrides={
        "network.width": 12, "instruments.awg.timeout_s": 0.5, "instruments.scope.timeout_s": 0.5})
    raised = {None: None, "error": InstrumentError("scope", ":WAV:DATA?", "no answer"),
              "interrupt": KeyboardInterrupt()}[leaving]
    with start_bench("electronic", seed=5) as bench:
        with pytest.raises(NotMadeSafe if raised is None else type(raised)) as info:
            with open_setup(cfg, 12, bench=bench, calibrate=False):
                bench.servers["awg"].close()
                if raised is not None:
                    raise raised
    if raised is None:
        assert str(info.value).startswith("lab: could not make the instruments safe: awg")
        assert str(info.value).endswith("switch their outputs off by hand")
    else:
        assert info.value is raised
        assert len(info.value.unsafe) == 1 and info.value.unsafe[0].startswith("awg")


def test_an_interrupt_landing_in_the_make_safe_actions_does_not_leave_the_output_on(monkeypatch) -> None:
    """Off the main thread signals cannot be held: a sweep trial's close() raises KeyboardInterrupt in the trial's
    thread, which can land just as its make-safe actions begin. The action it lands in is tried again (the interrupt
    comes once): the AWG's output ends off, and nothing is reported unsafe."""
    from drivers.awg import Keysight33500B

    output_off, landed = Keysight33500B.output_off, []

    def interrupted_once(self, *args, **kwargs):
        if not landed:
            landed.append(True)
            raise KeyboardInterrupt
        return output_off(self, *args, **kwargs)

    cfg = load_experiment(EXPERIMENTS / "electronic_digits.yaml", overrides={"network.width": 12})
    with start_bench("electronic", seed=5) as bench:
        monkeypatch.setattr(Keysight33500B, "output_off", interrupted_once)
        with open_setup(cfg, 12, bench=bench, calibrate=False) as setup:
            setup.awg.output = True
            assert bench.instruments["awg"].output_enabled[1] is True
        assert landed and bench.instruments["awg"].output_enabled[1] is False


@pytest.mark.parametrize("gone", ["slm", "camera"])
def test_on_the_optical_bench_only_the_slm_can_leave_an_output_on(gone: str) -> None:
    """The SLM's pattern is the optical bench's output: if it cannot be blanked on the way out, NotMadeSafe names it.
    A camera that cannot stop its series is no safety matter: the exit is clean and the SLM blank."""
    cfg = load_experiment(EXPERIMENTS / "optical_vowels.yaml", overrides={
        "network.width": 12, "instruments.slm.timeout_s": 0.5, "instruments.camera.timeout_s": 0.5})
    with start_bench("optical", seed=5) as bench:
        slm = bench.instruments["slm"]
        if gone == "slm":
            with pytest.raises(NotMadeSafe, match="could not make the instruments safe: slm"):
                with open_setup(cfg, 12, bench=bench, calibrate=False) as setup:
                    setup.slm.show(np.full(setup.slm.n_pixels, 100, dtype=np.uint8))
                    bench.servers["slm"].close()
            assert not slm.is_blank
        else:
            with open_setup(cfg, 12, bench=bench, calibrate=False) as setup:
                setup.slm.show(np.full(setup.slm.n_pixels, 100, dtype=np.uint8))
                bench.servers["camera"].close()
            assert slm.is_blank


@pytest.mark.parametrize("name", ["electronic", "optical"])
def test_a_fatal_fault_leaves_the_awg_off_and_the_slm_blank(name: str) -> None:
    """The sensor (scope or camera) stops answering for good mid-run: the retries run out (DeviceFailure), and on the
    way out the drive is made safe: the simulated AWG's output is off, the SLM shows the blank pattern."""
    experiment = {"electronic": "electronic_digits.yaml", "optical": "optical_vowels.yaml"}[name]
    drive, sensor = {"electronic": ("awg", "scope"), "optical": ("slm", "camera")}[name]
    overrides = {"network.width": 12, "training.max_retries": 1, f"instruments.{drive}.timeout_s": 0.5,
                 f"instruments.{sensor}.timeout_s": 0.5}
    if name == "optical":
        overrides["instruments.camera.dark_frames"] = 4
    cfg = load_experiment(EXPERIMENTS / experiment, overrides=overrides)
    x, theta = _batch(16, 12, seed=1)
    with start_bench(name, seed=5) as bench:
        with pytest.raises(DeviceFailure, match=f"{sensor}.*failed on all 2 attempt"):
            with open_setup(cfg, 12, bench=bench) as setup:
                setup.forward(x, theta)
                assert (bench.instruments["awg"].output_enabled[1] if name == "electronic"
                        else not bench.instruments["slm"].is_blank)  # the drive is live
                bench.set_faults({sensor: FaultPlan(no_reply=1.0)})
                retrying(setup.forward, cfg.training.max_retries, setup.recover)(x, theta)
        if name == "electronic":
            assert bench.instruments["awg"].output_enabled[1] is False
        else:
            assert bench.instruments["slm"].is_blank
