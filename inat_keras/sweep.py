"""Hyperparameter sweeps from a W&B sweep file: W&B's own agent online, the same search locally offline.

Online, `wandb.sweep` + `wandb.agent` let agents on many machines share one search. Offline, the
open-source `sweeps` package (the search algorithms W&B's server runs) proposes each trial from the
finished ones, and `trials.json` in the sweep folder records every trial, so a killed sweep resumes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import functools
import itertools
import json
import logging
import math
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import tracking
from .config import ConfigError, build_config, load_config, read_yaml, to_dict
from .data import DataError
from .kinds import KINDS, Kind, kind_of_options

with warnings.catch_warnings():  # sweeps 0.2.0 uses pydantic-1 style settings that pydantic 2 warns about
    warnings.simplefilter("ignore")
    import sweeps

log = logging.getLogger(__name__)

TRIALS_FILE, TRIALS_DIR = "trials.json", "trials"
METHODS = ("bayes", "random", "grid")
# Options that the sweep command sets for every trial; a sweep file may not choose them.
COMMAND_OPTIONS = {
    "data_dir": "choose the data with --data-dir or --demo",
    "demo": "choose the data with --data-dir or --demo",
    "output_dir": "trials go to SWEEP_DIR/trials/",
    "wandb": "the sweep command picks the W&B mode",
    "wandb_project": "use the sweep file's top-level `project`",
}
# Distributions whose bounds are values (or natural-log exponents of values) that validation can check.
BOUNDED = ("uniform", "int_uniform", "q_uniform", "log_uniform_values", "q_log_uniform_values")
LOG_EXPONENT = ("log_uniform", "q_log_uniform")
RUN_STATES = {state: sweeps.RunState[state] for state in ("running", "finished", "failed")}


@dataclass
class SweepPlan:
    """A checked sweep file plus the trial options it does not sweep."""

    source: str
    sweep: dict
    kind: Kind
    base: dict  # every option of a trial before the proposal: defaults, the kind's YAML, command-line options
    overrides: dict  # command-line options; they win over the sweep file's constants

    @property
    def metric(self) -> str:
        return self.sweep["metric"]["name"]

    @property
    def project(self) -> str:
        return self.sweep.get("project") or self.base["wandb_project"]

    def trial_values(self, params: dict) -> dict:
        return {**self.base, **params, **self.overrides}

    def trial_config(self, values: dict, output_dir: Path, mode: str):
        extra = {"output_dir": str(output_dir), "wandb": mode, "wandb_project": self.project}
        return build_config(self.kind.config_class, {**values, **extra}, source=f"trial {output_dir.name}")


def parameter_values(name: str, spec, source: str) -> list:
    """The values of one parameter that validation must accept: all listed values, or the range's bounds."""
    where = f"{source}: parameters.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{values: [...]}}, got {spec!r}")
    if "parameters" in spec:
        raise ConfigError(f"{where}: nested parameters are not options of a run")
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise ConfigError(f"{where}: values must be a non-empty list, got {spec['values']!r}")
        return list(spec["values"])
    if "min" in spec and "max" in spec:
        low, high = spec["min"], spec["max"]
        both_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
        distribution = spec.get("distribution", "int_uniform" if both_int else "uniform")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise ConfigError(f"{where}: min and max must be numbers with min < max, got {low!r} and {high!r}")
        if distribution in LOG_EXPONENT:
            return [math.exp(low), math.exp(high)]
        if distribution in BOUNDED:
            return [low, high]
        raise ConfigError(
            f"{where}: distribution {distribution!r} cannot be checked before the sweep; "
            f"use values, or one of {', '.join(BOUNDED + LOG_EXPONENT)}"
        )
    raise ConfigError(f"{where}: give value, values, or min and max (with a distribution), got {spec!r}")


def check_sweep_file(sweep: dict, source: str) -> Kind:
    """Refuse what no run could use, naming the key; return the kind of run the parameters train."""
    method = sweep.get("method")
    if method not in METHODS:
        raise ConfigError(f"{source}: method must be one of {', '.join(METHODS)}, got {method!r}")
    metric = sweep.get("metric")
    allowed = ", ".join(f"{name} ({goal})" for name, goal in tracking.SWEEP_METRICS.items())
    if not isinstance(metric, dict) or "name" not in metric:
        raise ConfigError(f"{source}: metric is missing; give metric: {{name: ..., goal: ...}} with one of {allowed}")
    if metric["name"] not in tracking.SWEEP_METRICS:
        raise ConfigError(
            f"{source}: metric.name {metric['name']!r} is not a validation metric that training logs; "
            f"use one of {allowed}"
        )
    goal = tracking.SWEEP_METRICS[metric["name"]]
    if metric.get("goal") != goal:
        raise ConfigError(f"{source}: metric.goal must be {goal} for {metric['name']}, got {metric.get('goal')!r}")
    parameters = sweep.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise ConfigError(f"{source}: parameters must be a non-empty mapping of option: {{values: [...]}}")
    known = {f.name for k in KINDS.values() for f in dataclasses.fields(k.config_class)}
    for name in parameters:
        if name in COMMAND_OPTIONS:
            raise ConfigError(f"{source}: parameters.{name} is not sweepable: {COMMAND_OPTIONS[name]}")
        if name not in known:
            options = ", ".join(sorted(known))
            raise ConfigError(f"{source}: parameters.{name} is not an option of any run; options: {options}")
    kind = kind_of_options(parameters, f"{source}: parameters")
    if method == "grid":
        for name, spec in parameters.items():
            if not isinstance(spec, dict) or not ({"value", "values"} & set(spec)):
                raise ConfigError(f"{source}: parameters.{name}: grid search needs value or values")
    violations = sweeps.schema_violations_from_proposed_config(sweep)
    if violations:
        raise ConfigError(f"{source}: not a valid W&B sweep file: {'; '.join(violations)}")
    return kind


