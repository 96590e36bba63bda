"""Damaged files (cut in half, bytes changed in the middle, emptied, replaced with text): every kind the project reads
gives one clear error naming the file, what is wrong and what to do, never a raw h5py, pickle or zipfile traceback."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.config import TrainingConfig
from orchestrator.datasets import Dataset, DatasetError, load_dataset, read_idx
from orchestrator.network import PhysicalNetwork
from orchestrator.trainer import CHECKPOINT, Trainer
from common.files import CorruptFileError
from twins.artifact import TwinArtifactError, load_twin, save_twin
from twins.data import TwinData, TwinDataError, load_twin_data, save_twin_data
from twins.neural import NeuralTwin

DATA = Path(os.environ.get("PNN_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")).resolve()  # tests chdir
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
needs_data = pytest.mark.skipif(not (DATA / "fsdd" / "recordings").is_dir(), reason="needs the shared data directory")


def _corrupt(blob: bytes) -> bytes:
    middle = bytearray(blob)
    mid = len(blob) // 2
    middle[mid:mid + 16] = bytes(b ^ 0x5A for b in middle[mid:mid + 16])
    return bytes(middle)


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda blob: blob[: len(blob) // 2],
    "corrupted": _corrupt,
    "empty": lambda blob: b"",
    "text": lambda blob: b"epoch,loss\n1,0.52\n",
}


@dataclass
class Kind:
    """A file as the project writes or finds it, how it is read, and what a damaged one must say."""

    path: Path  # the file that gets damaged
    load: Callable[[], object]
    error: type[Exception]
    remedy: str
    named: Path | None = None  # what the message starts with, if not ``path``


def _twin_artifact(tmp: Path) -> Kind:
    path = save_twin(tmp / "twin_neural.pt", NeuralTwin(4, 4, 4, hidden=(16,)), {"setup": "test"})
    return Kind(path, lambda: load_twin(path), TwinArtifactError, "delete it and run pnn calibrate again")


def _twin_data(tmp: Path) -> Kind:
    rng = np.random.default_rng(0)
    path = save_twin_data(tmp / "twin_data.h5", TwinData(rng.random((500, 6)), rng.random((500, 6)),
                                                         rng.random((500, 6)), {"setup": "test"}))
    return Kind(path, lambda: load_twin_data(path), TwinDataError, "delete it and run pnn calibrate again")


def _trainer(out: Path) -> Trainer:
    data = Dataset("tiny", np.zeros((8, 4), np.float32), np.arange(8) % 2, np.zeros((4, 4), np.float32),
                   np.arange(4) % 2, 2, ["a", "b"])
    twin = torch.nn.Identity()
    return Trainer(PhysicalNetwork(4, 2, 4, 1), data, lambda x, theta: x, lambda x, theta: twin(x), TrainingConfig(),
                   seed=0, out_dir=out)


def _checkpoint(tmp: Path) -> Kind:
    _trainer(tmp).save_checkpoint()
    return Kind(tmp / CHECKPOINT, lambda: _trainer(tmp).load_checkpoint(), CorruptFileError,
                "run without --resume to start afresh")


def _mnist_labels(tmp: Path) -> Kind:
    path = tmp / "t10k-labels-idx1-ubyte.gz"
    shutil.copy(DATA / "mnist" / path.name, path)
    return Kind(path, lambda: read_idx(path, 1), DatasetError, "replace it with an intact copy")


def _vowels(tmp: Path) -> Kind:
    path = tmp / "hillenbrand-vowels" / "vowdata.dat"
    path.parent.mkdir()
    shutil.copy(DATA / "hillenbrand-vowels" / "vowdata.dat", path)
    return Kind(path, lambda: load_dataset("vowels", data_dir=tmp), DatasetError, "replace it with an intact copy")


def _fsdd(tmp: Path) -> Kind:
    """The 3000 recordings (links), one of them a real copy to damage."""
    folder = tmp / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    for wav in (DATA / "fsdd" / "recordings").glob("*.wav"):
        (folder / wav.name).symlink_to(wav)
    path = folder / "7_theo_23.wav"
    path.unlink()
    shutil.copy(DATA / "fsdd" / "recordings" / path.name, path)
    return Kind(path, lambda: load_dataset("fsdd", data_dir=tmp, n_train=20, n_test=10), DatasetError,
                "replace", named=folder)


KINDS: dict[str, Callable[[Path], Kind]] = {"twin artifact": _twin_artifact, "twin data": _twin_data,
                                            "checkpoint": _checkpoint, "MNIST labels": _mnist_labels,
                                            "vowels": _vowels, "FSDD recording": _fsdd}

# what each message must say is wrong
SAYS = {
    "twin artifact": {"truncated": "not a readable twin artifact: truncated, or not written by torch.save",
                      "corrupted": "not a readable twin artifact: corrupted (its part",
                      "empty": "not a readable twin artifact: the file is empty",
                      "text": "not a readable twin artifact: truncated, or not written by torch.save"},
    "twin data": {"truncated": "not a readable HDF5 file (truncated or corrupted?): Unable to synchronously open file "
                               "(truncated file",
                  "corrupted": "not a readable HDF5 file (truncated or corrupted?)",
                  "empty": "not a readable HDF5 file: the file is empty",
                  "text": "not a readable HDF5 file (truncated or corrupted?): Unable to synchronously open file "
                          "(file signature not found)"},
    "checkpoint": {"truncated": "not a readable checkpoint: truncated, or not written by torch.save",
                   "corrupted": "not a readable checkpoint: corrupted (its part",
                   "empty": "not a readable checkpoint: the file is empty",
                   "text": "not a readable checkpoint: truncated, or not written by torch.save"},
    "MNIST labels": {"truncated": "corrupt or truncated gzip file", "corrupted": "corrupt or truncated gzip file",
                     "empty": "the file is empty", "text": "not an IDX file of 1-d unsigned bytes"},
    "vowels": {"truncated": ":858: expected 16 numeric columns", "corrupted": ":858: expected 16 numeric columns",
               "empty": "the file is empty", "text": "no vowel tokens found"},
    "FSDD recording": {"truncated": "truncated, header says 4033 samples, file has 2005",
                       "corrupted": "the recordings are those of the FSDD release but their content differs",
                       "empty": "corrupt or not a PCM WAV file (the file is empty)",
                       "text": "corrupt or not a PCM WAV file (file does not start with RIFF id)"},
}


@needs_data
@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_file_gives_one_clear_error(tmp_path: Path, kind: str, damage: str) -> None:
    file = KINDS[kind](tmp_path)
    file.load()  # the intact file loads
    file.path.write_bytes(DAMAGES[damage](file.path.read_bytes()))
    with pytest.raises(file.error) as info:
        file.load()
    message = str(info.value)
    named = file.named if damage == "corrupted" and file.named else file.path
    assert message.startswith(f"{named}:"), message
    assert SAYS[kind][damage] in message
    assert file.remedy in message and "\n" not in message


@needs_data
@pytest.mark.parametrize("cut", ["at a line end", "one digit changed"])
def test_a_vowel_file_that_still_parses_is_refused_by_its_checksum(tmp_path: Path, cut: str) -> None:
    file = _vowels(tmp_path)
    blob = file.path.read_bytes()
    damaged = blob[: blob.index(b"\n", len(blob) // 2) + 1] if cut == "at a line end" else \
        blob.replace(b" 1663 ", b" 1664 ", 1)
    file.path.write_bytes(damaged)
    with pytest.raises(DatasetError, match=rf"vowdata.dat: truncated or corrupted: {len(damaged)} bytes with sha256 "):
        file.load()


def test_a_checkpoint_of_another_network_is_named(tmp_path: Path) -> None:
    _trainer(tmp_path).save_checkpoint()
    other = _trainer(tmp_path)
    other.net = PhysicalNetwork(6, 2, 6, 1)
    with pytest.raises(CorruptFileError, match=rf"{CHECKPOINT}: cannot resume from this checkpoint, it does not fit "
                                               r"this run's network or optimizer \(RuntimeError"):
        other.load_checkpoint()
    torch.save({"net": {}}, tmp_path / CHECKPOINT)
    with pytest.raises(CorruptFileError, match=r"not a pnn-lab checkpoint \(no epoch, opt, rows, wall_s, torch_rng\)"):
        _trainer(tmp_path).load_checkpoint()


# -- the same through ``pnn`` ------------------------------------------------------------------------------------------

def pnn(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@needs_data
def test_pnn_names_the_experiment_line_of_a_damaged_data_set(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    file = _vowels(tmp_path)
    blob = file.path.read_bytes()
    cut = blob[: blob.index(b"\n", len(blob) // 3) + 1]
    file.path.write_bytes(cut)
    experiment = tmp_path / "vowels.yaml"
    text = (EXPERIMENTS / "optical_vowels.yaml").read_text()
    experiment.write_text(text)
    line = text.splitlines().index("  dataset: vowels") + 1
    result = pnn("run", experiment, "--simulate", "--data-dir", tmp_path)  # the data set is read before the bench starts
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{experiment}:{line}: task.dataset: {file.path}: truncated or corrupted: {len(cut)} bytes with sha256 "
        f"{hashlib.sha256(cut).hexdigest()[:16]}..., the release has 136111 bytes with sha256 05a4a69e2c6b0f44...; "
        "replace it with an intact copy of the release (see SOURCE.txt in its folder)"]
    assert not (tmp_path / "runs").exists()
    result = pnn("run", experiment, "--simulate", "--data-dir", tmp_path / "nowhere")
    assert (result.exit_code, result.stderr.splitlines()) == (
        2, [f"{experiment}:{line}: task.dataset: data directory {tmp_path / 'nowhere'} does not exist"])


ELECTRONIC = """\
experiment: damaged
setup: electronic
instruments:
  awg:
    resource: TCPIP0::127.0.0.1::5025::SOCKET
    max_abs_volts: 1.5
  scope:
    resource: TCPIP0::127.0.0.1::5026::SOCKET
