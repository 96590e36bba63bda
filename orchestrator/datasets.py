"""Classification data sets for physical neural networks, as float32 features in [0, 1].

>>> ds = load_dataset("vowels", data_dir="../shared/data")
>>> ds.x_train.shape, ds.n_classes          # ((N, 12), 7)

Names:
- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, no data directory needed), stratified 80/20 split.
- ``mnist``, ``fashion_mnist``: the standard IDX gzip files in ``<data_dir>/mnist`` and ``<data_dir>/fashion-mnist``
  (official 60k/10k split); ``downsample=14`` or ``7`` average-pools the 28x28 images to 196 or 49 features.
- ``vowels``: Hillenbrand et al. (1995) formants, the task of Wright et al. (Nature 2022): 7 vowels, 12 formant
  features, talker-disjoint 70/30 split (see ``_load_vowels``).

The data directory is ``data_dir``, else ``$PNN_DATA_DIR``. Nothing is cached on disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DATASETS = ("digits", "mnist", "fashion_mnist", "vowels")

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

VOWELS = ["ae", "ah", "aw", "er", "ih", "iy", "uw"]  # had, hod, hawed, heard, hid, heed, who'd
# vowdata.dat columns (0-based): 3-5 F1-F3 at steady state; 7-15 F1-F3 at 20%, 50%, 80% of the vowel duration
VOWEL_COLUMNS = [3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15]
VOWEL_FEATURES = [f"F{k}_{when}" for when in ("steady", "20%", "50%", "80%") for k in (1, 2, 3)]
VOWEL_TEST_FRACTION = 0.3
TALKER_GROUPS = {"m": "men", "w": "women", "b": "boys", "g": "girls"}


class DatasetError(ValueError):
    """A data set cannot be loaded: unknown name, missing data directory, missing or corrupt file."""


@dataclass
class Dataset:
    """Train and test splits; x in [0, 1] as float32 [N, F], y as int64 class indices [N]."""

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    n_classes: int
    class_names: list[str]
    feature_names: list[str] | None = field(default=None, repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def summary(self) -> str:
        """One line for logs: name, sizes, features, classes."""
        return (f"{self.name}: {len(self.y_train)} train / {len(self.y_test)} test, "
                f"{self.n_features} features, {self.n_classes} classes")


def load_dataset(name: str, *, data_dir: str | Path | None = None, downsample: int | None = None,
                 n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> Dataset:
    """Load a data set by name (see the module docstring).

    Args:
        name: one of ``DATASETS`` (``fashion-mnist`` is accepted for ``fashion_mnist``).
        data_dir: folder holding ``mnist/``, ``fashion-mnist/``, ``hillenbrand-vowels/``; default $PNN_DATA_DIR.
        downsample: image side after average pooling, 14 or 7 (MNIST-type sets only; 28 or None = full size).
        n_train, n_test: use a seeded, class-stratified subset of this many samples of each split.
        seed: seeds the split (digits, vowels) and the subsets.
    Raises:
        DatasetError: unknown name, no data directory, missing or corrupt files, invalid options.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise DatasetError(f"unknown data set '{name}'; valid names: {', '.join(DATASETS)}")
    if downsample not in (None, 28) and (key not in ("mnist", "fashion_mnist") or downsample not in (14, 7)):
        raise DatasetError(f"downsample={downsample} is not possible for '{key}': "
                           "use 14 or 7 with mnist or fashion_mnist")
    for label, n in (("n_train", n_train), ("n_test", n_test)):
        if n is not None and n <= 0:
            raise DatasetError(f"{label} must be positive, got {n}")
    rng = np.random.default_rng(seed)
    if key == "digits":
        ds = _load_digits(seed, n_train, n_test, rng)
    elif key == "vowels":
        ds = _load_vowels(_data_root(data_dir) / "hillenbrand-vowels", seed, n_train, n_test, rng)
    else:
        folder = _data_root(data_dir) / ("mnist" if key == "mnist" else "fashion-mnist")
        ds = _load_idx_set(key, folder, downsample, n_train, n_test, rng)
    log.info("%s", ds.summary())
    return ds


# ---------------------------------------------------------------------------------------------------------------


