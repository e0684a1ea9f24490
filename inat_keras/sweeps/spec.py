"""A W&B sweep file checked against the runs it would start: every proposable value validated by the run's
config class, combinations that can never build a model found before any trial trains."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

from ..config import PLACE_OPTIONS, build_config, load_config, read_yaml, shipped_config, to_dict
from ..errors import ConfigError
from ..training.kinds import KINDS, Kind, kind_of_options
from ..outputs.run_folder import METRIC_GOALS

from .hyperband import bands, sweeps

log = logging.getLogger(__name__)

METHODS = ("bayes", "random", "grid")
# Why a sweep file may not choose the options that the sweep command sets for every trial.
PLACE_REASONS = {
    "data_dir": "choose the data with --data-dir or --demo",
    "demo": "choose the data with --data-dir or --demo",
    "tfds_dir": "choose the data with --data-dir, --demo or --tfds-dir",
    "output_dir": "trials go to SWEEP_DIR/trials/",
    "wandb": "the sweep command picks the W&B mode",
    "wandb_project": "use the sweep file's top-level `project`",
}
# A constant parameter that names the YAML a sweep's trials start from instead of the kind's shipped one: a
# parameter, because W&B's server refuses unknown top-level keys and passes any parameter to its runs.
BASE_PARAMETER = "base_config"
# Options that matter only when another option takes one of some values. W&B sweeps have no conditional
# parameters: a sweep that varies one where its condition may fail spends trials that differ in nothing.
CONDITIONAL = {
    "k": ("strategy", ("last_k",)),
    "unfreeze_every": ("strategy", ("gradual",)),
    "unfreeze_step": ("strategy", ("gradual",)),
    "unfreeze_start": ("strategy", ("gradual",)),
    "randaugment_ops": ("augmentation", ("randaugment",)),
    "randaugment_magnitude": ("augmentation", ("randaugment",)),
    "ema_momentum": ("ema", (True,)),
}
# Distributions whose bounds are values (or natural-log exponents of values) that validation can check.
BOUNDED = ("uniform", "int_uniform", "q_uniform", "log_uniform_values", "q_log_uniform_values")
LOG_EXPONENT = ("log_uniform", "q_log_uniform")


@dataclass
class SweepPlan:
    """A checked sweep file plus the trial options it does not sweep."""

    source: str
    sweep: dict
    kind: Kind
    base: dict  # every option of a trial before the proposal: defaults, the kind's YAML, command-line options
    overrides: dict  # command-line options; they win over the sweep file's constants
    settings: dict = dataclasses.field(default_factory=dict)  # the kind's YAML as it is: no demo section, no flags

    @property
    def metric(self) -> str:
        return self.sweep["metric"]["name"]

    @property
    def project(self) -> str:
        return self.sweep.get("project") or self.base["wandb_project"]

    def trial_values(self, params: dict) -> dict:
        return {**self.base, **run_options(params), **self.overrides}

    @property
    def options(self) -> dict:
        """The parameters that are options of a run (all but base_config)."""
        return run_options(self.sweep["parameters"])

    def trial_config(self, values: dict, output_dir: Path, mode: str):
        extra = {"output_dir": str(output_dir), "wandb": mode, "wandb_project": self.project}
        return build_config(self.kind.config_class, {**values, **extra}, source=f"trial {output_dir.name}")


def run_options(parameters: dict) -> dict:
    """A sweep's parameters (or a trial's values) that are options of a run: all but base_config."""
    return {k: v for k, v in parameters.items() if k != BASE_PARAMETER}


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
    allowed = ", ".join(f"{name} ({goal})" for name, goal in METRIC_GOALS.items())
    if not isinstance(metric, dict) or "name" not in metric:
        raise ConfigError(f"{source}: metric is missing; give metric: {{name: ..., goal: ...}} with one of {allowed}")
    if metric["name"] not in METRIC_GOALS:
        raise ConfigError(
            f"{source}: metric.name {metric['name']!r} is not a validation metric that training logs; "
            f"use one of {allowed}"
        )
    goal = METRIC_GOALS[metric["name"]]
    if metric.get("goal") != goal:
        raise ConfigError(f"{source}: metric.goal must be {goal} for {metric['name']}, got {metric.get('goal')!r}")
    parameters = sweep.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise ConfigError(f"{source}: parameters must be a non-empty mapping of option: {{values: [...]}}")
    known = {f.name for k in KINDS.values() for f in dataclasses.fields(k.config_class)}
    for name in parameters:
        if name == BASE_PARAMETER:
            spec = parameters[name]
            if not isinstance(spec, dict) or set(spec) != {"value"} or not isinstance(spec["value"], str):
                raise ConfigError(f"{source}: parameters.{name} names the config trials start from: give "
                                  f"{{value: FILE.yaml}} (next to the sweep file, or in configs/), got {spec!r}")  # fmt: skip
            continue
        if name in PLACE_OPTIONS:
            raise ConfigError(f"{source}: parameters.{name} is not sweepable: {PLACE_REASONS[name]}")
        if name not in known:
            options = ", ".join(sorted(known))
            raise ConfigError(f"{source}: parameters.{name} is not an option of any run; options: {options}")
    kind = kind_of_options(parameters, f"{source}: parameters")
    if method == "grid":
        for name, spec in parameters.items():
            if not isinstance(spec, dict) or not ({"value", "values"} & set(spec)):
                raise ConfigError(f"{source}: parameters.{name}: grid search needs value or values")
    if "early_terminate" in sweep:
        bands(sweep, source)
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
    base_path = base_config_path(sweep, kind, path)
    base = to_dict(load_config(kind.config_class, base_path, overrides))
    base = {k: v for k, v in base.items() if v is not None}  # unset paths stay unset
    if base["demo"] and "image_size" not in overrides and "image_size" not in sweep["parameters"]:
        fit_demo_image_size(sweep, kind, base, source)
    for name, spec in run_options(sweep["parameters"]).items():
        values = parameter_values(name, spec, source)
        if name in overrides and len(values) > 1:
            raise ConfigError(f"{source}: parameters.{name} is swept; drop the command-line option for it")
        for value in values:
            try:
                build_config(kind.config_class, {**base, name: value}, source=f"value {value!r}")
            except ConfigError as err:
                raise ConfigError(f"{source}: parameters.{name}: {err}") from None
    check_conditions(sweep["parameters"], base, source)
    settings = {k: v for k, v in to_dict(load_config(kind.config_class, base_path)).items()
                if k not in PLACE_OPTIONS and v is not None}  # fmt: skip
    plan = SweepPlan(source, sweep, kind, base, overrides, settings)
    check_combinations(plan)
    return plan


def base_config_path(sweep: dict, kind: Kind, path: str | Path) -> Path:
    """The YAML that trials start from: the sweep's base_config (next to the sweep file, else a shipped
    config), or the kind's own (configs/scratch.yaml, configs/finetune.yaml)."""
    spec = sweep["parameters"].get(BASE_PARAMETER)
    if spec is None:
        return kind.default_config_path()
    beside = Path(path).parent / spec["value"]
    if beside.is_file():
        return beside
    try:
        return shipped_config(spec["value"])
    except ConfigError:
        raise ConfigError(f"{path}: parameters.{BASE_PARAMETER}: {spec['value']} is neither next to the sweep "
                          "file nor a shipped config (configs/)") from None  # fmt: skip


