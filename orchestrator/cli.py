"""The ``pnn`` command: check, calibrate, run, bench, compare, sweep, sim serve, resources.

Exit codes: 0 success, 1 unexpected error, 2 bad experiment file, arguments or data set (or settings a resumed run's
checkpoint was not trained with, or a run folder another process is training into), 3 instrument error, 4 unreadable
twin, twin data or checkpoint file, 130 interrupted.

Ctrl-C and SIGTERM (``stop_on_signals``): the first one during training finishes the current batch, saves the
checkpoint, switches the outputs off and exits with 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), saying
"stopped after epoch E batch B of N"; ``--resume`` continues from there. A second one, or one while nothing is being
trained (calibration, the final evaluation), aborts at once: outputs off, exit 130.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from common.memory import keep_freed_memory, objects_kept, skip_collection_at_exit

# the libraries' objects live as long as the process: the garbage collector need not walk them (common.memory)
with objects_kept():
    try:  # a Ctrl-C while the libraries load (torch takes seconds): nothing has been done yet
        import click
        from rich.console import Console
        from rich.markup import escape
        from rich.logging import RichHandler
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        from rich.table import Table

        from drivers.errors import InstrumentError, NotMadeSafe
        from orchestrator.config import ConfigError, ExperimentConfig, task_data_error
        from orchestrator.experiment_file import load_experiment, require_resources
        from orchestrator.config import data_dir as resolve_data_dir
        from orchestrator.datasets import DatasetError
        from orchestrator.experiment import BENCH_ROW_CHOICES, BENCH_ROWS
        from orchestrator.kits import KitError
        from orchestrator.run_folder import RunFolder, RunFolderInUse, check_not_in_use
        from orchestrator.trainer import CHECKPOINT, StopRequest, TrainingStopped
        from common.files import CorruptFileError
    except (KeyboardInterrupt, RuntimeError) as err:
        # Python wraps a Ctrl-C that lands in a class's __set_name__ (a dataclass field) in a RuntimeError
        if not isinstance(err, KeyboardInterrupt) and not isinstance(err.__cause__, KeyboardInterrupt):
            raise
        os.write(2, b"interrupted while starting: nothing was done\n")
        raise SystemExit(130) from None


log = logging.getLogger(__name__)
console = Console(stderr=True)
out_console = Console()


def _overrides(pairs: tuple[str, ...]) -> dict:
    result = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r}: expected FIELD=VALUE, e.g. training.epochs=3", param_hint="--set")
        key, value = pair.split("=", 1)
        result[key.strip()] = value
    return result


def _load(path: str, sets: tuple[str, ...] = ()) -> ExperimentConfig:
    overrides = _overrides(sets)
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get("fault_rate") is not None:  # --faults RATE
        overrides["simulate.faults.all.rate"] = str(ctx.meta["fault_rate"])
    with objects_kept():  # it imports the setup's kit: drivers, twins, encoding, their libraries
        cfg = load_experiment(path, overrides=overrides or None)
    if ctx is not None and ctx.meta.get("simulate") is False:  # real instruments: no placeholder resources
        require_resources(cfg, path)
    return cfg


def _remember_fault_rate(ctx: click.Context, param: click.Parameter, value: float | None) -> None:
    ctx.meta["fault_rate"] = value


faults_opt = click.option(
    "--faults", type=click.FloatRange(0, 1), default=None, metavar="RATE", expose_value=False,
    callback=_remember_fault_rate,
    help="With --simulate: every instrument injects every kind of fault with probability RATE per reply "
         "(same as --set simulate.faults.all.rate=RATE).")


@contextmanager
def _errors_to_exit_codes():
    """Turn the errors an operator can act on into one clear message and an exit code."""
    try:
        yield
    except ConfigError as err:
        # plain text, one unwrapped line per problem: messages hold brackets ([low, high]) and are parsed as
        # file:line: field: message by editors and CI
        console.print(str(err), style="red", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except DatasetError as err:  # the data set the experiment's task.dataset names
        ctx = click.get_current_context(silent=True)
        problem = task_data_error(ctx.params.get("experiment") if ctx else None, err)
        console.print(str(problem), style="red", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KitError as err:  # e.g. --twin perfect without --simulate
        console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except CorruptFileError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(4)
    except RunFolderInUse as err:  # its files are the other process's: nothing there was touched
        console.print(f"[red]error:[/red] {escape(str(err))}; {_outputs(err)}.", highlight=False, soft_wrap=True)
        sys.exit(2)
    except InstrumentError as err:
        console.print(f"[red]instrument error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        console.print(f"{_outputs(err)}{_saved_for_resume()}.", soft_wrap=True)
        sys.exit(3)
    except KeyboardInterrupt as err:
        console.print(f"[yellow]interrupted[/yellow]: {_outputs(err)}{_saved_for_resume()}.", soft_wrap=True)
        sys.exit(130)


def _outputs(err: BaseException) -> str:
    """What became of the outputs, as the lab's open_setup reported it on ``err``."""
    if isinstance(err, NotMadeSafe):
        return "[red]the outputs may still be on[/red]"
    unsafe = getattr(err, "unsafe", None)
    if unsafe:
        return f"[red]the outputs may still be on[/red] ({escape('; '.join(unsafe))}): switch them off by hand"
    reached = getattr(err, "instruments_reached", None)  # set by the lab's open_setup on the error on its way out
    if reached is None:
        return "nothing was switched on"
    return "outputs off" if reached else "no instrument was reached, nothing was switched on"


