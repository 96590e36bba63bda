"""``pnn sweep``: a search over an experiment's settings on Ray Tune, each trial an ordinary ``pnn run``.

Ray is started in this process (embedded: this machine's CPUs, every Ray service bound to 127.0.0.1, no dashboard)
unless an address is given (``auto`` or ``ray://host:10001``: an existing cluster). The sweep folder holds::

    SWEEP_DIR/sweep.json        what the sweep runs (the sweep file and the resolved base experiment), for --resume
    SWEEP_DIR/sweep.log         the sweep's log (the trials' logs are in their run folders)
    SWEEP_DIR/results.csv, results.md, sweep.png   one row per trial, rewritten as trials end
    SWEEP_DIR/trials/<id>/      each trial's run folder (the files of pnn run, and trial.json)
    SWEEP_DIR/tune/             Ray Tune's experiment state (Tuner.restore reads it)

Real instruments are shared safely: every trial holds one unit of a Ray custom resource per bench
(``bench:<name>`` from the sweep file, else ``bench:<resource string>`` per instrument), of which the cluster has
one, so two trials never drive one instrument at once. With ``--simulate`` each trial starts its own simulated bench
on free loopback ports and holds no bench resource.

Stopping: the first Ctrl-C (or SIGTERM) asks every trial to stop after its current batch (checkpoint saved, outputs
off) and Tune to save its state; ``--resume`` continues (``Tuner.restore``). A second one aborts.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from common.files import read_json_object
from common.memory import keep_freed_memory
from orchestrator.sweep_file import Sweep
from orchestrator.sweep_results import TrialRow, write_results
from orchestrator.sweep_trial import STOP_FILE, TrialRun, read_trial_file

log = logging.getLogger(__name__)

SPEC_FILE, LOG_FILE, TUNE_DIR = "sweep.json", "sweep.log", "tune"

class SweepError(Exception):
    """A sweep that cannot start as asked (exit 2): no sweep to resume, a folder holding another sweep, a cluster
    without the bench's resource."""


@dataclass
class SweepOptions:
    """How to run a sweep (the command line's options)."""

    out: Path
    simulate: bool = False
    address: str | None = None
    resume: bool = False
    retry_failed: bool = False
    num_cpus: int | None = None
    data_dir: str | None = None
    setup_files: list[str] = field(default_factory=list)


@dataclass
class SweepOutcome:
    rows: list[TrialRow]
    interrupted: bool
    out: Path
    metric: str
    mode: str

    @property
    def best(self) -> TrialRow | None:
        done = [r for r in self.rows if r.metric is not None]
        if not done:
            return None
        return (max if self.mode == "max" else min)(done, key=lambda r: r.metric)


# -- the driver ----------------------------------------------------------------------------------------------------

def run_sweep(sweep: Sweep, options: SweepOptions) -> SweepOutcome:
    """Run (or with ``options.resume`` continue) the sweep into ``options.out``; returns its rows. Raises SweepError
    for a sweep that cannot start as asked."""
    out = options.out.resolve()
    spec = _prepare_folder(sweep, options, out)
    with _sweep_log(out / LOG_FILE), _ray(options, all_bench_resources(spec, options.simulate)) as started_here:
        log.info("sweep %s into %s (%s Ray, %s)", spec["name"], out, "embedded" if started_here else "existing",
                 "simulated benches" if options.simulate else "real instruments")
        stop = _StopOnSignals(out / STOP_FILE)
        tuner = _tuner(spec, options, out)
        with stop, _environ(RAY_AIR_NEW_OUTPUT="0"):  # the sweep logs what happens; Tune's own tables stay quiet
            tuner.fit()
        rows = collect_rows(out, spec)
        _write(out, spec, rows)
    interrupted = stop.requested or any(r.status in ("interrupted", "pending", "running") for r in rows)
    return SweepOutcome(rows, interrupted, out, spec["sweep"]["metric"], _mode(spec))


