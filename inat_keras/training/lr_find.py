"""The learning-rate finder (as fastai's `lr_find`): train on the training split while the learning rate
grows exponentially, one step at a time, record the loss of every step, and stop once it diverges.

The ramp is a `LearningRateSchedule` of the optimizer's step count, so it runs inside the compiled training
step on both backends (under JAX, a rate assigned from a callback would not reach the jitted step).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
from matplotlib.ticker import FuncFormatter

from ..analysis.figures import TEXT, caption, new_figure, save, titled
from ..config import TrainConfig, save_config
from ..data.pipeline import make_dataset, steps_per_epoch
from ..errors import ConfigError
from ..files import write_json
from ..outputs.run_folder import CONFIG, empty_output_dir
from .loop import compile_model, dtype_policy, prepare_splits

if TYPE_CHECKING:
    from .kinds import Kind

log = logging.getLogger(__name__)

RESULT_JSON, PLOT_PNG = "lr_find.json", "lr_find.png"
SMOOTHING = 0.98  # exponential moving average of the loss, bias-corrected (fastai's)
DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this many times its lowest value
LOG_LOSS_SPAN = 5.0  # the plot's loss axis turns logarithmic when its largest loss is more than this x its lowest


@keras.saving.register_keras_serializable(package="inat_keras")
class ExponentialRamp(keras.optimizers.schedules.LearningRateSchedule):
    """start * (end / start) ** (step / (steps - 1)): `start` at the first step, `end` at the last."""

    def __init__(self, start: float, end: float, steps: int):
        self.start, self.end, self.steps = float(start), float(end), int(steps)

    def __call__(self, step):
        fraction = keras.ops.cast(step, "float32") / max(self.steps - 1, 1)
        return self.start * keras.ops.power(self.end / self.start, fraction)

    def get_config(self):
        return {"start": self.start, "end": self.end, "steps": self.steps}


@dataclass
class LRFindResult:
    rates: list[float]  # the rate of each step, as the optimizer's schedule gave it
    losses: list[float]  # each step's training loss
    smoothed: list[float]
    suggestion: float  # the steepest descent of the smoothed loss
    minimum: float  # the rate of the lowest smoothed loss, divided by 10 (fastai's "minimum")
    diverged: bool  # stopped early: the smoothed loss rose above DIVERGENCE x its lowest value (or became NaN)


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average (the first values are not pulled towards zero)."""
    average, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**i))
    return out


def steepest(rates: list[float], smoothed: list[float]) -> float:
    """The rate where the smoothed loss falls fastest against log(rate) (central differences), before its
    lowest point: the floor itself, and what follows it, only rise. Needs at least 3 steps."""
    if len(rates) < 3:
        raise ConfigError(f"the learning-rate finder ran {len(rates)} step(s); it needs at least 3 to suggest a rate")
    slopes = np.gradient(np.asarray(smoothed), np.log(np.asarray(rates)))
    before = max(int(np.argmin(smoothed)), 1)
    return float(rates[int(np.argmin(slopes[:before]))])


def check_ramp(start_lr: float, end_lr: float, steps: int) -> None:
    if not (0 < start_lr < end_lr) or not math.isfinite(end_lr):
        raise ConfigError(f"--start-lr and --end-lr must satisfy 0 < start < end, got {start_lr} and {end_lr}")
    if steps < 3:
        raise ConfigError(f"--steps must be at least 3, got {steps}")


