"""Decoded images to batches: read the cache (data.cache), shuffle per epoch, [augment on the host], batch.

The same pipeline feeds both backends. Images leave it as float32 pixels in 0..255; normalisation is
the model's first layer, so augmentation always runs before it and saved models accept raw pixels.
"""

from __future__ import annotations

import functools
import math

import tensorflow as tf

from ..config import TrainConfig
from .augment import Augment, augment_spec
from .cache import cache_mode, cache_units, cached_images
from .crops import crops_on, decode_size, random_resized_crops
from .mixing import mix_batch, target_spec
from .splits import Split


def make_dataset(
    split: Split,
    config: TrainConfig,
    training: bool,
    channels: int | None = None,
    cache: str | None = None,
    batch_size: int | None = None,
    even_batches: bool = False,
    epochs: tuple[int, int] = (0, 1),
    classes: int | None = None,
) -> tf.data.Dataset:
    """Read the split's cached images (`cache`, default the config's: auto, memory or disk; decoded once,
    data.cache), then shuffle (training only, fresh every epoch), batch, prefetch. Training batches are
    augmented here only with `augment_on: host`; on the device the model's first layer does it
    (data.augment.DeviceAugment). A disk-cached training split larger than the shuffle buffer is cached in
    shards, so that an epoch holds only `shuffle_buffer` images in memory.

    Training yields the epochs [first, last) as one stream (fit needs `steps_per_epoch`); each epoch is
    shuffled with a seed of its own, so the order is the same on any device count and after a resume.
    `even_batches` (data parallelism splits every batch evenly over devices and processes): training
    drops a last partial batch, a different one each epoch; evaluation pads it to a full batch with
    zero-weight images, so that each real image still counts exactly once.

    Training batches are, in this order: cropped from a larger decode (`crop_min_area`, data.crops), given
    soft targets of `classes` classes (label smoothing, MixUp, CutMix: data.mixing), then augmented; all
    seeded by the batch's (run seed, epoch, step). Validation and test keep integer labels and plain images.
    """
    batch_size = batch_size or config.batch_size
    channels = channels or config.image_channels()
    size = decode_size(config, training)  # crops: a larger training decode
    mode = cache_mode(split, size, channels, cache or config.cache)
    if training:
        units = cache_units(split, mode, config.shuffle_buffer, config.seed)
        if len(units) > 1:
            shards = [cached_images(part, size, channels, mode) for part in units]
            ds = shard_epochs(shards, config.seed, epochs, batch_size, even_batches, config.shuffle_buffer)
        else:
            ds = cached_images(split, size, channels, mode)
            ds = shuffled_epochs(ds, len(split), config.seed, epochs, batch_size, even_batches)
        spec = augment_spec(config) if config.augment_on == "host" else None  # else the model's DeviceAugment
        augment = Augment(spec) if spec else None
        targets = target_spec(config, classes)

        def to_float(x, y, seed):
            x = tf.cast(x, tf.float32)
            if crops_on(config):
                x = random_resized_crops(x, seed, config.crop_min_area, config.image_size)
            if targets:
                x, y = mix_batch(x, y, seed, targets)
            return (augment(x, seed=seed) if augment else x), y

        ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = cached_images(split, size, channels, mode)
        if even_batches:
            ds = padded(ds, len(split), batch_size, (size, size, channels)).batch(batch_size, drop_remainder=True)
        else:
            ds = ds.batch(batch_size)
        ds = ds.map(lambda x, *rest: (tf.cast(x, tf.float32), *rest), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def shard_epochs(shards, seed: int, epochs: tuple[int, int], batch_size: int, drop_remainder: bool, buffer: int):
    """Like shuffled_epochs, in bounded memory: each epoch draws from every shard at random (a new order of
    the whole split at shard granularity), through a shuffle buffer of `buffer` images."""
    sizes = [float(shard.cardinality()) for shard in shards]
    weights = [size / sum(sizes) for size in sizes]

    def epoch(index):
        mixed = tf.data.Dataset.sample_from_datasets(shards, weights, seed=index + seed * 100_003,
                                                     stop_on_empty_dataset=False)  # fmt: skip
        order = mixed.shuffle(buffer, seed=index + seed * 100_003 + 1, reshuffle_each_iteration=False)
        return with_augment_seeds(order.batch(batch_size, drop_remainder=drop_remainder), seed, index)

    return epoch_stream(epoch, epochs)


def epoch_stream(epoch, epochs: tuple[int, int]) -> tf.data.Dataset:
    """The epochs [first, last) one after another. Each epoch's seeds are Python integers: TensorFlow's
    seed check compares (global seed, op seed) with (0, 0) in Python, which fails for a tensor op seed
    when the run's seed is 0."""
    return functools.reduce(tf.data.Dataset.concatenate, [epoch(index) for index in range(*epochs)])


def with_augment_seeds(batches: tf.data.Dataset, seed: int, epoch) -> tf.data.Dataset:
    """(images, labels, seed): each batch's augmentation seed is (run seed, epoch and step)."""
    return batches.enumerate().map(
        lambda step, batch: (*batch, tf.stack([tf.constant(seed, tf.int64), epoch * 1_000_003 + step]))
    )


def padded(ds: tf.data.Dataset, size: int, batch_size: int, shape: tuple) -> tf.data.Dataset:
    """(image, label, weight 1) for each image, then (black image, 0, weight 0) up to a full last batch."""
    filler = tf.data.Dataset.from_tensors((tf.zeros(shape, tf.uint8), tf.constant(0, tf.int32), 0.0))
    return ds.map(lambda x, y: (x, y, 1.0)).concatenate(filler.repeat(-size % batch_size))


def shuffled_epochs(
    cached: tf.data.Dataset, size: int, seed: int, epochs: tuple[int, int], batch_size: int, drop_remainder: bool
) -> tf.data.Dataset:
    """(images, labels, augmentation seed) batches. No reshuffle state: tf.distribute copies the pipeline
    and loses such state (the order then differs from one device's); a seed per epoch is part of the
    pipeline itself, and each batch's augmentation seed is (run seed, epoch and step), so that a resumed
    run draws what it would have drawn uninterrupted."""

    def epoch(index):
        order = cached.shuffle(size, seed=index + seed * 100_003, reshuffle_each_iteration=False)
        return with_augment_seeds(order.batch(batch_size, drop_remainder=drop_remainder), seed, index)

    return epoch_stream(epoch, epochs)


def steps_per_epoch(images: int, batch_size: int, even_batches: bool = False) -> int:
    return images // batch_size if even_batches else math.ceil(images / batch_size)