def _prepare_folder(sweep: Sweep, options: SweepOptions, out: Path) -> dict:
    """The sweep's spec (stored in sweep.json): new, or the stored one for --resume."""
    from ray.tune import Tuner

    spec_path = out / SPEC_FILE
    spec = {**sweep.spec(), "sweep_dir": str(out), "simulate": options.simulate,
            "data_dir": str(Path(options.data_dir).resolve()) if options.data_dir else None,
            "setup_files": [str(Path(p).resolve()) for p in options.setup_files], "retry_failed": options.retry_failed}
    base = spec["base"]
    artifacts = Path(base.get("artifacts_dir") or Path("artifacts") / base["experiment"])
    base["artifacts_dir"] = str(artifacts.resolve())  # trials run in other folders (and on other machines)
    if options.resume:
        if not Tuner.can_restore(str(out / TUNE_DIR)) or not spec_path.exists():
            raise SweepError(f"--resume: {out} holds no sweep to continue (no {TUNE_DIR}/ state or {SPEC_FILE}); run "
                             f"without --resume to start one there")
        stored = json.loads(spec_path.read_text())
        if stored.get("base") != spec["base"] or stored.get("sweep") != spec["sweep"]:
            log.warning("the sweep or experiment file changed since the sweep started; it goes on with the settings it "
                        "started with (%s)", spec_path)
        if stored.get("simulate") != options.simulate:
            raise SweepError(f"--resume: the sweep in {out} was started {'with' if stored.get('simulate') else 'without'}"
                             f" --simulate; resume it the same way")
        stored.update(retry_failed=options.retry_failed, data_dir=spec["data_dir"] or stored.get("data_dir"))
        spec = stored
    elif (out / TUNE_DIR).exists() or spec_path.exists():
        raise SweepError(f"{out} holds a sweep already: continue it with --resume, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    from common.files import atomic_write_bytes

    atomic_write_bytes(spec_path, json.dumps(spec, indent=2).encode())
    (out / STOP_FILE).unlink(missing_ok=True)
    return spec


def _mode(spec: dict) -> str:
    from orchestrator.sweep_file import EPOCH_METRICS

    return spec["sweep"].get("mode") or EPOCH_METRICS[spec["sweep"]["metric"]]


def bench_resources(spec: dict, simulate: bool, settings: dict | None = None) -> dict[str, float]:
    """The Ray custom resources a trial holds for its bench: none on simulated benches; ``bench:<name>`` for a bench
    the sweep file names; else ``bench:<resource string>`` for each instrument (with the trial's settings)."""
    if simulate:
        return {}
    if spec["sweep"].get("bench"):
        return {f"bench:{spec['sweep']['bench']}": 1.0}
    instruments = dict(spec["base"].get("instruments") or {})
    names = {}
    for role, section in instruments.items():
        resource = (settings or {}).get(f"instruments.{role}.resource", (section or {}).get("resource"))
        if isinstance(resource, str) and resource:
            names[f"bench:{resource}"] = 1.0
    return names


def all_bench_resources(spec: dict, simulate: bool) -> dict[str, float]:
    """Every bench resource any trial of the sweep may hold (an embedded Ray offers one unit of each)."""
    names = dict(bench_resources(spec, simulate))
    for key, dist in spec["sweep"]["space"].items():
        if key.startswith("instruments.") and key.endswith(".resource") and not simulate:
            for value in (dist.get("grid") or dist.get("choice") or []):
                names[f"bench:{value}"] = 1.0
    return names


# -- Ray ------------------------------------------------------------------------------------------------------------

@contextmanager
def _ray(options: SweepOptions, benches: dict[str, float]) -> Iterator[bool]:
    """Ray for the sweep: the one this process already runs, the cluster at ``options.address``, or an embedded one
    (stopped on the way out). Yields whether it was started here. A cluster must offer every bench resource."""
    started = not _ray_initialized() and options.address is None
    if started:
        start_embedded_ray(options.num_cpus, benches)
    elif not _ray_initialized():
        import ray

        log.info("connecting to the Ray cluster at %s", options.address)
        try:
            ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise SweepError(f"cannot connect to Ray at {options.address}: {err}") from None
    try:
        _check_cluster(options, benches)
        yield started
    finally:
        if started:
            import ray

            ray.shutdown()


def _ray_initialized() -> bool:
    import sys

    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def start_embedded_ray(num_cpus: int | None = None, resources: dict[str, float] | None = None) -> None:
    """Start Ray in this process on this machine: ``num_cpus`` (default all), the given custom resources, no
    dashboard, every service on 127.0.0.1 (Ray otherwise binds the machine's address, reachable from the network).
    Raises SweepError, with Ray shut down, where it cannot be kept there."""
    import ray

    try:  # private: Ray reads the variable once, when ray_constants is imported, in every process it starts
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the variable was set
    except (ImportError, AttributeError) as err:
        raise SweepError(f"cannot keep the embedded Ray on 127.0.0.1 with Ray {ray.__version__} "
                         f"(ray._private.ray_constants.ENABLE_RAY_CLUSTER: {err}); install the Ray version "
                         f"pyproject.toml names, or start Ray yourself and pass --address") from None
    t0 = time.perf_counter()
    # Ray's services (started by ray.init) inherit the variable and read it when they import ray; the workers are
    # started by the raylet, from its environment, so this process's own can be restored once Ray is up.
    with _environ(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"):  # Ray then resolves this node to the loopback address
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, resources=dict(resources or {}), include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False)
    address = ray.nodes()[0].get("NodeManagerAddress")
    if address != "127.0.0.1":  # Ray runs any code a client sends: not reachable from the network
        ray.shutdown()
        raise SweepError(f"the embedded Ray (Ray {ray.__version__}) bound to {address}, not to 127.0.0.1, and was "
                         f"shut down: it would run any code sent to it from the network")
    log.info("embedded Ray started in %.1f s on %s: %s", time.perf_counter() - t0, address,
             ", ".join(f"{k} {v:g}" for k, v in sorted(ray.cluster_resources().items())
                       if not k.startswith(("node:", "memory", "object_store"))))


def _check_cluster(options: SweepOptions, benches: dict[str, float]) -> None:
    import ray

    available = ray.cluster_resources()
    missing = [name for name in benches if name not in available]
    if missing:
        raise SweepError(
            f"the Ray cluster offers no {', '.join(missing)}: start the node wired to that bench with "
            f"ray start --address=<head>:6379 --resources='{json.dumps({m: 1 for m in missing})}'")
    log.info("Ray resources: %s", ", ".join(f"{k} {v:g}" for k, v in sorted(available.items())
                                             if not k.startswith(("node:", "memory", "object_store"))))


# -- Tune -----------------------------------------------------------------------------------------------------------

def _tuner(spec: dict, options: SweepOptions, out: Path):
    """A new Tuner for the spec, or the restored one (--resume)."""
    from ray import tune

    sweep = spec["sweep"]
    trainable = tune.with_resources(tune.with_parameters(_trainable_class(), spec=spec),
                                    _resources_of(spec, options.simulate, sweep["cpus_per_trial"]))
    if options.resume:
        log.info("resuming the sweep in %s", out)
        return tune.Tuner.restore(str(out / TUNE_DIR), trainable, resume_unfinished=True, resume_errored=True)
    scheduler = None
    if sweep.get("scheduler"):
        asha = sweep["scheduler"]["asha"]
        scheduler = tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=_max_epochs(spec),
                                                  grace_period=asha["grace_epochs"],
                                                  reduction_factor=asha["reduction_factor"])
    tune_config = tune.TuneConfig(metric=sweep["metric"], mode=_mode(spec), num_samples=sweep["trials"],
                                  scheduler=scheduler, max_concurrent_trials=sweep.get("max_concurrent"),
                                  reuse_actors=False)
    run_config = tune.RunConfig(name=TUNE_DIR, storage_path=str(out), verbose=0,
                                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=0,
                                                                        checkpoint_at_end=False),
                                callbacks=[_results_callback(spec)])
    return tune.Tuner(trainable, param_space=param_space(spec), tune_config=tune_config, run_config=run_config)


