"""Twin artifacts: a fitted twin's weights plus where it came from, in one file.

An artifact is ``torch.save`` of a plain dict::

    {"format": "pnn-lab-twin/1", "kind": "neural", "config": {...constructor kwargs...},
     "state_dict": {...tensors...}, "metadata": {...JSON-able...}}

The metadata records what a lab notebook would: setup, encoding, instrument identities (``*IDN?``),
dataset checksum, held-out NMSE, date (ISO 8601). Loading always uses ``torch.load(..., weights_only=True)``,
which unpickles only tensors and plain containers, so an artifact from elsewhere cannot run code; the zip archive's
CRC checks are verified first (``read_torch_file``), so a truncated or corrupted file is refused, never half-loaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.files import CorruptFileError, atomic_write, read_torch_file
from twins.registry import twin_class

logger = logging.getLogger(__name__)

FORMAT = "pnn-lab-twin/1"


RECALIBRATE = "delete it and run pnn calibrate again"


class TwinArtifactError(CorruptFileError):
    """A twin artifact cannot be loaded; the message starts with the file's path and says why."""


def check_json_able(value: Any, where: str) -> None:
    """Raise TypeError naming ``where`` (e.g. ``metadata['instruments']``) unless ``value`` is plain JSON:
    str, int, float, bool, None, and lists/tuples/dicts (with str keys) of those."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json_able(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; keys must be str")
            check_json_able(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, not JSON-able; "
        "use str, int, float, bool, None, lists and dicts (numpy scalars: .item())"
    )


def _plain(value: Any) -> Any:
    """A JSON-able value as built-in types only (float subclasses such as numpy.float64 become float,
    tuples become lists), so that ``weights_only`` loading accepts it."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


TWIN_FILES = {"neural": "twin_neural.pt", "physics": "twin_physics.pt", "hybrid": "twin_hybrid.pt"}
"""The file of each fitted twin kind in an experiment's artifacts folder."""


def twin_path(artifacts: Path, kind: str) -> Path:
    """Where the fitted twin of ``kind`` is kept in the ``artifacts`` folder."""
    return Path(artifacts) / TWIN_FILES[kind]


def save_twin(path: str | os.PathLike, model: nn.Module, metadata: Mapping[str, Any]) -> Path:
    """Save a twin and its metadata to ``path`` atomically (parent folders are created).

    Args:
        path: artifact file, conventionally ``*.pt``.
        model: a registered twin (``model.kind`` is known to ``twins.twin_class``) with ``config()``.
        metadata: JSON-able values, stored as given (tuples become lists).
    Returns:
        The path written.
    Raises:
        TypeError: a metadata or config value is not JSON-able (the message names its key).
        ValueError: the model's class is not the one registered for its kind, so it could not be loaded.
    """
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    check_json_able(dict(metadata), "metadata")
    config = model.config()
    check_json_able(config, f"{type(model).__name__}.config()")
    try:
        registered = twin_class(model.kind)
    except KeyError as error:
        raise ValueError(f"{type(model).__name__}: {error.args[0]}; decorate the class with @register_twin") from None
    if registered is not type(model):
        raise ValueError(f"{type(model).__name__} is not the class registered for kind {model.kind!r} ({registered.__name__})")

    artifact = {
        "format": FORMAT,
        "kind": model.kind,
        "config": _plain(config),
        "state_dict": {name: t.detach().cpu().clone() for name, t in model.state_dict().items()},
        "metadata": _plain(dict(metadata)),
    }
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(artifact, tmp)
    logger.info("saved %s twin to %s", model.kind, path)
    return path


def load_twin(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Load a twin saved by ``save_twin``: the model (in eval mode, on the CPU) and its metadata.

    Raises:
        TwinArtifactError: the file is missing, truncated or corrupted, not a twin artifact, of an unknown
            twin kind, or its weights do not fit the architecture its config describes.
    """
    path = Path(path)
    if not path.is_file():
        raise TwinArtifactError(f"{path}: no such twin artifact file")
    artifact = read_torch_file(path, "twin artifact", RECALIBRATE, TwinArtifactError)

    if not isinstance(artifact, dict) or artifact.get("format") != FORMAT:
        found = artifact.get("format") if isinstance(artifact, dict) else type(artifact).__name__
        raise TwinArtifactError(f"{path}: not a {FORMAT!r} twin artifact (format: {found!r}); {RECALIBRATE}")
    expected = {"kind": str, "config": dict, "state_dict": dict, "metadata": dict}
    for key, kind in expected.items():
        if not isinstance(artifact.get(key), kind):
            raise TwinArtifactError(f"{path}: field {key!r} is missing or not a {kind.__name__}; {RECALIBRATE}")

    try:
        cls = twin_class(artifact["kind"])
    except KeyError as error:
        raise TwinArtifactError(f"{path}: {error.args[0]}; {RECALIBRATE}") from None
    try:
        model = cls(**artifact["config"])
    except (TypeError, ValueError) as error:
        raise TwinArtifactError(f"{path}: config {artifact['config']} does not build a {cls.__name__}: {error}; "
                                f"{RECALIBRATE}") from error
    try:
        model.load_state_dict(artifact["state_dict"], strict=True)
    except (RuntimeError, KeyError, TypeError) as error:
        raise TwinArtifactError(f"{path}: weights do not match the {cls.__name__} architecture: {error}; "
                                f"{RECALIBRATE}") from error
    model.eval()
    logger.info("loaded %s twin from %s", artifact["kind"], path)
    return model, artifact["metadata"]
