"""A run that can be watched and compared, and a run folder that tells the whole story (issue 15, items 4 and 5):
TensorBoard event files (steps continue on resume, none twice), plots after every epoch, run.log, provenance,
``pnn compare`` and ``pnn --version``.

The trainer-level tests use the cheap stand-in device of tests/test_trainer.py; the others are short real runs on
the simulated electronic bench through the CLI.
"""

from __future__ import annotations

import json
import math
import platform
import re
import shutil
import struct
import subprocess
from datetime import datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from orchestrator.datasets import Dataset, load_dataset
from orchestrator.experiment import run_provenance
from orchestrator.experiment_file import load_experiment
from orchestrator.provenance import data_checksum
from orchestrator.run_folder import RunFolder, RunWatch
from orchestrator.tensorboard import EPOCH_SCALARS, IMAGE_TAG
from orchestrator.trainer import StopRequest, TrainingStopped
from test_cli import EXPERIMENT, N_TEST, N_TRAIN, RUN, plain, pnn
from test_trainer import EPOCHS, N_BATCHES, device_fn, make_trainer

ROOT = Path(__file__).resolve().parents[1]
PNGS = ("learning_curves.png", "confusion_matrix.png", "physical_outputs.png")


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def watched_trainer(out: Path, **kwargs):
    folder = RunFolder(out, {"experiment": "toy", "mode": "pat", "twin": "test"}, ["a", "b", "c", "d"])
    watch = RunWatch(folder)
    return make_trainer(out, watch=watch, **kwargs), watch


# -- the trainer with a watch: event files and plots --------------------------------------------------------------

def test_resume_after_a_crash_continues_the_steps_without_duplicates(tmp_path: Path) -> None:
    calls = {"n": 0}

    def crashing(x, theta):  # a crash in epoch 2 (not an instrument failure: no checkpoint is saved for it)
        calls["n"] += 1
        if calls["n"] > (N_BATCHES + 2) * 2 + 4:  # 2 layers per batch; epoch 1, its evaluation, 2 batches of epoch 2
            raise RuntimeError("power cut")
        return device_fn(x, theta)

    first, watch = watched_trainer(tmp_path, device=crashing)
    with pytest.raises(RuntimeError, match="power cut"):
        try:
            first.fit()
        finally:
            watch.close()
    logged = steps(events(tmp_path), "train/loss")
    assert logged[-1] > N_BATCHES  # batches of epoch 2 were logged after the checkpoint (end of epoch 1)
    assert first.saved_position == (1, N_BATCHES)

    second, watch = watched_trainer(tmp_path)
    try:
        second.fit(resume=True)
    finally:
        watch.close()
    acc = events(tmp_path)
    total = EPOCHS * N_BATCHES
    assert steps(acc, "train/loss") == list(range(1, total + 1))  # every batch once, in order
    epoch_ends = [N_BATCHES * e for e in range(1, EPOCHS + 1)]
    assert steps(acc, "accuracy/test_device") == epoch_ends
    assert {"accuracy/train_running", "time/instrument_s", "time/twin_s", "time/optimizer_s", "time/other_s",
            "time/device_busy_share", "device/recoveries", "device/batches_retried"} <= set(acc.Tags()["scalars"])
    accuracy = [e.value for e in acc.Scalars("accuracy/test_device")]
    assert accuracy == pytest.approx([r["test_accuracy"] for r in second.rows])
    assert IMAGE_TAG in acc.Tags()["images"]


def test_a_run_stopped_after_its_first_epoch_has_its_plots(tmp_path: Path) -> None:
    request = StopRequest()

    def stop_in_epoch_two(done: int, n: int, epoch: int, epochs: int) -> None:
        assert (n, epochs) == (N_BATCHES, EPOCHS)
        if epoch == 2:
            request.signal = 2

    trainer, watch = watched_trainer(tmp_path, stop=request, on_batch=stop_in_epoch_two)
    with pytest.raises(TrainingStopped):
        try:
            trainer.fit()
        finally:
            watch.close()
    assert len(trainer.rows) == 1
    for name in PNGS:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left behind
    assert steps(events(tmp_path), "train/loss") == list(range(1, N_BATCHES + 2))


