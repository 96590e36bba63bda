"""glibc keeps freed memory for reuse once ``keep_freed_memory`` ran: a forward pass's worth of blocks allocated
again faults no pages in. The garbage collector leaves what start-up made alone (``objects_kept``) and skips the
interpreter's last collections (``skip_collection_at_exit``), and still collects what becomes garbage later. Each runs
in a process of its own: the settings last as long as the process."""

import platform
import resource
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

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


@glibc_only
def test_freed_blocks_are_reused_without_page_faults():
    pages = 64 * 2**20 // resource.getpagesize()
    assert _faults_of_a_round("default") > 0.1 * pages  # what the setting is for (4,088 of 16,384 here)
    assert _faults_of_a_round("keep") < 0.01 * pages


# Cycles of two objects, which only the cyclic collector frees; a weak reference tells whether it did.
_COLLECTOR = """
import gc, weakref
from common.memory import objects_kept

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a

before = weakref.ref(cycle())            # garbage from before the block
with objects_kept():
    assert not gc.isenabled()            # paused while the block runs
    kept = cycle()                        # made in the block: frozen with it
    in_block = weakref.ref(kept)
assert gc.isenabled() and gc.get_freeze_count() > 0
assert before() is None                   # collected before the block began, not frozen
del kept
later = weakref.ref(cycle())              # garbage made after the block
gc.collect()
assert later() is None                    # the collector still frees what becomes garbage later
assert in_block() is not None             # but never walks what the block froze
print("ok")
"""


def test_objects_made_in_the_block_are_left_alone_and_later_garbage_is_still_collected():
    done = subprocess.run([sys.executable, "-c", _COLLECTOR], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# a cycle alive until the interpreter ends: its last collection finds it garbage and runs its __del__ ...
_AT_EXIT = """
import os, sys
from common.memory import skip_collection_at_exit

class Node:
    def __del__(self):
        os.write(1, b"collected\\n")

a, b = Node(), Node()
a.other, b.other = b, a
if sys.argv[1] == "skip":
    skip_collection_at_exit()
"""


def test_the_interpreters_last_collection_is_skipped():
    def at_exit(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", _AT_EXIT, mode], capture_output=True, text=True, check=True)
        return done.stdout
    assert at_exit("default").count("collected") == 2
    assert at_exit("skip") == ""  # ... unless it was skipped: the process ends without walking its objects
