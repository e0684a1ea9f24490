"""Layer-wise learning rates for fine-tuning: each backbone unit's rate as a fraction of the head's.

The units are those that unfreeze together (`unfreeze_unit`). Counted from the top (depth 0: the top conv
for stage units; the first block with the top conv for block units), a unit's factor is
`backbone_lr * layer_decay ** depth`; the head's is 1. The factors go to the optimizer by variable path
(optimizers.RecipeUpdates scales each variable's rate by its own).
"""

from __future__ import annotations

import keras

from ..config import FinetuneConfig
from ..models.backbones import BACKBONES, TOP, Layout
from ..models.strategies import HEAD_GROUP, unfreeze_order, unit_groups


def unit_depths(layout: Layout, unit: str) -> dict[str, int]:
    """Each unit's depth from the top, in unfreezing order (the top conv trains with the first block)."""
    depths = {name: depth for depth, name in enumerate(unfreeze_order(layout, unit))}
    depths.setdefault(TOP, 0)
    return depths


def layer_rate_factors(model: keras.Model, config: FinetuneConfig) -> dict[str, float]:
    """{variable path: factor} for every backbone variable; empty when both options are off."""
    if config.backbone_lr == 1.0 and config.layer_decay == 1.0:
        return {}
    depths = unit_depths(BACKBONES[config.backbone], config.unfreeze_unit)
    factors = {}
    for name, members in unit_groups(model, config.unfreeze_unit).items():
        if name == HEAD_GROUP:
            continue
        factor = config.backbone_lr * config.layer_decay ** depths[name]
        factors.update({variable.path: factor for layer in members for variable in layer.weights})
    return factors
