"""The kinds of training run. A Kind carries everything that differs between them: the config class and
its shipped YAML, the model builder, the stage planner, extra callbacks and metrics, and checks.

The CLI commands and the sweep trials both start runs through `Kind.train`, so that a sweep trial trains
exactly what `run.py scratch` or `run.py finetune` would.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras

from ..config import KERNEL_PRESETS, FinetuneConfig, ScratchConfig, TrainConfig, resolve_blocks, shipped_config
from ..data.augment import device_augment
from ..errors import ConfigError
from ..models.cnn import CnnArchitecture, build_cnn, check_geometry, min_image_size
from ..models.finetune import FinetuneArchitecture, build_finetune_model, check_weights
from ..models.strategies import Stage, plan_stages, schedule_metrics, stage_logger
from .layer_rates import layer_rate_factors
from .loop import run_training


def one_stage(model: keras.Model, config: TrainConfig) -> list[Stage]:
    return [Stage(0, config.epochs)]


@dataclass(frozen=True)
class Kind:
    name: str
    config_class: type
    config_file: str  # in configs/
    family: str  # "cnn" or "efficientnet": which CPU tuning suits it (perf.cpu_tuning)
    build_model: Callable[[TrainConfig, int], keras.Model]
    plan_stages: Callable[[keras.Model, TrainConfig], list[Stage]] = one_stage
    callbacks: Callable[[keras.Model], list] = lambda model: []
    metrics: Callable[[keras.Model, list[Stage]], dict] = lambda model, stages: {}
    rate_factors: Callable[[keras.Model, TrainConfig], dict] = lambda model, config: {}  # {variable path: rate factor}
    check: Callable[[TrainConfig], None] = lambda config: None  # raises ConfigError for a model it cannot build
    min_image_size: Callable[[dict, dict], int] = lambda choices, base: 1  # for a sweep's choices and base options

    def default_config_path(self) -> Path:
        return shipped_config(self.config_file)

    def run_name(self, config: TrainConfig) -> str:
        strategy = getattr(config, "strategy", None)
        return f"{self.name}-{strategy}" if strategy else self.name

    def train(self, config: TrainConfig, final: bool = True, callbacks: list | None = None) -> tuple[Path, dict]:
        """A final run ends with the test set; a sweep trial (final=False) never touches it. `callbacks`
        join every stage's fit (a local sweep's early termination)."""
        return run_training(config, self, final, callbacks)

    def own_options(self) -> set[str]:
        """Options that only this kind has (the shared training options excluded)."""
        shared = {f.name for f in dataclasses.fields(TrainConfig)}
        return {f.name for f in dataclasses.fields(self.config_class)} - shared


def augmented(builder: Callable, architecture: Callable) -> Callable[[TrainConfig, int], keras.Model]:
    """The builder, given the architecture the config describes, with the config's device augmentation as the
    model's first layer (when it has one)."""

    def build(config: TrainConfig, num_classes: int) -> keras.Model:
        return builder(architecture(config), num_classes, device_augment(config))

    return build


def check_scratch(config: ScratchConfig) -> None:
    """Options that validate one by one can still clash: the image must fit the kernels."""
    check_geometry(config.image_size, config.kernel_list())


def scratch_image_size(choices: dict, base: dict) -> int:
    """The smallest image size at which every kernel option of a sweep builds a model."""
    kernels = choices.get("kernel_sizes", [base["kernel_sizes"]])
    return max(min_image_size(resolve_blocks(k, KERNEL_PRESETS, "kernel_sizes")) for k in kernels)


KINDS = {
    "scratch": Kind(
        "scratch", ScratchConfig, "scratch.yaml", "cnn", augmented(build_cnn, CnnArchitecture.of), check=check_scratch,
        min_image_size=scratch_image_size,
    ),
    "finetune": Kind(
        "finetune", FinetuneConfig, "finetune.yaml", "efficientnet", augmented(build_finetune_model, FinetuneArchitecture.of),
        plan_stages=plan_stages, check=check_weights,
        callbacks=stage_logger, metrics=schedule_metrics, rate_factors=layer_rate_factors,
    ),
}  # fmt: skip


def kind_of_config(config: TrainConfig) -> Kind:
    """The kind that trains this config (by its class)."""
    for kind in KINDS.values():
        if type(config) is kind.config_class:
            return kind
    raise ConfigError(f"no kind of run trains a {type(config).__name__}; give a ScratchConfig or a FinetuneConfig")


def kind_of_options(names, source: str) -> Kind:
    """The one kind whose own options appear among `names` (e.g. the parameters of a sweep)."""
    names = set(names)
    found = {kind.name: sorted(kind.own_options() & names) for kind in KINDS.values()}
    found = {name: keys for name, keys in found.items() if keys}
    if len(found) == 1:
        return KINDS[next(iter(found))]
    if found:
        mixed = "; ".join(f"{name}: {', '.join(keys)}" for name, keys in found.items())
        raise ConfigError(f"{source}: mixes options of different kinds of run ({mixed})")
    examples = ", ".join(f"{kind.name}: {', '.join(sorted(kind.own_options())[:3])}" for kind in KINDS.values())
    raise ConfigError(
        f"{source}: cannot tell which model these options train; include at least one option of the model "
        f"(a constant is enough, e.g. `strategy: {{value: gradual}}`); model options are {examples}, ..."
    )
