"""The run folder: what ``pnn run`` leaves for the operator, every file written atomically.

    config.yaml            the resolved settings              instruments.json   identities, settings, calibration
    metrics.csv            one row per epoch (the trainer)    checkpoint.pt      resumable (the trainer)
    summary.json           state, results, provenance         run.log            everything logged, with timestamps
    learning_curves.png    loss and accuracies per epoch      confusion_matrix.png   the device's test predictions
    physical_outputs.png   the device outputs of each layer   twin_vs_device.png     the twin's calibration plot
    events.out.tfevents.*  TensorBoard (orchestrator.tensorboard)
    .pnn.lock              held while a process trains into the folder (``using_run_folder``): one at a time

summary.json always tells what state the folder is in: ``"status": "running"`` from the start, then ``"finished"``,
or, when the run ended early, ``"stopped"`` (first Ctrl-C or SIGTERM), ``"failed"`` (the device kept failing, or
another error) or ``"aborted"`` (a second Ctrl-C), with the position the checkpoint holds (resume continues after it).
It also holds ``started`` (when the run's first session started), ``session_started`` and ``ended`` (ISO 8601 UTC) and
``provenance`` (``orchestrator.provenance``: code version and commit, Python, torch, host, the twin, the data).

The plots are rewritten after every epoch (the confusion matrix and the physical outputs after every epoch evaluated
on the device), as long as drawing them takes at most ``PLOT_SHARE`` of the training time; on a fast simulated bench
some epochs are then skipped, and the end of the run draws them all (after the final evaluation, which follows the
last epoch at once: that epoch's own plots are not drawn). ``pnn run`` draws them in a process of its own
(``orchestrator.plot_worker``) while training goes on.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from filelock import FileLock, Timeout

from common.files import atomic_write_bytes, read_json_object
from orchestrator import plots
from orchestrator.config import ExperimentConfig, dump_config
from orchestrator.tensorboard import RunBoard
from orchestrator.trainer import Evaluation, TrainingStopped, TrainingWatch

if TYPE_CHECKING:
    from orchestrator.plot_worker import PlotWorker

log = logging.getLogger(__name__)

PLOT_SHARE = 0.1
"""At most this share of the training time goes into the plots after each epoch."""
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"
RUN_LOG = "run.log"


class RunFolder:
    """The files of one run in ``path``; ``about`` (experiment, mode, twin) titles the plots, ``axis`` says what the
    physical outputs are (default: bin indices)."""

    def __init__(self, path: Path, about: dict | None = None, class_names: Sequence[str] | None = None,
                 axis: plots.OutputAxis | None = None):
        self.path = Path(path)
        self.about = about or {}
        self.class_names = list(class_names) if class_names is not None else None
        self.axis = axis

    def start(self, cfg: ExperimentConfig, snapshot: dict, about: dict) -> None:
        """Write the resolved settings and the instruments' snapshot, and a summary saying the run is running."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path / "config.yaml", dump_config(cfg).encode())
        atomic_write_bytes(self.path / "instruments.json", json.dumps(snapshot, indent=2, default=str).encode())
        self.write_summary({**about, "status": "running"})

    def previous_summary(self) -> dict:
        """The summary.json there now ({} if none or unreadable)."""
        return read_json_object(self.path / "summary.json")

    def finished_summary(self, epochs: int) -> dict | None:
        """The summary of the run there if it finished with at least ``epochs`` epochs trained, else None."""
        summary = self.previous_summary()
        done = summary.get("epochs")
        return summary if summary.get("status") == "finished" and isinstance(done, int) and done >= epochs else None

    def write_summary(self, summary: dict) -> None:
        atomic_write_bytes(self.path / "summary.json", json.dumps(summary, indent=2).encode())

    # -- plots -------------------------------------------------------------------------------------------------------
    def title(self, what: str) -> str:
        """``<experiment>: <mode> with the <twin> twin: <what>``."""
        a = self.about
        run = f"{a.get('experiment', self.path.name)}: {a.get('mode', '?')}"
        if a.get("twin") not in (None, "-"):
            run += f" with the {a['twin']} twin"
        return f"{run}: {what}"

    def write_plots(self, rows: list[dict], evaluation: Evaluation | None, when: str) -> None:
        """The learning curves from ``rows``, and, given an evaluation, its confusion matrix and physical outputs;
        ``when`` ("after epoch 3", "final") goes into the titles."""
        plots.plot_learning_curves(rows, self.path / "learning_curves.png",
                                   self.title("learning curves (test accuracy measured on the device)"))
        if evaluation is None:
            return
        names = self.class_names or [str(c) for c in range(int(max(evaluation.y_true.max(initial=0),
                                                                    evaluation.predicted.max(initial=0))) + 1)]
        plots.plot_confusion_matrix(evaluation.y_true, evaluation.predicted, names,
                                    self.path / "confusion_matrix.png", self.title(f"device test predictions, {when}"))
        if evaluation.layer_outputs:
            shown = evaluation.y_true[:len(evaluation.layer_outputs[0])]
            plots.plot_physical_outputs(
                evaluation.layer_outputs, self.path / "physical_outputs.png",
                self.title(f"device outputs of each layer for test samples, {when}"),
                labels=[f"layer {i + 1}" for i in range(len(evaluation.layer_outputs))], axis=self.axis,
                sample_classes=[names[int(c)] if int(c) < len(names) else str(c) for c in shown])


