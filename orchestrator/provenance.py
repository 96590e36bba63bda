"""Where a run came from: the code (pnn-lab's version, the git commit of its checkout and whether the tree was
dirty), the interpreter and torch, the host, the twin artifact and the data. ``summary.json`` holds it under
``provenance``; ``pnn --version`` prints the code's part.

Nothing here raises: what cannot be found is ``"unknown"`` (an installed package, no git, no checkout).
"""

from __future__ import annotations

import hashlib
import logging
import platform
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.files import atomic_write_bytes

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout holding the package, when run from one


def utc_now() -> str:
    """The time now, ISO 8601 in UTC to the second (``2026-12-06T11:39:29Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def package_version() -> str:
    """pnn-lab's installed version, or ``"unknown"``."""
    try:
        return metadata.version("pnn-lab")
    except metadata.PackageNotFoundError:
        return UNKNOWN


def _git(*args: str) -> str | None:
    """``git -C SOURCE_ROOT ARGS``'s output, stripped; None when git or the checkout is missing or git fails."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run([git, "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """``pnn_lab_version``, ``git_commit`` and ``git_dirty`` (True/False, or "unknown") of the running code.

    The commit is that of the checkout the package was imported from, and only when the package's folder is the
    top of that checkout: a package installed in a virtual environment inside some other checkout has none."""
    version = package_version()
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != SOURCE_ROOT:
        return {"pnn_lab_version": version, "git_commit": UNKNOWN, "git_dirty": UNKNOWN}
    commit = _git("rev-parse", "HEAD") or UNKNOWN
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"pnn_lab_version": version, "git_commit": commit,
            "git_dirty": UNKNOWN if status is None else bool(status)}


def version_line() -> str:
    """One line for ``pnn --version``: ``pnn-lab 0.1.0 (commit 1a2b3c4d5e6f, dirty)``."""
    code = code_version()
    commit = code["git_commit"]
    if commit == UNKNOWN:
        return f"pnn-lab {code['pnn_lab_version']} (not a git checkout)"
    return f"pnn-lab {code['pnn_lab_version']} (commit {commit[:12]}{', dirty' if code['git_dirty'] is True else ''})"


def environment() -> dict[str, Any]:
    """The code's version and commit, the Python and torch versions and the host name."""
    return {**code_version(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": f"{platform.system()} {platform.machine()}", "host": socket.gethostname() or UNKNOWN,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else UNKNOWN}


def data_checksum(*arrays: np.ndarray) -> str:
    """SHA-256 over the arrays' shapes, dtypes and bytes (C order): the data a run actually used."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def twin_record(kind: str, artifacts: Path, run_dir: Path) -> dict[str, Any]:
    """The twin a run used: its kind, artifact path and held-out NMSE, and a copy of its twin-vs-device plot in the
    run folder (``twin_vs_device.png``). The perfect twin is the simulator's own physics: no artifact."""
    if kind == "perfect":
        return {"kind": kind, "artifact": None, "note": "the simulated bench's own noiseless physics"}
    from twins.artifact import load_twin, twin_path

    path = twin_path(artifacts, kind)
    record: dict[str, Any] = {"kind": kind, "artifact": str(path.resolve())}
    try:
        meta = load_twin(path)[1]
    except Exception as err:  # noqa: BLE001 - provenance never stops a run; the twin itself was loaded before
        log.warning("cannot read %s's metadata for the run folder: %s", path, err)
        return record
    record["val_nmse"] = meta.get("val_nmse")
    record["fitted"] = meta.get("date")  # when the twin was fitted (ISO 8601)
    record["twin_data_checksum"] = meta.get("dataset_checksum")  # of the measured (x, θ, y) it was fitted to
    plot = artifacts / f"twin_{kind}_vs_device.png"
    if plot.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "twin_vs_device.png", plot.read_bytes())
        record["vs_device_plot"] = "twin_vs_device.png"
        record["vs_device_plot_source"] = str(plot.resolve())
    return record
