"""Learning-rate schedules: the formulas, per step and per epoch, through stages (each a recompile, as gradual
unfreezing; fresh and carried optimizers) and across a resume; the rate each epoch logs is the one the
optimizer used. The staged runs use the tiny CNN in two stages: the loop treats every kind's stages alike."""

import dataclasses
import math
import re

import keras
import numpy as np
import pytest

from inat_keras.config import ConfigError, ScratchConfig, build_config
from inat_keras.training.kinds import KINDS
from inat_keras.outputs.run_folder import read_history
from inat_keras.training.schedules import RunSchedule, last_rate


def reference(shape, p, total, warmup, peak, floor):
    """The documented formulas, on a position p (step or epoch) out of `total`, `warmup` of them warming up."""
    if p < warmup:
        if shape == "one_cycle":
            start = peak / 25
            return start + (peak - start) * (1 - math.cos(math.pi * p / warmup)) / 2
        return peak * (p + 1) / (warmup + 1)
    if shape == "constant":
        return peak
    q = min((p - warmup) / (total - warmup), 1.0)
    return floor * peak + (peak - floor * peak) * (1 + math.cos(math.pi * q)) / 2


def rates(schedule, steps):
    return [float(keras.ops.convert_to_numpy(schedule(step))) for step in steps]


@pytest.mark.parametrize(
    "shape, unit, warmup, floor, expected_warmup",
    [
        ("constant", "step", 1.5, 0.0, 6),
        ("cosine", "step", 0.5, 0.1, 2),
        ("cosine", "epoch", 1, 0.0, 1),
        ("one_cycle", "epoch", 0, 0.0, 1),  # 30% of 4 epochs, rounded
        ("one_cycle", "step", 1, 0.02, 4),
    ],
)
def test_each_shape_follows_its_formula(shape, unit, warmup, floor, expected_warmup):
    epochs, per_epoch, peak = 4, 4, 0.01
    schedule = RunSchedule(peak, shape, epochs, per_epoch, warmup, floor, unit)
    steps = range(epochs * per_epoch)
    positions = [s if unit == "step" else s // per_epoch for s in steps]
    total = epochs * (per_epoch if unit == "step" else 1)
    assert schedule.positions() == (total, expected_warmup)
    expected = [reference(shape, p, total, expected_warmup, peak, floor) for p in positions]
    np.testing.assert_allclose(rates(schedule, steps), expected, rtol=1e-5)
    if unit == "epoch":  # one rate per epoch
        assert len(set(np.round(rates(schedule, steps), 9))) <= epochs
    if shape != "constant":
        assert max(expected) == pytest.approx(peak) and expected[-1] < peak / 2

    # a schedule that starts later (a stage's fresh optimizer) continues the same curve
    later = RunSchedule(peak, shape, epochs, per_epoch, warmup, floor, unit, start_step=5)
    np.testing.assert_allclose(rates(later, range(len(steps) - 5)), expected[5:], rtol=1e-5)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(later))
    assert isinstance(again, RunSchedule) and again.get_config() == later.get_config()


def test_schedule_options_are_checked_by_name():
    base = {"image_size": 32, "wandb": "disabled", "epochs": 4}
    for values, message in [
        ({"lr_schedule": "linear"}, "lr_schedule must be one of constant, cosine, one_cycle"),
        ({"schedule_unit": "batch"}, "schedule_unit must be one of epoch, step"),
        ({"warmup_epochs": 4}, "warmup_epochs must be in [0, epochs)"),
        ({"warmup_epochs": 0.5}, "warmup_epochs must be a whole number with schedule_unit epoch"),
        ({"min_lr_fraction": 1.5}, "min_lr_fraction must be in [0, 1]"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_config(ScratchConfig, {**base, **values})
    assert build_config(ScratchConfig, {**base, "warmup_epochs": 0.5, "schedule_unit": "step"}).warmup_epochs == 0.5


class StepRates(keras.callbacks.Callback):
    """The rate of every step, read from the optimizer as training runs (`self.model` syncs JAX's state)."""

    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_end(self, batch, logs=None):
        self.rates.append(last_rate(self.model.optimizer))


SCHEDULE = {"lr_schedule": "cosine", "schedule_unit": "step", "warmup_epochs": 0.5, "min_lr_fraction": 0.1,
            "learning_rate": 0.01}  # fmt: skip


@pytest.mark.large
def test_the_schedule_runs_through_stages_and_a_resume(image_folder, tmp_path, tiny_cnn_options, head_then_all, interrupt):
    """30 images in batches of 10: 3 steps an epoch, 3 epochs in two stages (head_then_all: a recompile between,
    as gradual unfreezing makes them)."""
    per_epoch, epochs = 3, 3
    schedule = RunSchedule(0.01, "cosine", epochs, per_epoch, 0.5, 0.1, "step")  # SCHEDULE
    total, warmup = schedule.positions()
    expected = [reference("cosine", p, total, warmup, 0.01, 0.1) for p in range(total)]

    def train(config, *extra):
        kind = dataclasses.replace(KINDS["scratch"], plan_stages=head_then_all, callbacks=lambda model: list(extra))
        return kind.train(config)

    def settings(out, state):
        return build_config(ScratchConfig, {**tiny_cnn_options, **SCHEDULE, "epochs": epochs, "val_fraction": 0,
                                            "batch_size": 10, "optimizer_state": state, "data_dir": str(image_folder), "output_dir": str(out)})  # fmt: skip

    carried = StepRates()  # one CarriedAdam for the whole run: its iterations count every step
    run_dir, _ = train(settings(tmp_path / "a", "carry"), carried)
    np.testing.assert_allclose(carried.rates, expected, rtol=1e-5)
    logged = [float(r["learning_rate"]) for r in read_history(run_dir / "history.csv")]
    np.testing.assert_allclose(logged, expected[per_epoch - 1 :: per_epoch], rtol=1e-5)

    # a fresh Adam per stage, killed inside the first stage: the backup brings its step count back, and the
    # second stage's new Adam starts its schedule at the stage's first step
    first = StepRates()
    with pytest.raises(KeyboardInterrupt):
        train(settings(tmp_path / "b", "fresh"), first, interrupt(1))
    resumed = StepRates()
    run_dir, _ = train(settings(tmp_path / "b", "fresh"), resumed)
    np.testing.assert_allclose(first.rates + resumed.rates, expected, rtol=1e-5)
    resumed_logged = [float(r["learning_rate"]) for r in read_history(run_dir / "history.csv")]
    np.testing.assert_allclose(resumed_logged, logged, rtol=1e-6)
