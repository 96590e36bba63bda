"""Twins: neural twin, fitting, artifacts (safe loading) and measured-data files."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from twins import TWIN_KINDS, broadcast_theta, register_twin, twin_class
from twins.neural import NeuralTwin
from twins.artifact import FORMAT, TwinArtifactError, load_twin, save_twin
from twins.data import TwinData, TwinDataError, load_twin_data, save_twin_data
from twins.fit import FitReport, fit_twin, nmse

N_IN, N_P, N_OUT = 4, 3, 3


def synthetic_data(n: int, seed: int = 0) -> TwinData:
    """A smooth nonlinear 'device' y = f(x, θ) with outputs far from zero mean / unit scale."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, N_IN))
    theta = rng.uniform(-1, 1, (n, N_P))
    y = np.stack(
        [
            np.sin(2 * x[:, 0] + theta[:, 0]) * np.cos(x[:, 1] * theta[:, 1]),
            np.tanh(x[:, 2] + 2 * x[:, 3] * theta[:, 2]),
            x[:, 0] * x[:, 3] + 0.5 * theta[:, 1] ** 2,
        ],
        axis=1,
    )
    return TwinData(x, theta, 5.0 * y + 3.0, {"setup": "synthetic", "repeats": 1, "noise_v": 0.0})


@pytest.fixture(scope="module")
def split_data() -> tuple[TwinData, TwinData]:
    return synthetic_data(1500).split(0.2, seed=0)


def small_twin(residual: bool = True, seed: int = 0) -> NeuralTwin:
    torch.manual_seed(seed)
    return NeuralTwin(N_IN, N_P, N_OUT, hidden=(64, 64), residual=residual)


def evaluate(model: nn.Module, data: TwinData) -> float:
    with torch.no_grad():
        return nmse(model(torch.from_numpy(data.x), torch.from_numpy(data.theta)), torch.from_numpy(data.y))


# --- neural twin and registry ---------------------------------------------------------------------------


def test_a_twin_with_nothing_to_fit_is_evaluated_as_it_is(split_data):
    """A fixed model (a nominal physics twin whose constants are not to be fitted) is not refused: the report gives
    its errors on both sets and no epoch run, and the model is unchanged."""
    train, val = split_data
    model = small_twin().requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = fit_twin(model, train, val, epochs=5, normalise=False)
    assert (report.epochs_run, report.best_epoch) == (0, 0)
    assert report.val_nmse == pytest.approx(evaluate(model, val), rel=1e-5)
    assert report.train_nmse == pytest.approx(evaluate(model, train), rel=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("residual", [True, False])
def test_fit_neural_twin_learns_function(split_data, residual):
    train, val = split_data
    model = small_twin(residual)
    model.set_input_normalisation(train.x, train.theta)
    model.set_output_normalisation(train.y)
    untrained = evaluate(model, val)
    seen = []
    report = fit_twin(model, train, val, epochs=40, lr=3e-3, batch_size=64, progress=lambda *a: seen.append(a))
    assert isinstance(report, FitReport)
    assert untrained > 0.3  # the threshold below means something
    assert report.val_nmse < 0.05  # measured: ~0.027 residual, ~0.015 plain
    assert report.val_nmse == pytest.approx(evaluate(model, val), rel=1e-5)  # the model holds the best weights
    assert len(seen) == report.epochs_run and seen[0][0] == 1
    assert 1 <= report.best_epoch <= report.epochs_run <= 40
    assert not model.training


def test_fit_is_deterministic_and_leaves_global_rng_alone(split_data):
    train, val = split_data
    reports = []
    for _ in range(2):
        model = small_twin()
        torch.manual_seed(123)
        reports.append(fit_twin(model, train, val, epochs=3, seed=7))
        after_fit = torch.rand(1)
        torch.manual_seed(123)
        assert torch.equal(after_fit, torch.rand(1))
    assert reports[0].val_nmse == reports[1].val_nmse
    assert reports[0].train_nmse == reports[1].train_nmse
    other = fit_twin(small_twin(), train, val, epochs=3, seed=8)
    assert other.val_nmse != reports[0].val_nmse


def test_the_fit_runs_on_the_threads_asked_for_capped_by_torchs_setting(split_data):
    """``twin.neural.threads`` sets the fit's torch threads, but a sweep trial's setting (torch's) is the ceiling; the
    process's setting is back afterwards."""
    from orchestrator.calibrate import fit_threads

    train, val = split_data
    before = torch.get_num_threads()
    try:
        for setting, requested, used in ((1, 2, 1), (2, 2, 2), (2, 1, 1), (2, None, 2)):
            torch.set_num_threads(setting)
            seen = []
            fit_twin(small_twin(), train, val, epochs=1, threads=fit_threads(requested),
                     progress=lambda *_: seen.append(torch.get_num_threads()))
            assert seen == [used]
            assert torch.get_num_threads() == setting
    finally:
        torch.set_num_threads(before)


def test_early_stopping_keeps_best_weights(split_data):
    train, val = split_data
    model = small_twin()
    history = []
    report = fit_twin(model, train, val, epochs=50, lr=0.3, patience=2, progress=lambda e, t, v: history.append(v))
    assert report.epochs_run < 50
    assert report.val_nmse == min(history)
    assert report.epochs_run - report.best_epoch == 2


class ToyPhysicsTwin(nn.Module):
    """y = a * tanh(b * x + θ): two physical constants to fit, no normalisation hooks."""

    kind = "toy_physics_test"

    def __init__(self, n: int = 2):
        super().__init__()
        self.n_inputs = self.n_params = self.n_outputs = n
        self.a = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(1.0))

    def config(self) -> dict:
        return {"n": self.n_inputs}

    def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self.a * torch.tanh(self.b * x + broadcast_theta(x, theta, self.n_inputs, self.n_params))