def _saved_for_resume() -> str:
    """What ``pnn run``'s folder now holds for --resume, judged by its files (nothing for the other commands)."""
    ctx = click.get_current_context(silent=True)
    folder = ctx.meta.get("run_folder") if ctx is not None else None
    if folder is None:
        return ""
    out_dir, started, resume = folder
    checkpoint = out_dir / CHECKPOINT
    if checkpoint.exists() and checkpoint.stat().st_mtime >= started:
        position = RunFolder(out_dir).previous_summary().get("checkpoint")
        if position and (out_dir / "summary.json").stat().st_mtime >= started:
            where = f"after epoch {position['epoch']} batch {position['batch']} of {position['batches_per_epoch']} "
        else:
            where = ""
        return f"; the checkpoint {where}is saved (resume with --resume)"
    if resume and checkpoint.exists():
        return "; the run's checkpoint is as it was (resume with --resume)"
    return "; no batch was trained, so no checkpoint was saved"


def _resume_or_exit(out_dir: Path, epochs: int) -> None:
    """--resume: refuse a folder without a checkpoint (exit 2); leave a finished run as it is (exit 0)."""
    if not (out_dir / CHECKPOINT).exists():
        console.print(f"[red]error:[/red] --resume: {escape(str(out_dir))} holds no checkpoint ({CHECKPOINT}) to "
                      f"continue; run without --resume to start a new run there", highlight=False, soft_wrap=True)
        sys.exit(2)
    summary = RunFolder(out_dir).finished_summary(epochs)
    if summary is not None:
        done = summary["epochs"]
        accuracy = summary.get("test_accuracy")
        result = f", device test accuracy {accuracy:.3f}" if isinstance(accuracy, float) else ""
        console.print(f"{escape(str(out_dir))} holds a finished run ({done} of {epochs} epochs{result}): nothing to "
                      f"resume, its files are left as they are; to train it further, resume with more epochs "
                      f"(--epochs {done + 1} or more)", highlight=False, soft_wrap=True)
        sys.exit(0)


