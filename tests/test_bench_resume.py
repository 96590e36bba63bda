"""``pnn bench --resume``: rows finished in an earlier session (by the bench or by ``pnn run`` into the row's folder)
are kept as they are, rows with a checkpoint continue from it, and a row folder of other settings is refused; a run
folder another process is training into is refused by every command."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.test_cli import EXPERIMENT, RUN, plain, pnn, read_metrics


def test_bench_resume_keeps_finished_rows_continues_checkpoints_and_refuses_other_settings(tmp_path: Path,
                                                                                           monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench"
    # two rows trained earlier by pnn run into the bench's row folders: one finished (2 epochs), one of 1 epoch
    assert pnn("run", EXPERIMENT, *RUN, "--twin", "perfect", "--epochs", 2, "--out", out / "pat_perfect").exit_code == 0
    assert pnn("run", EXPERIMENT, *RUN, "--mode", "perturbative", "--epochs", 1,
               "--out", out / "perturbative").exit_code == 0
    finished = json.loads((out / "pat_perfect" / "summary.json").read_text())
    finished_metrics = (out / "pat_perfect" / "metrics.csv").read_bytes()
    first_epoch = read_metrics(out / "perturbative" / "metrics.csv")

    result = pnn("bench", EXPERIMENT, *RUN, "--set", "training.epochs=2", "--out", out, "--resume",
                 "--rows", "pat:perfect,perturbative")
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "bench.json").read_text())
    assert [(r["mode"], r["twin"]) for r in rows] == [("pat", "perfect"), ("perturbative", "-")]
    # the finished row is the earlier run, untouched
    assert rows[0]["test_accuracy"] == finished["test_accuracy"] and rows[0]["ended"] == finished["ended"]
    assert (out / "pat_perfect" / "metrics.csv").read_bytes() == finished_metrics
    # the 1-epoch row went on from its checkpoint: its first epoch as it was, one more trained
    continued = read_metrics(out / "perturbative" / "metrics.csv")
    assert [int(r["epoch"]) for r in continued] == [1, 2] and continued[0] == first_epoch[0]
    assert rows[1]["epochs"] == 2 and f"{finished['test_accuracy']:.3f}" in (out / "bench.md").read_text()

    # another learning rate: the row folders hold runs of other settings, refused (exit 2) and left as they were
    result = pnn("bench", EXPERIMENT, *RUN, "--set", "training.epochs=2", "--set", "training.lr=0.5", "--out", out,
                 "--resume", "--rows", "pat:perfect")
    assert result.exit_code == 2, result.output
    assert "training.lr" in result.stderr and "config.yaml" in result.stderr, result.stderr
    assert (out / "pat_perfect" / "metrics.csv").read_bytes() == finished_metrics


@contextmanager
def held_by_another_process(imports: str, statement: str, path: Path, seconds: float = 120) -> Iterator[None]:
    """``with <statement>:`` in a second Python process (``path`` is its ``path``) for ``seconds``; the block runs once
    that process holds it, and the process is killed after the block if it is still there."""
    script = (f"import sys, time\nfrom pathlib import Path\n{imports}\npath = Path(sys.argv[1])\n"
              f"with {statement}:\n    print('held', flush=True)\n    time.sleep({seconds})\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_a_run_folder_another_process_trains_into_is_refused_and_left_alone(tmp_path: Path, monkeypatch) -> None:
    """Another process holds the run folder (as a pnn run training into it would): pnn run and pnn bench --resume
    into it exit 2 with one message, and its files are left as they were; once that process is gone, it is free."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench"
    row = out / "pat_perfect"
    assert pnn("run", EXPERIMENT, *RUN, "--twin", "perfect", "--epochs", 1, "--out", row).exit_code == 0
    before = {p.name: p.read_bytes() for p in row.iterdir() if p.is_file()}
    with held_by_another_process("from orchestrator.run_folder import using_run_folder",
                                 "using_run_folder(path, append=True)", row):
        for args in (("run", EXPERIMENT, *RUN, "--twin", "perfect", "--epochs", 1, "--out", row),
                     ("run", EXPERIMENT, *RUN, "--twin", "perfect", "--epochs", 2, "--out", row, "--resume"),
                     ("bench", EXPERIMENT, *RUN, "--set", "training.epochs=2", "--out", out, "--resume",
                      "--rows", "pat:perfect")):
            result = pnn(*args)
            assert result.exit_code == 2, result.output
            assert f"{row} is in use by another process" in plain(result.stderr).replace("\n", ""), result.stderr
        assert {p.name: p.read_bytes() for p in row.iterdir() if p.is_file()} == before
    result = pnn("run", EXPERIMENT, *RUN, "--twin", "perfect", "--epochs", 2, "--out", row, "--resume")
    assert result.exit_code == 0, result.output
    assert [int(r["epoch"]) for r in read_metrics(row / "metrics.csv")] == [1, 2]
