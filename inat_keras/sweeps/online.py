"""Online sweeps: W&B's server runs the search, `wandb.agent` runs its trials here (and on any other machine
that joins with --sweep-id)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import wandb

from ..errors import ConfigError, DataError
from .local import TRIALS_DIR, plain
from .spec import SweepPlan

log = logging.getLogger(__name__)

STOPPED_SUMMARY = "early_terminated"  # in a W&B run's summary: W&B's early termination stopped it


def stopped_by_agent(err: BaseException) -> bool:
    """W&B's in-process agent stops a run (hyperband, or from the UI) by raising a bare `Exception` in its
    thread (wandb.agents.pyagent._terminate_thread); a trial's own failures are never bare."""
    return type(err) is Exception and not err.args


def agent_trial(plan: SweepPlan, sweep_dir: Path) -> None:
    """The function W&B's agent calls: its run's config holds the proposal; train it, or mark the run failed
    (or, stopped by W&B, finish it as stopped: its summary keeps the best epoch so far)."""
    run = wandb.init(dir=str(sweep_dir), settings=wandb.Settings(silent=True, console="off"))
    params = {name: plain(run.config[name]) for name in plan.sweep["parameters"] if name in run.config}
    try:
        plan.kind.train(plan.trial_config(plan.trial_values(params), sweep_dir / TRIALS_DIR / run.id, "online"), final=False)
    except DataError:
        raise
    except Exception as err:  # finish it as failed here: W&B's agent would stop after a few raised failures
        if stopped_by_agent(err):
            log.info("run %s stopped by W&B (early termination); its summary holds its best epoch so far", run.id)
            run.summary[STOPPED_SUMMARY] = True
            run.finish()
            return
        log.warning("run %s failed: %s", run.id, err, exc_info=not isinstance(err, ConfigError))
        if wandb.run is run:  # training ends the run itself when the loss diverged
            run.summary["failure"] = f"{type(err).__name__}: {err}"
            run.finish(exit_code=1)


def sweep_url(sweep_id: str, project: str, entity: str | None) -> str:
    parts = sweep_id.split("/")
    if len(parts) == 1:
        parts = [entity or wandb.Api().default_entity, project, sweep_id]
    return f"https://wandb.ai/{parts[0]}/{parts[1]}/sweeps/{parts[-1]}"


def run_online(plan: SweepPlan, sweep_dir: Path, count: int, sweep_id: str | None = None) -> str:
    """Create the W&B sweep (or join `sweep_id`) and run `count` of its trials here."""
    entity = plan.sweep.get("entity")
    if sweep_id is None:
        sweep_id = wandb.sweep(sweep=plan.sweep, project=plan.project, entity=entity)
    print(f"sweep id: {sweep_id}")
    print(f"sweep URL: {sweep_url(sweep_id, plan.project, entity)}")
    print(f"more agents: python run.py sweep {plan.source} --count N --sweep-id {sweep_id}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    trial = functools.partial(agent_trial, plan, sweep_dir)
    wandb.agent(sweep_id, function=trial, entity=entity, project=plan.project, count=count)
    return sweep_id