@contextmanager
def stop_on_signals(after_stop: str = ""):
    """Handle Ctrl-C (SIGINT) and SIGTERM in the block; yields the StopRequest to give the trainer.

    - first signal while a trainer runs: it finishes the current batch, saves its checkpoint and raises
      TrainingStopped; the setup switches the outputs off on the way out; exit 128 + signal number;
    - second signal, or a signal while nothing is being trained: KeyboardInterrupt at once (outputs off, exit 130);
    - signals while already stopping are ignored, so that switching the outputs off is not interrupted in turn
      (SIGKILL still ends the process).
    """
    request = StopRequest()
    aborting = False

    def on_signal(signum: int, frame) -> None:
        nonlocal aborting
        name = signal.Signals(signum).name
        if aborting or (request.signal is not None and not request.training):
            _tell(f"{name}: already stopping; switching the outputs off")
        elif request.training and request.signal is None:
            request.signal = signum
            _tell(f"{name}: finishing the current batch, then saving and stopping (Ctrl-C again aborts at once)")
        else:
            aborting = True
            if request.signal is None:  # recorded too: should the interrupt be lost (raised inside a finalizer,
                request.signal = signum  # which Python ignores), the trainer refuses to start (Trainer.fit)
            raise KeyboardInterrupt

    def on_unraisable(unraisable) -> None:
        # Our KeyboardInterrupt raised inside a finalizer (a weakref callback, __del__) is lost, and Python would print
        # its traceback as "Exception ignored in ..."; the signal is recorded in the request, so stay quiet about it.
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and aborting:
            log.debug("interrupt raised inside a finalizer (%r); recorded, the trainer will not start",
                      unraisable.object)
        else:
            previous_hook(unraisable)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, on_unraisable
    try:
        yield request
    except TrainingStopped as stopped:
        console.print(f"[yellow]{escape(str(stopped))}[/yellow]; {_outputs(stopped)}; {after_stop}", highlight=False,
                      soft_wrap=True)
        sys.exit(128 + stopped.signal)
    finally:
        sys.unraisablehook = previous_hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _tell(message: str) -> None:
    """Print from a signal handler: straight to file descriptor 2 (the buffered stderr may be in mid-write)."""
    os.write(2, (message + "\n").encode())


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console, disable=not console.is_terminal,
                    transient=True)


class TrainingBar:
    """The progress of ``pnn run``: calibration steps, then the epoch (k/N, its batches, its ETA) and the whole
    training (all batches, its ETA)."""

    def __init__(self, bar: Progress):
        self.bar = bar
        self.calibration: TaskID | None = None
        self.step = ""  # the calibration step its bar shows
        self.epoch: TaskID | None = None
        self.run: TaskID | None = None

    def calibrating(self, what: str, i: int, n: int) -> None:
        """A step of the calibration (twin data, a fit: ``n`` 0 when its length is unknown); each step a bar."""
        if self.calibration is None or what != self.step:
            if self.calibration is not None:
                self.bar.update(self.calibration, visible=False)
            self.calibration, self.step = self.bar.add_task(what, total=n or None), what
        self.bar.update(self.calibration, completed=i, total=n or None)

    def batch(self, done: int, n: int, epoch: int, epochs: int) -> None:
        if self.epoch is None:
            if self.calibration is not None:
                self.bar.update(self.calibration, visible=False)
            self.epoch = self.bar.add_task("epoch", total=n)
            self.run = self.bar.add_task("training", total=n * epochs, completed=(epoch - 1) * n + done - 1)
        self.bar.update(self.epoch, description=f"epoch {epoch}/{epochs}", completed=done, total=n)
        self.bar.update(self.run, completed=(epoch - 1) * n + done, total=n * epochs)


def _configure_logging(level: int) -> None:
    """Log records to stderr with timestamps; on a terminal through rich, so that they print above the progress bar.
    As logging.basicConfig: only when no handler is configured yet (e.g. by a test runner)."""
    root = logging.getLogger()
    if root.handlers:
        return
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, log_time_format="%Y-%m-%d %H:%M:%S",
                                               rich_tracebacks=False, markup=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from orchestrator.provenance import version_line

    click.echo(version_line())
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--setup-file", "setup_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A Python file that registers a setup of your own (register_setup); may be repeated.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print pnn-lab's version and git commit, and exit.")
def main(verbose: int, setup_files: tuple[str, ...]) -> None:
    """pnn-lab: physics-aware training of physical neural networks."""
    keep_freed_memory()  # arrays of MBs are freed and allocated again at every forward pass
    skip_collection_at_exit()  # the interpreter's last collections would walk every object: a second at exit
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    _configure_logging(level)
    if verbose == 0:
        logging.getLogger("orchestrator").setLevel(logging.INFO)
    from orchestrator.kits import load_setup_file

    for path in setup_files:
        try:
            load_setup_file(path)
        except Exception as err:  # noqa: BLE001 - the lab's own code: say which file, keep the details for -vv
            log.debug("loading %s", path, exc_info=True)
            console.print(f"[red]error:[/red] setup file {escape(path)}: {type(err).__name__}: {escape(str(err))}",
                          highlight=False, soft_wrap=True)
            sys.exit(2)


