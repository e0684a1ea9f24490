"""Training targets: one-hot labels, label smoothing, MixUp and CutMix, made in the tf.data batch map.

Mixing needs the labels, which the model's augmentation layer (data.augment.DeviceAugment) never sees, and
it costs one multiply-add or one select per pixel, so it runs in the pipeline for either `augment_on`: after
the random-resized crop (data.crops), so that CutMix's label weight is the pasted share of the image the
model gets, and before the augmentation layer, so that device and host augmentation see the same batches
(the two images of a mix share that image's flips, rotation and colour draws).

Keras's own `MixUp` and `CutMix` layers draw from an integer seed or a SeedGenerator only, so they cannot take
the batch's seed tensor (run seed, epoch and step) that keeps a resumed run's draws; and `CutMix` draws its
Beta parameter from a range bounded by 1. Hence this small form, with their semantics: each image gets its
own weight from Beta(a, a) and a partner from a random permutation of the batch. Validation and test
batches (`make_dataset(training=False)`) keep integer labels and are never mixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from ..config import TrainConfig

STREAM = 0x6D6978  # folded into the batch seed: the mixing draws are not the augmentation's


@dataclass(frozen=True)
class TargetSpec:
    classes: int
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(a, a) parameter; 0 = off
    cutmix: float = 0.0


def soft_targets(config: TrainConfig) -> bool:
    """Whether training labels become class distributions (else they stay integers, as in the study)."""
    return bool(config.label_smoothing or config.mixup or config.cutmix)


def target_spec(config: TrainConfig, classes: int | None) -> TargetSpec | None:
    if not soft_targets(config):
        return None
    if not classes:
        raise ValueError("soft training targets (label smoothing, MixUp, CutMix) need the number of classes")
    return TargetSpec(classes, config.label_smoothing, config.mixup, config.cutmix)


def stream_seed(seed, stream: int) -> tf.Tensor:
    """A stateless seed of its own for one kind of pipeline draw, from the batch's (run seed, epoch and step)."""
    return tf.random.experimental.stateless_fold_in(tf.cast(tf.math.floormod(tf.cast(seed, tf.int64), 2**31 - 1), tf.int32), stream)


def beta(shape, alpha: float, seed) -> tf.Tensor:
    """Beta(alpha, alpha) from two stateless Gamma draws."""
    first, second = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    x = tf.random.stateless_gamma(shape, first, alpha)
    y = tf.random.stateless_gamma(shape, second, alpha)
    return x / tf.maximum(x + y, 1e-12)


def mix_batch(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, spec: TargetSpec):
    """(images, soft labels) of one training batch: one-hot, smoothed, then MixUp or CutMix when on.

    Smoothing comes first: mixing is linear, so a mixed target is the same either way. Every soft label
    sums to 1; image i keeps weight w_i of itself and gives 1 - w_i to its partner, in pixels and label."""
    targets = tf.one_hot(tf.cast(labels, tf.int32), spec.classes, dtype=tf.float32)
    targets = targets * (1.0 - spec.label_smoothing) + spec.label_smoothing / spec.classes
    if not (spec.mixup or spec.cutmix):
        return images, targets
    order, choice, mix_seed, cut_seed = tf.unstack(tf.random.experimental.stateless_split(stream_seed(seed, STREAM), 4))
    batch = tf.shape(images)[0]
    partner = tf.argsort(tf.random.stateless_uniform([batch], order))
    others = tf.gather(images, partner)

    def mixup():
        weight = beta([batch], spec.mixup, mix_seed)
        w = tf.reshape(weight, (-1, 1, 1, 1))
        return w * images + (1.0 - w) * others, weight

    def cutmix():
        inside, weight = cutmix_boxes(tf.shape(images), spec.cutmix, cut_seed)
        return tf.where(inside, others, images), weight

    if spec.mixup and spec.cutmix:
        use_cutmix = tf.random.stateless_uniform([], choice) < 0.5
        images, weight = tf.cond(use_cutmix, cutmix, mixup)
    else:
        images, weight = cutmix() if spec.cutmix else mixup()
    weight = tf.reshape(weight, (-1, 1))
    return images, weight * targets + (1.0 - weight) * tf.gather(targets, partner)


def cutmix_boxes(shape, alpha: float, seed):
    """Per image, a box of area about (1 - lambda) of the image, lambda ~ Beta(alpha, alpha), centred
    anywhere and clipped to the image (as in the CutMix paper): (mask of the pasted pixels, (batch, H, W, 1);
    the share each image keeps, computed from the clipped box, so that it is the label's weight exactly)."""
    batch, height, width = shape[0], shape[1], shape[2]
    lam_seed, centre_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    side = tf.sqrt(1.0 - beta([batch], alpha, lam_seed))
    size = tf.cast([height, width], tf.float32)
    half = tf.cast(tf.round(side[:, None] * size[None, :]), tf.int32) // 2  # (batch, 2): half-heights, half-widths
    centre = tf.cast(tf.random.stateless_uniform([batch, 2], centre_seed) * size[None, :], tf.int32)
    start = tf.clip_by_value(centre - half, 0, tf.stack([height, width]))
    stop = tf.clip_by_value(centre + half, 0, tf.stack([height, width]))
    rows, cols = tf.range(height)[None, :], tf.range(width)[None, :]
    in_rows = (rows >= start[:, :1]) & (rows < stop[:, :1])  # (batch, H)
    in_cols = (cols >= start[:, 1:]) & (cols < stop[:, 1:])  # (batch, W)
    inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
    pasted = tf.cast(tf.reduce_prod(stop - start, axis=1), tf.float32) / (size[0] * size[1])
    return inside, 1.0 - pasted