def draw_plots(folder: RunFolder, rows: list[dict], evaluation: Evaluation | None, when: str) -> float:
    """``folder.write_plots(rows, evaluation, when)``; returns the seconds it took (wherever it ran)."""
    t0 = time.perf_counter()
    folder.write_plots(rows, evaluation, when)
    return time.perf_counter() - t0


def _warn_once(watch: RunWatch, what: str, err: BaseException) -> None:
    if what not in watch.failed:
        log.warning("%s failed (%s: %s); training goes on without it", what, type(err).__name__, err)
    watch.failed.add(what)


def _optional(what: str):
    """Decorate a ``RunWatch`` method: an error in it (a full disk, a plotting or TensorBoard failure) is logged as a
    warning and training goes on; the device time of an epoch is not lost for a picture."""
    def wrap(method):
        def call(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except Exception as err:  # noqa: BLE001 - anything, and only here: the watch shows, it does not train
                _warn_once(self, what, err)
        return call
    return wrap


EPOCH_PLOTS = "the plots after an epoch"


@dataclass
class _Drawing:
    """A set of plots handed to the plot worker: its future, the step of its epoch (once known), whether it draws
    the physical outputs (TensorBoard's image)."""

    job: Future
    step: int | None
    outputs: bool


class RunWatch(TrainingWatch):
    """What the run folder shows while training: plots after the epochs, paced (drawing them takes at most
    ``PLOT_SHARE`` of the training time), and TensorBoard event files. With a ``plotter``
    (``orchestrator.plot_worker``) the plots are drawn in its process and training goes on meanwhile; without one,
    here. ``draw_final`` and ``finish_plots`` make the final evaluation's plots. ``close`` closes the event files
    (on every way out). A failure of a plot after an epoch or of TensorBoard is logged once and does not stop
    training (``_optional``)."""

    def __init__(self, folder: RunFolder, tensorboard: bool = True, final_after: int | None = None,
                 plotter: PlotWorker | None = None):
        self.folder = folder
        # the epoch after which the final evaluation's plots follow at once (draw_final): its own plots would be
        # drawn only to be drawn again a moment later; None: draw after every epoch the pacing allows
        self.final_after = final_after
        self.plotter = plotter
        self.board = RunBoard(folder.path) if tensorboard else None
        self.t0 = time.perf_counter()
        self.plot_s = self.last_plot_s = 0.0  # drawing all plots after epochs so far, and the last ones, s
        self.image_written = False
        self.drawing: list[_Drawing] = []  # sets handed to the plotter, oldest first, not yet shown in TensorBoard
        self.final: tuple[list[dict], Evaluation, Future | None] | None = None
        self.failed: set[str] = set()  # what failed already (warned once)

    @_optional("TensorBoard")
    def start(self, step: int, resumed: bool) -> None:
        self.t0, self.plot_s, self.last_plot_s = time.perf_counter(), 0.0, 0.0
        if self.board is not None:
            self.board.start(step, resumed)

    @_optional("TensorBoard")
    def batch(self, step: int, loss: float) -> None:
        if self.board is not None:
            self.board.batch(step, loss)

    @_optional(EPOCH_PLOTS)
    def epoch_evaluated(self, rows: list[dict], evaluation: Evaluation | None) -> None:
        self.image_written = False
        self._show_drawn()  # before the worker may overwrite the files of the set it finished
        epoch = rows[-1]["epoch"]
        if self.final_after is not None and epoch >= self.final_after:
            log.debug("plots after epoch %s left to the final evaluation", epoch)
            return
        if self.plot_s + self.last_plot_s > PLOT_SHARE * (time.perf_counter() - self.t0):  # this one included
            log.debug("plots after epoch %s skipped (drawing them took %.1f s so far)", epoch, self.plot_s)
            return
        outputs = evaluation is not None and bool(evaluation.layer_outputs)
        if self.plotter is not None:
            try:
                job = self.plotter.draw(draw_plots, self.folder, rows, evaluation, f"after epoch {epoch}")
            except BrokenProcessPool as err:
                log.warning("the plot worker ended (%s); plots are drawn in the training process from now on", err)
                self.plotter = None
            else:
                if job is None:
                    log.debug("plots after epoch %s skipped: the previous ones are still being drawn", epoch)
                else:
                    self.drawing.append(_Drawing(job, None, outputs))
                return
        self.last_plot_s = draw_plots(self.folder, rows, evaluation, f"after epoch {epoch}")
        self.plot_s += self.last_plot_s
        self.image_written = outputs

    @_optional("TensorBoard")
    def epoch_done(self, step: int, row: dict) -> None:
        if self.drawing and self.drawing[-1].step is None:  # the set this epoch handed to the worker
            self.drawing[-1].step = step
        if self.board is not None:
            image = self.folder.path / "physical_outputs.png" if self.image_written else None
            self.board.epoch(step, row, image)
        self._show_drawn()

    def _show_drawn(self, wait: bool = False) -> None:
        """The sets the worker has finished (all of them, if ``wait``): their physical outputs go to TensorBoard at
        their epoch's step, a failure is warned about once."""
        while self.drawing and self.drawing[0].step is not None and (wait or self.drawing[0].job.done()):
            done = self.drawing.pop(0)
            if done.job.cancelled():
                continue
            if done.job.exception() is not None:
                _warn_once(self, EPOCH_PLOTS, done.job.exception())
                continue
            self.last_plot_s = done.job.result()
            self.plot_s += self.last_plot_s
            if done.outputs and self.board is not None:
                try:
                    self.board.image(done.step, self.folder.path / "physical_outputs.png")
                except Exception as err:  # noqa: BLE001 - as _optional
                    _warn_once(self, "TensorBoard", err)

    def draw_final(self, rows: list[dict], evaluation: Evaluation) -> None:
        """Start the final evaluation's plots: in the worker, after the set it is drawing (training is over, the
        device measures on meanwhile); without one, ``finish_plots`` draws them. A set after an epoch still being
        drawn is waited for first: its image must be read before the final plots overwrite the file."""
        self._show_drawn(wait=True)
        job = None
        if self.plotter is not None:
            try:
                job = self.plotter.draw_next(draw_plots, self.folder, rows, evaluation, "final")
            except BrokenProcessPool as err:
                log.warning("the plot worker ended (%s); the final plots are drawn in the training process", err)
        self.final = (rows, evaluation, job)

    def finish_plots(self, step: int) -> None:
        """Wait for the final plots (or draw them here) and put their physical outputs into TensorBoard at ``step``.
        An error drawing them is raised: the run's last plots must not be missing silently."""
        self._show_drawn(wait=True)
        if self.final is None:
            return
        rows, evaluation, job = self.final
        if job is not None:
            try:
                job.result()
            except BrokenProcessPool as err:
                log.warning("the plot worker ended (%s); the final plots are drawn in the training process", err)
                job = None
        if job is None:
            draw_plots(self.folder, rows, evaluation, "final")
        self._final_image(step)

    @_optional("TensorBoard")
    def _final_image(self, step: int) -> None:
        if self.board is not None:
            self.board.image(step, self.folder.path / "physical_outputs.png")

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


class RunFolderInUse(RuntimeError):
    """Another process (a ``pnn run``, a bench row, a sweep trial) is training into this run folder."""


LOCK = ".pnn.lock"
_held: set[Path] = set()  # the run folders this process holds


@contextmanager
def using_run_folder(folder: Path, append: bool) -> Iterator[Path]:
    """Hold ``folder`` for this process while the block runs, and copy every log record the console gets into
    ``folder/run.log`` (appended when ``append``, e.g. on resume). Nested blocks for the same folder hold it once.

    The hold is an OS file lock on ``folder/.pnn.lock`` (``filelock``): a second process that wants the folder gets
    ``RunFolderInUse`` before it touches a file there; a process that dies releases it."""
    path = Path(folder) / RUN_LOG
    key = Path(folder).resolve()
    if key in _held:
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock(folder)
    _held.add(key)
    try:
        handler = logging.FileHandler(path, mode="a" if append else "w", encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield path
        finally:
            root.removeHandler(handler)
            handler.close()
    finally:
        _held.discard(key)
        lock.release()


def check_not_in_use(folder: Path) -> None:
    """Raise ``RunFolderInUse`` when another process holds ``folder`` now (for a command to call before it says what
    it will do to the folder's files)."""
    if Path(folder).resolve() not in _held and (Path(folder) / LOCK).exists():
        _lock(folder).release()


def _lock(folder: Path) -> FileLock:
    """The folder's lock, acquired; ``RunFolderInUse`` when another process holds it."""
    lock = FileLock(Path(folder) / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunFolderInUse(f"{folder} is in use by another process (a pnn run, bench row or sweep trial training "
                             f"into it); wait for it to end, or choose another --out") from None
    return lock


def ended_early(err: BaseException) -> str:
    """The summary status of a run that ended with ``err``."""
    if isinstance(err, TrainingStopped):
        return "stopped"
    return "aborted" if isinstance(err, KeyboardInterrupt) else "failed"
