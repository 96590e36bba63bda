"""Data sets: shapes, ranges, splits and clear errors for bad files."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from orchestrator.datasets import DatasetError, load_dataset, read_idx

# CI sets PNN_DATA_DIR; in a checkout the shared data sits next to the repository (../shared/data).
_DATA = os.environ.get("PNN_DATA_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(not Path(_DATA, "mnist").is_dir(),
                                reason=f"no data directory at {_DATA}: set PNN_DATA_DIR to the shared data")


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
