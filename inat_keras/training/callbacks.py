"""Small Keras callbacks that the built-in ones do not cover."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import warnings
import zipfile
from pathlib import Path

import h5py
import keras

from ..errors import DataError
from ..files import replacing
from ..keras_compat import backup_files, is_improvement, prepare_monitor
from ..outputs.run_folder import (
    CHECKPOINT,
    CHECKPOINT_RECORD,
    HISTORY,
    PARTIAL_CHECKPOINT,
    best_value,
    read_checkpoint_record,
    read_history,
    resumed_epoch,
    write_checkpoint_record,
    write_history,
)

log = logging.getLogger(__name__)
NEW_FOLDER = "rerun in a new --output-dir"


class EpochTimer(keras.callbacks.Callback):
    """Adds epoch_seconds and images_per_second to the epoch logs (history.csv, the console, W&B). Whether the epoch
    was this process's first (it includes compiling and filling caches) is bookkeeping, not a metric: history.csv
    alone records it, as process_start (`row_extras`)."""

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

    def row_extras(self) -> dict:
        return {"process_start": int(len(self.seconds) == 1)}


class PaddedValidationLoss(keras.callbacks.Callback):
    """Keras divides the validation loss by every image of its batches, zero-weight padding included
    (data.pipeline.padded); scaling by padded/real images makes it the mean over the real ones. Goes first."""

    def __init__(self, images: int, batch_size: int):
        super().__init__()
        self.scale = math.ceil(images / batch_size) * batch_size / images

    def on_epoch_end(self, epoch, logs=None):
        if logs and "val_loss" in logs:
            logs["val_loss"] = float(logs["val_loss"]) * self.scale


class RunCheckpoint(keras.callbacks.ModelCheckpoint):
    """The run's model.keras: the best epoch on val_accuracy, or (without validation) the last epoch.

    Written beside the target and renamed, so a crash never leaves half a file, and recorded with its
    epoch in checkpoint.json. It goes after the backup in the callback list: a kill between the two
    leaves a backup of an epoch whose checkpoint is missing, never a checkpoint of an epoch that the
    resume reruns (and whose history row it deletes). On resume, once the backup has restored that
    epoch's weights, the missing checkpoint is written from them; so is a damaged one (a disk fault),
    and where the backup holds another epoch, a damaged checkpoint is an error that says what was lost.
    """

    def __init__(self, run_dir: Path, validated: bool):
        self.run_dir = Path(run_dir)
        self.final_path, self.partial_path = self.run_dir / CHECKPOINT, self.run_dir / PARTIAL_CHECKPOINT
        self.validated = validated
        super().__init__(
            str(self.partial_path),
            monitor="val_accuracy" if validated else "loss",
            mode="max" if validated else "min",
            save_best_only=validated,
        )
        self._repaired = False

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._repaired:
            return
        self._repaired = True
        restored = resumed_epoch(self.run_dir)
        rows = [r for r in read_history(self.run_dir / HISTORY) if int(r["epoch"]) <= restored]  # later ones rerun
        if not rows:
            return
        due = self.due_epoch(rows)
        if self.validated:  # the epochs to come must beat the best so far
            self.best = best_value("val_accuracy", [r.get("val_accuracy") for r in rows])
        record = read_checkpoint_record(self.run_dir)
        damage = archive_problem(self.final_path) if self.final_path.exists() else None
        if damage and due != restored:
            raise DataError(
                f"{self.final_path} of epoch {due} is damaged ({damage}) and the backup holds only epoch {restored}: "
                f"the best checkpoint is lost; delete {CHECKPOINT} and {CHECKPOINT_RECORD} to keep training from "
                f"the backup (its epoch {restored} becomes the checkpoint), or {NEW_FOLDER}"
            )
        if record is None and not self.final_path.exists() and due != restored:
            log.warning("%s and %s are gone: epoch %d, the best, is lost; the checkpoint is now epoch %d, from the "
                        "backup", CHECKPOINT, CHECKPOINT_RECORD, due, restored)  # fmt: skip
            due = restored
            if self.validated:
                self.best = best_value("val_accuracy", [rows[-1].get("val_accuracy")])
        if due == restored and (damage or record is None or record["epoch"] != due):
            if damage:
                log.warning("%s was damaged (%s): written again from the backup of epoch %d", self.final_path, damage, due)
            self.model.save(self.partial_path)  # the restored weights are that epoch's
            self.publish(due)

    def due_epoch(self, rows: list[dict]) -> int:
        """The epoch (history.csv numbering, from 1) whose weights model.keras must hold: the first best
        val_accuracy, or the last epoch."""
        if not self.validated:
            return int(rows[-1]["epoch"])
        best = best_value("val_accuracy", [r.get("val_accuracy") for r in rows])
        return next((int(r["epoch"]) for r in rows if r.get("val_accuracy") not in (None, "", "NA")
                     and float(r["val_accuracy"]) == best), int(rows[-1]["epoch"]))  # fmt: skip

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.partial_path.exists():
            self.publish(epoch + 1)

    def publish(self, epoch: int) -> None:
        os.replace(self.partial_path, self.final_path)
        write_checkpoint_record(self.run_dir, epoch)


def archive_problem(path: Path) -> str | None:
    """What makes a .keras file unreadable (None: its zip archive is whole, every member's checksum right)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"not a whole .keras archive: {err}"
    return f"its {bad} fails its checksum" if bad else None


def backup_problem(weights: Path, metadata: Path) -> str | None:
    """What makes one backup (weights and epoch, as Keras wrote them) unusable; None: every weight reads back."""
    try:
        json.loads(metadata.read_text())["epoch"] + 0
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{metadata} is damaged ({type(err).__name__}: {' '.join(str(err).split())[:100]})"

    def read(name, item):
        if isinstance(item, h5py.Dataset):
            item[()]

    try:
        with h5py.File(weights, "r") as f:
            f.visititems(read)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        return f"{weights} is damaged ({' '.join(str(err).split())[:100]})"
    return None


class StagedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore for training in stages: one fit per stage, each compiled anew.

    Every fit restores the backup, as Keras intends: the weights equal those in memory and the epoch
    count continues. A carried Adam (optimizers.CarriedAdam) has the same variables in every stage, so
    its state always restores. A fresh Adam per stage restores only where it fits the current trainable
    set: after an interruption inside a stage it does; at a stage's first epoch the backup holds the
    previous stage's, Keras skips it (the warning is expected, so it is silenced here), and the stage
    starts with a fresh Adam, with or without an interruption. A backup killed while its first weights
    were written (the epoch is recorded after them) is discarded: there is nothing to restore.
    """

    def __init__(self, backup_dir: str, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.make_restorable()

    def make_restorable(self) -> None:
        """Before anything reads the backup (the loop's resumed epoch, then Keras): where the latest one is damaged
        (a kill while Keras wrote it, its writes are not atomic; a disk fault), the previous one (double_checkpoint)
        takes its place, as Keras would do only for unreadable weights; where both are, one error says what to do."""
        (weights, previous), (metadata, previous_metadata) = backup_files(self)
        if not (weights.exists() or metadata.exists()):
            return
        if not (metadata.exists() or previous_metadata.exists()):
            for path in (weights, previous):
                path.unlink(missing_ok=True)  # killed while its first weights were written: nothing to restore
            return
        problem = backup_problem(weights, metadata)
        if problem is None:
            return
        if previous.exists() and backup_problem(previous, previous_metadata) is None:
            log.warning("%s: resuming from the backup before it", problem)
            for source, target in ((previous, weights), (previous_metadata, metadata)):
                with replacing(target, binary=True) as f, open(source, "rb") as old:
                    shutil.copyfileobj(old, f)
            return
        raise DataError(
            f"{problem} and there is no whole backup before it: the training state is lost; {NEW_FOLDER} (or delete "
            f"backup/, {HISTORY}, {CHECKPOINT} and {CHECKPOINT_RECORD} in {Path(self.backup_dir).parent} to train "
            "this run again from its first epoch)"
        )

    def on_train_begin(self, logs=None):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            try:
                super().on_train_begin(logs)
            except OSError as err:  # what make_restorable did not catch (the weights do not fit the model)
                raise DataError(f"the backup in {self.backup_dir} cannot be restored ({' '.join(str(err).split())[:150]}); "
                                f"{NEW_FOLDER}") from None  # fmt: skip


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """CSVLogger in append mode, epochs numbered from 1 as on the console, that first drops the rows of
    epochs about to be rerun after a resume."""

    def __init__(self, filename, extras=None):
        super().__init__(filename, append=True)
        self._trimmed = False
        self.extras = extras  # () -> {column: value}: written to the file, not shown in the epoch logs

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch + 1, {**(logs or {}), **(self.extras() if self.extras else {})})

    def on_epoch_begin(self, epoch, logs=None):
        if not self._trimmed and os.path.exists(self.filename):
            self._trimmed = True
            rows = read_history(self.filename)
            kept = [row for row in rows if int(row["epoch"]) <= epoch]  # epochs 1..epoch are done
            if len(kept) != len(rows):
                self.csv_file.close()
                write_history(self.filename, kept)
                self.csv_file = open(self.filename, "a")
                self.append_header = not kept
                self.writer = None


class StagedEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose best value and patience span every stage's fit and a resume.

    Keras resets both at each `fit` (on_train_begin); a staged run calls fit once per stage. This one
    starts once, from the run's history (the epochs before a resume count as if never interrupted).
    """

    def __init__(self, history: list[dict], **kwargs):
        super().__init__(**kwargs)
        self.history = history
        self._started = False

    def on_train_begin(self, logs=None):
        if self._started:
            return
        self._started = True
        super().on_train_begin(logs)
        if self.history:
            prepare_monitor(self)
        for row in self.history:
            value = row.get(self.monitor)
            if value in (None, ""):
                continue
            self.wait += 1
            if is_improvement(self, float(value), self.best):
                self.best, self.best_epoch, self.wait = float(value), int(row["epoch"]) - 1, 0