def _data_root(data_dir: str | Path | None) -> Path:
    root = data_dir if data_dir is not None else os.environ.get("PNN_DATA_DIR")
    if not root:
        raise DatasetError("no data directory: pass --data-dir (data_dir=...) or set PNN_DATA_DIR")
    if not Path(root).is_dir():
        raise DatasetError(f"data directory {root} does not exist")
    return Path(root)


def _subset(y: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a random subset of n samples with (nearly) the class proportions of y; all if n is None."""
    if n is None or n >= len(y):
        return np.arange(len(y))
    classes, counts = np.unique(y, return_counts=True)
    quota = np.floor(counts * n / len(y)).astype(int)
    # hand out the samples left over by rounding down to the classes with the largest remainders
    remainder = counts * n / len(y) - quota
    quota[np.argsort(-remainder, kind="stable")[: n - quota.sum()]] += 1
    picked = [rng.choice(np.flatnonzero(y == c), size=q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


def _load_digits(seed: int, n_train: int | None, n_test: int | None, rng: np.random.Generator) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    i_tr, i_te = _subset(y_tr, n_train, rng), _subset(y_te, n_test, rng)
    return Dataset("digits", x_tr[i_tr], y_tr[i_tr], x_te[i_te], y_te[i_te], 10, [str(d) for d in range(10)],
                   list(digits.feature_names),
                   {"source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits, 8x8)",
                    "split": f"stratified 80/20, random_state={seed}", "scaling": "pixel / 16"})


# ---------------------------------------------------------------------------------------------------------------
# MNIST-type IDX files

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_MAGIC = {3: 2051, 1: 2049}  # unsigned-byte images (3 dims) and labels (1 dim)


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed or not) with ``ndim`` dimensions.

    Raises DatasetError naming the file if it is missing, truncated or not the expected IDX type.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip
            raw = zlib.decompress(raw, 16 + zlib.MAX_WBITS)
    except FileNotFoundError:
        raise DatasetError(f"missing file {path}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    header = 4 + 4 * ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != _IDX_MAGIC[ndim]:
        raise DatasetError(f"{path}: not an IDX file of {ndim}-d unsigned bytes "
                           f"(magic number {magic}, expected {_IDX_MAGIC[ndim]})")
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated, {len(raw)} bytes is shorter than the IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: {'truncated' if len(raw) - header < expected else 'corrupt'}, "
                           f"header says {'x'.join(map(str, dims))} = {expected} bytes of data, "
                           f"file has {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    """The gzip file ``stem.gz``, or the uncompressed ``stem`` if only that exists."""
    gz = folder / f"{stem}.gz"
    return gz if gz.exists() or not (folder / stem).exists() else folder / stem


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pool_images(images: np.ndarray, side: int) -> np.ndarray:
    """Average-pool square images [N, S, S] to float32 [N, side, side] (S must be a multiple of side)."""
    n, s, _ = images.shape
    k = s // side
    if k * side != s:
        raise DatasetError(f"cannot pool {s}x{s} images to {side}x{side}")
    # summing k*k strided views is much faster than a mean over reshaped axes; bytes sum exactly in uint16
    total = np.zeros((n, side, side), np.uint16 if images.dtype == np.uint8 and k <= 16 else np.float64)
    for i in range(k):
        for j in range(k):
            total += images[:, i::k, j::k]
    return (total / np.float32(k * k)).astype(np.float32, copy=False)


def _load_idx_set(key: str, folder: Path, downsample: int | None, n_train: int | None, n_test: int | None,
                  rng: np.random.Generator) -> Dataset:
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    files: dict[str, str] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        paths = [_find_idx(folder, stem) for stem in _IDX_FILES[split]]
        images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
        if len(images) != len(labels):
            raise DatasetError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise DatasetError(f"{paths[1]}: label {labels.max()} out of range 0-9")
        pick = _subset(labels, n, rng)
        if len(pick) < len(labels):
            images, labels = images[pick], labels[pick]
        x = pool_images(images, downsample) if downsample in (14, 7) else images
        x = np.divide(x, np.float32(255.0), dtype=np.float32)
        splits[split] = (x.reshape(len(x), -1), labels.astype(np.int64))
        files.update({p.name: _sha256(p) for p in paths})
    side = downsample or 28
    info = {"source": str(folder), "sha256": files, "image_size": side, "split": "official train/test",
            "scaling": "pixel / 255"}
    if n_train or n_test:
        info["split"] += f", stratified subsets (n_train={n_train}, n_test={n_test})"
    if side != 28:
        info["scaling"] += f", {28 // side}x{28 // side} average pooling"
    class_names = FASHION_CLASSES if key == "fashion_mnist" else [str(d) for d in range(10)]
    return Dataset(key, *splits["train"], *splits["test"], 10, list(class_names), None, info)


# ---------------------------------------------------------------------------------------------------------------
# Hillenbrand vowels

_TOKEN = re.compile(r"^([mwbg])(\d\d)([a-z][a-z])\s")


def _load_vowels(folder: Path, seed: int, n_train: int | None, n_test: int | None,
                 rng: np.random.Generator) -> Dataset:
    """Hillenbrand vowels, the task of Wright et al. (2022).

    7 vowels (ae ah aw er ih iy uw); 12 features: F1, F2, F3 at steady state and at 20%, 50%, 80% of the vowel
    duration (vowdata.dat columns 4-6 and 8-16; f0, F4 and duration are not used). Tokens with an unmeasurable
    (zero) formant among these are dropped. The split is by talker: each talker group (men, women, boys, girls)
    is shuffled with the seed and 70% of its talkers go to training. Features are scaled to [0, 1] with the
    training set's min/max; test values are clipped to [0, 1].
    """
    path = folder / "vowdata.dat"
    try:
        lines = path.read_text(encoding="latin-1").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"missing file {path}") from None
    talkers, vowels, rows = [], [], []
    for number, line in enumerate(lines, 1):
        match = _TOKEN.match(line)
        if not match or match.group(3) not in VOWELS:
            continue
        cols = line.split()
        try:
            rows.append([float(cols[c]) for c in VOWEL_COLUMNS])
        except (IndexError, ValueError):
            raise DatasetError(f"{path}:{number}: expected 16 numeric columns, got: {line.strip()!r}") from None
        talkers.append(match.group(1) + match.group(2))
        vowels.append(VOWELS.index(match.group(3)))
    if not rows:
        raise DatasetError(f"{path}: no vowel tokens found (is it Hillenbrand's vowdata.dat?)")
    x_all, y_all, talker_all = np.array(rows), np.array(vowels, np.int64), np.array(talkers)
    measured = (x_all > 0).all(axis=1)
    x_all, y_all, talker_all = x_all[measured], y_all[measured], talker_all[measured]

    train_talkers: list[str] = []
    for group in TALKER_GROUPS:
        members = sorted({t for t in talker_all if t[0] == group})
        shuffled = rng.permutation(members)
        train_talkers += list(shuffled[: round(len(members) * (1 - VOWEL_TEST_FRACTION))])
    is_train = np.isin(talker_all, train_talkers)
    i_tr, i_te = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    i_tr, i_te = i_tr[_subset(y_all[i_tr], n_train, rng)], i_te[_subset(y_all[i_te], n_test, rng)]

    lo, hi = x_all[i_tr].min(axis=0), x_all[i_tr].max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)

    def scale(x: np.ndarray) -> np.ndarray:
        return np.clip((x - lo) / span, 0.0, 1.0).astype(np.float32)

    info = {"source": str(path), "sha256": {path.name: _sha256(path)},
            "split": f"by talker within each group, {1 - VOWEL_TEST_FRACTION:.0%} of talkers train (seed {seed})",
            "train_talkers": sorted(set(talker_all[i_tr])), "test_talkers": sorted(set(talker_all[i_te])),
            "dropped_tokens": int((~measured).sum()),
            "scaling": "per feature, min/max (Hz) of the training set to [0, 1]; test values clipped",
            "feature_min_hz": lo.tolist(), "feature_max_hz": hi.tolist()}
    return Dataset("vowels", scale(x_all[i_tr]), y_all[i_tr], scale(x_all[i_te]), y_all[i_te], len(VOWELS),
                   list(VOWELS), list(VOWEL_FEATURES), info)


__all__ = ["Dataset", "DatasetError", "DATASETS", "load_dataset", "read_idx", "pool_images"]
