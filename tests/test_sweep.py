"""``pnn sweep``: the sweep file's checks (file:line: field: message, before Ray starts), a sweep on simulated benches
that is stopped as Ctrl-C stops it and resumed (a failed trial reported, the others finished from their checkpoints,
results.csv/md and the plot written), and two trials on one served bench holding its Ray resource one after the other.

The trials are tiny (a 64-slot single-layer network on 200 digits, the perfect twin on simulated benches) and share
one embedded Ray, started once for the module.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.experiment_file import load_experiment
from orchestrator.sweep_file import load_sweep
from orchestrator.yamlconfig import ConfigError

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "electronic_digits.yaml"
TINY = {"network.width": 64, "network.depth": 1, "task.n_train": 200, "task.n_test": 100,
        "training.batch_size": 32}
BENCH = "test-bench"


def write_sweep(folder: Path, body: dict, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"experiment": str(EXPERIMENT), **body}, sort_keys=False))
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


# -- the sweep file ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "experiments" / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_sweep_file_is_valid(path: Path) -> None:
    """The sweeps the results files were made with still load: every dotted path and value is one the experiment
    file takes."""
    sweep = load_sweep(path)
    assert sweep.name == path.stem and sweep.experiment_path.is_file()


def test_an_unknown_dotted_path_is_reported_at_its_line(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"set": {"training.epochs": 1}, "space": {"training.lrr": {"grid": [0.1]},
                                                                          "network.width": {"grid": [64]}}})
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert str(err.value) == (f"{path}:{line_of(path, 'training.lrr')}: space.training.lrr: training has no field "
                              f"'lrr' (did you mean 'lr'?)")
    result = CliRunner().invoke(main, ["sweep", str(path), "--simulate"])  # the command: exit 2, no traceback
    assert result.exit_code == 2 and "space.training.lrr" in result.output and "Traceback" not in result.output


def test_a_value_the_experiment_refuses_is_reported_at_its_item_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"experiment: {EXPERIMENT}\nspace:\n  training.lr:\n    grid:\n      - 0.1\n      - -1\n"
                    f"  network.depth: {{uniform: [1, 3]}}\n")
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert str(err.value) == (f"{path}:6: space.training.lr.grid[1]: -1 is refused by the experiment: training.lr: "
                              f"Input should be greater than 0")


@pytest.mark.parametrize("body, line_text, expected", [
    ({"set": {"network.widht": 3}, "space": {"seed": {"grid": [0]}}}, "network.widht",
     "set.network.widht: network has no field 'widht' (did you mean 'width'?)"),
    ({"space": {"training.lr.value": {"grid": [1]}}}, "training.lr.value",
     "space.training.lr.value: training.lr is a single value, not a section: 'training.lr.value' does not exist"),
    ({"space": {"training.lr": {"loguniform": [0, 1]}}}, "loguniform",
     "space.training.lr.loguniform: must be [low, high] with 0 < low < high"),
    ({"space": {"training.lr": {"grid": [0.1], "choice": [0.2]}}}, "training.lr",
     "space.training.lr: give exactly one of grid, choice, uniform, loguniform (not grid and choice)"),
    ({"space": {"seed": {"grid": [0]}}, "metric": "accuracy"}, "metric",
     ("metric: must be one of test_accuracy, train_loss, train_accuracy_running, twin_test_accuracy (what a trial "
      "reports after each epoch)")),
    ({"space": {"network.width": {"grid": [64]}, "encoding.guard_samples": {"grid": [-5]}}}, "- -5",
     "space.encoding.guard_samples.grid[0]: -5 is refused by the experiment: encoding.guard_samples: "),
])
def test_sweep_file_problems(tmp_path: Path, body: dict, line_text: str, expected: str) -> None:
    path = write_sweep(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert str(err.value).startswith(f"{path}:{line_of(path, line_text)}: {expected}"), str(err.value)


def test_integer_fields_are_drawn_as_whole_numbers(tmp_path: Path) -> None:
    from orchestrator.sweep import param_space

    sweep = load_sweep(write_sweep(tmp_path, {"space": {"network.depth": {"uniform": [1, 3]},
                                                        "training.lr": {"loguniform": [0.01, 0.1]}}}))
    space = param_space({**sweep.spec(), "integer_paths": sorted(sweep.integer_paths)})
    assert sweep.integer_paths == {"network.depth"}
    assert {type(space["network.depth"].sample()) for _ in range(20)} == {int}
    assert 1 <= min(space["network.depth"].sample() for _ in range(50))
    assert max(space["network.depth"].sample() for _ in range(50)) <= 3
    assert isinstance(space["training.lr"].sample(), float)


LINKED = {"mode": {"grid": {"pat": {"training.mode": "pat"},
                            "pat+refine": {"training.mode": "pat", "twin.refine.enabled": True},
                            "perturbative": {"training.mode": "perturbative"}}},
          "point": {"choice": {"deep": {"network.depth": 2}, "small-twin": {"twin.samples": 300}}}}


def test_a_linked_dimension_sets_several_fields_per_value(tmp_path: Path) -> None:
    from orchestrator.sweep import param_space
    from orchestrator.sweep_trial import artifacts_key, trial_config

    sweep = load_sweep(write_sweep(tmp_path, {"space": LINKED}))
    space = param_space(sweep.spec())
    assert space["mode"] == {"grid_search": ["pat", "pat+refine", "perturbative"]}  # Tune sees the labels
    assert {space["point"].sample() for _ in range(30)} == {"deep", "small-twin"}
    cfg = sweep.trial_config({"mode": "pat+refine", "point": "small-twin"})
    assert (cfg.training.mode, cfg.twin.refine.enabled, cfg.twin.samples) == ("pat", True, 300)
    spec = {**sweep.spec(), "base": {**sweep.base_data, "artifacts_dir": "art"}}
    trial = trial_config(spec, {"mode": "perturbative", "point": "deep"})  # what a Ray worker builds
    assert (trial.training.mode, trial.network.depth, trial.artifacts_dir) == ("perturbative", 2, "art")
    assert trial_config(spec, {"mode": "pat", "point": "small-twin"}).artifacts_dir == \
        f"art-{artifacts_key({'twin.samples': 300})}"  # a twin of its own, as for a dotted path in the space
    # refining the twin in training changes nothing in the twin it starts from: the same artifacts
    assert trial_config(spec, {"mode": "pat+refine", "point": "small-twin"}).artifacts_dir == \
        f"art-{artifacts_key({'twin.samples': 300})}"
    assert trial_config(spec, {"mode": "pat+refine", "point": "deep"}).artifacts_dir == "art"


def test_trials_that_need_one_twin_calibrate_it_one_after_the_other(tmp_path: Path) -> None:
    """The twin lock, held by another process (a trial calibrating the twin), makes this one wait until it is let go."""
    from orchestrator.sweep_trial import twin_lock
    from tests.test_bench_resume import held_by_another_process

    artifacts = tmp_path / "artifacts" / "electronic_digits-sim"
    with held_by_another_process("from orchestrator.sweep_trial import twin_lock", "twin_lock(path)", artifacts, 1.5):
        t0 = time.monotonic()
        with twin_lock(artifacts):
            waited = time.monotonic() - t0
    assert waited > 0.5, waited  # entered only once the other let go (it holds the lock 1.5 s after "held")


@pytest.mark.parametrize("space, line_text, expected", [
    ({"mode": {"grid": {"a": {"training.mdoe": "pat"}}}}, "training.mdoe",
     "space.mode.grid.a.training.mdoe: training has no field 'mdoe' (did you mean 'mode'?)"),
    ({"mode": {"grid": {"spsa+refine": {"training.mode": "perturbative", "twin.refine.enabled": True}}}},
     "spsa+refine", ("space.mode.grid.spsa+refine: training.mode='perturbative', twin.refine.enabled=True is "
                     "refused by the experiment: twin.refine.enabled: perturbative training uses no twin")),
    ({"mode": {"grid": {"a": {}}}}, "a: {}", "space.mode.grid.a: sets no field"),
    ({"training": {"grid": {"pat": {"training.mode": "pat"}}}}, "training:",
     "space.training: is a field of the experiment, but its grid is a mapping of labels to settings"),
    ({"mode": {"grid": {"d2": {"network.depth": 2}}}, "network.depth": {"grid": [1]}}, "mode:",
     "space.mode: sets network.depth, which is also set in space: give it in one place"),
])
def test_linked_dimension_problems(tmp_path: Path, space: dict, line_text: str, expected: str) -> None:
    path = write_sweep(tmp_path, {"space": space})
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert str(err.value).startswith(f"{path}:{line_of(path, line_text)}: {expected}"), str(err.value)


def test_a_linked_dimension_clashes_with_set_and_combinations_are_checked(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"set": {"twin.samples": 500}, "space": LINKED})
    with pytest.raises(ConfigError, match=r"space.point: sets twin.samples, which is also set in set"):
        load_sweep(path)
    path = write_sweep(tmp_path, {"space": {"mode": LINKED["mode"],
                                            "twin.refine.enabled": {"grid": [False, True]}}}, "clash.yaml")
    with pytest.raises(ConfigError, match=r"space.mode: sets twin.refine.enabled, which is also set in space"):
        load_sweep(path)
    path = write_sweep(tmp_path, {"space": {"mode": {"grid": {"spsa": {"training.mode": "perturbative"}}},
                                            "twin.kind": {"grid": ["perfect"]},
                                            "point": {"grid": {"refine": {"twin.refine.enabled": True}}}}}, "c.yaml")
    with pytest.raises(ConfigError, match=r"the combination mode='spsa', twin.kind='perfect', point='refine' is "
                                          r"refused by the experiment: twin.refine.enabled: perturbative"):
        load_sweep(path)


def test_the_shipped_sweep_runs_on_the_simulator_as_written() -> None:
    """The shipped sweep says simulate: true, so `pnn sweep experiments/sweeps/electronic_digits_lr.yaml` needs no
    --simulate although its base experiment names no instrument."""
    loaded = load_sweep(EXPERIMENT.parent / "sweeps" / "electronic_digits_lr.yaml")
    assert loaded.config.simulate and loaded.experiment_path.resolve() == EXPERIMENT


def test_a_sweep_on_real_instruments_with_placeholder_resources_stops_before_ray(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"space": {"training.lr": {"grid": [0.1]}}, "simulate": False})
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "instruments.awg.resource" in result.output and "placeholder" in result.output
    assert not (tmp_path / "out").exists()


# -- sweeps on Ray -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_instance():
    """One embedded Ray for the module: 2 CPUs and one unit of the served bench's resource."""
    pytest.importorskip("ray")
    from orchestrator.sweep import start_embedded_ray

    before = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    start_embedded_ray(num_cpus=2, resources={f"bench:{BENCH}": 1})
    import ray

    assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"  # embedded Ray stays on the loopback interface
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == before  # set for ray.init only
    yield ray
    ray.shutdown()


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def epochs_in(folder: Path) -> list[int]:
    return [int(r["epoch"]) for r in read_csv(folder / "metrics.csv")]


