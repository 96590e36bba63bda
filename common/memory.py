"""Keep freed memory in the process instead of handing it back to the operating system (glibc only).

A forward pass allocates and frees arrays of several MB: the waveform, the scope's record of a million points, the
noise, the twin's activations. glibc's default (a dynamic threshold that starts at 128 KiB) returns such blocks to the
operating system when they are freed, by ``munmap`` or by trimming the top of the heap, and the next pass faults the
same pages in again, each zero-filled. On the simulated electronic bench at batch 512 that was about 4,000 page faults
per forward pass, some 15-20 ms of a 70 ms call (experiments/results_speed.md). ``keep_freed_memory`` sets glibc's
mmap threshold to its largest value and its trim threshold to ``TRIM_THRESHOLD_BYTES``: blocks up to 32 MiB come from
the heap, and up to that much free memory stays there for the next pass. The process's resident memory then stays
near its peak instead of falling back between passes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

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
