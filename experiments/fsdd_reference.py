"""A digital reference for the spoken-digit task: what a linear classifier gets from the sound level of the raw audio
in the same time bins as the plate's outputs, with no plate in between.

    PNN_DATA_DIR=../shared/data python experiments/fsdd_reference.py experiments/mechanical_fsdd.yaml

Prints train and test accuracy of a logistic regression (scikit-learn) on the standardised rms of each bin. The
difference to the plate's PAT row is what the plate (its modes, the amplifier's clipping, the trained input scales
and parameter waveform) adds before the same kind of linear readout.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.linear_model import LogisticRegression

from orchestrator.config import data_dir
from orchestrator.experiment_file import load_experiment
from orchestrator.experiment import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    args = parser.parse_args()
    cfg = load_experiment(args.experiment)
    data = load_task(cfg, data_dir())
    bins = cfg.encoding.n_outputs(data.x_train.shape[1])

    def levels(x: np.ndarray) -> np.ndarray:
        sound = 2 * x - 1  # features back to the clip's samples in [-1, 1]
        per_bin = sound.shape[1] // bins
        return np.sqrt((sound[:, : per_bin * bins].reshape(len(sound), bins, per_bin) ** 2).mean(axis=2))

    train, test = levels(data.x_train), levels(data.x_test)
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    clf = LogisticRegression(max_iter=3000).fit((train - mean) / std, data.y_train)
    print(json.dumps({"experiment": cfg.experiment, "bins": bins,
                      "train_accuracy": round(float(clf.score((train - mean) / std, data.y_train)), 3),
                      "test_accuracy": round(float(clf.score((test - mean) / std, data.y_test)), 3)}))


if __name__ == "__main__":
    main()