def test_fit_physical_constants_of_any_twin():
    rng = np.random.default_rng(1)
    x, theta = rng.uniform(-1, 1, (600, 2)), rng.uniform(-0.5, 0.5, (600, 2))
    train, val = TwinData(x, theta, 2.5 * np.tanh(0.6 * x + theta)).split(0.25)
    model = ToyPhysicsTwin()
    report = fit_twin(model, train, val, epochs=60, lr=0.05, batch_size=64)
    assert report.val_nmse < 1e-4
    assert model.a.item() == pytest.approx(2.5, rel=1e-2) and model.b.item() == pytest.approx(0.6, rel=1e-2)


def test_fit_rejects_data_of_wrong_width(split_data):
    train, val = split_data
    with pytest.raises(ValueError, match="twin expects"):
        fit_twin(NeuralTwin(N_IN + 1, N_P, N_OUT), train, val, epochs=1)


def test_theta_1d_broadcasts_like_repeated_2d():
    model = small_twin()
    x, theta = torch.randn(5, N_IN), torch.randn(N_P, requires_grad=True)
    y_1d = model(x, theta)
    assert y_1d.shape == (5, N_OUT)
    assert torch.equal(y_1d, model(x, theta.detach().repeat(5, 1)))
    y_1d.sum().backward()
    assert theta.grad.shape == (N_P,)  # the shared θ gets the batch's summed gradient
    with pytest.raises(ValueError, match="theta must have shape"):
        model(x, torch.randn(4, N_P))


def test_neural_twin_config_rebuilds_and_validates():
    model = NeuralTwin(3, 2, 1, hidden=(16, 32, 32), activation="tanh")
    rebuilt = NeuralTwin(**model.config())
    assert rebuilt.config() == model.config()
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    with pytest.raises(ValueError, match="unknown activation"):
        NeuralTwin(3, 2, 1, activation="sigmoidish")


def test_registry():
    assert twin_class("neural") is NeuralTwin and TWIN_KINDS["neural"] is NeuralTwin
    with pytest.raises(KeyError, match="unknown twin kind 'nope'"):
        twin_class("nope")

    class Clash(nn.Module):
        kind = "neural"

    with pytest.raises(ValueError, match="already registered"):
        register_twin(Clash)


# --- artifacts ------------------------------------------------------------------------------------------

METADATA = {
    "setup": "electronic",
    "encoding": {"x": "amplitude", "theta": "amplitude"},
    "instruments": {"awg": "Agilent Technologies,33522B,MY123,4.00", "scope": "KEYSIGHT,DSOX1102G,CN1,2.1"},
    "dataset_checksum": "ab" * 32,
    "val_nmse": 0.0123,
    "date": "2025-01-01T12:00:00+00:00",
    "repeats": 4,
    "notes": None,
}


@pytest.fixture()
def artifact(tmp_path, split_data) -> tuple[Path, NeuralTwin]:
    model = small_twin()
    model.set_output_normalisation(split_data[0].y)
    path = save_twin(tmp_path / "sub" / "twin.pt", model, METADATA)
    return path, model


def test_artifact_round_trip(artifact):
    path, model = artifact
    loaded, metadata = load_twin(path)
    assert type(loaded) is NeuralTwin and loaded.config() == model.config()
    assert metadata == METADATA
    x, theta = torch.randn(7, N_IN), torch.randn(N_P)
    with torch.no_grad():
        assert torch.equal(loaded(x, theta), model(x, theta))
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_artifact_metadata_must_be_json_able(tmp_path):
    with pytest.raises(TypeError, match=r"metadata\['instruments'\]\['awg'\]"):
        save_twin(tmp_path / "t.pt", small_twin(), {"instruments": {"awg": object()}})
    with pytest.raises(TypeError, match=r"metadata\['epochs'\]"):
        save_twin(tmp_path / "t.pt", small_twin(), {"epochs": np.int64(3)})
    assert not (tmp_path / "t.pt").exists()
    save_twin(tmp_path / "t.pt", small_twin(), {"val_nmse": np.float64(0.5), "shape": (1, 2)})
    assert load_twin(tmp_path / "t.pt")[1] == {"val_nmse": 0.5, "shape": [1, 2]}


