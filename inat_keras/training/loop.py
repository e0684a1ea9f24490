"""The thin training loop: one run folder, fit with callbacks in stages, evaluate the checkpoint that counts."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import wandb

from ..config import TrainConfig, save_config, to_dict
from ..data.pipeline import make_dataset, steps_per_epoch
from ..data.sources import resolve_data_dir
from ..data.splits import Splits, load_splits, splits_from_record
from ..errors import ConfigError
from ..files import write_json
from ..models.strategies import Stage, trainable_params
from . import tracking
from .callbacks import AtomicModelCheckpoint, EpochTimer, PaddedValidationLoss, ResumableCSVLogger, StagedBackupAndRestore
from .distribute import Placement, place
from .evaluation import evaluate_model
from .run_folder import (
    BACKUP,
    CHECKPOINT,
    CONFIG,
    HISTORY,
    METRICS,
    WANDB_ID,
    best_in_history,
    open_run_dir,
    read_history,
    read_split,
    resumed_epoch,
    worker_run_dir,
    write_split,
)

if TYPE_CHECKING:
    from .kinds import Kind

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN; the run folder keeps what was written until then."""


@dataclass
class Fitted:
    """What training leaves for the final evaluation."""

    model: keras.Model
    stages: list[Stage]
    splits: Splits
    timer: EpochTimer
    wandb_run: object


def prepare_splits(config: TrainConfig, run_dir: Path, resuming: bool) -> Splits:
    if resuming:
        return splits_from_record(read_split(run_dir))
    root = resolve_data_dir(config.data_dir, config.demo)
    splits = load_splits(root, config.val_fraction, config.seed)
    write_split(run_dir, splits.describe())
    return splits


def compile_model(model: keras.Model, config: TrainConfig) -> None:
    """A fresh Adam per compile: Keras cannot recompile with an optimizer that saw other variables."""
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["accuracy"],  # so that zero-weight padding (data.pipeline.padded) is not counted
        steps_per_execution=config.steps_per_execution,
        jit_compile={"auto": "auto", "on": True, "off": False}[config.jit_compile],
    )


@contextlib.contextmanager
def dtype_policy(name: str):
    """Layers built inside compute in `name` (their weights stay float32); the previous policy comes back."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def make_callbacks(config: TrainConfig, run_dir: Path, images_per_epoch: int, extra: list) -> tuple[list, EpochTimer]:
    """Best checkpoint on val_accuracy; without a validation split, the last epoch's model."""
    timer = EpochTimer(images_per_epoch)
    validated = config.val_fraction > 0
    callbacks = [
        timer,
        *extra,
        keras.callbacks.TerminateOnNaN(),
        AtomicModelCheckpoint(
            run_dir / CHECKPOINT,
            monitor="val_accuracy" if validated else "loss",
            mode="max" if validated else "min",
            save_best_only=validated,
            initial_value_threshold=best_in_history(run_dir) if validated else None,
        ),
        ResumableCSVLogger(str(run_dir / HISTORY)),
        StagedBackupAndRestore(str(run_dir / BACKUP), double_checkpoint=True, delete_checkpoint=False),
        tracking.MetricsLogger(),
    ]
    if config.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=config.early_stopping)
        )
    return callbacks, timer


