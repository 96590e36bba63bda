"""TensorBoard event files in the run folder (``torch.utils.tensorboard``): ``tensorboard --logdir runs`` shows every
run, live, one run per folder.

The step of every value is the global batch step: the batches trained so far over the whole run (all sessions).
Per batch: ``train/loss``. Per epoch, at its last batch's step: ``train/loss_epoch``, ``accuracy/test_device``,
``accuracy/train_running``, ``accuracy/test_twin`` (in silico), ``time/instrument_s``, ``time/twin_s``,
``time/optimizer_s``, ``time/other_s``, ``time/epoch_s``, ``time/device_busy_share``, ``device/forward_failures``,
``device/batches_retried``, ``device/recoveries``, ``train/lr``, ``train/epoch``, ``samples/training``,
``samples/evaluation``, ``samples/refinement``, ``samples/budget`` (device samples consumed), with twin refinement
``twin/nmse_recent_before`` and ``twin/nmse_recent_after``; and the image
``device/physical_outputs`` (the figure of ``physical_outputs.png``) whenever that file was rewritten.

A fresh run removes the event files of an earlier run in its folder; a resumed one continues at the checkpoint's
step and tells TensorBoard to drop what the earlier session logged after it (``purge_step``), so no step is shown
twice.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
from tensorboard.compat.proto.summary_pb2 import Summary

log = logging.getLogger(__name__)

EVENT_FILES = "events.out.tfevents.*"

EPOCH_SCALARS = {
    "train_loss": "train/loss_epoch", "test_accuracy": "accuracy/test_device",
    "train_accuracy_running": "accuracy/train_running", "twin_test_accuracy": "accuracy/test_twin",
    "instrument_s": "time/instrument_s", "twin_s": "time/twin_s", "optimizer_s": "time/optimizer_s",
    "other_s": "time/other_s", "seconds": "time/epoch_s", "device_busy_share": "time/device_busy_share",
    "forward_failures": "device/forward_failures", "batches_retried": "device/batches_retried",
    "recoveries": "device/recoveries", "lr": "train/lr", "epoch": "train/epoch",
    "device_samples_training": "samples/training", "device_samples_evaluation": "samples/evaluation",
    "device_samples_refinement": "samples/refinement", "device_samples_budget": "samples/budget",
    "twin_nmse_recent_before": "twin/nmse_recent_before", "twin_nmse_recent_after": "twin/nmse_recent_after"}
"""metrics.csv column -> TensorBoard tag of the per-epoch scalars."""
IMAGE_TAG = "device/physical_outputs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # PNG colour type -> channels (grey, RGB, palette, grey + alpha, RGBA)


class RunBoard:
    """The event files of one run folder. ``start`` opens the writer; ``close`` flushes and closes it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.writer = None

    def start(self, step: int, resumed: bool) -> None:
        """Open the writer: a resumed run after ``step`` batches purges later steps; a fresh one starts clean."""
        from torch.utils.tensorboard import SummaryWriter  # imported only when a run starts (tensorboard is large)

        self.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        if not resumed:
            old = sorted(self.folder.glob(EVENT_FILES))
            if old:
                log.info("removing %d TensorBoard event file(s) of the previous run in %s", len(old), self.folder)
            for path in old:
                path.unlink()
        self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=step + 1 if resumed else None,
                                    flush_secs=30)

    def batch(self, step: int, loss: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)

    def epoch(self, step: int, row: dict, image: Path | None = None) -> None:
        """The epoch's scalars (those of ``row`` that are numbers), and the image file ``image`` if given."""
        if self.writer is None:
            return
        for key, tag in EPOCH_SCALARS.items():
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        if image is not None:
            self._add_image(step, image)
        self.writer.flush()

    def image(self, step: int, path: Path) -> None:
        """The PNG file ``path`` (the physical outputs' figure) as the image at ``step``, if the file is there. The
        file's bytes go into the event as they are: TensorBoard stores images PNG-encoded anyway, and decoding and
        encoding a figure again took 0.2 s (1.1 s the first time, loading the encoders)."""
        if self.writer is not None:
            self._add_image(step, path)
            self.writer.flush()

    def _add_image(self, step: int, path: Path) -> None:
        if not path.is_file():
            return
        png = path.read_bytes()
        if png[:8] != PNG_SIGNATURE or png[12:16] != b"IHDR":
            raise ValueError(f"{path} is not a PNG file")
        width, height = struct.unpack(">II", png[16:24])
        channels = _PNG_CHANNELS.get(png[25], 3)  # by the PNG colour type
        summary = Summary(value=[Summary.Value(tag=IMAGE_TAG, image=Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=png))])
        # what SummaryWriter.add_image does after encoding its tensor as PNG
        self.writer._get_file_writer().add_summary(summary, step)

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
