"""Classification data sets for physical neural networks, as float32 features in [0, 1].

>>> ds = load_dataset("vowels", data_dir="../shared/data")
>>> ds.x_train.shape, ds.n_classes          # ((N, 12), 7)

Names:
- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, no data directory needed), stratified 80/20 split.
- ``mnist``, ``fashion_mnist``: the standard IDX gzip files in ``<data_dir>/mnist`` and ``<data_dir>/fashion-mnist``
  (official 60k/10k split); ``downsample=14`` or ``7`` average-pools the 28x28 images to 196 or 49 features.
- ``vowels``: Hillenbrand et al. (1995) formants, the task of Wright et al. (Nature 2022): 7 vowels, 12 formant
  features, talker-disjoint 70/30 split (see ``_load_vowels``).
- ``fsdd``: the Free Spoken Digit Dataset in ``<data_dir>/fsdd/recordings`` (3000 WAV clips, 8 kHz): the raw audio
  of a fixed window as features, to be played into a physical system (no spectrogram or MFCC); the usual split,
  clip index 0-4 of every digit and speaker is the test set. ``audio_duration_s`` and ``audio_rate_hz`` set the
  window and sample rate (see ``_load_fsdd``).

The data directory is ``data_dir``, else ``$PNN_DATA_DIR``. Nothing is cached on disk. A missing, empty, truncated or
corrupted file is a DatasetError naming it: the gzip CRC guards the IDX files, a checksum of the release the vowel
file and (when all of the release's clip names are there) the FSDD recordings.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import wave
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DATASETS = ("digits", "mnist", "fashion_mnist", "vowels", "fsdd")

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

VOWELS = ["ae", "ah", "aw", "er", "ih", "iy", "uw"]  # had, hod, hawed, heard, hid, heed, who'd
# vowdata.dat columns (0-based): 3-5 F1-F3 at steady state; 7-15 F1-F3 at 20%, 50%, 80% of the vowel duration
VOWEL_COLUMNS = [3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15]
VOWEL_FEATURES = [f"F{k}_{when}" for when in ("steady", "20%", "50%", "80%") for k in (1, 2, 3)]
VOWEL_TEST_FRACTION = 0.3
TALKER_GROUPS = {"m": "men", "w": "women", "b": "boys", "g": "girls"}

FSDD_RATE_HZ = 8000            # every FSDD recording: 8 kHz, mono, 16-bit PCM
FSDD_DURATION_S = 0.512        # default window: 4096 samples at 8 kHz
FSDD_TEST_INDICES = range(5)   # the usual split: clip index 0-4 of every digit and speaker is the test set

# checksums of the releases (the data directory's SOURCE.txt files): any other content is a damaged copy
VOWDATA_SHA256 = "05a4a69e2c6b0f444077245b1427d12bc86f8d7a32ae7a4b63f7e06e5712e4b1"  # vowdata.dat, 136111 bytes
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")  # 50 clips of each digit each
FSDD_SHA256 = "97bacd3d77e28eff2bc9358dacc3cd8146e36299f6fe64168bdaf33d0e5376f9"  # info["sha256"]["recordings"]
RESTORE = "replace it with an intact copy of the release (see SOURCE.txt in its folder)"


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
                 n_train: int | None = None, n_test: int | None = None, seed: int = 0,
                 audio_duration_s: float | None = None, audio_rate_hz: int | None = None) -> Dataset:
    """Load a data set by name (see the module docstring).

    Args:
        name: one of ``DATASETS`` (``fashion-mnist`` is accepted for ``fashion_mnist``).
        data_dir: folder holding ``mnist/``, ``fashion-mnist/``, ``hillenbrand-vowels/``, ``fsdd/``;
            default $PNN_DATA_DIR.
        downsample: image side after average pooling, 14 or 7 (MNIST-type sets only; 28 or None = full size).
        n_train, n_test: use a seeded, class-stratified subset of this many samples of each split.
        seed: seeds the split (digits, vowels) and the subsets.
        audio_duration_s: audio window in seconds (fsdd only; None = 0.512 s).
        audio_rate_hz: sample rate of the features in Hz, resampled from 8 kHz (fsdd only; None = 8000).
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
    for label, value in (("audio_duration_s", audio_duration_s), ("audio_rate_hz", audio_rate_hz)):
        if value is not None and key != "fsdd":
            raise DatasetError(f"{label}={value} is not possible for '{key}': audio options are for fsdd only")
    rng = np.random.default_rng(seed)
    if key == "digits":
        ds = _load_digits(seed, n_train, n_test, rng)
    elif key == "vowels":
        ds = _load_vowels(_data_root(data_dir) / "hillenbrand-vowels", seed, n_train, n_test, rng)
    elif key == "fsdd":
        ds = _load_fsdd(_data_root(data_dir) / "fsdd" / "recordings", audio_duration_s, audio_rate_hz,
                        n_train, n_test, rng)
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
        raise DatasetError(f"{path}: corrupt or truncated gzip file ({exc}); {RESTORE}") from None
    if not raw:
        raise DatasetError(f"{path}: the file is empty; {RESTORE}")
    header = 4 + 4 * ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != _IDX_MAGIC[ndim]:
        raise DatasetError(f"{path}: not an IDX file of {ndim}-d unsigned bytes "
                           f"(magic number {magic}, expected {_IDX_MAGIC[ndim]}); {RESTORE}")
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated, {len(raw)} bytes is shorter than the IDX header; {RESTORE}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: {'truncated' if len(raw) - header < expected else 'corrupt'}, "
                           f"header says {'x'.join(map(str, dims))} = {expected} bytes of data, "
                           f"file has {len(raw) - header}; {RESTORE}")
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
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"missing file {path}") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    if not raw:
        raise DatasetError(f"{path}: the file is empty; {RESTORE}")
    lines = raw.decode("latin-1").splitlines()
    talkers, vowels, rows = [], [], []
    for number, line in enumerate(lines, 1):
        match = _TOKEN.match(line)
        if not match or match.group(3) not in VOWELS:
            continue
        cols = line.split()
        try:
            rows.append([float(cols[c]) for c in VOWEL_COLUMNS])
        except (IndexError, ValueError):
            raise DatasetError(f"{path}:{number}: expected 16 numeric columns, got: {line.strip()!r}; "
                               f"{RESTORE}") from None
        talkers.append(match.group(1) + match.group(2))
        vowels.append(VOWELS.index(match.group(3)))
    if not rows:
        raise DatasetError(f"{path}: no vowel tokens found (is it Hillenbrand's vowdata.dat?); {RESTORE}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != VOWDATA_SHA256:  # a cut or a changed digit can still parse
        raise DatasetError(f"{path}: truncated or corrupted: {len(raw)} bytes with sha256 {digest[:16]}..., the "
                           f"release has 136111 bytes with sha256 {VOWDATA_SHA256[:16]}...; {RESTORE}")
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

    info = {"source": str(path), "sha256": {path.name: digest},
            "split": f"by talker within each group, {1 - VOWEL_TEST_FRACTION:.0%} of talkers train (seed {seed})",
            "train_talkers": sorted(set(talker_all[i_tr])), "test_talkers": sorted(set(talker_all[i_te])),
            "dropped_tokens": int((~measured).sum()),
            "scaling": "per feature, min/max (Hz) of the training set to [0, 1]; test values clipped",
            "feature_min_hz": lo.tolist(), "feature_max_hz": hi.tolist()}
    return Dataset("vowels", scale(x_all[i_tr]), y_all[i_tr], scale(x_all[i_te]), y_all[i_te], len(VOWELS),
                   list(VOWELS), list(VOWEL_FEATURES), info)


# ---------------------------------------------------------------------------------------------------------------
# Free Spoken Digit Dataset

_FSDD_NAME = re.compile(r"^(\d)_([^_]+)_(\d+)\.wav$")


def read_wav(path: str | Path, rate_hz: int | None = FSDD_RATE_HZ) -> tuple[np.ndarray, bytes]:
    """Read a mono 16-bit PCM WAV file with the standard library's ``wave`` module.

    Returns the samples (int16 [n]) and the file's bytes (for checksums). Raises DatasetError naming the file if
    it is missing, unreadable, truncated, empty, not mono, not 16-bit or (unless ``rate_hz`` is None) not at
    ``rate_hz``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"missing file {path}") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    try:
        with wave.open(io.BytesIO(raw)) as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            frames = w.readframes(n)
    except (wave.Error, EOFError) as exc:
        why = "the file is empty" if not raw else str(exc) or "the file ends early"
        raise DatasetError(f"{path}: corrupt or not a PCM WAV file ({why}); {RESTORE}") from None
    if channels != 1:
        raise DatasetError(f"{path}: {channels} channels, expected mono")
    if width != 2:
        raise DatasetError(f"{path}: {8 * width}-bit samples, expected 16-bit")
    if rate_hz is not None and rate != rate_hz:
        raise DatasetError(f"{path}: sample rate {rate} Hz, expected {rate_hz} Hz")
    if len(frames) != 2 * n:
        raise DatasetError(f"{path}: truncated, header says {n} samples, file has {len(frames) // 2}; {RESTORE}")
    if n == 0:
        raise DatasetError(f"{path}: no audio samples")
    return np.frombuffer(frames, "<i2"), raw


def _load_fsdd(folder: Path, duration_s: float | None, rate_hz: int | None, n_train: int | None,
               n_test: int | None, rng: np.random.Generator) -> Dataset:
    """Free Spoken Digit Dataset: the raw audio as features, as it is played into the physical system.

    Files ``{digit}_{speaker}_{index}.wav`` (8 kHz, mono, 16-bit). Split: index 0-4 of every digit and speaker is
    the test set, the rest the training set (rows sorted by digit, speaker, index; names in
    ``info["train_clips"]`` / ``info["test_clips"]``). Preprocessing, all of it what a sound card or a microphone
    preamp does (no digital feature extraction):

    1. window: the first ``duration_s`` seconds of each clip (the clips start at the speech; they are trimmed to
       minimal leading silence); longer clips are cut, shorter ones padded with silence (zeros);
    2. resampling (only if ``rate_hz`` is not 8000): ``scipy.signal.resample_poly`` from 8 kHz (polyphase
       anti-aliasing FIR), computed on the window plus the filter's length so that the window's end is exact;
    3. peak normalisation per clip, like an automatic gain control: one gain per clip so that the largest
       |sample| in the window is 1 (a clip of pure silence stays at 0);
    4. the audio a in [-1, 1] is mapped to features (a + 1) / 2 in [0, 1] (0.5 is silence; the network maps the
       features back with 2f - 1).

    Features: round(duration_s * rate_hz) samples; ``n_train`` / ``n_test`` pick seeded digit-stratified subsets.
    """
    try:
        duration = FSDD_DURATION_S if duration_s is None else float(duration_s)
    except (TypeError, ValueError):
        duration = math.nan
    if not (duration > 0 and math.isfinite(duration)):
        raise DatasetError(f"audio_duration_s must be a positive number of seconds, got {duration_s!r}")
    rate = FSDD_RATE_HZ if rate_hz is None else rate_hz
    try:
        whole = not isinstance(rate, bool) and float(rate).is_integer() and rate > 0
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise DatasetError(f"audio_rate_hz must be a positive whole number of Hz, got {rate_hz!r}")
    rate = int(rate)
    n_out = round(duration * rate)
    if n_out < 1:
        raise DatasetError(f"a window of {duration} s at {rate} Hz holds no sample")
    if not folder.is_dir():
        raise DatasetError(f"missing folder {folder} (the FSDD recordings/*.wav)")

    clips = []
    for path in folder.glob("*.wav"):
        match = _FSDD_NAME.match(path.name)
        if not match:
            raise DatasetError(f"{path}: unexpected file name, expected {{digit}}_{{speaker}}_{{index}}.wav")
        clips.append((int(match.group(1)), match.group(2), int(match.group(3)), path))
    if not clips:
        raise DatasetError(f"no .wav files in {folder}")
    clips.sort(key=lambda c: c[:3])

    y_all = np.array([c[0] for c in clips], np.int64)
    is_test = np.array([c[2] in FSDD_TEST_INDICES for c in clips])
    i_tr, i_te = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    for label, idx in (("training", i_tr), ("test", i_te)):
        if not len(idx):
            raise DatasetError(f"{folder}: no {label} clips (the test set is clip index "
                               f"{FSDD_TEST_INDICES.start}-{FSDD_TEST_INDICES.stop - 1}, training the others)")
    i_tr, i_te = i_tr[_subset(y_all[i_tr], n_train, rng)], i_te[_subset(y_all[i_te], n_test, rng)]

    up = down = 1
    n_src = n_out
    if rate != FSDD_RATE_HZ:
        g = math.gcd(rate, FSDD_RATE_HZ)
        up, down = rate // g, FSDD_RATE_HZ // g
        # source samples covering the window, plus the half-length of resample_poly's default FIR (10 taps per
        # phase on each side) so that the window's last samples see the clip, not an artificial end
        n_src = math.ceil(n_out * down / up) + math.ceil(10 * max(up, down) / up) + 1
    # every file is read and checked (and enters the checksum); only the clips in use are processed
    rows = np.full(len(clips), -1)
    rows[np.concatenate([i_tr, i_te])] = np.arange(len(i_tr) + len(i_te))
    audio = np.zeros((len(i_tr) + len(i_te), n_src), np.float32)
    lengths = np.empty(len(clips), np.int64)
    digest = hashlib.sha256()
    for i, (_, _, _, path) in enumerate(clips):
        samples, raw = read_wav(path)
        lengths[i] = len(samples)
        if rows[i] >= 0:
            k = min(len(samples), n_src)
            audio[rows[i], :k] = samples[:k]
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(raw).digest())
    release = {(d, s, i) for d in range(10) for s in FSDD_SPEAKERS for i in range(50)}
    if {c[:3] for c in clips} == release and digest.hexdigest() != FSDD_SHA256:  # sample bytes have no checksum
        raise DatasetError(f"{folder}: the recordings are those of the FSDD release but their content differs "
                           f"(sha256 {digest.hexdigest()[:16]}..., expected {FSDD_SHA256[:16]}...): a file is "
                           f"corrupted; replace the folder with an intact copy of the release (see fsdd/SOURCE.txt)")
    audio /= np.float32(32768.0)
    if rate != FSDD_RATE_HZ:
        from scipy.signal import resample_poly

        audio = resample_poly(audio, up, down, axis=1)[:, :n_out].astype(np.float32, copy=False)
    # in place on the float32 window; |a| <= peak makes |a / peak| <= 1 exactly (IEEE division is monotonic)
    peak = np.abs(audio).max(axis=1, keepdims=True)
    silent = int((peak == 0).sum())
    peak[peak == 0] = 1.0
    audio /= peak
    audio += np.float32(1.0)
    audio *= np.float32(0.5)
    x_train, x_test = audio[: len(i_tr)], audio[len(i_tr):]

    names = [c[3].stem for c in clips]
    longer = lengths * rate > n_out * FSDD_RATE_HZ  # the clip lasts longer than the window: truncated
    shorter = lengths * rate < n_out * FSDD_RATE_HZ  # padded with silence
    split = (f"by clip index: {FSDD_TEST_INDICES.start}-{FSDD_TEST_INDICES.stop - 1} of every digit and speaker "
             "test, the others train")
    if n_train or n_test:
        split += f", digit-stratified subsets (n_train={n_train}, n_test={n_test})"
    info = {"source": str(folder), "sha256": {"recordings": digest.hexdigest()},
            "sha256_rule": "sha256 over the files sorted by (digit, speaker, index): name, NUL, sha256 of the file",
            "n_files": len(clips), "file_rate_hz": FSDD_RATE_HZ,
            "sample_rate_hz": rate, "window_samples": n_out, "duration_s": n_out / rate,
            "resampling": "none" if rate == FSDD_RATE_HZ else f"scipy.signal.resample_poly(up={up}, down={down})",
            "speakers": sorted({c[1] for c in clips}), "split": split,
            "truncated_clips": {"train": int(longer[i_tr].sum()), "test": int(longer[i_te].sum())},
            "padded_clips": {"train": int(shorter[i_tr].sum()), "test": int(shorter[i_te].sum())},
            "silent_clips": silent,
            "clip_seconds_min_max": [float(lengths.min()) / FSDD_RATE_HZ, float(lengths.max()) / FSDD_RATE_HZ],
            "scaling": "first window of each clip (zero-padded), per-clip peak normalisation (largest |sample| = 1, "
                       "an automatic gain control), feature = (audio + 1) / 2 (0.5 = silence)",
            "train_clips": [names[i] for i in i_tr], "test_clips": [names[i] for i in i_te]}
    return Dataset("fsdd", x_train, y_all[i_tr], x_test, y_all[i_te], 10, [str(d) for d in range(10)], None, info)


__all__ = ["Dataset", "DatasetError", "DATASETS", "load_dataset", "read_idx", "pool_images", "read_wav"]