task:
  dataset: digits
  n_train: 100
  n_test: 50
network:
  depth: 1
  width: 64
training:
  epochs: 1
"""


def test_pnn_run_on_a_damaged_twin_artifact_says_to_calibrate_again(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(ELECTRONIC)
    artifact = save_twin(Path("artifacts", "damaged-sim", "twin_neural.pt"), NeuralTwin(64, 64, 64, hidden=(8,)), {})
    artifact.write_bytes(artifact.read_bytes()[:-100])
    result = pnn("run", "exp.yaml", "--simulate")
    assert result.exit_code == 4
    assert result.stderr.splitlines()[-1] == (
        f"error: {artifact}: not a readable twin artifact: truncated, or not written by torch.save (no zip directory "
        "at its end); delete it and run pnn calibrate again")


def test_bookkeeping_json_that_cannot_be_read_is_an_empty_object(tmp_path: Path) -> None:
    """summary.json and trial.json are bookkeeping: missing, torn or of the wrong kind, they read as {}."""
    from common.files import read_json_object

    good, torn, listed = tmp_path / "good.json", tmp_path / "torn.json", tmp_path / "list.json"
    good.write_text('{"status": "finished", "epochs": 3}')
    torn.write_text('{"status": "fini')
    listed.write_text("[1, 2]")
    assert read_json_object(good) == {"status": "finished", "epochs": 3}
    assert [read_json_object(p) for p in (torn, listed, tmp_path / "missing.json", tmp_path)] == [{}, {}, {}, {}]
