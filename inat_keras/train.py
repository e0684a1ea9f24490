"""The thin training loop: one run folder, fit with callbacks in stages, evaluate the best checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from . import tracking
from .callbacks import (
    AtomicModelCheckpoint,
    EpochTimer,
    PaddedValidationLoss,
    ResumableCSVLogger,
    StagedBackupAndRestore,
    read_history,
)
from .config import ConfigError, TrainConfig, read_yaml, save_config, to_dict
from .data import Splits, load_splits, make_dataset, splits_from_record, steps_per_epoch
from .datasets import resolve_data_dir
from .distribute import place
from .evaluate import evaluate_model

log = logging.getLogger(__name__)

RUNS_DIR = Path("runs")
CHECKPOINT, HISTORY, METRICS, SPLIT, CONFIG, BACKUP = (
    "model.keras", "history.csv", "metrics.json", "split.json", "config.yaml", "backup",
)  # fmt: skip


class TrainingDiverged(RuntimeError):
    """The loss became NaN; the run folder keeps what was written until then."""


@dataclass
class Stage:
    """Epochs [start, stop) trained with one trainable set; `apply` sets the flags before compiling."""

    start: int
    stop: int
    apply: Callable[[keras.Model], None] = lambda model: None
    label: str = "all"


def open_run_dir(output_dir: str | None, kind: str, config: TrainConfig) -> tuple[Path, bool]:
    """A new folder per run; an existing one only if it is an interrupted run with the same config."""
    if output_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = RUNS_DIR / f"{kind}-{stamp}"
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = RUNS_DIR / f"{kind}-{stamp}-{suffix}"
    else:
        run_dir = Path(output_dir)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir, False
    if (run_dir / METRICS).exists():
        raise ConfigError(f"{run_dir} holds a finished run ({METRICS}); choose a new --output-dir")
    if not (run_dir / BACKUP).is_dir() or not (run_dir / CONFIG).exists():
        raise ConfigError(f"{run_dir} is not empty and holds no interrupted run to resume; choose a new --output-dir")
    saved = read_yaml(run_dir / CONFIG)
    current = to_dict(config)
    ignore = {"output_dir", "wandb", "epochs", "early_stopping", "steps_per_execution", "jit_compile"}
    changed = sorted(k for k in current if k not in ignore and saved.get(k) != current[k])
    if changed:
        raise ConfigError(
            f"{run_dir} holds an interrupted run with other settings ({', '.join(changed)}); "
            "resume it with the same options or choose a new --output-dir"
        )
    log.info("resuming the interrupted run in %s", run_dir)
    return run_dir, True


def prepare_splits(config: TrainConfig, run_dir: Path, resuming: bool) -> Splits:
    if resuming:
        with open(run_dir / SPLIT) as f:
            return splits_from_record(json.load(f))
    root = resolve_data_dir(config.data_dir, config.demo)
    splits = load_splits(root, config.val_fraction, config.seed)
    with open(run_dir / SPLIT, "w") as f:
        json.dump(splits.describe(), f, indent=1)
    return splits


def compile_model(model: keras.Model, config: TrainConfig) -> None:
    """A fresh Adam per compile: Keras cannot recompile with an optimizer that saw other variables."""
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["accuracy"],  # so that zero-weight padding (data.padded) is not counted
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


def best_so_far(run_dir: Path) -> float | None:
    values = [float(r["val_accuracy"]) for r in read_history(run_dir / HISTORY) if r.get("val_accuracy") not in (None, "", "NA")]
    return max(values) if values else None


def resumed_epoch(run_dir: Path) -> int:
    """The epoch BackupAndRestore will continue from (0 for a fresh run)."""
    meta = run_dir / BACKUP / "training_metadata.json"
    return json.loads(meta.read_text())["epoch"] if meta.exists() else 0


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
            initial_value_threshold=best_so_far(run_dir) if validated else None,
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


def worker_run_dir(output_dir: str | None) -> tuple[Path, bool]:
    """A private folder for a process that is not the first: it writes nothing where others look.

    It starts from a copy of the shared run folder when that holds an interrupted run (a shared
    file system), so that every process resumes at the same epoch.
    """
    private = Path(tempfile.mkdtemp(prefix="inat-keras-worker-"))
    shared = Path(output_dir) if output_dir else None
    resuming = bool(shared and (shared / BACKUP).is_dir())
    if resuming:
        shutil.copytree(shared, private, dirs_exist_ok=True, ignore=shutil.ignore_patterns("wandb"))
    return private, resuming


def run_training(
    config: TrainConfig,
    kind: str,
    build_model: Callable[[int], keras.Model],
    plan_stages: Callable[[keras.Model, TrainConfig], list[Stage]] | None = None,
    extra_callbacks: Callable[[keras.Model], list] | None = None,
    extra_metrics: Callable[[keras.Model, list[Stage]], dict] | None = None,
) -> tuple[Path, dict]:
    """Train in stages (one for scratch), then evaluate the best checkpoint on the test split.

    With several processes only the first writes the run folder, W&B and the test report; the others
    return the shared folder's path and no metrics.
    """
    placement = place(config.distribute)
    if not placement.is_chief:
        run_dir, resuming = worker_run_dir(config.output_dir)
        try:
            fit_stages(dataclasses.replace(config, wandb="disabled"), run_dir, resuming, kind, placement,
                       build_model, plan_stages, extra_callbacks)  # fmt: skip
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        return Path(config.output_dir or run_dir), {}
    run_dir, resuming = open_run_dir(config.output_dir, kind, config)
    config = dataclasses.replace(config, output_dir=str(run_dir))
    model, stages, splits, timer, wandb_run = fit_stages(
        config, run_dir, resuming, kind, placement, build_model, plan_stages, extra_callbacks
    )
    history = read_history(run_dir / HISTORY)
    if any(not math.isfinite(float(r["loss"])) for r in history if r.get("loss") not in (None, "", "NA")):
        wandb_run.finish(exit_code=1)
        raise TrainingDiverged(f"the loss became NaN; see {run_dir / HISTORY}")
    if not (run_dir / CHECKPOINT).exists():
        wandb_run.finish(exit_code=1)
        raise TrainingDiverged(f"no epoch produced a usable checkpoint; see {run_dir / HISTORY}")

    # On one device, outside any distribution: every test image counts once. compile=False: evaluation
    # needs no optimizer, and a staged run's saved one fits no reloaded model.
    best = keras.models.load_model(run_dir / CHECKPOINT, compile=False)
    test_ds = make_dataset(splits.test, config, training=False, channels=getattr(config, "channels", 3))
    metrics, pictures, _ = evaluate_model(best, splits.test, test_ds, splits.class_names, run_dir, config.seed)
    seconds = timer.seconds or [float("nan")]
    steady = seconds[1:] if len(seconds) > 1 else seconds
    metrics.update(
        {
            "best_val_accuracy": best_so_far(run_dir),
            "params": int(best.count_params()),
            # from the trained model: a reloaded checkpoint forgets trainable flags nested inside layers
            "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
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
        }
    )
    if extra_metrics:
        metrics.update(extra_metrics(model, stages))
    write_json(run_dir / METRICS, metrics)
    log_to_wandb(wandb_run, metrics, pictures)
    wandb_run.finish()
    shutil.rmtree(run_dir / BACKUP, ignore_errors=True)
    return run_dir, metrics


def fit_stages(config, run_dir, resuming, kind, placement, build_model, plan_stages, extra_callbacks):
    """Build and compile inside the placement's scope (each stage's recompile too), and fit."""
    keras.utils.set_random_seed(config.seed)
    splits = prepare_splits(config, run_dir, resuming)
    save_config(config, run_dir / CONFIG)
    channels = getattr(config, "channels", 3)
    batch = placement.global_batch(config.batch_size)
    even = placement.needs_even_batches
    if even and len(splits.train) < batch:
        raise ConfigError(
            f"the training split has {len(splits.train)} images, fewer than one global batch of {batch} "
            f"({config.batch_size} per device x {placement.devices} devices); lower --batch-size"
        )
    val_ds = None
    if len(splits.val):
        val_ds = make_dataset(splits.val, config, training=False, channels=channels, batch_size=batch, even_batches=even)
    padding = [PaddedValidationLoss(len(splits.val), batch)] if even and len(splits.val) else []

    with dtype_policy(config.precision), placement.scope():
        model = build_model(len(splits.class_names))
        stages = plan_stages(model, config) if plan_stages else [Stage(0, config.epochs)]
        run_id_file = run_dir / "wandb_id.txt"
        wandb_run = tracking.start_run(
            {**to_dict(config), "kind": kind, "backend": keras.backend.backend(), "classes": splits.class_names,
             **placement.describe()},
            run_dir,
            config.wandb,
            config.wandb_project,
            resume_id=run_id_file.read_text().strip() if resuming and run_id_file.exists() else None,
        )  # fmt: skip
        run_id_file.write_text(wandb_run.id)
        callbacks, timer = make_callbacks(
            config, run_dir, len(splits.train), extra_callbacks(model) if extra_callbacks else []
        )
        callbacks = padding + callbacks
        start = resumed_epoch(run_dir)
        for stage in stages:
            if stage.stop <= start:
                continue
            stage.apply(model)
            compile_model(model, config)
            first = max(stage.start, start)
            log.info("stage %s: epochs %d-%d", stage.label, first + 1, stage.stop)
            train_ds = make_dataset(splits.train, config, training=True, channels=channels, batch_size=batch,
                                    even_batches=even, epochs=(first, stage.stop))  # fmt: skip
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
    return model, stages, splits, timer, wandb_run


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def log_to_wandb(run, metrics: dict, pictures: dict) -> None:
    import wandb

    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    flat.update({f"test_accuracy/{k}": v for k, v in metrics["per_class_test_accuracy"].items() if v is not None})
    run.summary.update(flat)
    run.log({name: wandb.Image(str(path)) for name, path in pictures.items()})