def _remember_simulate(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta["simulate"] = value
    return value


simulate_opt = click.option("--simulate", is_flag=True, callback=_remember_simulate,
                            help="Start the experiment's simulated bench in-process (it supplies the instruments' "
                                 "resources; without it they must be set in the experiment file).")
set_opt = click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
                       help="Override a field of the experiment file, e.g. --set training.epochs=3.")
data_opt = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                        help="Data directory (default: $PNN_DATA_DIR).")


@main.command()
@click.argument("experiment", type=click.Path())
@simulate_opt
@set_opt
@data_opt
def check(experiment: str, simulate: bool, sets: tuple[str, ...], data_dir: str | None) -> None:
    """Validate EXPERIMENT, check its data set is there, connect to its instruments, ask *IDN? and check settings
    against limits. Exit 2 when the file, its settings or its data set need fixing, 3 when an instrument cannot be
    reached or reports errors."""
    from orchestrator.checks import check_experiment

    with _errors_to_exit_codes():
        cfg = _load(experiment, sets)
        rows, code = check_experiment(cfg, simulate=simulate, data_dir=resolve_data_dir(data_dir))
        table = Table(title=f"{cfg.experiment}: check")
        for col in ("item", "value", "status"):
            table.add_column(col)
        for item, value, status in rows:
            table.add_row(item, value, "[green]ok[/green]" if status == "ok" else f"[red]{status}[/red]")
        out_console.print(table)
        sys.exit(code)


@main.command()
@click.argument("experiment", type=click.Path())
@simulate_opt
@set_opt
@data_opt
@click.option("--twins", default="neural,physics", show_default=True, help="Which twins to fit.")
def calibrate(experiment: str, simulate: bool, sets: tuple[str, ...], data_dir: str | None, twins: str) -> None:
    """Calibrate instruments, measure twin data (HDF5), fit twins and write a report with plots."""
    from orchestrator.calibrate import TWIN_FILES, calibrate as run_calibration
    from orchestrator.experiment import load_task
    from orchestrator.lab import device_width
    from orchestrator.session import open_session

    with _errors_to_exit_codes():
        cfg = _load(experiment, sets)
        kinds = [k.strip() for k in twins.split(",") if k.strip()]
        bad = [k for k in kinds if k not in TWIN_FILES]
        if bad:
            raise click.BadParameter(f"unknown twin kind(s) {bad}; choose from {', '.join(TWIN_FILES)}",
                                     param_hint="--twins")
        # the device width: configured, else the data set's number of features (then the data set is needed)
        n = cfg.network.width or device_width(cfg, load_task(cfg, resolve_data_dir(data_dir)).x_train.shape[1])
        artifacts = cfg.artifacts_path(simulate)
        with stop_on_signals(), open_session(cfg, n, simulate=simulate) as session, _progress() as bar:
            task = bar.add_task("calibrating", total=None)
            report = run_calibration(cfg, session.setup, artifacts, kinds,
                                     progress=lambda what, i, n: bar.update(task, description=what, completed=i,
                                                                            total=n or None))
        out_console.print_json(json.dumps(report))
        out_console.print(f"artifacts in {artifacts}")


@main.command()
@click.argument("experiment", type=click.Path())
@simulate_opt
@set_opt
@data_opt
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder (default runs/<experiment>).")
@click.option("--resume", is_flag=True, help="Continue the run in --out after its last finished epoch.")
@click.option("--mode", type=click.Choice(["pat", "in_silico", "perturbative"]), default=None,
              help="Override training.mode (perturbative: SPSA on the device, no twin).")