def test_the_last_epochs_plots_are_the_final_ones_drawn_once(tmp_path: Path, monkeypatch) -> None:
    """With the final evaluation following the last epoch, that epoch draws nothing: the final plots (written
    after it) are the ones that stay, and their physical outputs are TensorBoard's image at the last step."""
    monkeypatch.setattr("orchestrator.run_folder.PLOT_SHARE", 1e9)  # no pacing: every other epoch draws
    folder = RunFolder(tmp_path, {"experiment": "toy", "mode": "pat", "twin": "test"}, ["a", "b", "c", "d"])
    watch = RunWatch(folder, final_after=EPOCHS)
    trainer = make_trainer(tmp_path, watch=watch)
    try:
        trainer.fit()
        drawn = (tmp_path / "physical_outputs.png").stat().st_mtime_ns
        title_file = (tmp_path / "confusion_matrix.png").read_bytes()
        assert [e.step for e in events(tmp_path).Images(IMAGE_TAG)] == [N_BATCHES * e for e in range(1, EPOCHS)]
        watch.draw_final(trainer.rows, trainer.evaluation)
        watch.finish_plots(trainer.step)
    finally:
        watch.close()
    assert (tmp_path / "physical_outputs.png").stat().st_mtime_ns > drawn
    assert (tmp_path / "confusion_matrix.png").read_bytes() != title_file  # "final", not "after epoch 2"
    images = events(tmp_path).Images(IMAGE_TAG)
    assert [e.step for e in images] == [N_BATCHES * e for e in range(1, EPOCHS + 1)]
    final = (tmp_path / "physical_outputs.png").read_bytes()
    assert images[-1].encoded_image_string == final  # the figure's own PNG, not decoded and encoded again
    assert (images[-1].width, images[-1].height) == struct.unpack(">II", final[16:24])


# -- real runs on the simulated bench -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two short PAT runs with the perfect twin: 2 epochs, and 1 epoch at another learning rate."""
    base = tmp_path_factory.mktemp("runs")
    first, second = base / "lr05", base / "lr01"
    result = pnn("run", EXPERIMENT, *RUN, "--twin", "perfect", "--out", first, "--epochs", 2)
    assert result.exit_code == 0, result.output
    result = pnn("run", EXPERIMENT, *RUN, "--twin", "perfect", "--out", second, "--epochs", 1,
                 "--set", "training.lr=0.01")
    assert result.exit_code == 0, result.output
    return first, second