def param_space(spec: dict) -> dict[str, Any]:
    """Tune's search space: dotted path -> grid_search / choice / uniform / loguniform (randint / lograndint for a
    whole-number field)."""
    from ray import tune

    space = {}
    integers = set(spec.get("integer_paths", []))
    for key, dist in spec["sweep"]["space"].items():
        if dist.get("grid") is not None:
            space[key] = tune.grid_search(list(dist["grid"]))  # a linked dimension: its labels
        elif dist.get("choice") is not None:
            space[key] = tune.choice(list(dist["choice"]))
        elif dist.get("uniform") is not None:
            lo, hi = dist["uniform"]
            space[key] = tune.randint(round(lo), round(hi) + 1) if key in integers else tune.uniform(lo, hi)
        else:
            lo, hi = dist["loguniform"]
            space[key] = tune.lograndint(max(1, round(lo)), round(hi) + 1) if key in integers \
                else tune.loguniform(lo, hi)
    return space


def _max_epochs(spec: dict) -> int:
    dist = spec["sweep"]["space"].get("training.epochs")
    if dist:
        values = dist.get("grid") or dist.get("choice") or dist.get("uniform") or dist.get("loguniform")
        return int(max(values))
    return int(spec["base"]["training"]["epochs"])


def _resources_of(spec: dict, simulate: bool, cpus: float):
    def resources(config: dict) -> dict[str, float]:
        return {"cpu": cpus, **bench_resources(spec, simulate, config)}
    return resources