@click.option("--twin", type=click.Choice(["neural", "physics", "hybrid", "perfect"]), default=None,
              help="Override twin.kind.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override training.epochs.")
@faults_opt
def run(experiment: str, simulate: bool, sets: tuple[str, ...], data_dir: str | None, out: str | None,
        resume: bool, mode: str | None, twin: str | None, epochs: int | None) -> None:
    """Train a physical neural network and evaluate it on the device."""
    from orchestrator.experiment import run as run_experiment
    from orchestrator.session import require_bench_for

    click.get_current_context().meta["run_folder"] = None
    with _errors_to_exit_codes():
        extra = tuple(sets) + tuple(f"{k}={v}" for k, v in
                                    (("training.mode", mode), ("twin.kind", twin), ("training.epochs", epochs)) if v)
        cfg = _load(experiment, extra)
        out_dir = Path(out or Path("runs") / cfg.experiment)
        if cfg.training.mode != "perturbative":  # perturbative training uses no twin, whatever twin.kind says
            require_bench_for(cfg.twin.kind, simulated=simulate)
        check_not_in_use(out_dir)
        if resume:
            _resume_or_exit(out_dir, cfg.training.epochs)
        elif (out_dir / "summary.json").exists():
            # an unreadable summary: overwritten all the same
            status = RunFolder(out_dir).previous_summary().get("status", "previous")
            console.print(f"note: {out_dir} holds a {status} run; it will be overwritten"
                          + ("" if status == "finished" else " (to continue it instead, use --resume)"))
        click.get_current_context().meta["run_folder"] = (out_dir, time.time(), resume)
        with _plot_worker() as plotter, stop_on_signals("resume with --resume") as stop, _progress() as bar:
            progress = TrainingBar(bar)
            summary = run_experiment(
                cfg, out_dir, simulate=simulate, resume=resume, data_dir=resolve_data_dir(data_dir),
                on_batch=progress.batch, on_calibration=progress.calibrating, stop=stop,
                plotter=plotter)  # epochs are logged
        _print_summary(summary)
        out_console.print(f"run folder: {out_dir}")


@contextmanager
def _plot_worker():
    """The run folders' plots drawn in a process of their own (``orchestrator.plot_worker``), forked now, before
    the bench, the progress bar and torch start threads; None where that cannot be (they are then drawn here)."""
    from orchestrator.plot_worker import PlotWorker

    worker = PlotWorker.start()
    try:
        yield worker
    finally:
        if worker is not None:
            worker.close()


def _print_summary(summary: dict) -> None:
    table = Table(title="summary")
    table.add_column("field")
    table.add_column("value")
    for k, v in summary.items():
        if not isinstance(v, dict):  # nested records (provenance) are in summary.json
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    out_console.print(table)


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default="compare.png", show_default=True,
              help="Where to write the plot of the learning curves (PNG).")
def compare(runs: tuple[str, ...], out: str) -> None:
    """Compare run folders: one table (experiment, mode, twin, device test accuracy, epochs, wall time, device busy
    share, commit) and a plot of their learning curves."""
    from orchestrator.compare import COLUMNS, NUMERIC_COLUMNS, CompareError, load_run, plot_comparison

    try:
        records = [load_run(path) for path in runs]
    except CompareError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    table = Table(title="runs compared", title_justify="left")
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in NUMERIC_COLUMNS else "left")
    for record in records:
        table.add_row(*record.cells())
    (out_console if out_console.is_terminal else Console(width=250)).print(table)  # a file or pipe: whole cells
    try:
        path = plot_comparison(records, out)
    except OSError as err:
        console.print(f"[red]error:[/red] cannot write {escape(out)}: {escape(str(err))}", highlight=False,
                      soft_wrap=True)
        sys.exit(2)
    out_console.print(f"learning curves: {path}")