def check_conditions(parameters: dict, base: dict, source: str) -> None:
    """Refuse a swept option that does nothing in some of the sweep's trials (CONDITIONAL says why)."""
    for name, (condition, allowed) in CONDITIONAL.items():
        spec = parameters.get(name)
        if spec is None or "value" in spec:
            continue
        if condition in parameters:
            possible = parameter_values(condition, parameters[condition], source)
        else:
            possible = [base.get(condition)]
        idle = [v for v in possible if v not in allowed]
        if idle:
            example = f" (as configs/sweep_finetune_{allowed[0]}.yaml)" if condition == "strategy" else ""
            raise ConfigError(
                f"{source}: parameters.{name} matters only when {condition} is {' or '.join(map(str, allowed))}, "
                f"but {condition} may be {', '.join(map(str, idle))}: those trials would differ in nothing; sweep "
                f"{name} in a file with {condition}: {{value: {allowed[0]}}}{example}"
            )


def fit_demo_image_size(sweep: dict, kind: Kind, base: dict, source: str) -> None:
    """Demo images are small; raise their size so that every swept architecture fits (--image-size wins)."""
    choices = {name: parameter_values(name, spec, source) for name, spec in run_options(sweep["parameters"]).items()}
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
    choices = {name: parameter_values(name, spec, plan.source) for name, spec in plan.options.items()}
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
        doomed = [v for v in values if len(values) > 1 and tried[name, repr(v)] and failed[name, repr(v)] == tried[name, repr(v)]]
        listed = plan.sweep["parameters"][name].get("values")
        for value in doomed:
            action = "dropped from the search" if listed else "kept (a range cannot drop it)"
            log.warning("%s: parameters.%s: %r %s, every trial with it would fail: %s", plan.source, name, value,
                        action, reasons[name, repr(value)])  # fmt: skip
        if listed and doomed:
            plan.sweep["parameters"][name]["values"] = [v for v in listed if v not in doomed]