def load_plan(path: str | Path, overrides: dict | None = None) -> SweepPlan:
    """Read and check a sweep file; every value it may propose is validated by the run's config class."""
    source = str(path)
    sweep = read_yaml(path)
    kind = check_sweep_file(sweep, source)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    base = to_dict(load_config(kind.config_class, kind.default_config_path(), overrides))
    base = {k: v for k, v in base.items() if v is not None}  # unset paths stay unset
    if base["demo"] and "image_size" not in overrides and "image_size" not in sweep["parameters"]:
        fit_demo_image_size(sweep, kind, base, source)
    for name, spec in sweep["parameters"].items():
        values = parameter_values(name, spec, source)
        if name in overrides and len(values) > 1:
            raise ConfigError(f"{source}: parameters.{name} is swept; drop the command-line option for it")
        for value in values:
            try:
                build_config(kind.config_class, {**base, name: value}, source=f"value {value!r}")
            except ConfigError as err:
                raise ConfigError(f"{source}: parameters.{name}: {err}") from None
    plan = SweepPlan(source, sweep, kind, base, overrides)
    check_combinations(plan)
    return plan


def fit_demo_image_size(sweep: dict, kind: Kind, base: dict, source: str) -> None:
    """Demo images are small; raise their size so that every swept architecture fits (--image-size wins)."""
    choices = {name: parameter_values(name, spec, source) for name, spec in sweep["parameters"].items()}
    needed = kind.min_image_size(choices, base)
    if needed > base["image_size"]:
        log.warning(
            "demo sweep: image size %d -> %d so that every kernel option fits (pass --image-size to choose)",
            base["image_size"], needed,
        )
        base["image_size"] = needed


def check_combinations(plan: SweepPlan, samples: int = 256) -> None:
    """Values valid one by one can still clash (an image too small for the kernels): try combinations.

    Refuses a space where no tried combination builds a model; warns about values that never do.
    """
    choices = {name: parameter_values(name, spec, plan.source) for name, spec in plan.sweep["parameters"].items()}
    if math.prod(len(values) for values in choices.values()) <= samples:
        combinations = itertools.product(*choices.values())
    else:
        rng = random.Random(0)
        combinations = (tuple(rng.choice(values) for values in choices.values()) for _ in range(samples))
    reference = build_config(plan.kind.config_class, plan.trial_values({}), source=plan.source)
    tried, failed, reasons = collections.Counter(), collections.Counter(), {}
    for combination in combinations:
        params = dict(zip(choices, combination))
        config = dataclasses.replace(reference, **{k: v for k, v in params.items() if k not in plan.overrides})
        try:  # each value passed build_config's type checks above; validate() resolves presets
            config.validate()
            plan.kind.check(config)
            error = None
        except ConfigError as err:
            error = err
        for name, value in params.items():
            tried[name, repr(value)] += 1
            failed[name, repr(value)] += error is not None
            reasons.setdefault((name, repr(value)), error)
    if all(failed[key] == tried[key] for key in tried):
        example = next(iter(reasons.values()))
        raise ConfigError(f"{plan.source}: no combination of the parameters makes a model, e.g. {example}")
    for name, values in choices.items():
        for key in ((name, repr(value)) for value in values):
            if len(values) > 1 and tried[key] and failed[key] == tried[key]:
                log.warning("%s: parameters.%s: trials with %s will fail: %s", plan.source, *key, reasons[key])


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
    path = Path(sweep_dir) / TRIALS_FILE
    if not path.is_file():
        raise ConfigError(f"{sweep_dir} holds no sweep ({TRIALS_FILE} is missing)")
    return json.loads(path.read_text())


def open_sweep_dir(plan: SweepPlan, sweep_dir: Path) -> dict:
    """A new sweep folder, or one that holds this very sweep (same file, same trial options) to resume."""
    setup = {"kind": plan.kind.name, "metric": plan.metric, "sweep": plan.sweep, "base": plan.base}
    setup = json.loads(json.dumps(setup))
    if (sweep_dir / TRIALS_FILE).exists():
        state = read_trials(sweep_dir)
        changed = [k for k in ("kind", "metric", "sweep") if state.get(k) != setup[k]]
        options = set(setup["base"]) | set(state["base"])
        changed += sorted(k for k in options if state["base"].get(k) != setup["base"].get(k))
        if changed:
            raise ConfigError(
                f"{sweep_dir} holds a sweep with other settings ({', '.join(changed)}); "
                "resume it with the same file and options, or choose a new --output-dir"
            )
        log.info("resuming the sweep in %s (%d trial(s) recorded)", sweep_dir, len(state["trials"]))
        return state
    if sweep_dir.exists() and any(sweep_dir.iterdir()):
        raise ConfigError(f"{sweep_dir} is not empty and holds no sweep ({TRIALS_FILE}); choose a new --output-dir")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return {**setup, "trials": []}


