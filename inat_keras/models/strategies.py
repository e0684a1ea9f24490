"""Fine-tuning strategies: which parts of EfficientNetV2-S train, and from which epoch on.

The backbone is split into groups, bottom-up: the stem, its 40 sub-blocks (block1a .. block6o, each one
keras-cv layer), the top 1x1 conv; the classifier head is a group of its own and always trains.
Unfreezing goes top-down: the top conv with the first block, then blocks towards the input, the stem
last. Every strategy is a list of Stage objects, one per trainable set, because Keras only takes
a new trainable set at compile time (the training loop recompiles at every stage).

Batch normalisation in frozen groups is frozen like everything there (inference mode, statistics
unchanged). With pretrained weights it stays frozen inside unfrozen groups too: it keeps running in
inference mode with the pretrained statistics, scale and offset (the README says why). With random
weights (--weights none) there are no statistics to keep, and it trains normally in unfrozen groups.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np

from ..config import FinetuneConfig
from .efficientnet import BACKBONE, HEAD
from .efficientnet_layout import BLOCKS, STEM, TOP

HEAD_GROUP = "head"


@dataclass
class Stage:
    """Epochs [start, stop) trained with one trainable set; `apply` sets the flags before compiling."""

    start: int
    stop: int
    apply: Callable[[keras.Model], None] = lambda model: None
    label: str = "all"


def trainable_params(model: keras.Model) -> int:
    """From the live model: a reloaded checkpoint forgets trainable flags nested inside layers."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layer and everything nested in it, parents first (Keras 3 has no public API for this)."""
    return layer._flatten_layers(include_self=True, recursive=True)


def layer_groups(model: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    """Every layer that holds weights, by group, bottom-up; refuses a model that does not split this way."""
    backbone = model.get_layer(BACKBONE)
    groups: dict[str, list[keras.layers.Layer]] = {STEM: []}
    for layer in backbone.layers:
        if not layer.weights:
            continue
        if layer.name.startswith("stem_"):
            groups[STEM].append(layer)
        elif layer.name.startswith("block"):
            groups[layer.name.rstrip("_")] = [layer]
        elif layer.name.startswith("top_"):
            groups.setdefault(TOP, []).append(layer)
        else:
            raise ValueError(f"backbone layer {layer.name!r} belongs to no group")
    groups[HEAD_GROUP] = [model.get_layer(HEAD)]
    grouped = {id(layer) for members in groups.values() for layer in members}
    stray = [layer.name for layer in model.layers if layer.weights and id(layer) not in grouped | {id(backbone)}]
    blocks = block_names(groups)
    if stray or blocks != BLOCKS or not groups[STEM] or TOP not in groups:
        raise ValueError(
            f"not the EfficientNetV2-S layout: {len(blocks)} blocks (expected {len(BLOCKS)}), "
            f"ungrouped layers {stray}"
        )
    return groups


def block_names(groups: dict) -> list[str]:
    return [name for name in groups if name.startswith("block")]


def unfreeze_order(groups: dict) -> list[str]:
    """Top-down: the last block first, the stem after block1a."""
    return block_names(groups)[::-1] + [STEM]


def unfrozen(groups: dict, count: int) -> frozenset[str]:
    """The head, and for count >= 1 the top conv plus the first `count` groups of unfreeze_order."""
    if count == 0:
        return frozenset({HEAD_GROUP})
    return frozenset({HEAD_GROUP, TOP, *unfreeze_order(groups)[:count]})


def set_trainable(model: keras.Model, names: frozenset[str], keep_statistics: bool) -> None:
    """Groups in `names` train, all others are frozen; keep_statistics freezes all batch norm (all in the backbone).

    Every layer is assigned its own flag, parents first: under TensorFlow, `layer.trainable = x` is
    skipped when the flag already is x, so a parent's assignment cannot be relied on to reach its sublayers.
    """
    frozen = {
        id(layer)
        for name, members in layer_groups(model).items()
        if name not in names
        for member in members
        for layer in sublayers(member)
    }
    for layer in sublayers(model):
        batch_norm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = id(layer) not in frozen and not (keep_statistics and batch_norm)


def describe(groups: dict, count: int) -> str:
    if count == 0:
        return "head"
    if count >= len(unfreeze_order(groups)):
        return "full"
    return f"last_{count}"


def plan_stages(model: keras.Model, config: FinetuneConfig) -> list[Stage]:
    """The strategy as stages: one for full, head and last_k; one per unfreezing step for gradual."""
    config.validate()
    groups = layer_groups(model)
    pretrained = config.weights != "none"
    everything = len(unfreeze_order(groups))
    if config.strategy != "gradual":
        count = {"full": everything, "head": 0, "last_k": config.k}[config.strategy]
        steps = [(0, config.epochs, count)]
    else:
        steps, start, step = [], 0, 0
        while start < config.epochs:
            count = min(step * config.unfreeze_step, everything)
            stop = config.epochs if count == everything else min(start + config.unfreeze_every, config.epochs)
            steps.append((start, stop, count))
            start, step = stop, step + 1
    return [
        Stage(
            start,
            stop,
            functools.partial(set_trainable, names=unfrozen(groups, count), keep_statistics=pretrained),
            describe(groups, count),
        )
        for start, stop, count in steps
    ]


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
    """The unfreezing schedule for metrics.json: per stage its epochs (history.csv numbering) and trainable set.

    Applies each stage's flags to count, then puts every flag back as it was.
    """
    saved = [(layer, layer.trainable) for layer in sublayers(model)]
    groups = layer_groups(model)
    schedule = []
    for stage in stages:
        stage.apply(model)
        trainable = [name for name, members in groups.items() if members[0].trainable]
        schedule.append(
            {"label": stage.label, "epochs": list(range(stage.start, stage.stop)), "trainable_groups": trainable}
            | trainable_counts(model)
        )
    for layer, flag in saved:
        layer.trainable = flag
    return {"unfreezing_schedule": schedule}