@main.command()
@click.argument("experiment", type=click.Path())
@simulate_opt
@set_opt
@data_opt
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder (default runs/<experiment>-bench).")
@click.option("--rows", default=",".join(f"{m}:{t}" if m != "digital" else m for m, t in BENCH_ROWS), show_default=True,
              help="Which rows, as MODE:TWIN (and 'digital', 'perturbative'; MODE+refine:TWIN refines the twin from "
                   "the training's device measurements), comma-separated.")
@click.option("--resume", is_flag=True, help="Keep the rows --out holds finished, continue those with a checkpoint.")
@faults_opt
def bench(experiment: str, simulate: bool, sets: tuple[str, ...], data_dir: str | None, out: str | None,
          rows: str, resume: bool) -> None:
    """Compare PAT (each twin), in-silico training, the perfect twin and a digital baseline (and, with --rows,
    refined twins and perturbative training); bench.md, and bench_samples.png: accuracy against device samples."""
    from orchestrator.experiment import bench as run_bench

    with _errors_to_exit_codes():
        cfg = _load(experiment, sets)
        wanted = [tuple((r.strip() + ":-").split(":")[:2]) for r in rows.split(",") if r.strip()]
        bad = [r for r in wanted if r not in BENCH_ROW_CHOICES]
        if bad:
            choices = ", ".join(f"{m}:{t}" if m != "digital" else m for m, t in BENCH_ROW_CHOICES)
            raise click.BadParameter(f"unknown row(s) {bad}; choose from {choices}", param_hint="--rows")
        out_dir = Path(out or Path("runs") / f"{cfg.experiment}-bench")
        with _plot_worker() as plotter, \
                stop_on_signals(f"the finished rows are in {out_dir / 'bench.json'}; continue with --resume") as stop:
            run_bench(cfg, out_dir, simulate=simulate, data_dir=resolve_data_dir(data_dir), rows=wanted, resume=resume,
                      on_row=lambda m, t: console.print(f"bench row: {m} / {t}"), stop=stop, plotter=plotter)
        out_console.print((out_dir / "bench.md").read_text())


@main.command()
@click.argument("sweep_file", metavar="SWEEP", type=click.Path())
@click.option("--simulate", is_flag=True, help="Every trial starts its own simulated bench on free loopback ports.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Sweep folder (default runs/sweeps/<sweep>): results.csv, results.md, sweep.png, trials/<id>/.")
@click.option("--address", default=None, metavar="auto|ray://HOST:10001",
              help="Run on an existing Ray cluster (default: Ray embedded in this process, bound to 127.0.0.1).")
@click.option("--resume", is_flag=True, help="Continue the sweep in --out (unfinished trials from their checkpoints).")
@click.option("--retry-failed", is_flag=True, help="With --resume: run the failed trials again.")
@click.option("--cpus", type=click.IntRange(min=1), default=None,
              help="CPUs of the embedded Ray (default: all of this machine's).")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="Override the sweep file's max_concurrent (trials at once).")
@data_opt
def sweep(sweep_file: str, simulate: bool, out: str | None, address: str | None, resume: bool, retry_failed: bool,
          cpus: int | None, max_concurrent: int | None, data_dir: str | None) -> None:
    """Search an experiment's settings on Ray Tune: each trial is a pnn run with its own run folder; results in
    SWEEP_DIR/results.md. Exit 0 when the sweep ran to its end (failed trials are listed), 1 when every trial failed,
    2 for a bad sweep file or option, 130 when stopped (continue with --resume)."""
    from orchestrator.sweep import SweepError, SweepOptions, run_sweep
    from orchestrator.sweep_file import load_sweep

    with _errors_to_exit_codes():
        loaded = load_sweep(sweep_file)
        if max_concurrent is not None:
            loaded.config.max_concurrent = max_concurrent
        simulate = simulate or loaded.config.simulate
        if not simulate:  # real instruments: no placeholder resources
            require_resources(loaded.base, loaded.experiment_path)
        out_dir = Path(out or Path("runs") / "sweeps" / loaded.name)
        setup_files = click.get_current_context().find_root().params.get("setup_files", ())
        options = SweepOptions(out_dir, simulate=simulate, address=address, resume=resume, retry_failed=retry_failed,
                               num_cpus=cpus, data_dir=resolve_data_dir(data_dir), setup_files=list(setup_files))
        try:
            outcome = run_sweep(loaded, options)
        except SweepError as err:
            console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
            sys.exit(2)
    click.echo((outcome.out / "results.md").read_text())  # Markdown: whole lines, to a terminal or a file
    out_console.print(f"sweep folder: {outcome.out}", highlight=False, soft_wrap=True)
    if outcome.interrupted:
        again = f"pnn sweep {sweep_file}{' --simulate' if simulate else ''} --out {outcome.out} --resume"
        console.print(f"[yellow]the sweep stopped before its end[/yellow]: continue it with {escape(again)}",
                      highlight=False, soft_wrap=True)
        sys.exit(130)
    if outcome.rows and all(r.status == "failed" for r in outcome.rows):
        sys.exit(1)


