"""One trial of a sweep, as it runs inside a Ray worker: ``pnn run`` (``orchestrator.experiment.run``) in a thread,
its epochs handed to Tune one by one, stopped safely when Tune or the operator asks.

The trial's run folder is ``SWEEP_DIR/trials/<trial id>``: the files of ``pnn run``, plus ``trial.json`` (its
settings, status, error, and the wall-clock times it started and ended: the sweep's results and the bench-sharing
test read them). A trial whose folder holds a checkpoint continues from it (``pnn run --resume``): this is how
``pnn sweep --resume`` and a retried trial pick up where they stopped. The run folder is the trial's only checkpoint;
Tune's own checkpoints are not used.

Nothing here imports Ray: ``orchestrator.sweep`` wraps ``TrialRun`` in a ``ray.tune.Trainable``.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import json
import logging
import queue
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

from common.files import atomic_write_bytes, read_json_object
from orchestrator.run_folder import RunFolder
from orchestrator.sweep_file import expand_settings, kit_experiment_model
from orchestrator.trainer import CHECKPOINT, StopRequest, TrainingStopped
from orchestrator.yamlconfig import set_by_path

log = logging.getLogger(__name__)

TRIAL_FILE = "trial.json"
TWIN_PATHS = ("setup", "instruments", "encoding", "twin", "simulate", "network.width", "task.downsample")
"""Settings a twin is calibrated for: trials that vary them keep their twins apart (their own ``artifacts_dir``)..."""
NOT_TWIN_PATHS = ("twin.refine",)
"""... except these: how training refines a copy of the twin changes nothing in the twin it starts from."""
STOP_FILE = ".stop"
"""In the sweep folder while the sweep is being stopped (Ctrl-C): every trial stops after its current batch."""


class TrialError(RuntimeError):
    """A trial's error as Tune records it: the original's type and message (any exception, picklable or not)."""


class TrialFailedBefore(TrialError):
    """A trial that failed in an earlier session of the sweep; ``pnn sweep --resume --retry-failed`` runs it again."""


def trial_config(spec: dict, settings: dict[str, Any]):
    """The trial's experiment: the stored base with its settings applied (a linked dimension's label: the fields of
    its variant), validated by the setup's model; a trial that varies what its twin is calibrated for keeps its twin
    in ``<artifacts_dir>-<hash of those settings>``."""
    settings = expand_settings(spec["sweep"]["space"], settings)
    data = copy.deepcopy(spec["base"])
    for path, value in settings.items():
        set_by_path(data, path, value)
    key = artifacts_key(settings)
    if key and data.get("artifacts_dir"):
        data["artifacts_dir"] = f"{data['artifacts_dir']}-{key}"
    return kit_experiment_model(spec["setup"]).model_validate(data)


def artifacts_key(settings: dict[str, Any]) -> str | None:
    """A short hash of the settings a twin is calibrated for, or None when the trial varies none of them."""
    relevant = {k: v for k, v in sorted(settings.items())
                if k.startswith(TWIN_PATHS) and not k.startswith(NOT_TWIN_PATHS)}
    if not relevant:
        return None
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:10]


def read_trial_file(folder: Path) -> dict:
    """A trial's trial.json ({} if it has none yet)."""
    return read_json_object(Path(folder) / TRIAL_FILE)


@contextmanager
def twin_lock(artifacts: Path) -> Iterator[None]:
    """Hold an exclusive lock on the twin artifacts folder ``artifacts`` (a file beside it): trials that need the
    same twin calibrate it once, one after the other, instead of all at once (on one machine; nodes of a cluster
    each keep their own artifacts)."""
    artifacts.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(artifacts.with_name(artifacts.name + ".lock")):
        yield


