"""The local (offline) sweep: the `sweeps` package proposes each trial from the finished ones, as W&B's
server would, and `trials.json` in the sweep folder records every trial, so that a killed sweep resumes."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import random
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np

from ..config import changed_fields
from ..errors import ConfigError, DataError
from ..files import remove_abandoned_temps, write_json
from ..locks import LOCK, folder_lock
from ..outputs import tracking
from ..outputs.run_folder import BACKUP, HISTORY, METRIC_GOALS, METRICS, best_value, read_history, read_json
from ..training.kinds import KINDS
from .hyperband import HyperbandStop, bands, stopped_at
from .spec import SweepPlan, sweeps

log = logging.getLogger(__name__)

TRIALS_FILE, TRIALS_DIR = "trials.json", "trials"
# A trial that early termination stopped feeds the search like a finished one, with its metric so far.
RUN_STATES = {**{state: sweeps.RunState[state] for state in ("running", "finished", "failed")},
              "stopped": sweeps.RunState.finished}  # fmt: skip


def plain(value):
    """numpy scalars (what `sweeps` proposes) as Python values, so configs and JSON take them."""
    return value.item() if isinstance(value, np.generic) else value


@contextlib.contextmanager
def seeded(seed: int):
    """`sweeps` draws from the global numpy and random states: seed them, then put them back."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def sweep_runs(trials: list[dict]) -> list:
    """Trial records as the `sweeps` package's runs (summaryMetrics is the alias it actually reads)."""
    return [
        sweeps.SweepRun(
            name=trial["name"],
            state=RUN_STATES[trial["state"]],
            config={k: {"value": v} for k, v in trial["params"].items()},
            summaryMetrics={k: v for k, v in (trial.get("summary") or {}).items() if v is not None},
        )
        for trial in trials
    ]


def propose(sweep: dict, trials: list[dict], seed: int) -> dict | None:
    """The next parameters from the sweep's method and the trials so far (None: a grid is exhausted)."""
    with seeded(seed), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Gaussian process's convergence notes on few, similar trials
        run = sweeps.next_run(sweep, sweep_runs(trials))
    return None if run is None else {name: plain(spec["value"]) for name, spec in run.config.items()}


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def read_trials(sweep_dir: Path) -> dict:
    """The sweep's record (a resume and sweep-report read it); a damaged one is one error naming it."""
    path = Path(sweep_dir) / TRIALS_FILE
    if not path.is_file():
        raise ConfigError(f"{sweep_dir} holds no sweep ({TRIALS_FILE} is missing)")
    remedy = ("the sweep cannot resume or be reported: rerun it in a new --output-dir (its finished trials' folders "
              f"stay in {Path(sweep_dir) / TRIALS_DIR})")  # fmt: skip
    return read_json(path, remedy, trials_problem)


def trials_problem(state) -> str | None:
    """What keeps a trials.json from being used (None: nothing): the fields that a resume and a report read."""
    if not isinstance(state, dict):
        return f"a JSON {type(state).__name__}, not an object"
    for key, kind in (("kind", str), ("metric", str), ("sweep", dict), ("base", dict), ("trials", list)):
        if not isinstance(state.get(key), kind):
            return f"its {key} is {json.dumps(state.get(key))[:60]}, not a JSON {'string' if kind is str else kind.__name__}"
    if state["kind"] not in KINDS or state["metric"] not in METRIC_GOALS:
        return f"its kind {state['kind']!r} or metric {state['metric']!r} is none that inat-keras trains or logs"
    if not isinstance(state["sweep"].get("parameters"), dict):
        return "its sweep has no parameters"
    for number, trial in enumerate(state["trials"], start=1):
        if not (isinstance(trial, dict) and isinstance(trial.get("name"), str) and trial.get("number") == number
                and trial.get("state") in RUN_STATES and isinstance(trial.get("params"), dict)
                and isinstance(trial.get("config"), dict)):  # fmt: skip
            return f"its trial {number} lacks its name, number, a state of {', '.join(RUN_STATES)}, params or config"
    return None


def open_sweep_dir(plan: SweepPlan, sweep_dir: Path) -> dict:
    """A new sweep folder, or one that holds this very sweep (same file, same trial options) to resume."""
    setup = {"kind": plan.kind.name, "metric": plan.metric, "sweep": plan.sweep, "base": plan.base,
             "settings": plan.settings}  # fmt: skip
    setup = json.loads(json.dumps(setup))
    if sweep_dir.is_dir():
        remove_abandoned_temps(sweep_dir)  # a trials.json that a killed sweep was writing: the old one is whole
    if (sweep_dir / TRIALS_FILE).exists():
        state = read_trials(sweep_dir)
        changed = [k for k in ("kind", "metric", "sweep") if state.get(k) != setup[k]]
        changed += changed_fields(plan.kind.config_class, state["base"], setup["base"])
        if changed:
            raise ConfigError(
                f"{sweep_dir} holds a sweep with other settings ({', '.join(changed)}); "
                "resume it with the same file and options, or choose a new --output-dir"
            )
        log.info("resuming the sweep in %s (%d trial(s) recorded)", sweep_dir, len(state["trials"]))
        return state
    if sweep_dir.exists() and any(p.name != LOCK for p in sweep_dir.iterdir()):
        raise ConfigError(f"{sweep_dir} is not empty and holds no sweep ({TRIALS_FILE}); choose a new --output-dir")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return {**setup, "trials": []}