def find_learning_rate(config: TrainConfig, kind: Kind, start_lr: float = 1e-7, end_lr: float = 10.0,
                       steps: int = 200) -> tuple[Path, LRFindResult]:  # fmt: skip
    """Ramp the rate over `steps` training steps on the training split (never validation or test) and write
    lr_find.json and lr_find.png into the run folder (--output-dir, else runs/lr-find-<kind>-<time>).

    The model is built as a training run's; a fine-tuning run trains its first stage's trainable set (the
    head alone under gradual unfreezing from 0), which is what the configured learning rate starts on.
    """
    check_ramp(start_lr, end_lr, steps)
    config = dataclasses.replace(config, steps_per_execution=1)  # one step per call: one loss per rate
    run_dir = empty_output_dir(config.output_dir, f"lr-find-{kind.run_name(config)}")  # never a run's folder
    keras.utils.set_random_seed(config.seed)
    splits = prepare_splits(config, run_dir, resuming=False)
    save_config(config, run_dir / CONFIG)
    full = len(splits.train) >= config.batch_size  # full batches only: every loss over as many images, one compile
    per_epoch = steps_per_epoch(len(splits.train), config.batch_size, full)
    train_ds = make_dataset(splits.train, config, training=True, even_batches=full,
                            epochs=(0, math.ceil(steps / per_epoch)), classes=len(splits.class_names))  # fmt: skip
    ramp = ExponentialRamp(start_lr, end_lr, steps)
    with dtype_policy(config.precision):
        model = kind.build_model(config, len(splits.class_names))
        kind.plan_stages(model, config)[0].apply(model)
        compile_model(model, config, rate_factors=kind.rate_factors(model, config))  # layer-wise rates scale the ramp
        model.optimizer.learning_rate = ramp  # before the first step builds the training function
    rates, losses, diverged = [], [], False
    for step, batch in enumerate(train_ds.take(steps).as_numpy_iterator()):
        rates.append(float(keras.ops.convert_to_numpy(ramp(step))))
        loss = float(model.train_on_batch(*batch, return_dict=True)["loss"])
        losses.append(loss)
        smoothed = smooth(losses)
        if not math.isfinite(loss) or smoothed[-1] > DIVERGENCE * min(smoothed):
            diverged = True
            log.info("lr-find: the loss diverged at step %d (rate %.3g); stopping", step + 1, rates[-1])
            break
    if diverged and not math.isfinite(losses[-1]):
        rates, losses = rates[:-1], losses[:-1]
    smoothed = smooth(losses)
    lowest = rates[int(np.argmin(smoothed))] if smoothed else start_lr
    result = LRFindResult(rates, losses, smoothed, steepest(rates, smoothed), lowest / 10, diverged)
    write_json(run_dir / RESULT_JSON, {
        "suggested_learning_rate": result.suggestion,
        "suggestion": "steepest descent of the smoothed loss against log(rate), before its minimum",
        "minimum_loss_rate_over_10": result.minimum,
        "diverged": diverged, "steps_run": len(rates), "start_lr": start_lr, "end_lr": end_lr, "steps": steps,
        "smoothing": SMOOTHING, "divergence_factor": DIVERGENCE,
        "rates": rates, "losses": losses, "smoothed_losses": smoothed,
    })  # fmt: skip
    plot(result, run_dir / PLOT_PNG, caption(f"run {run_dir.name}", f"{splits.root.name} train ({len(splits.train)} images)"))
    return run_dir, result


def plot(result: LRFindResult, path: Path, caption_line: str = ""):
    """Every step's loss (the y-axis holds them all, up to where the finder stopped), the running average that
    the suggestion and the divergence stop read (it trails the raw loss), and the suggested rate as drawn in
    lr_find.json. A logarithmic loss axis where the losses span more than LOG_LOSS_SPAN x."""
    fig = new_figure(8, 5.5)
    ax = fig.subplots()
    ax.plot(result.rates, result.losses, color="tab:blue", linewidth=1, marker=".", markersize=3,
            label="training loss of each step")  # fmt: skip
    lag = round(SMOOTHING / (1 - SMOOTHING))
    ax.plot(result.rates, result.smoothed, color="tab:orange", linewidth=2,
            label=f"running average (bias-corrected EMA, beta {SMOOTHING}): trails the loss by ~{lag} steps")  # fmt: skip
    ax.axvline(result.suggestion, color="tab:red", linestyle="--",
               label=f"suggested rate {result.suggestion:.3g} (steepest fall of the running average)")  # fmt: skip
    ax.axvline(result.minimum, color="tab:green", linestyle=":", label=f"lowest-average rate / 10: {result.minimum:.3g}")
    shown = [*result.losses, *result.smoothed]
    if result.diverged:
        cut = DIVERGENCE * min(result.smoothed)
        ax.axhline(cut, color="tab:gray", linestyle="-.", label=f"divergence stop: running average above {cut:.3g}")
        shown.append(cut)
    low, high = min(shown), max(shown)
    if low > 0 and high / low > LOG_LOSS_SPAN:
        ax.set_yscale("log")
        ax.set_ylim(low / 1.1, high * 1.1)
        for axis_ticks in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_ticks(FuncFormatter(lambda value, _: f"{value:g}"))  # 2, 3, 10, not 2x10^0
    else:
        pad = 0.05 * (high - low) or 0.05 * abs(high) or 0.1
        ax.set_ylim(low - pad, high + pad)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(f"training loss{' (log scale)' if ax.get_yscale() == 'log' else ''}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=TEXT, ncols=1)
    stopped = "stopped where the loss diverged" if result.diverged else "ran every step"
    titled(fig, f"Learning-rate finder: {len(result.rates)} steps, {stopped}", caption_line)
    return save(fig, path)


def summary(result: LRFindResult) -> str:
    return json.dumps({"suggested_learning_rate": result.suggestion, "minimum_loss_rate_over_10": result.minimum,
                       "steps_run": len(result.rates), "diverged": result.diverged}, indent=2)  # fmt: skip