def _trainable_class():
    """The Tune trainable: a ``TrialRun`` per trial (defined here so that Ray is imported only when a sweep runs)."""
    from ray import tune

    class PnnTrial(tune.Trainable):
        """One ``pnn run`` with the trial's settings; each step is an evaluated epoch."""

        def setup(self, config: dict, spec: dict | None = None) -> None:
            import torch

            from orchestrator.kits import load_setup_file

            keep_freed_memory()  # a Ray worker is a process of its own
            for path in spec.get("setup_files", []):
                load_setup_file(path)
            logging.getLogger("orchestrator").setLevel(logging.INFO)
            torch.set_num_threads(max(1, int(spec["sweep"]["cpus_per_trial"])))
            self.run = TrialRun(spec, config, self.trial_id)
            self.run.start()

        def step(self) -> dict:
            return self.run.next_result()

        def cleanup(self) -> None:
            self.run.close()

    return PnnTrial


def _results_callback(spec: dict):
    """A Tune callback that rewrites the results files whenever a trial starts or ends."""
    from ray import tune

    out = Path(spec["sweep_dir"])

    class ResultsCallback(tune.Callback):
        def _update(self, trials: list, trial) -> None:
            try:
                _write(out, spec, collect_rows(out, spec, trials))
            except Exception:  # noqa: BLE001 - the results are rewritten at the end all the same
                log.warning("could not update the results", exc_info=True)

        def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
            log.info("trial %s started: %s", trial.trial_id, _settings_text(trial.config))
            self._update(trials, trial)

        def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
            result = trial.last_result or {}
            metric = spec["sweep"]["metric"]
            how = "finished" if result.get("final") else "stopped"
            log.info("trial %s %s after %s epochs: %s %s", trial.trial_id, how, result.get("epoch", 0), metric,
                     _number(result.get(metric)))
            self._update(trials, trial)

        def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
            error = read_trial_file(out / "trials" / trial.trial_id).get("error") or "see its run folder"
            log.warning("trial %s failed: %s", trial.trial_id, error)
            self._update(trials, trial)

    return ResultsCallback()


# -- results ----------------------------------------------------------------------------------------------------------

