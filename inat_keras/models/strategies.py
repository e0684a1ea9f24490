"""Fine-tuning strategies: which units of the backbone train, and from which epoch on.

Units (`unfreeze_unit`): `stage` is what the study froze, torchvision's `features` children: the stem,
each stage, the top 1x1 conv (EfficientNetV2-S: 8 units; Lite0: 9). `block` is the blocks (V2-S: keras-cv's
40 sub-blocks block1a .. block6o, each one layer; Lite0: 16, each a few layers named blockNx_...), with the
stem and the top conv. The classifier head always trains. Unfreezing goes top-down (stages: the
top conv, stage 6, ...; blocks: the top conv with the first block, then blocks towards the input, the
stem last). Every strategy is a list of Stage objects, one per trainable set, because Keras only takes a
new trainable set at compile time (the training loop recompiles at every stage).

Batch normalisation (`batch_norm_mode`):
- `frozen` (the Keras transfer-learning guide): with pretrained weights every batch-norm layer runs in
  inference mode with its pretrained statistics, scale and offset, in unfrozen units too. With random
  weights (--weights none) there are no statistics to keep, and it trains normally in unfrozen units.
- `study` (torchvision in `model.train()`, as the study ran it): every batch-norm layer normalises with
  batch statistics and updates its running statistics; in frozen units its scale and offset stay fixed
  (the layer stays trainable, its two variables do not).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np

from ..config import FinetuneConfig
from ..keras_compat import sublayers
from .backbones import BACKBONE, BACKBONES, HEAD, STEM, TOP, Layout
from .finetune import FinetuneArchitecture, build_finetune_model

HEAD_GROUP = "head"
BLOCK_NAME = re.compile(r"^block(\d+)[a-z]+")  # keras-cv's "block6o_", Lite0's "block6d_dwconv": stage 6


@dataclass
class Stage:
    """Epochs [start, stop) trained with one trainable set; `apply` sets the flags before compiling."""

    start: int
    stop: int
    apply: Callable[[keras.Model], None] = lambda model: None
    label: str = "all"
    units: tuple[str, ...] = ()  # what trains, bottom-up (the head last)


def trainable_params(model: keras.Model) -> int:
    """From the live model: a reloaded checkpoint forgets trainable flags nested inside layers."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def layer_groups(model: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    """Every layer that holds weights, by block-sized group, bottom-up; refuses a model that does not split this way."""
    backbone = model.get_layer(BACKBONE)
    groups: dict[str, list[keras.layers.Layer]] = {STEM: []}
    for layer in backbone.layers:
        if not layer.weights:
            continue
        block = BLOCK_NAME.match(layer.name)
        if layer.name.startswith("stem_"):
            groups[STEM].append(layer)
        elif block:
            groups.setdefault(block.group(0), []).append(layer)
        elif layer.name.startswith("top_"):
            groups.setdefault(TOP, []).append(layer)
        else:
            raise ValueError(f"backbone layer {layer.name!r} belongs to no group")
    groups[HEAD_GROUP] = [model.get_layer(HEAD)]
    grouped = {id(layer) for members in groups.values() for layer in members}
    stray = [layer.name for layer in model.layers if layer.weights and id(layer) not in grouped | {id(backbone)}]
    blocks = block_names(groups)
    if stray or not any(blocks == layout.blocks for layout in BACKBONES.values()) or not groups[STEM] or TOP not in groups:
        raise ValueError(
            f"not a known backbone layout: {len(blocks)} blocks "
            f"({', '.join(f'{layout.title} has {len(layout.blocks)}' for layout in BACKBONES.values())}), "
            f"ungrouped layers {stray}"
        )
    return groups


def layout_of(model: keras.Model) -> Layout:
    blocks = block_names(layer_groups(model))
    return next(layout for layout in BACKBONES.values() if layout.blocks == blocks)


def unit_groups(model: keras.Model, unit: str) -> dict[str, list[keras.layers.Layer]]:
    """The groups that freeze together: blocks as they are, or stages (block<stage><letter> by their number)."""
    groups = layer_groups(model)
    if unit == "block":
        return groups
    units = {name: [] for name in layout_of(model).units_bottom_up("stage")}
    for name, members in groups.items():
        block = BLOCK_NAME.match(name)
        units.setdefault(f"stage{block.group(1)}" if block else name, []).extend(members)
    return units


def block_names(groups: dict) -> list[str]:
    return [name for name in groups if BLOCK_NAME.match(name)]


def unfreeze_order(layout: Layout, unit: str) -> list[str]:
    """Top-down. Stages: the top conv, the last stage, ..., the stem. Blocks: the last block .. block1a, then
    the stem (the top conv trains with the first block)."""
    bottom_up = layout.units_bottom_up(unit)
    return bottom_up[::-1] if unit == "stage" else bottom_up[-2::-1]


def unfrozen(layout: Layout, unit: str, count: int) -> frozenset[str]:
    """The head, and the first `count` units of unfreeze_order (block units: with the top conv)."""
    if count == 0:
        return frozenset({HEAD_GROUP})
    extra = {TOP} if unit == "block" else set()
    return frozenset({HEAD_GROUP, *extra, *unfreeze_order(layout, unit)[:count]})


def set_trainable(model: keras.Model, names: frozenset[str], unit: str, batch_norm: str, pretrained: bool) -> None:
    """Units in `names` train, all others are frozen; batch norm as `batch_norm` says (see the module docstring).

    Every layer is assigned its own flag, parents first: under TensorFlow, `layer.trainable = x` is
    skipped when the flag already is x, so a parent's assignment cannot be relied on to reach its sublayers.
    """
    frozen = {
        id(layer)
        for name, members in unit_groups(model, unit).items()
        if name not in names
        for member in members
        for layer in sublayers(member)
    }
    keep_statistics = batch_norm == "frozen" and pretrained
    for layer in sublayers(model):
        is_batch_norm = isinstance(layer, keras.layers.BatchNormalization)
        if is_batch_norm and batch_norm == "study":
            layer.trainable = True  # training mode: batch statistics, running statistics updated
            for variable in (layer.gamma, layer.beta):
                if variable is not None:
                    variable.trainable = id(layer) not in frozen
        else:
            layer.trainable = id(layer) not in frozen and not (keep_statistics and is_batch_norm)


def describe(layout: Layout, unit: str, count: int) -> str:
    if count == 0:
        return "head"
    if count >= len(unfreeze_order(layout, unit)):
        return "full"
    return f"last_{count}"


def unit_counts(config: FinetuneConfig) -> list[int]:
    """How many units each stage trains (besides the head), in order."""
    everything = len(unfreeze_order(BACKBONES[config.backbone], config.unfreeze_unit))
    if config.strategy != "gradual":
        return [{"full": everything, "head": 0, "last_k": config.k}[config.strategy]]
    counts, epoch = [], 0
    while epoch < config.epochs:
        counts.append(min(config.unfreeze_start + len(counts) * config.unfreeze_step, everything))
        epoch = config.epochs if counts[-1] == everything else epoch + config.unfreeze_every
    return counts


def plan_stages(model: keras.Model, config: FinetuneConfig) -> list[Stage]:
    """The strategy as stages: one for full, head and last_k; one per unfreezing step for gradual."""
    config.validate()
    layout = BACKBONES[config.backbone]
    if layout_of(model) != layout:  # also refuses a model that is no known backbone
        raise ValueError(f"the model is {layout_of(model).title}, the config's backbone {layout.title}")
    counts, stages = unit_counts(config), []
    for i, count in enumerate(counts):
        start = i * config.unfreeze_every
        stop = config.epochs if i == len(counts) - 1 else min(start + config.unfreeze_every, config.epochs)
        names = unfrozen(layout, config.unfreeze_unit, count)
        apply = functools.partial(set_trainable, names=names, unit=config.unfreeze_unit,
                                  batch_norm=config.batch_norm_mode, pretrained=config.weights != "none")  # fmt: skip
        units = tuple(name for name in [*layout.units_bottom_up(config.unfreeze_unit), HEAD_GROUP] if name in names)
        stages.append(Stage(start, stop, apply, describe(layout, config.unfreeze_unit, count), units))
    return stages


def trainable_counts(model: keras.Model) -> dict[str, int]:
    groups = layer_groups(model)
    return {
        "trainable_params": trainable_params(model),
        "trainable_blocks": sum(groups[name][0].trainable for name in block_names(groups)),
    }


class TrainableLogger(keras.callbacks.Callback):
    """Adds trainable_params and trainable_blocks to the epoch logs, so history.csv, W&B and the console get them."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(trainable_counts(self.model))


