"""The run folder: what ``pnn run`` leaves for the operator, every file written atomically.

    config.yaml            the resolved settings              instruments.json   identities, settings, calibration
    metrics.csv            one row per epoch (the trainer)    checkpoint.pt      resumable (the trainer)
    summary.json           the state and the results          *.png              learning curves, confusion matrix,
                                                                                 physical outputs

summary.json always tells what state the folder is in: ``"status": "running"`` from the start, then ``"finished"``,
or, when the run ended early, ``"stopped"`` (first Ctrl-C or SIGTERM), ``"failed"`` (the device kept failing, or
another error) or ``"aborted"`` (a second Ctrl-C), with the position the checkpoint holds (resume continues after it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from common.files import atomic_write_bytes
from orchestrator import plots
from orchestrator.config import ExperimentConfig, dump_config
from orchestrator.trainer import TrainingStopped, write_metrics


class RunFolder:
    """The files of one run in ``path``."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def start(self, cfg: ExperimentConfig, snapshot: dict, about: dict) -> None:
        """Write the resolved settings and the instruments' snapshot, and a summary saying the run is running."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path / "config.yaml", dump_config(cfg).encode())
        atomic_write_bytes(self.path / "instruments.json", json.dumps(snapshot, indent=2, default=str).encode())
        self.write_summary({**about, "status": "running"})

    def write_summary(self, summary: dict) -> None:
        atomic_write_bytes(self.path / "summary.json", json.dumps(summary, indent=2).encode())

    def write_results(self, rows: list[dict], y_test: np.ndarray, predicted: np.ndarray, class_names: Sequence[str],
                      layer_outputs: list[np.ndarray]) -> None:
        """metrics.csv and the plots: learning curves, the confusion matrix of the device's test predictions, and
        the device outputs of each layer ([samples, outputs] per layer) for the first test samples."""
        write_metrics(self.path / "metrics.csv", rows)
        plots.plot_learning_curves(rows, self.path / "learning_curves.png")
        plots.plot_confusion_matrix(np.asarray(y_test), predicted, class_names, self.path / "confusion_matrix.png")
        plots.plot_physical_outputs(layer_outputs, self.path / "physical_outputs.png",
                                    f"device outputs of each layer ({len(layer_outputs[0]) if layer_outputs else 0} "
                                    f"test samples)", labels=[f"layer {i + 1}" for i in range(len(layer_outputs))])


def ended_early(err: BaseException) -> str:
    """The summary status of a run that ended with ``err``."""
    if isinstance(err, TrainingStopped):
        return "stopped"
    return "aborted" if isinstance(err, KeyboardInterrupt) else "failed"
