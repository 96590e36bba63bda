"""Files the project writes and reads back: written all-or-nothing, read with their integrity checked.

``atomic_write`` / ``atomic_write_bytes``: a crash leaves the old file or the new one, never a torn one.
``read_torch_file``: ``torch.load(..., weights_only=True)`` after checking the archive's CRCs.
``read_json_object``: a JSON object the project wrote for its own bookkeeping, {} when there is none to read.
``CorruptFileError``: a file the project wrote cannot be used; the message names the file and what to do.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


class CorruptFileError(Exception):
    """A file the project wrote (twin artifact, twin data, checkpoint) cannot be used: missing, empty, truncated,
    corrupted or of the wrong kind. The message starts with the file's path, says what is wrong and what to do."""


def read_torch_file(path: str | os.PathLike, what: str, remedy: str,
                    error: type[CorruptFileError] = CorruptFileError) -> Any:
    """``torch.load(path, weights_only=True)`` of a file written by ``torch.save``, after checking that it is whole:
    a zip archive whose every member passes its CRC-32 check (``torch.load`` does not check, so flipped bytes in a
    tensor would load silently).

    Raises:
        ``error`` with ``"<path>: not a readable <what>: <why>; <remedy>"``: missing, empty, truncated, corrupted or
        foreign file, or one holding objects other than tensors and plain data.
    """
    path = Path(path)

    def fail(why: str) -> CorruptFileError:
        return error(f"{path}: not a readable {what}: {why}; {remedy}")

    try:
        with zipfile.ZipFile(path) as archive:
            # torch.load's reader also takes a member with the DOS folder attribute (0x10) for a folder: no data
            damaged = archive.testzip() or next((m.filename for m in archive.infolist() if m.external_attr & 0x10),
                                                None)
    except zipfile.BadZipFile:
        empty = path.stat().st_size == 0
        raise fail("the file is empty" if empty else "truncated, or not written by torch.save "
                                                      "(no zip directory at its end)") from None
    except OSError as err:
        raise fail(f"cannot read it ({err})") from None
    except Exception as err:  # noqa: BLE001 - a damaged zip header surfaces as many types
        raise fail(f"corrupted ({type(err).__name__}: {err})") from None
    if damaged is not None:
        raise fail(f"corrupted (its part {damaged.split('/', 1)[-1]!r} fails the CRC check)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused something; torch's advice to drop it is unsafe
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        raise fail("it holds objects other than tensors and plain data"
                   + (f" ({found.group(1)})" if found else "")) from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad content
        raise fail(f"{type(err).__name__}: {err}") from err


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file all-or-nothing: yields a temporary path in the same folder to write to.

    When the block finishes, the temporary file is flushed to disk and renamed over ``path``
    (``os.replace``, atomic on POSIX and Windows), so readers see the old file or the complete new one,
    never a partial one, even after a crash. If the block raises, the temporary file is removed and
    ``path`` is untouched. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; lab files are meant to be shared
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new version, never a torn one."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object in ``path`` (a run's summary.json, a sweep trial's file); {} if the file is missing,
    unreadable or holds anything but an object: bookkeeping that can be rebuilt, never a reason to stop."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