def save_trials(sweep_dir: Path, state: dict) -> None:
    from .train import write_json

    write_json(sweep_dir / TRIALS_FILE, state)


def trial_result(run_dir: Path) -> dict:
    """What the search and the report need from a finished trial folder: validation metrics only."""
    from .callbacks import read_history
    from .train import HISTORY, METRICS

    rows = read_history(run_dir / HISTORY)
    metrics = json.loads((run_dir / METRICS).read_text())
    summary = {name: tracking.best_value(name, [r.get(name) for r in rows]) for name in tracking.SWEEP_METRICS}
    return {
        "summary": summary,
        "params_count": metrics.get("params"),
        "epochs_run": metrics.get("epochs_run"),
        "seconds_per_epoch": metrics.get("seconds_per_epoch"),
    }


def run_trial(plan: SweepPlan, sweep_dir: Path, trial: dict, mode: str) -> None:
    """Train one trial into SWEEP_DIR/trials/<name>/ and complete its record (finished or failed)."""
    import keras

    from .train import BACKUP, METRICS

    run_dir = sweep_dir / TRIALS_DIR / trial["name"]
    if run_dir.exists() and not (run_dir / METRICS).exists() and not (run_dir / BACKUP).is_dir():
        shutil.rmtree(run_dir)  # interrupted before its first epoch ended: nothing to resume
    try:
        if not (run_dir / METRICS).exists():  # else it finished before its record was written
            with tracking.grouped(sweep_dir.name):
                plan.kind.train(plan.trial_config(trial["config"], run_dir, mode))
        trial.update(state="finished", **trial_result(run_dir))
        trial["metric"] = trial["summary"][plan.metric]
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
    state = open_sweep_dir(plan, sweep_dir)
    mode = local_mode()
    for trial in state["trials"]:
        if trial["state"] == "running":
            log.info("rerunning the interrupted %s", trial["name"])
            run_trial(plan, sweep_dir, trial, mode)
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
        run_trial(plan, sweep_dir, trial, mode)
        save_trials(sweep_dir, state)
        shown = f"{plan.metric} {trial['metric']:.4f}" if trial["state"] == "finished" else trial["reason"]
        log.info("%s %s: %s", trial["name"], trial["state"], shown)
    return state


def agent_trial(plan: SweepPlan, sweep_dir: Path) -> None:
    """The function W&B's agent calls: its run's config holds the proposal; train it, or mark the run failed."""
    import wandb

    run = wandb.init(dir=str(sweep_dir), settings=wandb.Settings(silent=True, console="off"))
    params = {name: plain(run.config[name]) for name in plan.sweep["parameters"] if name in run.config}
    try:
        plan.kind.train(plan.trial_config(plan.trial_values(params), sweep_dir / TRIALS_DIR / run.id, "online"))
    except DataError:
        raise
    except Exception as err:  # finish it as failed here: W&B's agent would stop after a few raised failures
        log.warning("run %s failed: %s", run.id, err, exc_info=not isinstance(err, ConfigError))
        if wandb.run is run:  # training ends the run itself when the loss diverged
            run.summary["failure"] = f"{type(err).__name__}: {err}"
            run.finish(exit_code=1)


def sweep_url(sweep_id: str, project: str, entity: str | None) -> str:
    import wandb

    parts = sweep_id.split("/")
    if len(parts) == 1:
        parts = [entity or wandb.Api().default_entity, project, sweep_id]
    return f"https://wandb.ai/{parts[0]}/{parts[1]}/sweeps/{parts[-1]}"


def run_online(plan: SweepPlan, sweep_dir: Path, count: int, sweep_id: str | None = None) -> str:
    """Create the W&B sweep (or join `sweep_id`) and run `count` of its trials here."""
    import wandb

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


def default_sweep_dir() -> Path:
    from .train import RUNS_DIR

    return RUNS_DIR / f"sweep-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"


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
    if sweep_id and not online:
        raise ConfigError("--sweep-id joins a W&B sweep: it needs a W&B login (wandb login) and no --offline")
    if online:
        sweep_dir = Path(sweep_dir) if sweep_dir else default_sweep_dir()
        run_online(plan, sweep_dir, count, sweep_id)
        return "online", sweep_dir
    if plan.sweep.get("early_terminate"):
        log.warning("early_terminate is applied by W&B's server only; local trials run all their epochs")
    sweep_dir = Path(sweep_dir) if sweep_dir else default_sweep_dir()
    run_local(plan, sweep_dir, count)
    return "local", sweep_dir
