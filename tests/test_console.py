"""What an operator sees in a terminal during ``pnn run`` (issue 15, item 4): log records as whole lines above the
progress bar (rich's handler), never glued to the bar, and a bar that says which epoch of how many it is.

The run is a real ``pnn`` process whose stdout and stderr are a pseudo-terminal, as in a lab's shell."""

from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path

from test_cli import ANSI, EXPERIMENT, _pnn_executable

RUN = [EXPERIMENT, "--simulate", "--twin", "perfect", "--epochs", "2", "--set", "network.width=64",
       "--set", "network.depth=1", "--set", "task.n_train=300", "--set", "task.n_test=50",
       "--set", "training.batch_size=16"]


def terminal_output(cwd: Path, *args: str) -> tuple[int, str]:
    """Run ``pnn ARGS`` on a pseudo-terminal; its exit code and everything it wrote, escape sequences removed."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}
    env.pop("CI", None)  # rich treats CI=true as a terminal too; here it must find a real one
    proc = subprocess.Popen(_pnn_executable() + list(args), cwd=cwd, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    code = proc.wait(timeout=120)
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_log_lines_print_above_the_progress_bar_which_counts_the_epochs(tmp_path: Path) -> None:
    code, text = terminal_output(tmp_path, "run", *map(str, RUN), "--out", str(tmp_path / "run"))
    assert code == 0, text
    lines = [line for line in re.split(r"[\r\n]", text) if line.strip()]
    assert any(re.search(r"epoch 2/2\b", line) for line in lines), text  # the bar names the epoch and the total
    assert any("INFO" in line and "epoch 1: loss" in line for line in lines), text  # a log record, whole
    glued = [line for line in lines if "━" in line and ("INFO" in line or "WARNING" in line)]
    assert not glued, glued  # no log record written into the bar's line
