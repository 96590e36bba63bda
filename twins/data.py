"""Measured twin data: samples (x, θ, y) of the physical layer, and their HDF5 files.

File layout (HDF5, written by ``save_twin_data``)::

    /x       float32 [N, n_inputs]    gzip
    /theta   float32 [N, n_params]    gzip
    /y       float32 [N, n_outputs]   gzip (device outputs, physical units; repeats already averaged)
    attributes: format = "pnn-lab-twin-data/1", checksum = TwinData.checksum(), plus the metadata
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from common.files import CorruptFileError, atomic_write
from twins.artifact import RECALIBRATE

logger = logging.getLogger(__name__)

FORMAT = "pnn-lab-twin-data/1"
ARRAYS = ("x", "theta", "y")
_RESERVED_ATTRS = ("format", "checksum")

MetadataValue = str | int | float


REMEASURE = f"{RECALIBRATE} (it measures the twin data anew)"


class TwinDataError(CorruptFileError):
    """A twin data file cannot be loaded; the message starts with the file's path and says why."""


@dataclass
class TwinData:
    """N measured samples of a physical layer: y = f_p(x, θ).

    Attributes:
        x: inputs [N, n_inputs], float32.
        theta: control parameters [N, n_params], float32.
        y: measured outputs [N, n_outputs], float32, physical units.
        metadata: str/int/float values, e.g. setup, encoding, instrument identities, repeats, date.

    Arrays are converted to C-contiguous float32 on construction.
    Raises ValueError if they are not 2-D, disagree on N, or contain NaN/inf.
    """

    x: np.ndarray
    theta: np.ndarray
    y: np.ndarray
    metadata: dict[str, MetadataValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ARRAYS:
            a = np.ascontiguousarray(np.asarray(getattr(self, name)), dtype=np.float32)
            if a.ndim != 2:
                raise ValueError(f"{name} must be 2-D [N, width], got shape {a.shape}")
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            if bad:
                raise ValueError(f"{name} contains {bad} NaN/inf value(s)")
            setattr(self, name, a)
        lengths = {name: getattr(self, name).shape[0] for name in ARRAYS}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"x, theta and y must have the same number of samples, got {lengths}")
        for key, value in self.metadata.items():
            if not isinstance(key, str) or not isinstance(value, (str, int, float)):
                raise ValueError(f"metadata[{key!r}] = {value!r}: keys must be str and values str, int or float")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def n_inputs(self) -> int:
        return self.x.shape[1]

    @property
    def n_params(self) -> int:
        return self.theta.shape[1]

    @property
    def n_outputs(self) -> int:
        return self.y.shape[1]

    def checksum(self) -> str:
        """SHA-256 (hex) over x, theta and y: for each, a header ``name:float32:shape`` then its bytes
        (little-endian, C order). Identifies the data set a twin was fitted on."""
        digest = hashlib.sha256()
        for name in ARRAYS:
            a = getattr(self, name)
            digest.update(f"{name}:float32:{','.join(map(str, a.shape))};".encode())
            digest.update(np.ascontiguousarray(a, dtype="<f4").tobytes())
        return digest.hexdigest()

    def subset(self, index: np.ndarray) -> TwinData:
        """The samples at ``index`` (integer array or boolean mask), with a copy of the metadata."""
        return TwinData(self.x[index], self.theta[index], self.y[index], dict(self.metadata))

    def split(self, val_fraction: float, seed: int = 0) -> tuple[TwinData, TwinData]:
        """Random split into (train, validation); the validation set has round(N * val_fraction) samples
        (at least 1), drawn with ``numpy.random.default_rng(seed)``; both keep the metadata."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        n_val = max(1, round(len(self) * val_fraction))
        if n_val >= len(self):
            raise ValueError(f"cannot split {len(self)} sample(s) with val_fraction={val_fraction}")
        order = np.random.default_rng(seed).permutation(len(self))
        return self.subset(np.sort(order[n_val:])), self.subset(np.sort(order[:n_val]))


def save_twin_data(path: str | os.PathLike, data: TwinData) -> Path:
    """Write ``data`` to an HDF5 file atomically (temporary file in the same folder, then renamed).

    Returns:
        The path written.
    Raises:
        ValueError: a metadata key is reserved ("format", "checksum").
    """
    reserved = [key for key in _RESERVED_ATTRS if key in data.metadata]
    if reserved:
        raise ValueError(f"metadata keys {reserved} are reserved for the file format")
    path = Path(path)
    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name in ARRAYS:
                f.create_dataset(name, data=getattr(data, name), compression="gzip", compression_opts=4, shuffle=True)
            f.attrs["format"] = FORMAT
            f.attrs["checksum"] = data.checksum()
            for key, value in data.metadata.items():
                f.attrs[key] = value
    logger.info("saved %d twin samples to %s", len(data), path)
    return path


def load_twin_data(path: str | os.PathLike) -> TwinData:
    """Read a file written by ``save_twin_data`` and verify its checksum.

    Raises:
        TwinDataError: missing file, unreadable (truncated/corrupt) HDF5, missing data set, inconsistent
            shapes, invalid values, or a checksum that does not match the data.
    """
    path = Path(path)
    if not path.is_file():
        raise TwinDataError(f"{path}: no such twin data file")
    if path.stat().st_size == 0:
        raise TwinDataError(f"{path}: not a readable HDF5 file: the file is empty; {REMEASURE}")
    try:
        with h5py.File(path, "r") as f:
            missing = [name for name in ARRAYS if not isinstance(f.get(name), h5py.Dataset)]
            if missing:
                raise TwinDataError(f"{path}: missing data set(s) {missing} (found: {sorted(f.keys())}); {REMEASURE}")
            arrays = {name: f[name][()] for name in ARRAYS}
            attrs = {key: _python_value(value) for key, value in f.attrs.items()}
    except TwinDataError:
        raise
    except Exception as error:  # noqa: BLE001 - h5py has many ways of saying "corrupt" (OSError, KeyError, ...)
        raise TwinDataError(f"{path}: not a readable HDF5 file (truncated or corrupted?): {error}; "
                            f"{REMEASURE}") from error

    shapes = {name: a.shape for name, a in arrays.items()}
    if any(len(s) != 2 for s in shapes.values()) or len({s[0] for s in shapes.values()}) != 1:
        raise TwinDataError(f"{path}: x, theta, y must be 2-D with the same number of rows, got shapes {shapes}; "
                            f"{REMEASURE}")
    stored = attrs.pop("checksum", None)
    attrs.pop("format", None)
    try:
        data = TwinData(arrays["x"], arrays["theta"], arrays["y"], attrs)
    except ValueError as error:
        raise TwinDataError(f"{path}: {error}; {REMEASURE}") from error
    if stored is None:
        raise TwinDataError(f"{path}: no checksum attribute; not written by save_twin_data; {REMEASURE}")
    actual = data.checksum()
    if stored != actual:
        raise TwinDataError(f"{path}: checksum mismatch (stored {stored}, computed {actual}): the data were modified "
                            f"or corrupted; {REMEASURE}")
    logger.info("loaded %d twin samples from %s (checksum %s…)", len(data), path, actual[:12])
    return data


def _python_value(value: object) -> object:
    """HDF5 attribute -> built-in Python value (numpy scalars to int/float, bytes to str)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