def save_trials(sweep_dir: Path, state: dict) -> None:
    write_json(sweep_dir / TRIALS_FILE, state)


def trial_result(run_dir: Path) -> dict:
    """What the search and the report need from a finished trial folder: validation metrics only."""
    rows = read_history(run_dir / HISTORY)
    metrics = read_json(run_dir / METRICS, f"delete {run_dir} to run that trial again")
    summary = {name: best_value(name, [r.get(name) for r in rows]) for name in METRIC_GOALS}
    return {
        "summary": summary,
        "params_count": metrics.get("params"),
        "epochs_run": metrics.get("epochs_run"),
        "seconds_per_epoch": metrics.get("seconds_per_epoch"),
    }


def early_termination(plan: SweepPlan, sweep_dir: Path, trial: dict, trials: list[dict]) -> list:
    """The trial's hyperband callback (none without early_terminate), judging it against the other trials."""
    if not plan.sweep.get("early_terminate"):
        return []
    others = [sweep_dir / TRIALS_DIR / t["name"] for t in trials if t["name"] != trial["name"]]
    return [HyperbandStop(plan.sweep, sweep_dir / TRIALS_DIR / trial["name"], others)]


def run_trial(plan: SweepPlan, sweep_dir: Path, trial: dict, mode: str, callbacks: list | None = None) -> None:
    """Train one trial into SWEEP_DIR/trials/<name>/ and complete its record (finished, stopped or failed)."""
    run_dir = sweep_dir / TRIALS_DIR / trial["name"]
    if run_dir.exists() and not (run_dir / METRICS).exists() and not (run_dir / BACKUP).is_dir():
        shutil.rmtree(run_dir)  # interrupted before its first epoch ended: nothing to resume
    try:
        if not (run_dir / METRICS).exists():  # else it finished before its record was written
            config = plan.trial_config(trial["config"], run_dir, mode)
            if last := stopped_at(run_dir):  # stopped, then killed before its report: that epoch is its last
                config = dataclasses.replace(config, epochs=last)
            with tracking.grouped(sweep_dir.name):
                plan.kind.train(config, final=False, callbacks=callbacks or [])
        stopped = stopped_at(run_dir)
        trial.update(state="stopped" if stopped else "finished", **trial_result(run_dir))
        trial["metric"] = trial["summary"][plan.metric]
        if stopped:
            trial["reason"] = f"stopped by hyperband after epoch {stopped} of {trial['config']['epochs']}"
    except DataError:
        raise
    except Exception as err:  # a trial's own failure (NaN loss, a combination the model refuses, ...)
        if not isinstance(err, ConfigError):
            log.warning("%s failed", trial["name"], exc_info=True)
        trial.update(state="failed", reason=f"{type(err).__name__}: {err}", metric=None)
    finally:
        keras.backend.clear_session()
    trial["ended"] = now()


def local_mode() -> str:
    """Trials of a local sweep log offline W&B runs, unless W&B is switched off altogether."""
    return "disabled" if os.environ.get("WANDB_MODE") == "disabled" else "offline"


def run_local(plan: SweepPlan, sweep_dir: Path, count: int) -> dict:
    """Run trials until `count` are recorded in the folder; interrupted ones first, from scratch or their backup."""
    sweep_dir = Path(sweep_dir)
    with folder_lock(sweep_dir, "sweep"):
        return run_trials(plan, sweep_dir, count)


def run_trials(plan: SweepPlan, sweep_dir: Path, count: int) -> dict:
    state = open_sweep_dir(plan, sweep_dir)
    mode = local_mode()
    if plan.sweep.get("early_terminate"):
        shown = ", ".join(str(b + 1) for b in bands(plan.sweep, plan.source)[:6])
        log.info("hyperband early termination: trials are compared after epochs %s, ...", shown)
    for trial in state["trials"]:
        if trial["state"] == "running":
            log.info("rerunning the interrupted %s", trial["name"])
            run_trial(plan, sweep_dir, trial, mode, early_termination(plan, sweep_dir, trial, state["trials"]))
            save_trials(sweep_dir, state)
    while len(state["trials"]) < count:
        number = len(state["trials"]) + 1
        params = propose(plan.sweep, state["trials"], plan.base["seed"] + number)
        if params is None:
            log.info("the grid is exhausted after %d trial(s)", number - 1)
            break
        trial = {
            "name": f"trial-{number:03d}",
            "number": number,
            "state": "running",
            "params": params,
            "config": plan.trial_values(params),
            "started": now(),
        }
        state["trials"].append(trial)
        save_trials(sweep_dir, state)
        log.info("%s (%d of %d): %s", trial["name"], number, count, ", ".join(f"{k}={v}" for k, v in params.items()))
        run_trial(plan, sweep_dir, trial, mode, early_termination(plan, sweep_dir, trial, state["trials"]))
        save_trials(sweep_dir, state)
        shown = f"{plan.metric} {trial['metric']:.4f}" if trial["state"] != "failed" else trial["reason"]
        log.info("%s %s: %s", trial["name"], trial["state"], shown)
    return state
