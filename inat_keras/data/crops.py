"""Random-resized crops of training images, taken from a decode larger than the model's input.

The cache holds images squashed to their decode size; cropping an image squashed to `image_size` and
enlarging the crop would only magnify pixels. With crops on, the training split is decoded and cached at
`crop_decode_scale` x `image_size` (the cache key and the memory budget see that size), and each batch is
cropped and resized to `image_size` in the tf.data batch map: one native bilinear kernel per batch
(`tf.image.crop_and_resize`), before mixing and augmentation. Not on the device: the model's input, and so
every saved model, stays `image_size`, and the host sends image_size pixels per image, not the larger decode.
Validation and test images keep the plain squash to `image_size`. Drawn as torchvision's
RandomResizedCrop: an area from [crop_min_area, 1] of the image and an aspect ratio log-uniform in
[3/4, 4/3], redrawn up to 10 times until the crop fits, else the whole image.
"""

from __future__ import annotations

import math

import tensorflow as tf

from ..config import TrainConfig
from .mixing import stream_seed

ASPECT_RATIOS = (3 / 4, 4 / 3)
TRIES = 10
STREAM = 0x63726F70  # folded into the batch seed: the crop draws are not the augmentation's or the mixing's


def crops_on(config: TrainConfig) -> bool:
    """Crops are training augmentation: off with `augment: false`."""
    return bool(config.augment and config.crop_min_area)


def train_image_size(config: TrainConfig) -> int:
    """The side at which the training split is decoded and cached."""
    return round(config.image_size * config.crop_decode_scale) if crops_on(config) else config.image_size


def decode_size(config: TrainConfig, training: bool) -> int:
    """The side a split is decoded and cached at: the one place that the pre-decode and the pipeline agree on
    (another side would be another cache key, and a second decode)."""
    return train_image_size(config) if training else config.image_size


def crop_boxes(batch, min_area: float, seed) -> tf.Tensor:
    """(batch, 4) boxes [y0, x0, y1, x1] in fractions of the image."""
    area_seed, ratio_seed, place_seed = tf.unstack(tf.random.experimental.stateless_split(stream_seed(seed, STREAM), 3))
    area = tf.random.stateless_uniform([batch, TRIES], area_seed, min_area, 1.0)
    low, high = (math.log(r) for r in ASPECT_RATIOS)
    ratio = tf.exp(tf.random.stateless_uniform([batch, TRIES], ratio_seed, low, high))  # width / height
    width, height = tf.sqrt(area * ratio), tf.sqrt(area / ratio)
    fits = (width <= 1.0) & (height <= 1.0)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    found = tf.reduce_any(fits, axis=1)
    width = tf.where(found, tf.gather(width, first, batch_dims=1), 1.0)
    height = tf.where(found, tf.gather(height, first, batch_dims=1), 1.0)
    corner = tf.random.stateless_uniform([batch, 2], place_seed) * tf.stack([1.0 - height, 1.0 - width], axis=1)
    return tf.concat([corner, corner + tf.stack([height, width], axis=1)], axis=1)


def random_resized_crops(images: tf.Tensor, seed, min_area: float, size: int) -> tf.Tensor:
    """A batch of decoded images (float pixels) -> one random crop of each, resized to size x size."""
    batch = tf.shape(images)[0]
    boxes = crop_boxes(batch, min_area, seed)
    return tf.image.crop_and_resize(images, boxes, tf.range(batch), (size, size), method="bilinear")
