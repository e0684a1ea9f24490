"""Decoded images to batches: decode (JPEGs at a reduced ratio), cache, shuffle per epoch, augment, batch.

The same pipeline feeds both backends. Images leave it as float32 pixels in 0..255; normalisation is
the model's first layer, so augmentation always runs before it and saved models accept raw pixels.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from ..config import TrainConfig
from .augment import augmenter
from .cache import cache_decoded
from .splits import Split

JPEG_RATIOS = (1, 2, 4, 8)  # the scalings libjpeg decodes to directly


def jpeg_ratio_index(contents: tf.Tensor, image_size: int) -> tf.Tensor:
    """Index into JPEG_RATIOS of the largest ratio that still decodes both sides to >= image_size.

    Decoding at 1/r costs about 1/r^2 of a full decode; the antialiased resize that follows sees
    nearly the same picture (libjpeg's scaled IDCT averages the pixels it drops).
    """
    height, width = tf.unstack(tf.image.extract_jpeg_shape(contents)[:2])
    short = tf.minimum(height, width)
    return tf.add_n([tf.cast(short // r >= image_size, tf.int32) for r in JPEG_RATIOS[1:]])


def decode_rgb(contents: tf.Tensor, image_size: int) -> tf.Tensor:
    """JPEGs at the reduced ratio their size allows, any other format (PNG, GIF, BMP) in full."""

    def jpeg():
        branches = [lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r) for r in JPEG_RATIOS]
        return tf.switch_case(jpeg_ratio_index(contents, image_size), branches)

    def other():
        return tf.io.decode_image(contents, channels=3, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(contents), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def decode_resize(path: tf.Tensor, image_size: int, channels: int) -> tf.Tensor:
    """Any JPEG/PNG (grayscale, CMYK, alpha) -> RGB or gray, squashed to image_size, uint8."""
    image = decode_rgb(tf.io.read_file(path), image_size)
    if channels == 1:
        image = tf.image.rgb_to_grayscale(image)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def make_dataset(
    split: Split,
    config: TrainConfig,
    training: bool,
    channels: int | None = None,
    cache: str = "auto",
    batch_size: int | None = None,
    even_batches: bool = False,
    epochs: tuple[int, int] = (0, 1),
) -> tf.data.Dataset:
    """Decode in parallel and cache the resized images (`cache`: auto, memory or disk), so that later
    epochs decode nothing; then shuffle and augment (training only, fresh every epoch), batch, prefetch.

    Training yields the epochs [first, last) as one stream (fit needs `steps_per_epoch`); each epoch is
    shuffled with a seed of its own, so the order is the same on any device count and after a resume.
    `even_batches` (data parallelism splits every batch evenly over devices and processes): training
    drops a last partial batch, a different one each epoch; evaluation pads it to a full batch with
    zero-weight images, so that each real image still counts exactly once.
    """
    batch_size = batch_size or config.batch_size
    channels = channels or config.image_channels()
    ds = tf.data.Dataset.from_tensor_slices((split.paths, np.asarray(split.labels, dtype="int32")))
    size = config.image_size
    ds = ds.map(lambda p, y: (decode_resize(p, size, channels), y), num_parallel_calls=tf.data.AUTOTUNE)
    ds = cache_decoded(ds, split, size, channels, cache)
    if training:
        ds = shuffled_epochs(ds, len(split), config.seed, epochs, batch_size, drop_remainder=even_batches)
    elif even_batches:
        ds = padded(ds, len(split), batch_size, (size, size, channels)).batch(batch_size, drop_remainder=True)
    else:
        ds = ds.batch(batch_size)
    ds = ds.map(lambda x, *rest: (tf.cast(x, tf.float32), *rest), num_parallel_calls=tf.data.AUTOTUNE)
    augment = augmenter(config) if training else None
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def padded(ds: tf.data.Dataset, size: int, batch_size: int, shape: tuple) -> tf.data.Dataset:
    """(image, label, weight 1) for each image, then (black image, 0, weight 0) up to a full last batch."""
    filler = tf.data.Dataset.from_tensors((tf.zeros(shape, tf.uint8), tf.constant(0, tf.int32), 0.0))
    return ds.map(lambda x, y: (x, y, 1.0)).concatenate(filler.repeat(-size % batch_size))


def shuffled_epochs(
    cached: tf.data.Dataset, size: int, seed: int, epochs: tuple[int, int], batch_size: int, drop_remainder: bool
) -> tf.data.Dataset:
    """No reshuffle state: tf.distribute copies the pipeline and loses such state (the order then
    differs from one device's); a seed per epoch is part of the pipeline itself."""

    def epoch(index):
        order = cached.shuffle(size, seed=index + seed * 100_003, reshuffle_each_iteration=False)
        return order.batch(batch_size, drop_remainder=drop_remainder)

    return tf.data.Dataset.range(*epochs).flat_map(epoch)


def steps_per_epoch(images: int, batch_size: int, even_batches: bool = False) -> int:
    return images // batch_size if even_batches else math.ceil(images / batch_size)