def stage_logger(model: keras.Model) -> list[keras.callbacks.Callback]:
    return [TrainableLogger()]


def schedule_metrics(model: keras.Model, stages: list[Stage]) -> dict:
    """The unfreezing schedule for metrics.json: per stage its epochs (from 1, as history.csv) and trainable set."""
    schedule = []
    with flags_kept(model):
        for stage in stages:
            stage.apply(model)
            schedule.append(
                {"label": stage.label, "epochs": list(range(stage.start + 1, stage.stop + 1)),
                 "trainable_groups": list(stage.units)} | trainable_counts(model)
            )  # fmt: skip
    return {"unfreezing_schedule": schedule}


@contextlib.contextmanager
def flags_kept(model: keras.Model):
    """Stages' flags may be tried on the model inside; every layer's and variable's flag comes back after."""
    layers = [(layer, layer.trainable) for layer in sublayers(model)]
    variables = [(variable, variable.trainable) for variable in model.variables]
    try:
        yield
    finally:
        for layer, flag in layers:
            layer.trainable = flag
        for variable, flag in variables:
            variable.trainable = flag


def schedule_table(config: FinetuneConfig, num_classes: int = 10) -> str:
    """Each stage's epochs (from 1), units and trainable parameters, from the architecture alone: nothing
    is trained or downloaded (the counts do not depend on the weights or the image size)."""
    quiet = logging.getLogger(build_finetune_model.__module__)
    level, quiet.level = quiet.level, logging.ERROR  # "random weights" is the point here, not a warning
    try:
        small = BACKBONES[config.backbone].min_image_size
        model = build_finetune_model(FinetuneArchitecture(config.backbone, small, "none", config.head_dropout), num_classes)
    finally:
        quiet.setLevel(level)
    stages = plan_stages(model, config)
    lines = [
        f"{config.strategy} fine-tuning of {BACKBONES[config.backbone].title}, {config.epochs} epochs, {num_classes} classes: "
        f"units {config.unfreeze_unit}, batch norm {config.batch_norm_mode}, optimizer state {config.optimizer_state}",
        f"{'stage':<7}{'epochs':<9}{'trainable parameters':>22}  units",
    ]
    for number, stage in enumerate(stages, start=1):
        stage.apply(model)
        epochs = f"{stage.start + 1}-{stage.stop}" if stage.stop - stage.start > 1 else f"{stage.stop}"
        lines.append(f"{number:<7}{epochs:<9}{trainable_params(model):>22,}  {', '.join(stage.units)}")
    return "\n".join(lines)
