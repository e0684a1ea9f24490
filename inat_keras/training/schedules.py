"""Learning-rate schedules that run on the whole run's step count, across stages and resumes.

A staged run fits once per stage, and with `optimizer_state: fresh` each stage has a new optimizer whose
`iterations` restart at 0; with `carry` one optimizer counts every step of the run. A schedule is therefore
evaluated on a global step, the optimizer's iterations plus `start_step` (the steps that came before the
optimizer's first, fixed when the stage is compiled). A backup restores the iterations with the rest of the
optimizer, so a resumed run continues the schedule where it stopped. The schedule is a Keras
`LearningRateSchedule`: the optimizer evaluates it inside the compiled training step (under JAX the state
of a running epoch lives in the jitted step, where a callback cannot reach it).

Shapes, on a position p (the step, or the epoch with `unit: epoch`) out of P, with K warm-up positions:
- constant: the peak rate; with a warm-up, position p < K trains at peak x (p + 1) / (K + 1).
- cosine: the same linear warm-up, then floor + (peak - floor) x (1 + cos(pi q)) / 2, q = (p - K) / (P - K).
- one_cycle: a half-cosine rise from peak / 25 to the peak over K positions (30% of the run unless a
  warm-up is given, as torch's OneCycleLR), then the same cosine fall to the floor (momentum is not cycled).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from ..config import LR_SCHEDULES as SHAPES
from ..config import SCHEDULE_UNITS as UNITS
from ..keras_compat import last_rate

ONE_CYCLE_START = 1 / 25  # torch OneCycleLR's div_factor
ONE_CYCLE_WARMUP = 0.3  # torch OneCycleLR's pct_start


@keras.saving.register_keras_serializable(package="inat_keras")
class RunSchedule(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak, shape="constant", epochs=1, steps_per_epoch=1, warmup_epochs=0.0, floor_fraction=0.0,
                 unit="epoch", start_step=0):  # fmt: skip
        if shape not in SHAPES or unit not in UNITS:
            raise ValueError(f"unknown schedule {shape!r} by {unit!r}; known: {SHAPES} by {UNITS}")
        self.peak, self.shape, self.epochs, self.steps_per_epoch = float(peak), shape, int(epochs), int(steps_per_epoch)
        self.warmup_epochs, self.floor_fraction, self.unit, self.start_step = float(warmup_epochs), float(floor_fraction), unit, int(start_step)

    def positions(self) -> tuple[int, int]:
        """(P, K): the run's positions and the warm-up's, in the schedule's unit."""
        per_epoch = 1 if self.unit == "epoch" else self.steps_per_epoch
        warmup = self.warmup_epochs
        if self.shape == "one_cycle" and not warmup:
            warmup = ONE_CYCLE_WARMUP * self.epochs
        return self.epochs * per_epoch, int(round(warmup * per_epoch))

    def __call__(self, step):
        step = ops.add(ops.cast(step, "int32"), self.start_step)
        if self.unit == "epoch":
            step = ops.floor_divide(step, self.steps_per_epoch)
        p = ops.cast(step, "float32")
        total, warmup = self.positions()
        peak, floor = self.peak, self.peak * self.floor_fraction
        q = ops.clip((p - warmup) / max(total - warmup, 1), 0.0, 1.0)
        fall = floor + (peak - floor) * (1 + ops.cos(math.pi * q)) / 2
        if self.shape == "constant":
            fall = ops.full_like(p, peak)
        if not warmup:
            return fall
        if self.shape == "one_cycle":
            start = peak * ONE_CYCLE_START
            rise = start + (peak - start) * (1 - ops.cos(math.pi * ops.minimum(p / warmup, 1.0))) / 2
        else:
            rise = peak * (p + 1) / (warmup + 1)
        return ops.where(p < warmup, rise, fall)

    def get_config(self):
        return {"peak": self.peak, "shape": self.shape, "epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch,
                "warmup_epochs": self.warmup_epochs, "floor_fraction": self.floor_fraction, "unit": self.unit,
                "start_step": self.start_step}  # fmt: skip


def run_schedule(config, steps_per_epoch: int, start_step: int = 0) -> RunSchedule | float:
    """The config's schedule (a plain float for the study's constant rate, as Keras's Adam takes it)."""
    if config.lr_schedule == "constant" and not config.warmup_epochs:
        return float(config.learning_rate)
    return RunSchedule(config.learning_rate, config.lr_schedule, config.epochs, steps_per_epoch, config.warmup_epochs,
                       config.min_lr_fraction, config.schedule_unit, start_step)  # fmt: skip


class LearningRateLogger(keras.callbacks.Callback):
    """Adds `learning_rate` (the epoch's last step's) to the epoch logs: history.csv, the console and W&B."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = last_rate(self.model.optimizer)
