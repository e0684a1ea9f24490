"""The thin training loop: one run folder, fit with callbacks in stages, evaluate the checkpoint that counts."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import math
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import keras

from ..analysis.curves import CURVES, plot_curves
from ..analysis.figures import caption
from ..config import TrainConfig, save_config, to_dict
from ..data.pipeline import make_dataset, steps_per_epoch
from ..data.sources import resolve_data_dir
from ..data.split_record import splits_from_record
from ..data.splits import Splits, load_splits
from ..data.tfds_source import load_tfds_splits
from ..errors import ConfigError
from ..files import write_json
from ..locks import folder_lock
from ..models.strategies import Stage, flags_kept, trainable_params
from ..inference.evaluation import evaluate_model
from ..keras_compat import build_train_step
from ..outputs import tracking
from .callbacks import (
    EpochTimer,
    PaddedValidationLoss,
    ResumableCSVLogger,
    RunCheckpoint,
    StagedBackupAndRestore,
    StagedEarlyStopping,
)
from .distribute import Placement, place
from .ema import AverageSwap
from .losses import loss_and_metrics
from .optimizers import CarriedAdam, make_optimizer
from ..outputs.run_folder import (
    BACKUP,
    CHECKPOINT,
    CONFIG,
    HISTORY,
    METRICS,
    WANDB_ID,
    best_in_history,
    new_run_dir,
    open_run_dir,
    read_history,
    read_split,
    resumed_epoch,
    worker_run_dir,
    write_split,
)
from .schedules import LearningRateLogger, run_schedule

log = logging.getLogger(__name__)

TENSORBOARD = "tensorboard"  # RUN/tensorboard/: TensorBoard's logs, with config.tensorboard


class Kind(Protocol):
    """What the loop asks of a kind of run (training.kinds.Kind is one): the model, its stages, extras."""

    def run_name(self, config: TrainConfig) -> str: ...
    def build_model(self, config: TrainConfig, num_classes: int) -> keras.Model: ...
    def plan_stages(self, model: keras.Model, config: TrainConfig) -> list[Stage]: ...
    def callbacks(self, model: keras.Model) -> list: ...
    def metrics(self, model: keras.Model, stages: list[Stage]) -> dict: ...
    def rate_factors(self, model: keras.Model, config: TrainConfig) -> dict: ...
    def check(self, config: TrainConfig) -> None: ...


class TrainingDiverged(RuntimeError):
    """The loss became NaN; the run folder keeps what was written until then."""


@dataclass
class Fitted:
    """What training leaves for the final evaluation."""

    model: keras.Model
    stages: list[Stage]
    splits: Splits
    wandb_run: object


def prepare_splits(config: TrainConfig, run_dir: Path, resuming: bool) -> Splits:
    if resuming:
        return splits_from_record(read_split(run_dir))
    if config.tfds_dir:
        splits = load_tfds_splits(config.tfds_dir, config.val_fraction, config.seed, config)
    else:
        splits = load_splits(resolve_data_dir(config.data_dir, config.demo), config.val_fraction, config.seed, config)
    write_split(run_dir, splits.describe())
    return splits


def compile_model(model: keras.Model, config: TrainConfig, optimizer: CarriedAdam | None = None, steps_per_epoch: int = 1,
                  start_step: int = 0, rate_factors: dict | None = None, batch_spec=None) -> None:  # fmt: skip
    """With `optimizer` (carried state), that one, told which variables train now; else a fresh Adam (Keras
    cannot recompile with one of its optimizers that saw other variables) whose schedule starts at
    `start_step`, the run's steps before this stage. `rate_factors`: {variable path: factor} (layer_rates).
    `batch_spec` (the training batches' element_spec) builds the loss and metrics now too."""
    if optimizer is not None:
        optimizer.activate(model.trainable_variables)
    else:
        optimizer = make_optimizer(config, model, run_schedule(config, steps_per_epoch, start_step), rate_factors)
    model.compile(
        optimizer=optimizer,
        **loss_and_metrics(config),  # loss and weighted_metrics (training.losses)
        steps_per_execution=config.steps_per_execution,
        jit_compile={"auto": "auto", "on": True, "off": False}[config.jit_compile],
    )
    # Built now (a LossScaleOptimizer's own variables too), not in the first trace, where TensorFlow would create
    # them and trace the step a second time.
    model.optimizer.build(model.trainable_variables)
    if batch_spec is not None:
        build_train_step(model, batch_spec)


@contextlib.contextmanager
def dtype_policy(name: str):
    """Layers built inside compute in `name` (their weights stay float32); the previous policy comes back."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def make_callbacks(config: TrainConfig, run_dir: Path, images_per_epoch: int, extra: list) -> list:
    """One list for every stage. At each epoch's end, in this order: the history row, the backup, then
    the checkpoint (RunCheckpoint says why)."""
    timer = EpochTimer(images_per_epoch)
    callbacks = [
        timer,
        LearningRateLogger(),
        # after the timer and the rate, whose values it logs too; write_graph off: a large file, rarely read
        *([keras.callbacks.TensorBoard(str(run_dir / TENSORBOARD), write_graph=False)] if config.tensorboard else []),
        *extra,
        keras.callbacks.TerminateOnNaN(),
        ResumableCSVLogger(str(run_dir / HISTORY), extras=timer.row_extras),
        StagedBackupAndRestore(str(run_dir / BACKUP), double_checkpoint=True, delete_checkpoint=False),
        *([AverageSwap()] if config.ema else []),  # after the backup, before the checkpoint (training.ema)
        RunCheckpoint(run_dir, validated=config.val_fraction > 0),
        tracking.MetricsLogger(),
    ]
    if config.early_stopping:
        callbacks.append(
            StagedEarlyStopping(read_history(run_dir / HISTORY), monitor="val_accuracy", mode="max",
                                patience=config.early_stopping)  # fmt: skip
        )
    return callbacks


def carried_optimizer(model: keras.Model, stages: list[Stage], config: TrainConfig, steps_per_epoch: int = 1,
                      rate_factors: dict | None = None) -> CarriedAdam:  # fmt: skip
    """One Adam with a slot for every variable that any stage trains (model order); its iterations count
    the whole run, so its schedule starts at step 0."""
    candidates = set()
    with flags_kept(model):
        for stage in stages:
            stage.apply(model)
            candidates |= {id(v) for v in model.trainable_variables}
    schedule = run_schedule(config, steps_per_epoch)
    return make_optimizer(config, model, schedule, rate_factors, [v for v in model.variables if id(v) in candidates])


def run_training(config: TrainConfig, kind: Kind, final: bool = True, callbacks: list | None = None) -> tuple[Path, dict]:
    """Train in stages (one for scratch), then, for a final run, evaluate the checkpoint on the test split.

    A run that is not final (a sweep trial) never touches the test set: its metrics.json, folder and W&B
    run hold validation and timing figures only. With several processes only the first writes the run
    folder, W&B and the test report; the others return the shared folder's path and no metrics.
    `callbacks` join every stage's fit, before the history row is written (a sweep's early termination).
    """
    placement = place(config.distribute)
    if not placement.is_chief:
        run_dir, resuming = worker_run_dir(config.output_dir)
        try:
            fit_stages(dataclasses.replace(config, wandb="disabled"), kind, run_dir, resuming, placement, callbacks)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        return Path(config.output_dir or run_dir), {}
    kind.check(config)  # what can be checked is checked before any folder exists
    if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard writes its logs through the tensorboard package, which is not installed: "
                          "pip install tensorboard, or leave out --tensorboard")  # fmt: skip
    config = dataclasses.replace(config, wandb=tracking.resolve_mode(config.wandb))
    run_dir = Path(config.output_dir) if config.output_dir else new_run_dir(kind.run_name(config))
    with folder_lock(run_dir):
        resuming = open_run_dir(run_dir, config)
        try:
            return finish_run(dataclasses.replace(config, output_dir=str(run_dir)), kind, run_dir, resuming, placement,
                              final, callbacks)  # fmt: skip
        except KeyboardInterrupt as stop:
            stop.run_dir = run_dir  # the command line says where the run stopped and how to resume it
            raise


def finish_run(config: TrainConfig, kind: Kind, run_dir: Path, resuming: bool, placement: Placement, final: bool,
               callbacks: list | None = None):  # fmt: skip
    """Train, then write the report: the part of a run that holds its folder's lock."""
    fitted = fit_stages(config, kind, run_dir, resuming, placement, callbacks)
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
    metrics, pictures = {}, {}
    if final:
        test_ds = make_dataset(splits.test, config, training=False)
        seen = caption(f"run {run_dir.name}", f"{splits.root.name} test ({len(splits.test)} images)")
        metrics, pictures = evaluate_model(best, splits.test, test_ds, splits.class_names, run_dir, config.seed,
                                          config.tta, fitted.wandb_run, seen, config.pictures)  # fmt: skip
    metrics.update(
        {
            "best_val_accuracy": best_in_history(run_dir),
            "params": int(best.count_params()),
            "trainable_params": trainable_params(fitted.model),
            **timings(history, len(splits.train)),
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
    if config.pictures:
        curves_data = f"{splits.root.name}: {len(splits.train):,} train, {len(splits.val):,} validation images"
        plot_curves(history, metrics.get("unfreezing_schedule"), run_dir / CURVES,
                    caption(f"run {run_dir.name}", curves_data))  # fmt: skip
    write_json(run_dir / METRICS, metrics)
    tracking.log_results(fitted.wandb_run, metrics, pictures)
    fitted.wandb_run.finish()
    shutil.rmtree(run_dir / BACKUP, ignore_errors=True)
    return run_dir, metrics


def timings(history: list[dict], train_images: int) -> dict:
    """Epoch timings over every process that trained the run (history.csv keeps them all): the median of
    the epochs that were not a process's first (those compile and fill caches), the first epoch, the sum."""
    rows = [r for r in history if r.get("epoch_seconds") not in (None, "", "NA")]
    if not rows:
        return {"seconds_per_epoch": None, "train_images_per_second": None, "first_epoch_seconds": None,
                "train_seconds": None, "training_processes": 0}  # fmt: skip
    seconds = [float(r["epoch_seconds"]) for r in rows]
    starts = [r.get("process_start") in ("1", "1.0") for r in rows]
    steady = [s for s, first in zip(seconds, starts) if not first] or seconds
    median = statistics.median(steady)
    return {
        "seconds_per_epoch": median,
        "train_images_per_second": train_images / median,
        "first_epoch_seconds": seconds[0],
        "train_seconds": sum(seconds),
        "training_processes": max(1, sum(starts)),
    }


def fit_stages(config: TrainConfig, kind: Kind, run_dir: Path, resuming: bool, placement: Placement,
               extra_callbacks: list | None = None) -> Fitted:  # fmt: skip
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
        callbacks = make_callbacks(config, run_dir, len(splits.train), kind.callbacks(model) + list(extra_callbacks or []))
        callbacks = padding + callbacks
        per_epoch = steps_per_epoch(len(splits.train), batch, even)
        rate_factors = kind.rate_factors(model, config)
        optimizer = carried_optimizer(model, stages, config, per_epoch, rate_factors) if config.optimizer_state == "carry" else None
        start = resumed_epoch(run_dir)
        # A run whose every epoch is done (killed during its test) fits its last stage for no epoch: the backup is
        # restored and the checkpoint checked against it, rewritten from it where missing or damaged (RunCheckpoint).
        for stage in [stage for stage in stages if stage.stop > start] or stages[-1:]:
            stage.apply(model)
            first = min(max(stage.start, start), stage.stop - 1)  # the dataset holds one epoch at least
            if start >= stage.stop:
                log.info("every epoch is done: checking the checkpoint against the backup of epoch %d", start)
            else:
                shown = f"epoch {stage.stop}" if stage.stop == first + 1 else f"epochs {first + 1}-{stage.stop}"
                log.info("stage %s: %s", stage.label, shown)
            train_ds = make_dataset(splits.train, config, training=True, batch_size=batch, even_batches=even,
                                    epochs=(first, stage.stop), classes=len(splits.class_names))  # fmt: skip
            compile_model(model, config, optimizer, per_epoch, stage.start * per_epoch, rate_factors, train_ds.element_spec)
            model.fit(
                train_ds,
                validation_data=val_ds,
                initial_epoch=stage.start,
                epochs=stage.stop,
                steps_per_epoch=per_epoch,
                callbacks=callbacks,
                shuffle=False,  # the tf.data pipeline shuffles
                verbose=1 if sys.stdout.isatty() else 2,
            )
            if model.stop_training:
                break
    return Fitted(model, stages, splits, wandb_run)
