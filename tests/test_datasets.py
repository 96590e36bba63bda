"""Data sets: shapes, ranges, splits and clear errors for bad files."""

from __future__ import annotations

import gzip
import os
import re
import wave
from pathlib import Path

import numpy as np
import pytest

from orchestrator.datasets import DatasetError, load_dataset, read_idx, read_wav

# CI sets PNN_DATA_DIR; in a checkout the shared data sits next to the repository (../shared/data).
_DATA = os.environ.get("PNN_DATA_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(not Path(_DATA, "mnist").is_dir(),
                                reason=f"no data directory at {_DATA}: set PNN_DATA_DIR to the shared data")
needs_fsdd = pytest.mark.skipif(not Path(_DATA, "fsdd", "recordings").is_dir(),
                                reason=f"no FSDD recordings at {_DATA}/fsdd: set PNN_DATA_DIR to the shared data")


def test_digits_shapes_range_and_determinism():
    ds = load_dataset("digits", seed=3)
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.n_classes == 10 and set(np.unique(ds.y_test)) == set(range(10))
    again = load_dataset("digits", seed=3)
    assert np.array_equal(ds.x_train, again.x_train) and np.array_equal(ds.y_test, again.y_test)
    other = load_dataset("digits", seed=4)
    assert not np.array_equal(ds.y_train, other.y_train)
    small = load_dataset("digits", n_train=100, n_test=50)
    assert len(small.y_train) == 100 and len(small.y_test) == 50 and len(np.unique(small.y_train)) == 10


def test_unknown_name_and_options():
    with pytest.raises(DatasetError, match="digits, mnist, fashion_mnist, vowels"):
        load_dataset("cifar")
    with pytest.raises(DatasetError, match="downsample"):
        load_dataset("digits", downsample=4)


def test_missing_data_dir(monkeypatch):
    monkeypatch.delenv("PNN_DATA_DIR", raising=False)
    with pytest.raises(DatasetError, match="PNN_DATA_DIR"):
        load_dataset("mnist")


@needs_data
def test_mnist_full_and_downsampled():
    ds = load_dataset("mnist", data_dir=_DATA)
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.x_train.dtype == np.float32 and ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert np.bincount(ds.y_train).tolist()[:3] == [5923, 6742, 5958]
    images = ds.x_test[:5].reshape(5, 28, 28)
    for side, k in ((14, 2), (7, 4)):
        small = load_dataset("mnist", data_dir=_DATA, downsample=side, n_train=100)
        assert small.x_train.shape == (100, side * side) and small.x_test.shape == (10000, side * side)
        manual = np.array([[[images[n, i * k:(i + 1) * k, j * k:(j + 1) * k].mean() for j in range(side)]
                            for i in range(side)] for n in range(5)])
        np.testing.assert_allclose(small.x_test[:5].reshape(5, side, side), manual, atol=1e-6)


@needs_data
def test_fashion_subset():
    ds = load_dataset("fashion_mnist", data_dir=_DATA, n_train=500, n_test=100, seed=1)
    assert ds.x_train.shape == (500, 784) and len(ds.y_test) == 100
    assert np.bincount(ds.y_train).tolist() == [50] * 10  # the classes are balanced
    assert ds.class_names[9] == "Ankle boot"


def _idx_bytes(n: int) -> bytes:
    header = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
    return header + bytes(n * 28 * 28)


