"""The fine-tuning model: an ImageNet backbone (config.backbone) under a new classifier head."""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from . import efficientnet_lite, efficientnet_v2
from .backbones import BACKBONES, HEAD, PREPROCESS

BUILDERS = {"efficientnetv2_s": efficientnet_v2, "efficientnet_lite0": efficientnet_lite}  # build_backbone, load_weights


@dataclass(frozen=True)
class FinetuneArchitecture:
    """What the fine-tuning model needs: the backbone, its input size, its weights and the head's dropout."""

    backbone: str
    image_size: int
    weights: str = "imagenet"
    head_dropout: float = 0.2

    @classmethod
    def of(cls, config) -> FinetuneArchitecture:
        """From a FinetuneConfig."""
        return cls(config.backbone, config.image_size, config.weights, config.head_dropout)


def check_weights(config) -> None:
    """The --weights source of a FinetuneConfig, checked before anything is built or written."""
    BUILDERS[config.backbone].check_source(config.weights)


def build_finetune_model(config: FinetuneArchitecture, num_classes: int, augment: layers.Layer | None = None) -> keras.Model:
    """Raw pixels -> [augment, training only] -> scaling the weights expect -> backbone -> average pool ->
    dropout -> float32 logits."""
    module = BUILDERS[config.backbone]
    backbone = module.build_backbone(config.image_size)
    scale, offset = module.load_weights(backbone, config.weights)
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    x = layers.Rescaling(scale, offset, name=PREPROCESS)(augment(inputs) if augment else inputs)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(config.head_dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, dtype="float32", name=HEAD)(x)
    return keras.Model(inputs, outputs, name=f"{BACKBONES[config.backbone].name}_finetune")