class CreatesMarker:
    """Unpickling this object would create a file: the test payload for arbitrary code execution."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unpickling_payload_really_runs_code(tmp_path):
    """Control for the next test: the payload does create its marker when unpickled unsafely."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(CreatesMarker(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("via", ["torch.save", "pickle"])
def test_malicious_artifact_runs_no_code(tmp_path, via):
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    payload = {"format": FORMAT, "kind": "neural", "config": {}, "state_dict": {}, "metadata": {"x": CreatesMarker(marker)}}
    if via == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(TwinArtifactError, match="not a readable twin artifact"):
        load_twin(path)
    assert not marker.exists()


def test_truncated_and_random_artifacts(tmp_path, artifact):
    path, _ = artifact
    blob = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    for name in ("truncated.pt", "random.pt", "missing.pt"):
        with pytest.raises(TwinArtifactError, match=name):
            load_twin(tmp_path / name)


def test_wrong_format_unknown_kind_and_mismatched_weights(tmp_path, artifact):
    path, _ = artifact
    good = torch.load(path, weights_only=True)
    cases = {
        "other format": ({**good, "format": "something/2"}, "not a 'pnn-lab-twin/1' twin artifact"),
        "not a dict": ([1, 2, 3], "format: 'list'"),
        "unknown kind": ({**good, "kind": "quantum"}, "unknown twin kind 'quantum'"),
        "bad config": ({**good, "config": {**good["config"], "widths": 3}}, "does not build a NeuralTwin"),
        "missing weight": ({**good, "state_dict": dict(list(good["state_dict"].items())[1:])}, "weights do not match"),
        "wrong shape": (
            {**good, "config": {**good["config"], "hidden": [32, 32]}},
            "weights do not match",
        ),
    }
    for case, (content, message) in cases.items():
        torch.save(content, tmp_path / "bad.pt")
        with pytest.raises(TwinArtifactError, match=message):
            load_twin(tmp_path / "bad.pt")


def test_save_refuses_unregistered_twin(tmp_path):
    with pytest.raises(ValueError, match="register_twin"):
        save_twin(tmp_path / "t.pt", ToyPhysicsTwin(), {})


# --- measured data files --------------------------------------------------------------------------------


def test_twin_data_hdf5_round_trip(tmp_path):
    data = synthetic_data(300)
    path = save_twin_data(tmp_path / "data" / "twin.h5", data)
    loaded = load_twin_data(path)
    for name in ("x", "theta", "y"):
        assert np.array_equal(getattr(loaded, name), getattr(data, name))
        assert getattr(loaded, name).dtype == np.float32
    assert loaded.metadata == data.metadata
    assert type(loaded.metadata["repeats"]) is int and type(loaded.metadata["noise_v"]) is float
    assert loaded.checksum() == data.checksum()
    with h5py.File(path) as f:
        assert f.attrs["checksum"] == data.checksum()
        assert f["x"].compression == "gzip"
    assert list(path.parent.iterdir()) == [path]


def test_checksum_and_split():
    data = synthetic_data(100)
    assert len(data.checksum()) == 64
    changed = TwinData(data.x.copy(), data.theta, data.y)
    changed.x[3, 1] += 1e-3
    assert changed.checksum() != data.checksum()
    train, val = data.split(0.25, seed=3)
    assert (len(train), len(val)) == (75, 25)
    rows = {tuple(r) for r in np.concatenate([train.x, val.x])}
    assert len(rows) == 100
    assert np.array_equal(data.split(0.25, seed=3)[1].x, val.x)
    assert not np.array_equal(data.split(0.25, seed=4)[1].x, val.x)
    with pytest.raises(ValueError, match="same number of samples"):
        TwinData(data.x, data.theta[:5], data.y)
    with pytest.raises(ValueError, match="NaN"):
        TwinData(data.x, data.theta, np.full_like(data.y, np.nan))


def test_truncated_hdf5(tmp_path):
    path = save_twin_data(tmp_path / "twin.h5", synthetic_data(2000))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(TwinDataError, match="twin.h5: not a readable HDF5 file"):
        load_twin_data(path)


def test_flipped_value_fails_checksum(tmp_path):
    path = save_twin_data(tmp_path / "twin.h5", synthetic_data(200))
    with h5py.File(path, "r+") as f:
        f["y"][10, 1] = -f["y"][10, 1]
    with pytest.raises(TwinDataError, match="twin.h5: checksum mismatch"):
        load_twin_data(path)


def test_missing_file_dataset_and_shape_mismatch(tmp_path):
    with pytest.raises(TwinDataError, match="absent.h5: no such twin data file"):
        load_twin_data(tmp_path / "absent.h5")
    path = save_twin_data(tmp_path / "twin.h5", synthetic_data(50))
    with h5py.File(path, "r+") as f:
        del f["theta"]
    with pytest.raises(TwinDataError, match=r"missing data set\(s\) \['theta'\]"):
        load_twin_data(path)
    with h5py.File(path, "r+") as f:
        f["theta"] = np.zeros((49, N_P), np.float32)
    with pytest.raises(TwinDataError, match="same number of rows"):
        load_twin_data(path)
