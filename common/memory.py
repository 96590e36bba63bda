"""Memory settings of a long-running ``pnn`` process: glibc's allocator and Python's garbage collector.

**Freed memory stays in the process** (glibc only). A forward pass allocates and frees arrays of several MB: the
waveform, the scope's record of a million points, the noise, the twin's activations. glibc's default (a dynamic
threshold that starts at 128 KiB) returns such blocks to the operating system when they are freed, by ``munmap`` or by
trimming the top of the heap, and the next pass faults the same pages in again, each zero-filled. On the simulated
electronic bench at batch 512 that was about 4,000 page faults per forward pass, some 15-20 ms of a 70 ms call
(experiments/results_speed.md). ``keep_freed_memory`` sets glibc's mmap threshold to its largest value and its trim
threshold to ``TRIM_THRESHOLD_BYTES``: blocks up to 32 MiB come from the heap, and up to that much free memory stays
there for the next pass. The process's resident memory then stays near its peak instead of falling back between
passes.

**The collector skips what start-up made.** The libraries (torch, numpy, scipy, matplotlib, numba) create some
500,000 Python objects while they load, and all of them live as long as the process. Python's cyclic garbage collector
walks every one of them in each full pass: 0.1-0.3 s a pass, eight passes while ``pnn`` starts and a full second at
exit, where the interpreter collects again before it ends (1.6 s of a 40 s run; results_speed.md). ``objects_kept``
pauses the collector while a block loads libraries and then moves every object alive into the permanent generation
(``gc.freeze``), which the collector never walks; ``skip_collection_at_exit`` does the same just before the
interpreter ends. Objects that become garbage later are still collected as usual.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import gc
import logging
import platform
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest on 64-bit systems (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD_BYTES = 1 << 30  # free memory kept at the top of the heap

_applied = False


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed blocks for reuse (once per process). Returns whether it is in effect: False
    where the C library is not glibc (macOS, Windows, musl), which keep their own policies."""
    global _applied
    if _applied:
        return True
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as err:
        log.debug("mallopt not available: %s", err)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; setting either threshold also ends glibc's own adjustment of both
    mmap_set = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    trim_set = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    _applied = mmap_set and trim_set
    log.debug("glibc malloc keeps freed memory: %s", _applied)
    return _applied


@contextmanager
def objects_kept() -> Iterator[None]:
    """Run the block (imports of libraries, whose objects live until the process ends) with the garbage collector
    paused, then freeze every object alive (``gc.freeze``): later full passes do not walk them. The collector's
    state before the block is restored. Garbage from before the block is collected first (a pass over the objects
    not yet frozen: few, in a process that froze its libraries already), so that none of it is frozen; a frozen
    object is never collected, even once unreachable, so use this only around what lives until the end."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


_exit_registered = False


def skip_collection_at_exit() -> None:
    """Freeze all objects when the interpreter begins to end (an ``atexit`` hook, registered once; hooks run last
    registered first, so it runs before those registered earlier): the interpreter's final collections then skip
    them. The process ends a second sooner; files are closed explicitly before that, and ``atexit`` hooks and
    ``weakref.finalize`` callbacks still run."""
    global _exit_registered
    if not _exit_registered:
        atexit.register(gc.freeze)
        _exit_registered = True