@main.group()
def sim() -> None:
    """Simulated instruments."""


@sim.command()
@click.argument("bench_name", metavar="BENCH")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="First port (0: free ports); instruments use consecutive ports.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--realtime", is_flag=True, help="Acquisitions take their physical duration.")
@click.option("--serial", type=click.Choice(["pty", "socket"]), default="pty", show_default=True,
              help="Serial instruments (optical bench) on pseudo-terminals or on socket:// URLs.")
@click.option("--faults", "fault_rate", type=click.FloatRange(0, 1), default=0.0, metavar="RATE",
              help="Every instrument injects every kind of fault with probability RATE per reply.")
def serve(bench_name: str, host: str, port: int, seed: int, realtime: bool, serial: str, fault_rate: float) -> None:
    """Serve BENCH's instruments (electronic, mechanical or optical) and print '<role> <resource>' per instrument,
    until interrupted."""
    from simulators.benches import BENCHES, start_bench

    if bench_name not in BENCHES:
        raise click.BadParameter(f"{bench_name!r} is not one of {', '.join(map(repr, sorted(BENCHES)))}",
                                 param_hint="BENCH")
    from common.faults import FaultPlan

    roles = BENCHES[bench_name].roles
    ports = {role: (port + i if port else 0) for i, role in enumerate(roles)}
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    faults = {role: FaultPlan.every_kind(fault_rate, seed=seed + i) for i, role in enumerate(roles)}
    with start_bench(bench_name, host=host, seed=seed, realtime=realtime, ports=ports, serial=serial,
                     faults=faults if fault_rate else None) as b:
        for role, res in b.resources.items():
            click.echo(f"{role} {res}")
        sys.stdout.flush()
        if any("::SOCKET" in res for res in b.resources.values()):
            click.echo("to talk to it from pyvisa: rm.open_resource(resource, read_termination='\\n', "
                       "write_termination='\\n') (a LAN socket has no end-of-message signal); Ctrl-C stops it",
                       err=True)
        while not stop.wait(0.5):
            pass


@main.command()
@click.option("--visa-library", default="@py", show_default=True)
def resources(visa_library: str) -> None:
    """List VISA resources and serial ports."""
    import warnings

    import pyvisa
    from serial.tools import list_ports

    table = Table(title="instruments")
    table.add_column("kind")
    table.add_column("resource")
    table.add_column("description")
    # the VISA backend warns about what its search cannot reach (pyvisa-py: other interfaces, HiSLIP): one short note
    # each under the table, not a Python warning with its source line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            for res in pyvisa.ResourceManager(visa_library).list_resources():
                table.add_row("VISA", res, "")
        except Exception as err:  # noqa: BLE001 - a missing VISA backend is reported, not fatal
            table.add_row("VISA", "-", f"cannot list: {err}")
    for port in list_ports.comports():
        table.add_row("serial", port.device, port.description)
    out_console.print(table)
    for note in dict.fromkeys(" ".join(str(w.message).split()) for w in caught):
        console.print(f"note: {escape(note)}", style="dim", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
