"""glibc keeps freed memory for reuse once ``keep_freed_memory`` ran: a forward pass's worth of blocks allocated
again faults no pages in."""

import platform
import resource
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# 8 blocks of 8 MB, allocated, written and freed three times; the page faults of the third round are printed. With
# glibc's defaults the freed top of the heap (64 MB, over its adjusted trim threshold of 2 x 8 MB) goes back to the
# operating system, and every round faults part of it in again.
_ROUNDS = """
import resource, sys
import numpy as np
from common.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def one_round():
    blocks = [np.ones(1 << 20) for _ in range(8)]
    del blocks
one_round(); one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
one_round()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_of_a_round(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def test_freed_blocks_are_reused_without_page_faults():
    pages = 64 * 2**20 // resource.getpagesize()
    assert _faults_of_a_round("default") > 0.1 * pages  # what the setting is for (4,088 of 16,384 here)
    assert _faults_of_a_round("keep") < 0.01 * pages
