"""Weights & Biases: pick a mode that never prompts, start runs, log metrics from fit."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
from pathlib import Path

import wandb
from wandb.integration.keras import WandbMetricsLogger

from ..errors import ConfigError
from ..keras_compat import LoggedRate, wandb_credentials
from .run_folder import METRIC_GOALS, best_value

log = logging.getLogger(__name__)

_group = contextvars.ContextVar("wandb_group", default=None)
REACH_TIMEOUT = 6.0  # seconds that --wandb auto / online wait for the W&B server before deciding
INIT_TIMEOUT = 60.0  # seconds that wandb.init may take once the server has answered (W&B's default is 90)
_auto_online = contextvars.ContextVar("wandb_auto_online", default=False)  # `auto` chose online: offline is the fallback


def base_url() -> str:
    """The W&B server this process would log to, as W&B's own settings say (WANDB_BASE_URL, else its cloud)."""
    return wandb.setup().settings.base_url


def logged_in() -> bool:
    """True when W&B has an API key for that server without asking: the environment, or its .netrc entry."""
    return wandb_credentials(base_url())


def unreachable(timeout: float = REACH_TIMEOUT) -> str | None:
    """Why W&B's server cannot take this login's runs now (None: it answered). A real request through W&B's own client
    (which verifies the key with the server), abandoned after `timeout` seconds: a server that accepts connections
    and never answers, or answers something that is not W&B, fails as fast as one that is down."""
    found: list[str | None] = []
    url = base_url()

    def ask():
        try:
            wandb.Api(overrides={"base_url": url}, timeout=max(1, int(timeout) - 1))
            found.append(None)
        except Exception as err:  # CommError, AuthenticationError, requests' errors: each is one line here
            found.append(" ".join(str(err).split())[:200] or type(err).__name__)

    thread = threading.Thread(target=ask, daemon=True, name="wandb-reachability")
    thread.start()
    thread.join(timeout)
    if not found:
        return f"{url} did not answer within {timeout:.0f} s"
    return None if found[0] is None else f"{url} did not accept the login ({found[0]})"


def resolve_mode(mode: str) -> str:
    """auto: online when logged in and the server answers (else offline, loudly); online fails fast."""
    if wandb.run is not None and wandb.run.sweep_id:
        return mode  # a W&B agent started this run: the server answered it
    if os.environ.get("WANDB_MODE") in ("offline", "disabled") and mode == "auto":
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        if not logged_in():
            return "offline"
        why = unreachable()
        if why:
            log.warning("W&B: %s; logging OFFLINE instead (upload later with `wandb sync`)", why)
            return "offline"
        _auto_online.set(True)
        return "online"
    if mode == "online":
        if not logged_in():
            raise ConfigError("--wandb online needs a W&B login: run `wandb login` or set WANDB_API_KEY")
        why = unreachable()
        if why:
            raise ConfigError(f"--wandb online: W&B {why}; use --wandb offline and `wandb sync` later")
    return mode


@contextlib.contextmanager
def grouped(name: str):
    """Runs started inside join one W&B group (a sweep's trials); W&B reads WANDB_RUN_GROUP only once."""
    token = _group.set(name)
    try:
        yield
    finally:
        _group.reset(token)


def start_run(config: dict, run_dir: Path, mode: str, project: str, group: str | None = None, resume_id: str | None = None,
              final_dir: Path | None = None):  # fmt: skip
    """One W&B run per training run, written inside the run folder (offline runs sync later).

    `mode` is one that resolve_mode chose (the training loop resolves it once, before the run's folder exists).
    `final_dir`: the folder that `run_dir` (a staging folder, files.staged_dir) becomes; the run is named after it.
    """
    final_dir = Path(final_dir or run_dir)
    if wandb.run is not None and wandb.run.sweep_id:
        # A sweep agent started this run with the proposal (its keys are locked); a second init would end it.
        wandb.run.config.update({k: v for k, v in config.items() if k not in wandb.run.config})
        return wandb.run
    options = {"project": project, "dir": str(run_dir), "name": final_dir.name, "group": group or _group.get(), "config": config,
               "id": resume_id, "resume": "allow" if resume_id else None, "reinit": "finish_previous",
               "settings": wandb.Settings(silent=True, console="off", init_timeout=INIT_TIMEOUT)}  # fmt: skip
    try:
        run = wandb.init(mode=mode, **options)
    except Exception as err:  # W&B's CommError, its timeout, an error page: the server stopped answering since the check
        why = " ".join(str(err).split())[:200] or type(err).__name__
        if mode != "online" or not _auto_online.get():
            raise ConfigError(f"W&B could not start the run on {base_url()} ({why}); use --wandb offline and `wandb sync` later") from None
        log.warning("W&B: %s; logging OFFLINE instead (upload later with `wandb sync`)", why)
        mode = "offline"
        run = wandb.init(mode=mode, **options)
    if mode == "offline":
        synced = final_dir / "wandb" / Path(run.dir).parent.name
        log.info("W&B offline run in %s; upload later with `wandb sync %s`", synced / "files", synced)
    return run


class MetricsLogger(LoggedRate, WandbMetricsLogger):
    """WandbMetricsLogger that also logs the validation metrics (METRIC_GOALS) by their plain names, with
    the run summary holding the best epoch's value (what a sweep's `metric.name` reads), and logs the
    learning rate of the epoch's last step (as history.csv; also under JAX).

    Its own logging prefixes every name with "epoch/", which no sweep metric would match.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in METRIC_GOALS:
            wandb.define_metric(name, step_metric="epoch/epoch")

    def on_epoch_end(self, epoch, logs=None):
        plain = {name: float(logs[name]) for name in METRIC_GOALS if logs and name in logs}
        best = {name: best_value(name, [wandb.run.summary.get(name), value]) for name, value in plain.items()}
        wandb.log(plain, commit=False)
        super().on_epoch_end(epoch + 1, logs)  # epochs from 1, as on the console and in history.csv
        wandb.run.summary.update({name: value for name, value in best.items() if value is not None})


def logs_to_wandb(run) -> bool:
    """Whether `run` records anything (a disabled run is W&B's no-op stand-in)."""
    return run is not None and not getattr(run, "disabled", False)


def predictions_table(images, rows: list[dict]) -> wandb.Table:
    """One row per test image: the picture, then the columns of predictions.csv (inference.evaluation)."""
    columns = list(rows[0]) if rows else []
    table = wandb.Table(columns=["image", *columns])
    for image, row in zip(images, rows):
        table.add_data(wandb.Image(image), *row.values())
    return table


def log_results(run, metrics: dict, pictures: dict) -> None:
    """A finished run's figures into the W&B summary (per-class accuracies by name) and its pictures as images."""
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    flat.update({f"test_accuracy/{k}": v for k, v in metrics.get("per_class_test_accuracy", {}).items() if v is not None})
    run.summary.update(flat)
    if pictures:
        run.log({name: wandb.Image(str(path)) for name, path in pictures.items()})
