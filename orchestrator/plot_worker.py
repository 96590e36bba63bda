"""The run folder's plots drawn in a process of their own, beside training.

matplotlib takes about a second for a set of plots (learning curves, confusion matrix, physical outputs), and in the
training process that second holds the interpreter: the device waits. ``PlotWorker`` hands each set to one worker
process (``concurrent.futures.ProcessPoolExecutor``) and training goes on at once. The worker is forked from ``pnn``
while it still runs a single thread, before the simulated bench, the progress bar and torch start theirs: fork copies
only the calling thread, and a lock another thread held at that moment would stay locked in the copy. It has the
libraries loaded already, so it starts in milliseconds. Where fork is not the platform's way (macOS, Windows) or other
threads run already (a library caller, the test suite), ``start`` returns None and the plots are drawn in the
training process, as before.

The worker runs at the lowest priority (``NICENESS``): on a machine whose cores training keeps busy it waits for idle
time rather than taking a core from torch's threads. One set is drawn at a time: a set asked for while the previous
one is still being drawn is skipped (the next epoch asks again, with fresher results). The worker ignores Ctrl-C and
SIGTERM: ``pnn`` decides how a run stops, and the plots already written stay whole (they are written atomically). It
ends with ``pnn``, however that ends (the kernel kills it when its parent ends: ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)
NICENESS = 19
"""The worker's scheduling priority (the lowest): it draws with the CPU time training leaves idle, and does not slow
down torch's threads, which wait for each other, by taking a core from one of them."""


def _set_up_worker(parent: int) -> None:
    """In the worker: end with ``pnn`` (process ``parent``) however it ends, leave Ctrl-C and SIGTERM to it, and take
    only CPU time that training leaves idle."""
    # the kernel kills the worker when its parent ends, even by SIGKILL: it holds copies of the parent's pipes and
    # files, and would otherwise wait for work forever
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent ended before the line above
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(NICENESS)


class PlotWorker:
    """One process that draws plots on request (``draw``), one set at a time."""

    def __init__(self, pool: ProcessPoolExecutor):
        self._pool = pool
        self._last: Future | None = None

    @classmethod
    def start(cls) -> PlotWorker | None:
        """Fork the worker now, if this process may: on Linux, while only one thread runs. None otherwise."""
        if not sys.platform.startswith("linux") or threading.active_count() > 1:
            log.debug("plots are drawn in the training process (%d threads run)", threading.active_count())
            return None
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_set_up_worker, initargs=(os.getpid(),))
        try:
            pid = pool.submit(os.getpid).result()  # forks the worker now, before this process starts other threads
        except BrokenProcessPool as err:  # its set-up failed (prctl refused, ...): draw here
            log.warning("no plot worker (%s); plots are drawn in the training process", err)
            pool.shutdown(wait=False)
            return None
        log.debug("plots are drawn by worker process %d", pid)
        return cls(pool)

    @property
    def busy(self) -> bool:
        """Whether a set of plots is still being drawn."""
        return self._last is not None and not self._last.done()

    def draw(self, fn: Callable[..., Any], *args: Any) -> Future | None:
        """Run ``fn(*args)`` (picklable: a module-level function such as ``run_folder.draw_plots``) in the worker;
        None, and nothing done, if it is busy. The future holds the error if drawing failed, a worker that died while
        drawing included; BrokenProcessPool is raised at once if it had died before."""
        return None if self.busy else self.draw_next(fn, *args)

    def draw_next(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` in the worker after whatever it is drawing now (for the final plots, which must not be
        skipped)."""
        self._last = self._pool.submit(fn, *args)
        return self._last

    def close(self) -> None:
        """Wait for the set being drawn (it is written whole or not at all) and end the worker."""
        self._pool.shutdown(wait=True, cancel_futures=True)
