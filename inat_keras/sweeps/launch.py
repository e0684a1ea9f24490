"""`run.py sweep`: online with W&B when logged in (and not --offline), else the same search locally."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ConfigError
from ..outputs import tracking
from ..outputs.run_folder import new_run_dir
from .local import run_local
from .online import run_online
from .spec import load_plan

log = logging.getLogger(__name__)


def run_sweep(
    path: str | Path,
    count: int,
    overrides: dict | None = None,
    sweep_dir: str | Path | None = None,
    offline: bool = False,
    sweep_id: str | None = None,
) -> tuple[str, Path]:
    """Online with W&B when logged in (and not --offline), else the local search; returns (mode, folder)."""
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    plan = load_plan(path, overrides)
    online = tracking.logged_in() and not offline and os.environ.get("WANDB_MODE") not in ("offline", "disabled")
    why = online and tracking.unreachable()
    if why:
        raise ConfigError(f"W&B {why}: a sweep shared through W&B needs its server; run it locally with --offline")
    if sweep_id and not online:
        raise ConfigError("--sweep-id joins a W&B sweep: it needs a W&B login (wandb login) and no --offline")
    if online:
        sweep_dir = Path(sweep_dir) if sweep_dir else new_run_dir("sweep")
        run_online(plan, sweep_dir, count, sweep_id)
        return "online", sweep_dir
    sweep_dir = Path(sweep_dir) if sweep_dir else new_run_dir("sweep")
    run_local(plan, sweep_dir, count)
    return "local", sweep_dir