def test_a_stopped_sweep_resumes_and_a_failed_trial_does_not_stop_the_others(ray_instance, tmp_path: Path,
                                                                              monkeypatch) -> None:
    """Four trials: two on digits, two on MNIST from an empty data folder (they fail at once). Ctrl-C (SIGINT) once a
    trial has finished an epoch stops the sweep; --resume finishes the digits trials from their checkpoints."""
    from orchestrator.sweep import SweepOptions, run_sweep

    monkeypatch.chdir(tmp_path)
    epochs = 5
    path = write_sweep(tmp_path, {
        "set": {**TINY, "training.epochs": epochs, "twin.kind": "perfect"},
        "space": {"task.dataset": {"grid": ["digits", "mnist"]}, "training.lr": {"grid": [0.05, 0.2]}},
        "max_concurrent": 2})
    out = tmp_path / "sweep"
    options = SweepOptions(out, simulate=True, data_dir=str(tmp_path / "no-data"))

    def interrupt_after_an_epoch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(out.glob("trials/*/metrics.csv")):
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in the terminal

    threading.Thread(target=interrupt_after_an_epoch, daemon=True).start()
    first = run_sweep(load_sweep(path), options)
    assert first.interrupted
    assert not (out / ".stop").exists()
    stopped = [r for r in first.rows if r.status == "interrupted" and r.settings["task.dataset"] == "digits"]
    assert stopped, [(r.status, r.settings) for r in first.rows]
    summary = json.loads((out / "trials" / stopped[0].trial / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["epochs"] < epochs
    assert "outputs off" in (out / "trials" / stopped[0].trial / "run.log").read_text()

    second = run_sweep(load_sweep(path), SweepOptions(out, simulate=True, resume=True,
                                                      data_dir=str(tmp_path / "no-data")))
    assert not second.interrupted
    rows = {r.trial: r for r in second.rows}
    assert len(rows) == 4
    for row in rows.values():
        folder = out / "trials" / row.trial
        record = json.loads((folder / "trial.json").read_text())
        if row.settings["task.dataset"] == "mnist":
            assert row.status == "failed" and row.error.startswith("DatasetError: data directory"), row
            assert len(record["sessions"]) == 1  # failed once, not run again by --resume
        else:
            assert row.status == "finished" and row.epochs == epochs and 0 < row.metric <= 1, row
            assert epochs_in(folder) == list(range(1, epochs + 1))  # each epoch once, resumed ones included
            final = json.loads((folder / "summary.json").read_text())
            assert final["status"] == "finished" and row.metric == pytest.approx(final["test_accuracy"])
            assert load_experiment(folder / "config.yaml").training.lr == row.settings["training.lr"]
    resumed = [r for r in stopped if r.trial in rows]
    record = json.loads((out / "trials" / resumed[0].trial / "trial.json").read_text())
    assert [s["status"] for s in record["sessions"]] == ["stopped", "finished"]

    table = read_csv(out / "results.csv")
    assert {r["trial"] for r in table} == set(rows)
    assert {"status", "task.dataset", "training.lr", "test_accuracy", "epochs", "wall_time_s", "error"} <= table[0].keys()
    assert table[0]["status"] == "finished"  # best first
    md = (out / "results.md").read_text()
    assert "4 trials: 2 finished, 2 failed." in md and "Influence on the metric" in md
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_trials_on_one_served_bench_run_one_after_the_other(ray_instance, tmp_path: Path, monkeypatch) -> None:
    """Real instruments (no --simulate): a bench served on loopback ports, as pnn sim serve does. Each trial holds
    the bench's Ray resource, so with two CPUs free they still run one at a time."""
    from orchestrator.kits.simulated import serve_builtin_bench
    from orchestrator.sweep import SweepOptions, run_sweep

    monkeypatch.chdir(tmp_path)
    with serve_builtin_bench(load_experiment(EXPERIMENT), faults={}) as bench:
        resources = {f"instruments.{role}.resource": res for role, res in bench.resources.items()}
        path = write_sweep(tmp_path, {
            "set": {**TINY, **resources, "training.epochs": 1, "twin.kind": "physics", "twin.physics.samples": 100,
                    "twin.physics.epochs": 2, "artifacts_dir": str(tmp_path / "artifacts")},
            "space": {"training.lr": {"grid": [0.05, 0.2]}}, "bench": BENCH, "max_concurrent": 2})
        outcome = run_sweep(load_sweep(path), SweepOptions(tmp_path / "sweep", simulate=False))
    assert [r.status for r in outcome.rows] == ["finished", "finished"], [(r.status, r.error) for r in outcome.rows]
    spans = sorted((s["started"], s["ended"])
                   for r in outcome.rows
                   for s in json.loads((tmp_path / "sweep" / "trials" / r.trial / "trial.json").read_text())["sessions"])
    assert len(spans) == 2 and spans[0][1] <= spans[1][0], spans  # never interleaved
    for r in outcome.rows:
        summary = json.loads((tmp_path / "sweep" / "trials" / r.trial / "summary.json").read_text())
        assert summary["simulated"] is False and summary["status"] == "finished"


def test_ctrl_c_sends_tune_its_stop_signal_only_once_tune_handles_it() -> None:
    """Tune installs its SIGUSR1 handler only inside tune.run; a Ctrl-C before that must not send SIGUSR1, whose
    default action would kill the sweep (the stop file alone then asks the trials to stop)."""
    from orchestrator.sweep import tune_stop_handler_installed

    assert not tune_stop_handler_installed(signal.SIG_DFL)
    assert not tune_stop_handler_installed(signal.SIG_IGN)
    assert not tune_stop_handler_installed(None)
    assert tune_stop_handler_installed(lambda signum, frame: None)
