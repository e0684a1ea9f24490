"""Weights & Biases: pick a mode that never prompts, start runs, log metrics from fit."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

import keras
import wandb
from wandb.integration.keras import WandbMetricsLogger

log = logging.getLogger(__name__)


def logged_in() -> bool:
    """True when an API key is available without asking (environment or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    if os.environ.get("WANDB_MODE") in ("offline", "disabled") and mode == "auto":
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if logged_in() else "offline"
    if mode == "online" and not logged_in():
        raise RuntimeError("--wandb online needs a W&B login: run `wandb login` or set WANDB_API_KEY")
    return mode


def start_run(config: dict, run_dir: Path, mode: str, project: str, group: str | None = None, resume_id: str | None = None):
    """One W&B run per training run, written inside the run folder (offline runs sync later)."""
    mode = resolve_mode(mode)
    run = wandb.init(
        project=project,
        mode=mode,
        dir=str(run_dir),
        name=run_dir.name,
        group=group,
        config=config,
        id=resume_id,
        resume="allow" if resume_id else None,
        reinit="finish_previous",
        settings=wandb.Settings(silent=True, console="off"),
    )
    if mode == "offline":
        log.info("W&B offline run in %s; upload later with `wandb sync %s`", run.dir, Path(run.dir).parent)
    return run


class MetricsLogger(WandbMetricsLogger):
    """WandbMetricsLogger that also reads JAX learning rates (its own reader calls .numpy())."""

    def _get_lr(self):
        lr = self.model.optimizer.learning_rate
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            lr = lr(self.model.optimizer.iterations)
        return float(keras.ops.convert_to_numpy(lr))
