"""Training-time augmentation: Keras preprocessing layers, run inside tf.data on the host."""

from __future__ import annotations

import keras

from ..config import TrainConfig


def augmenter(config: TrainConfig) -> keras.layers.Pipeline | None:
    """Keras preprocessing layers, run inside tf.data (never inside the model, which keeps JAX jit on)."""
    if not config.augment:
        return None
    seed = config.seed
    steps = []
    if config.flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if config.rotation:
        steps.append(keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=seed + 1))
    if config.zoom:
        steps.append(keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed + 2))
    if config.color_jitter and config.image_channels() == 3:
        j = config.color_jitter
        steps.append(
            keras.layers.RandomColorJitter(
                value_range=(0, 255), brightness_factor=j, contrast_factor=j, saturation_factor=j, seed=seed + 3
            )
        )
    return keras.layers.Pipeline(steps) if steps else None