def test_corrupt_idx_files_are_named(tmp_path):
    good = tmp_path / "good-idx3-ubyte.gz"
    good.write_bytes(gzip.compress(_idx_bytes(2)))
    assert read_idx(good, 3).shape == (2, 28, 28)

    cut = tmp_path / "cut-idx3-ubyte"
    cut.write_bytes(_idx_bytes(2)[:-100])
    with pytest.raises(DatasetError, match=r"cut-idx3-ubyte: truncated, header says 2x28x28"):
        read_idx(cut, 3)

    bad_gzip = tmp_path / "bad-idx3-ubyte.gz"
    bad_gzip.write_bytes(gzip.compress(np.random.default_rng(0).bytes(5000))[:3000])
    with pytest.raises(DatasetError, match="bad-idx3-ubyte.gz: corrupt or truncated gzip"):
        read_idx(bad_gzip, 3)

    labels_as_images = tmp_path / "labels-idx1-ubyte"
    labels_as_images.write_bytes((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(3))
    with pytest.raises(DatasetError, match="labels-idx1-ubyte: not an IDX file of 3-d unsigned bytes"):
        read_idx(labels_as_images, 3)


def test_missing_idx_file_is_named(tmp_path):
    (tmp_path / "mnist").mkdir()
    with pytest.raises(DatasetError, match="missing file .*train-images-idx3-ubyte.gz"):
        load_dataset("mnist", data_dir=tmp_path)


@needs_data
def test_vowels_task():
    ds = load_dataset("vowels", data_dir=_DATA, seed=0)
    assert ds.class_names == ["ae", "ah", "aw", "er", "ih", "iy", "uw"] and ds.n_classes == 7
    assert ds.x_train.shape[1] == 12 and ds.feature_names[0] == "F1_steady"
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert 0.0 <= ds.x_test.min() and ds.x_test.max() <= 1.0
    train, test = set(ds.info["train_talkers"]), set(ds.info["test_talkers"])
    assert not train & test and len(train | test) == 139
    assert 0.65 < len(train) / 139 < 0.75
    for group in "mwbg":  # every talker group is on both sides
        assert any(t[0] == group for t in train) and any(t[0] == group for t in test)
    assert len(ds.y_train) + len(ds.y_test) == 973 - ds.info["dropped_tokens"]
    assert set(np.unique(ds.y_test)) == set(range(7))


# ---------------------------------------------------------------------------------------------------------------
# Free Spoken Digit Dataset

_CLIP = re.compile(r"^(\d)_([^_]+)_(\d+)$")


def _write_wav(path: Path, samples, rate: int = 8000, channels: int = 1, width: int = 2) -> Path:
    data = np.asarray(samples)
    raw = (data.astype("<i2") if width == 2 else (data // 256 + 128).astype(np.uint8)).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


def _expected_features(path: Path, n: int) -> np.ndarray:
    """The documented preprocessing at 8 kHz, computed independently: first n samples, zero-padded, peak to 1."""
    with wave.open(str(path)) as w:
        a = np.frombuffer(w.readframes(w.getnframes()), "<i2")[:n].astype(np.float64)
    a = np.pad(a, (0, n - len(a)))
    return (a / np.abs(a).max() + 1) / 2


def _tiny_fsdd(root: Path) -> Path:
    """A data dir with 2 digits x 2 speakers x 7 clips (index 0-4 test, 5-6 train) of 1000 samples at 8 kHz;
    clip 1_b_6 is 5000 samples (longer than the default window of 4096)."""
    folder = root / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for digit in (0, 1):
        for speaker in ("a", "b"):
            for index in range(7):
                n = 5000 if (digit, speaker, index) == (1, "b", 6) else 1000
                _write_wav(folder / f"{digit}_{speaker}_{index}.wav", rng.integers(-20000, 20000, n))
    return folder


@needs_fsdd
def test_fsdd_full_set_split_and_features():
    ds = load_dataset("fsdd", data_dir=_DATA)
    assert ds.x_train.shape == (2700, 4096) and ds.x_test.shape == (300, 4096)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.class_names == [str(d) for d in range(10)] and ds.n_classes == 10
    assert np.bincount(ds.y_train).tolist() == [270] * 10 and np.bincount(ds.y_test).tolist() == [30] * 10
    info = ds.info
    assert info["sample_rate_hz"] == 8000 and info["window_samples"] == 4096 and info["duration_s"] == 0.512
    speakers = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    assert info["speakers"] == speakers and info["n_files"] == 3000
    # the split rule: test = clip index 0-4 of every digit and speaker, exactly; rows follow the clip names
    test = [_CLIP.match(c).groups() for c in info["test_clips"]]
    train = [_CLIP.match(c).groups() for c in info["train_clips"]]
    assert sorted((int(d), s, int(i)) for d, s, i in test) == sorted(
        (d, s, i) for d in range(10) for s in speakers for i in range(5))
    assert all(5 <= int(i) <= 49 for _, _, i in train) and len(set(train)) == 2700
    assert [int(d) for d, _, _ in test] == ds.y_test.tolist() and [int(d) for d, _, _ in train] == ds.y_train.tolist()
    # values: [0, 1], every clip's peak reaches 0 or 1 (per-clip gain), padding is silence at exactly 0.5
    x = np.concatenate([ds.x_train, ds.x_test])
    assert x.min() == 0.0 and x.max() == 1.0
    assert ((x.max(axis=1) == 1.0) | (x.min(axis=1) == 0.0)).all()
    folder = Path(_DATA, "fsdd", "recordings")
    frames = {c: wave.open(str(folder / f"{c}.wav")).getnframes() for c in info["train_clips"] + info["test_clips"]}
    longer = sum(n > 4096 for n in frames.values())
    assert info["truncated_clips"]["train"] + info["truncated_clips"]["test"] == longer
    for row, clip in enumerate(info["test_clips"][:40]):
        n = frames[clip]
        if n < 4096:
            assert (ds.x_test[row, n:] == 0.5).all()
        np.testing.assert_allclose(ds.x_test[row], _expected_features(folder / f"{clip}.wav", 4096), atol=1e-6)


@needs_fsdd
def test_fsdd_resampling_window_and_subsets():
    base = load_dataset("fsdd", data_dir=_DATA, n_train=100, n_test=50, seed=2)
    assert base.x_train.shape == (100, 4096) and base.x_test.shape == (50, 4096)
    assert np.bincount(base.y_train).tolist() == [10] * 10 and np.bincount(base.y_test).tolist() == [5] * 10
    assert all(int(_CLIP.match(c).group(3)) < 5 for c in base.info["test_clips"])
    again = load_dataset("fsdd", data_dir=_DATA, n_train=100, n_test=50, seed=2)
    assert again.info["train_clips"] == base.info["train_clips"] and np.array_equal(again.x_train, base.x_train)
    for kwargs, n_features in (({"audio_rate_hz": 16000}, 8192), ({"audio_rate_hz": 4000}, 2048),
                               ({"audio_duration_s": 0.25}, 2000), ({"audio_rate_hz": 11025, "audio_duration_s": 1.0},
                                                                    11025)):
        ds = load_dataset("fsdd", data_dir=_DATA, n_train=100, n_test=50, seed=2, **kwargs)
        assert ds.x_train.shape == (100, n_features) and ds.x_test.shape == (50, n_features)
        assert ds.info["train_clips"] == base.info["train_clips"]  # the same clips, whatever the window
        x = ds.x_train
        assert 0.0 <= x.min() and x.max() <= 1.0 and ((x.max(axis=1) == 1.0) | (x.min(axis=1) == 0.0)).all()
    up = load_dataset("fsdd", data_dir=_DATA, n_train=100, n_test=50, seed=2, audio_rate_hz=16000)
    for a, b in zip(up.x_train[:20, ::2], base.x_train[:20]):  # every other sample at 16 kHz is the 8 kHz sample
        assert np.corrcoef(a, b)[0, 1] > 0.99


def test_fsdd_preprocessing_on_written_clips(tmp_path):
    folder = _tiny_fsdd(tmp_path)
    ds = load_dataset("fsdd", data_dir=tmp_path)
    assert ds.x_train.shape == (8, 4096) and ds.x_test.shape == (20, 4096)
    assert ds.info["truncated_clips"] == {"train": 1, "test": 0}
    assert ds.info["padded_clips"] == {"train": 7, "test": 20} and ds.info["speakers"] == ["a", "b"]
    assert ds.info["train_clips"][:2] == ["0_a_5", "0_a_6"] and ds.info["test_clips"][-1] == "1_b_4"
    for row, clip in enumerate(ds.info["train_clips"]):
        np.testing.assert_allclose(ds.x_train[row], _expected_features(folder / f"{clip}.wav", 4096), atol=1e-6)
        if clip != "1_b_6":
            assert (ds.x_train[row, 1000:] == 0.5).all()
    # a 440 Hz tone resampled to 16 kHz: the same tone, to the window's last sample (no fade at the cut)
    for path in folder.iterdir():
        path.unlink()
    t8 = np.arange(8000) / 8000
    for name in ("0_a_0", "0_a_5"):
        _write_wav(folder / f"{name}.wav", np.round(30000 * np.sin(2 * np.pi * 440 * t8)))
    tone = load_dataset("fsdd", data_dir=tmp_path, audio_rate_hz=16000, audio_duration_s=0.5)
    assert tone.x_train.shape == (1, 8000) and tone.info["truncated_clips"] == {"train": 1, "test": 1}
    expected = np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)
    np.testing.assert_allclose(2 * tone.x_train[0, 100:] - 1, expected[100:], atol=0.01)


def test_fsdd_bad_files_and_folders_are_named(tmp_path):
    with pytest.raises(DatasetError, match=r"missing folder .*fsdd/recordings"):
        load_dataset("fsdd", data_dir=tmp_path)
    folder = _tiny_fsdd(tmp_path)
    good = folder / "0_a_3.wav"
    tone = np.arange(800) * 10
    bad = {b"RIFF\x10\x00\x00\x00WAVEjunk": "corrupt or not a PCM WAV file",
           b"": "corrupt or not a PCM WAV file",
           "stereo": "2 channels, expected mono", "8bit": "8-bit samples, expected 16-bit",
           "16k": "sample rate 16000 Hz, expected 8000 Hz", "cut": "truncated, header says 800 samples"}
    for content, message in bad.items():
        if content == "stereo":
            _write_wav(good, np.repeat(tone, 2), channels=2)
        elif content == "8bit":
            _write_wav(good, tone, width=1)
        elif content == "16k":
            _write_wav(good, tone, rate=16000)
        elif content == "cut":
            good.write_bytes(_write_wav(good, tone).read_bytes()[:-100])
        else:
            good.write_bytes(content)
        with pytest.raises(DatasetError, match=f"0_a_3.wav: {message}"):
            load_dataset("fsdd", data_dir=tmp_path)
        with pytest.raises(DatasetError, match=f"0_a_3.wav: {message}"):
            read_wav(good)
    _write_wav(good, tone)
    assert load_dataset("fsdd", data_dir=tmp_path).x_test.shape == (20, 4096)
    (folder / "notes.wav").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"notes.wav: unexpected file name"):
        load_dataset("fsdd", data_dir=tmp_path)


def test_fsdd_options(tmp_path):
    _tiny_fsdd(tmp_path)
    with pytest.raises(DatasetError, match="audio_duration_s=0.5 is not possible for 'digits'"):
        load_dataset("digits", audio_duration_s=0.5)
    for kwargs, message in (({"audio_duration_s": 0}, "audio_duration_s must be a positive"),
                            ({"audio_rate_hz": 8000.5}, "audio_rate_hz must be a positive whole number"),
                            ({"audio_rate_hz": -8000}, "audio_rate_hz must be a positive whole number"),
                            ({"downsample": 14}, "downsample=14 is not possible for 'fsdd'")):
        with pytest.raises(DatasetError, match=message):
            load_dataset("fsdd", data_dir=tmp_path, **kwargs)
    assert load_dataset("fsdd", data_dir=tmp_path, audio_duration_s=0.1, audio_rate_hz=2000).n_features == 200