class TrialRun:
    """``pnn run`` of one trial in a background thread; ``next_result()`` returns what Tune gets at each step.

    Args:
        spec: the sweep's stored spec (``Sweep.spec()`` plus ``sweep_dir``, ``simulate``, ``data_dir``, ``retry_failed``).
        settings: the trial's values, dotted path -> value.
        trial_id: Tune's id of the trial (the run folder's name).
    """

    def __init__(self, spec: dict, settings: dict[str, Any], trial_id: str):
        self.spec, self.settings, self.trial_id = spec, dict(settings), trial_id
        self.sweep_dir = Path(spec["sweep_dir"])
        self.out = self.sweep_dir / "trials" / trial_id
        self.metric: str = spec["sweep"]["metric"]
        self.results: queue.Queue = queue.Queue()
        self.stop = StopRequest()
        self.thread: threading.Thread | None = None
        self.record: dict = {}
        self.epochs = 0  # the trial's training.epochs, once its configuration is read

    # -- the worker's side ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        before = read_trial_file(self.out)
        self.record = {"trial": self.trial_id, "settings": self.settings, "host": socket.gethostname(),
                       "sessions": before.get("sessions", [])}
        if before.get("status") == "failed" and not self.spec.get("retry_failed"):
            self.results.put(("error", TrialFailedBefore(f"failed in an earlier session of the sweep: "
                                                         f"{before.get('error')} (--retry-failed runs it again)")))
            self.record.update(status="failed", error=before.get("error"))
            return
        self.thread = threading.Thread(target=self._run, name=f"trial-{self.trial_id}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from orchestrator.experiment import run

        session = {"started": time.time()}
        self.record["sessions"].append(session)
        self._write(status="running")
        resume = (self.out / CHECKPOINT).exists()
        try:
            cfg = trial_config(self.spec, self.settings)
            self.epochs = cfg.training.epochs
            previous = RunFolder(self.out).finished_summary(cfg.training.epochs) if resume else None
            if previous is not None:
                log.info("trial %s finished in an earlier session", self.trial_id)
                summary = previous
            else:
                lock = twin_lock(cfg.artifacts_path(self.spec["simulate"]))
                lock.__enter__()
                held = [True]

                def release(*_: Any) -> None:  # the twin is ready once the first batch is trained
                    if held[0]:
                        held[0] = False
                        lock.__exit__(None, None, None)
                    if (self.sweep_dir / STOP_FILE).exists() and self.stop.signal is None:
                        self.stop.signal = signal.SIGINT

                def epoch(n: int, row: dict) -> None:
                    release()
                    self.results.put(("epoch", row))

                try:
                    summary = run(cfg, self.out, simulate=self.spec["simulate"], resume=resume,
                                  data_dir=self.spec.get("data_dir"), on_batch=release, on_epoch=epoch, stop=self.stop)
                finally:
                    release()
        except TrainingStopped as stopped:
            session.update(ended=time.time(), status="stopped")
            self._write(status="stopped", error=None)
            self.results.put(("stopped", stopped))
            return
        except KeyboardInterrupt as err:  # close() while calibrating or evaluating: the outputs are off
            session.update(ended=time.time(), status="interrupted")
            self._write(status="interrupted", error=None)
            self.results.put(("stopped", err))
            return
        except BaseException as err:  # noqa: BLE001 - any failure is the trial's result, reported to Tune
            message = f"{type(err).__name__}: {err}"
            log.warning("trial %s failed: %s", self.trial_id, message, exc_info=not isinstance(err, Exception))
            session.update(ended=time.time(), status="failed")
            self._write(status="failed", error=message)
            self.results.put(("error", err))
            return
        session.update(ended=time.time(), status="finished")
        self._write(status="finished", error=None)
        self.results.put(("done", summary))

    def _write(self, **fields: Any) -> None:
        self.record.update(fields)
        atomic_write_bytes(self.out / TRIAL_FILE, json.dumps(self.record, indent=2, default=str).encode())

    # -- what Tune sees --------------------------------------------------------------------------------------------
    def next_result(self) -> dict:
        """Block until the next epoch with the metric, or the end; returns Tune's result (``done`` at the end).
        Raises the trial's error."""
        last: dict = {}
        while True:
            kind, item = self.results.get()
            if kind == "epoch":
                last = _scalars(item)
                # epochs without a device evaluation wait for the next one; the last epoch is reported with the final
                # evaluation (so that a scheduler's decision at the last epoch cannot cut that evaluation short)
                if last.get(self.metric) is not None and last.get("epoch", 0) < self.epochs:
                    return last
            elif kind == "done":
                result = {**last, **_scalars({k: item.get(k) for k in ("test_accuracy", "train_accuracy",
                                                                       "wall_time_s", "epochs")})}
                result.setdefault(self.metric, last.get(self.metric))
                result.update(epoch=item.get("epochs", last.get("epoch")), final=True, done=True)
                return {k: v for k, v in result.items() if v is not None}
            elif kind == "stopped":  # Tune is stopping the sweep; this result is not used
                raise TrialError(f"stopped: {item or type(item).__name__}")
            elif isinstance(item, TrialError):
                raise item
            else:
                raise TrialError(f"{type(item).__name__}: {item}") from item

    def close(self, grace_s: float = 300.0) -> None:
        """Stop the trial safely: after its current batch (the checkpoint saved, the outputs off), or at once with a
        KeyboardInterrupt while it calibrates or evaluates (outputs off all the same); waits up to ``grace_s``."""
        thread = self.thread
        if thread is None or not thread.is_alive():
            return
        if self.stop.signal is not None:
            pass  # already asked (the sweep's stop file, or an earlier close): the run is on its way out; an
            # interrupt now could land in its make-safe actions or its bookkeeping
        elif self.stop.training:
            self.stop.signal = signal.SIGTERM
        else:
            self.stop.signal = signal.SIGTERM
            _raise_in_thread(thread, KeyboardInterrupt)
        thread.join(grace_s)
        if thread.is_alive():
            log.error("trial %s did not stop within %.0f s; its instruments may still be on", self.trial_id, grace_s)


def _raise_in_thread(thread: threading.Thread, exc: type[BaseException]) -> None:
    """Raise ``exc`` in ``thread`` at its next Python instruction (as Ctrl-C would in the main thread)."""
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))


def _scalars(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, (int, float, str, bool)) or v is None}
