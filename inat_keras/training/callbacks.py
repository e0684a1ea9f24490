"""Small Keras callbacks that the built-in ones do not cover."""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path

import keras

from .run_folder import read_history, write_history


class EpochTimer(keras.callbacks.Callback):
    """Adds epoch_seconds and images_per_second to the epoch logs (so CSV and W&B get them)."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        self.seconds.append(seconds)
        if logs is not None:
            logs["epoch_seconds"] = seconds
            logs["images_per_second"] = self.images_per_epoch / seconds


class PaddedValidationLoss(keras.callbacks.Callback):
    """Keras divides the validation loss by every image of its batches, zero-weight padding included
    (data.pipeline.padded); scaling by padded/real images makes it the mean over the real ones. Goes first."""

    def __init__(self, images: int, batch_size: int):
        super().__init__()
        self.scale = math.ceil(images / batch_size) * batch_size / images

    def on_epoch_end(self, epoch, logs=None):
        if logs and "val_loss" in logs:
            logs["val_loss"] = float(logs["val_loss"]) * self.scale


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that writes beside the target and renames, so a crash never leaves half a file."""

    def __init__(self, filepath, **kwargs):
        self.final_path = Path(filepath)
        self.partial_path = self.final_path.with_name(self.final_path.stem + ".partial.keras")
        super().__init__(str(self.partial_path), **kwargs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.partial_path.exists():
            os.replace(self.partial_path, self.final_path)


class StagedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore for training in stages: one fit per stage, each compiled with a fresh Adam.

    Every fit restores the backup, as Keras intends: the weights equal those in memory and the epoch
    count continues. The saved Adam state is restored only where it fits the current trainable set:
    after an interruption inside a stage it does; at a stage's first epoch it belongs to the previous
    stage's trainable set, Keras skips it (the warning is expected, so it is silenced here), and the
    stage starts with a fresh Adam, with or without an interruption.
    """

    def on_train_begin(self, logs=None):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            super().on_train_begin(logs)


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """CSVLogger in append mode that first drops rows of epochs about to be rerun after a resume."""

    def __init__(self, filename):
        super().__init__(filename, append=True)
        self._trimmed = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._trimmed and os.path.exists(self.filename):
            self._trimmed = True
            rows = read_history(self.filename)
            kept = [row for row in rows if int(row["epoch"]) < epoch]
            if len(kept) != len(rows):
                self.csv_file.close()
                write_history(self.filename, kept)
                self.csv_file = open(self.filename, "a")
                self.append_header = not kept
                self.writer = None