def collect_rows(out: Path, spec: dict, trials: list | None = None) -> list[TrialRow]:
    """One row per trial, from Tune's trials (``trials``, else read back from the sweep folder) and each trial's
    run folder (trial.json, summary.json)."""
    if trials is None:
        from ray.tune import ExperimentAnalysis

        quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # trials that never reported have no result files: not worth a warning each
        try:
            trials = ExperimentAnalysis(str(out / TUNE_DIR)).trials
        finally:
            quiet.setLevel(level)
    keys = list(spec["sweep"]["space"])
    metric = spec["sweep"]["metric"]
    rows = []
    for trial in trials:
        folder = out / "trials" / trial.trial_id
        record = read_trial_file(folder)
        summary = read_json_object(folder / "summary.json")
        result = trial.last_result or {}
        row = TrialRow(trial.trial_id, {k: trial.config.get(k) for k in keys})
        row.metric = result.get(metric) if isinstance(result.get(metric), (int, float)) else None
        epochs = [n for n in (result.get("epoch"), summary.get("epochs")) if isinstance(n, int)]
        row.epochs = max(epochs) if epochs else None
        row.wall_time_s = sum(s["ended"] - s["started"] for s in record.get("sessions", []) if "ended" in s) or None
        status = record.get("status")
        if trial.status == "ERROR" or status == "failed":
            row.status = "failed"
            row.error = record.get("error") or _tune_error(trial)
        elif result.get("final") or status == "finished":
            row.status = "finished"
            if summary.get("status") == "finished" and isinstance(summary.get(metric), float):
                row.metric = summary[metric]
        elif trial.status == "TERMINATED":
            row.status = "stopped early"
        elif trial.status == "RUNNING" and status == "running":
            row.status = "running"
        elif status is not None:
            row.status = "interrupted"
        else:
            row.status = "pending"
        rows.append(row)
    return rows


def _write(out: Path, spec: dict, rows: list[TrialRow]) -> None:
    title = f"sweep {spec['name']}: {Path(spec['experiment_file']).name}" + (
        " (simulated benches)" if spec["simulate"] else "")
    write_results(out, rows, list(spec["sweep"]["space"]), spec["sweep"]["metric"], _mode(spec), title)


def _tune_error(trial) -> str:
    try:
        error = trial.get_error()
    except Exception:  # noqa: BLE001 - the error file may be gone
        error = None
    text = str(error) if error else "the trial's worker failed (see the sweep's tune/ folder)"
    return text.strip().splitlines()[-1] if text.strip() else text


def _settings_text(config: dict) -> str:
    return ", ".join(f"{k}={_number(v)}" for k, v in config.items())


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -- logging and signals ------------------------------------------------------------------------------------------

@contextmanager
def _environ(**values: str) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _sweep_log(path: Path) -> Iterator[None]:
    """Copy the sweep's log records (orchestrator, Ray Tune) into ``path`` while the block runs."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger("orchestrator"), logging.getLogger("ray.tune")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


def tune_stop_handler_installed(handler: Any) -> bool:
    """Whether SIGUSR1 may be sent to this process to ask Tune to stop: only while a handler is installed (Tune
    installs its own inside ``tune.run``, well after ``Tuner.fit`` starts). Without one (SIG_DFL), SIGUSR1's default
    action would kill the process; ignored (SIG_IGN) or unknown (None, set outside Python), it would do nothing or
    something unknown. Then the stop file alone asks the trials to stop, and Tune ends when they have."""
    return callable(handler)


class _StopOnSignals:
    """While Tune runs: the first Ctrl-C or SIGTERM writes the stop file (every trial stops after its current batch,
    saving its checkpoint and switching its outputs off) and asks Tune to stop and save its state (SIGUSR1, Tune's
    own stop signal, sent only once Tune has installed its handler); a second one aborts (KeyboardInterrupt)."""

    def __init__(self, stop_file: Path):
        self.stop_file = stop_file
        self.requested = False
        self._previous: dict = {}
        self._env: str | None = None

    def __enter__(self) -> "_StopOnSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _on_signal(self, signum: int, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        os.write(2, f"{signal.Signals(signum).name}: stopping the sweep: every trial stops after its current batch "
                    f"and saves its checkpoint (again to abort at once)\n".encode())
        self.stop_file.write_text("stop\n")
        if tune_stop_handler_installed(signal.getsignal(signal.SIGUSR1)):
            os.kill(os.getpid(), signal.SIGUSR1)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._previous:
            if self._env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env
        self.stop_file.unlink(missing_ok=True)

    def request(self) -> None:
        """Stop as the first Ctrl-C would (for scripts and tests)."""
        self._on_signal(signal.SIGINT, None)


__all__ = ["run_sweep", "SweepOptions", "SweepOutcome", "SweepError", "start_embedded_ray", "bench_resources",
           "param_space", "collect_rows"]
