"""The kinds of training run: each has a config class, a default YAML and one training function.

The CLI commands and the sweep trials both start runs through these functions, so that a
sweep trial trains exactly what `run.py scratch` or `run.py finetune` would.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import ConfigError, FinetuneConfig, ScratchConfig, TrainConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def train_scratch(config: ScratchConfig) -> tuple[Path, dict]:
    from .cnn import build_cnn
    from .jax_cpu import prepare_for
    from .train import run_training

    prepare_for("cnn")
    return run_training(config, "scratch", lambda n: build_cnn(config, n))


def check_scratch(config: ScratchConfig) -> None:
    """Options that validate one by one can still clash: the image must fit the kernels."""
    from .cnn import check_geometry

    check_geometry(config.image_size, config.kernel_sizes)


def scratch_image_size(choices: dict, base: dict) -> int:
    """The smallest image size at which every kernel option of a sweep builds a model."""
    from .cnn import min_image_size
    from .config import KERNEL_PRESETS, resolve_blocks

    kernels = choices.get("kernel_sizes", [base["kernel_sizes"]])
    return max(min_image_size(resolve_blocks(k, KERNEL_PRESETS, "kernel_sizes")) for k in kernels)


def train_finetune(config: FinetuneConfig) -> tuple[Path, dict]:
    from .efficientnet import build_finetune_model
    from .jax_cpu import prepare_for
    from .strategies import plan_stages, schedule_metrics, stage_logger
    from .train import run_training

    prepare_for("efficientnet")
    return run_training(
        config,
        f"finetune-{config.strategy}",
        lambda n: build_finetune_model(config, n),
        plan_stages=plan_stages,
        extra_callbacks=stage_logger,
        extra_metrics=schedule_metrics,
    )


@dataclass(frozen=True)
class Kind:
    name: str
    config_class: type
    default_config: Path
    train: Callable[[TrainConfig], tuple[Path, dict]]
    check: Callable[[TrainConfig], None] = lambda config: None  # raises ConfigError for a model it cannot build
    min_image_size: Callable[[dict, dict], int] = lambda choices, base: 1  # for a sweep's choices and base options

    def default_config_path(self) -> Path | None:
        return self.default_config if self.default_config.exists() else None

    def own_options(self) -> set[str]:
        """Options that only this kind has (the shared training options excluded)."""
        shared = {f.name for f in dataclasses.fields(TrainConfig)}
        return {f.name for f in dataclasses.fields(self.config_class)} - shared


KINDS = {
    "scratch": Kind(
        "scratch", ScratchConfig, CONFIGS / "scratch.yaml", train_scratch, check_scratch, scratch_image_size
    ),
    "finetune": Kind("finetune", FinetuneConfig, CONFIGS / "finetune.yaml", train_finetune),
}


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