def run_training(config: TrainConfig, kind: Kind) -> tuple[Path, dict]:
    """Train in stages (one for scratch), then evaluate the checkpoint on the test split.

    With several processes only the first writes the run folder, W&B and the test report; the others
    return the shared folder's path and no metrics.
    """
    placement = place(config.distribute)
    if not placement.is_chief:
        run_dir, resuming = worker_run_dir(config.output_dir)
        try:
            fit_stages(dataclasses.replace(config, wandb="disabled"), kind, run_dir, resuming, placement)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        return Path(config.output_dir or run_dir), {}
    run_dir, resuming = open_run_dir(config.output_dir, kind.run_name(config), config)
    config = dataclasses.replace(config, output_dir=str(run_dir))
    fitted = fit_stages(config, kind, run_dir, resuming, placement)
    history = read_history(run_dir / HISTORY)
    if any(not math.isfinite(float(r["loss"])) for r in history if r.get("loss") not in (None, "", "NA")):
        fitted.wandb_run.finish(exit_code=1)
        raise TrainingDiverged(f"the loss became NaN; see {run_dir / HISTORY}")
    if not (run_dir / CHECKPOINT).exists():
        fitted.wandb_run.finish(exit_code=1)
        raise TrainingDiverged(f"no epoch produced a usable checkpoint; see {run_dir / HISTORY}")

    # On one device, outside any distribution: every test image counts once. compile=False: evaluation
    # needs no optimizer, and a staged run's saved one fits no reloaded model.
    best = keras.models.load_model(run_dir / CHECKPOINT, compile=False)
    splits = fitted.splits
    test_ds = make_dataset(splits.test, config, training=False)
    metrics, pictures = evaluate_model(best, splits.test, test_ds, splits.class_names, run_dir, config.seed)
    seconds = fitted.timer.seconds or [float("nan")]
    steady = seconds[1:] if len(seconds) > 1 else seconds
    metrics.update(
        {
            "best_val_accuracy": best_in_history(run_dir),
            "params": int(best.count_params()),
            "trainable_params": trainable_params(fitted.model),
            "train_images_per_second": len(splits.train) / statistics.median(steady),
            "seconds_per_epoch": statistics.median(steady),
            "first_epoch_seconds": seconds[0],
            "epochs_run": len(history),
            "backend": keras.backend.backend(),
            **placement.describe(),
            "global_batch_size": placement.global_batch(config.batch_size),
            "precision": config.precision,
            "class_names": splits.class_names,
            "train_images": len(splits.train),
            "val_images": len(splits.val),
            "skipped_images": len(splits.skipped),
            **kind.metrics(fitted.model, fitted.stages),
        }
    )
    write_json(run_dir / METRICS, metrics)
    log_to_wandb(fitted.wandb_run, metrics, pictures)
    fitted.wandb_run.finish()
    shutil.rmtree(run_dir / BACKUP, ignore_errors=True)
    return run_dir, metrics


def fit_stages(config: TrainConfig, kind: Kind, run_dir: Path, resuming: bool, placement: Placement) -> Fitted:
    """Build and compile inside the placement's scope (each stage's recompile too), and fit."""
    keras.utils.set_random_seed(config.seed)
    splits = prepare_splits(config, run_dir, resuming)
    save_config(config, run_dir / CONFIG)
    batch = placement.global_batch(config.batch_size)
    even = placement.needs_even_batches
    if even and len(splits.train) < batch:
        raise ConfigError(
            f"the training split has {len(splits.train)} images, fewer than one global batch of {batch} "
            f"({config.batch_size} per device x {placement.devices} devices); lower --batch-size"
        )
    val_ds = None
    if len(splits.val):
        val_ds = make_dataset(splits.val, config, training=False, batch_size=batch, even_batches=even)
    padding = [PaddedValidationLoss(len(splits.val), batch)] if even and len(splits.val) else []

    with dtype_policy(config.precision), placement.scope():
        model = kind.build_model(config, len(splits.class_names))
        stages = kind.plan_stages(model, config)
        run_id_file = run_dir / WANDB_ID
        wandb_run = tracking.start_run(
            {**to_dict(config), "kind": kind.run_name(config), "backend": keras.backend.backend(),
             "classes": splits.class_names, **placement.describe()},
            run_dir,
            config.wandb,
            config.wandb_project,
            resume_id=run_id_file.read_text().strip() if resuming and run_id_file.exists() else None,
        )  # fmt: skip
        run_id_file.write_text(wandb_run.id)
        callbacks, timer = make_callbacks(config, run_dir, len(splits.train), kind.callbacks(model))
        callbacks = padding + callbacks
        start = resumed_epoch(run_dir)
        for stage in stages:
            if stage.stop <= start:
                continue
            stage.apply(model)
            compile_model(model, config)
            first = max(stage.start, start)
            log.info("stage %s: epochs %d-%d", stage.label, first + 1, stage.stop)
            train_ds = make_dataset(splits.train, config, training=True, batch_size=batch, even_batches=even,
                                    epochs=(first, stage.stop))  # fmt: skip
            model.fit(
                train_ds,
                validation_data=val_ds,
                initial_epoch=stage.start,
                epochs=stage.stop,
                steps_per_epoch=steps_per_epoch(len(splits.train), batch, even),
                callbacks=callbacks,
                shuffle=False,  # the tf.data pipeline shuffles
                verbose=1 if sys.stdout.isatty() else 2,
            )
            if model.stop_training:
                break
    return Fitted(model, stages, splits, timer, wandb_run)


def log_to_wandb(run, metrics: dict, pictures: dict) -> None:
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    flat.update({f"test_accuracy/{k}": v for k, v in metrics["per_class_test_accuracy"].items() if v is not None})
    run.summary.update(flat)
    run.log({name: wandb.Image(str(path)) for name, path in pictures.items()})