def test_the_run_folder_holds_its_log_event_files_and_provenance(two_runs) -> None:
    out = two_runs[0]
    n_batches = math.ceil(N_TRAIN / 16)
    acc = events(out)
    assert steps(acc, "train/loss") == list(range(1, 2 * n_batches + 1))
    assert set(EPOCH_SCALARS.values()) - {"accuracy/test_twin", "twin/nmse_recent_before",
                                           "twin/nmse_recent_after"} <= set(acc.Tags()["scalars"])
    assert steps(acc, "accuracy/test_device") == [n_batches, 2 * n_batches]
    # after epoch 1 (the first plots are always drawn), and the final evaluation's after the last epoch
    assert [e.step for e in acc.Images(IMAGE_TAG)] == [n_batches, 2 * n_batches]

    log = (out / "run.log").read_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ orchestrator\.trainer INFO: epoch 2: loss", log, re.M)
    assert "outputs off" in log  # the session's end is in it too

    summary = json.loads((out / "summary.json").read_text())
    started, ended = (datetime.fromisoformat(summary[k].replace("Z", "+00:00")) for k in ("started", "ended"))
    assert started <= ended and started.utcoffset().total_seconds() == 0
    prov = summary["provenance"]
    assert prov["pnn_lab_version"] == metadata.version("pnn-lab")
    if shutil.which("git") and (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert prov["git_commit"] == head.stdout.strip() and isinstance(prov["git_dirty"], bool)
    assert (prov["python"], prov["torch"]) == (platform.python_version(), torch.__version__)
    assert prov["host"] and prov["twin"]["kind"] == "perfect"
    data = load_dataset("digits", n_train=N_TRAIN, n_test=N_TEST, seed=0)
    assert prov["data"]["name"] == "digits" and (prov["data"]["n_train"], prov["data"]["n_test"]) == (N_TRAIN, N_TEST)
    assert prov["data"]["sha256"] == data_checksum(data.x_train, data.y_train, data.x_test, data.y_test)


def test_pnn_compare_prints_one_table_and_plots_the_curves(two_runs, tmp_path: Path) -> None:
    first, second = two_runs
    result = pnn("compare", first, second, "--out", tmp_path / "cmp.png")
    assert result.exit_code == 0, result.output
    lines = plain(result.stdout).splitlines()
    for folder in two_runs:
        summary = json.loads((folder / "summary.json").read_text())
        row = next(line for line in lines if f" {folder.name} " in line)
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert cells[1:5] == ["electronic_digits", "pat", "perfect", "finished"]
        assert cells[5] == f"{summary['test_accuracy']:.3f}" and cells[6] == str(summary["epochs"])
        assert cells[8] == f"{summary['device_busy_share']:.2f}"
        assert cells[9].startswith(summary["provenance"]["git_commit"][:10])
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    empty = tmp_path / "not_a_run"
    empty.mkdir()
    result = pnn("compare", first, empty)
    assert result.exit_code == 2
    message = plain(result.output).strip()
    assert message == f"error: {empty}: no summary.json, not a run folder (pnn run --out writes one)"


def test_pnn_version_names_the_package_and_the_commit() -> None:
    result = pnn("--version")
    assert result.exit_code == 0
    text = result.stdout.strip()
    assert text.startswith(f"pnn-lab {metadata.version('pnn-lab')} ")
    if shutil.which("git") and (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert f"commit {head.stdout.strip()[:12]}" in text


def test_a_failing_plot_or_event_file_warns_once_and_does_not_stop_training(tmp_path: Path, caplog,
                                                                              monkeypatch) -> None:
    """The watch only shows the run: a full disk or a plotting error must not end training and lose the epoch."""
    folder = RunFolder(tmp_path)
    watch = RunWatch(folder, tensorboard=True)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(folder, "write_plots", no_space)
    monkeypatch.setattr(watch.board, "epoch", no_space)
    rows = [{"epoch": 1, "train_loss": 1.0, "test_accuracy": 0.5}]
    with caplog.at_level("WARNING", logger="orchestrator.run_folder"):
        watch.start(0, resumed=False)
        for epoch in (1, 2):
            watch.epoch_evaluated(rows, None)  # must not raise
            watch.epoch_done(epoch, rows[-1])
    watch.close()
    warned = [r.getMessage() for r in caplog.records if "training goes on" in r.getMessage()]
    assert len(warned) == 2, warned  # once for the plots, once for TensorBoard, not once per epoch
    assert any("plots" in w and "No space left" in w for w in warned)


def test_a_data_set_with_file_checksums_keeps_the_data_checksum_and_resumes(caplog) -> None:
    """A data set loaded from files (MNIST, vowels) records its files' checksums beside the data's own; a resumed run
    whose first session recorded the files' checksums in the data's place (before 2026-12-06) still starts, and a
    changed data set is warned about."""

    cfg = load_experiment(EXPERIMENT)
    x, y = np.linspace(0, 1, 12, dtype=np.float32).reshape(6, 2), np.array([0, 1, 0, 1, 0, 1])
    data = Dataset("mnist", x, y, x[:2], y[:2], 2, ["0", "1"], info={"sha256": {"train.gz": "ab" * 32}})
    fresh = run_provenance(cfg, data, None, {})
    assert fresh["data"]["sha256"] == data_checksum(x, y, x[:2], y[:2])
    assert fresh["data"]["files_sha256"] == {"train.gz": "ab" * 32}
    old_format = {"provenance": {"data": {"sha256": {"train.gz": "ab" * 32}}}}
    assert run_provenance(cfg, data, None, old_format)["data"]["sha256"] == fresh["data"]["sha256"]
    with caplog.at_level("WARNING", logger="orchestrator.experiment"):
        run_provenance(cfg, data, None, {"provenance": {"data": {"sha256": "cd" * 32}}})
    assert "the data differ" in caplog.text
