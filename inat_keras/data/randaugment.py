"""RandAugment (Cubuk et al., 2020) with torchvision's 14 operations and magnitudes, batched and branch-free,
so that it compiles into the training step (XLA) on both backends and runs in tf.data alike.

Keras's own `RandAugment` layer is built from RandomRotation, RandomShear and RandomTranslation, which set
`supports_jit=False` (inside a model that turns XLA off for the whole step), and draws from a SeedGenerator
rather than the batch's seed; so the operations are written here on the augmentation layer's bilinear sampler
(data.augment.Augment.sample) and its seeded draws. Each of N rounds gives every image one operation drawn
uniformly from OPERATIONS, at magnitude M of 30 as torchvision's bins (a signed one with a random sign).
Every operation is computed for the whole batch and each image keeps its own, so a round costs one resample
and the colour operations. Geometric operations fill uncovered pixels with the ImageNet mean colour (the
project's background colour, which normalisation maps to zero).
"""

from __future__ import annotations

import math

OPERATIONS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
              "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")  # fmt: skip
MAX_SHEAR = 0.3  # shear factor at magnitude 30
MAX_TRANSLATE = 150 / 331  # of the image side
MAX_ROTATE = math.radians(30)
MAX_ENHANCE = 0.9  # brightness, colour, contrast, sharpness factors 1 +- this
FILL = (124.0, 116.0, 104.0)
LUMA = (0.299, 0.587, 0.114)


def rand_augment(layer, images, uniform, ops: int, magnitude: float):
    """`ops` rounds over a batch of pixels in 0..255; `uniform(low, high)` draws one value per image."""
    b, np = layer.backend, layer.backend.numpy
    level = magnitude / 30.0
    for _ in range(ops):
        op = np.minimum(b.cast(np.floor(uniform(0.0, float(len(OPERATIONS)))), "int32"), len(OPERATIONS) - 1)
        signed = np.where(uniform() < 0.5, -level, level)
        images = geometric(layer, images, op, signed)
        images = colour(layer, images, op, signed)
    return images


def is_op(np, op, name: str):
    return np.equal(op, OPERATIONS.index(name))


def grey_of(np, images):
    if images.shape[-1] == 1:
        return images
    return np.sum(images * np.array(LUMA, dtype=images.dtype), axis=-1, keepdims=True)


def geometric(layer, images, op, signed):
    """Shear, translate or rotate about the centre (identity for the other operations)."""
    b, np = layer.backend, layer.backend.numpy
    shape = b.shape(images)
    height, width = b.cast(shape[1], "float32"), b.cast(shape[2], "float32")
    cy, cx = (height - 1) / 2, (width - 1) / 2

    def amount(name, scale):
        return np.reshape(np.where(is_op(np, op, name), signed * scale, 0.0), (-1, 1))

    angle = amount("rotate", MAX_ROTATE)
    shear_x, shear_y = amount("shear_x", MAX_SHEAR), amount("shear_y", MAX_SHEAR)
    tx, ty = amount("translate_x", MAX_TRANSLATE) * width, amount("translate_y", MAX_TRANSLATE) * height
    ys, xs = np.meshgrid(np.arange(shape[1], dtype="float32") - cy, np.arange(shape[2], dtype="float32") - cx, indexing="ij")
    ys, xs = np.reshape(ys, (1, -1)), np.reshape(xs, (1, -1))
    cos, sin = np.cos(angle), np.sin(angle)
    x_in = cos * xs - sin * ys + shear_x * ys - tx + cx  # output -> input; one of the terms moves per image
    y_in = sin * xs + cos * ys + shear_y * xs - ty + cy
    outside = (x_in < 0) | (x_in > width - 1) | (y_in < 0) | (y_in > height - 1)
    sampled = layer.sample(images, np.clip(x_in, 0, width - 1), np.clip(y_in, 0, height - 1))
    channels = images.shape[-1]
    fill = FILL if channels == 3 else (sum(c * w for c, w in zip(FILL, LUMA)),)
    outside = np.reshape(outside, (shape[0], shape[1], shape[2], 1))
    return np.where(outside, np.array(fill, dtype="float32"), sampled)


def colour(layer, images, op, signed):
    """The colour operation of each image (identity for the others), clipped to 0..255."""
    np = layer.backend.numpy
    factor = np.reshape(1.0 + MAX_ENHANCE * signed, (-1, 1, 1, 1))
    level = np.reshape(np.abs(signed), (-1, 1, 1, 1))
    grey = grey_of(np, images)
    mean = np.mean(grey, axis=(1, 2, 3), keepdims=True)
    smooth = smoothed(np, images)
    step = np.power(2.0, np.round(4.0 * level))  # posterize keeps 8 - round(4 * level) bits
    candidates = {
        "brightness": images * factor,
        "color": grey + factor * (images - grey),
        "contrast": mean + factor * (images - mean),
        "sharpness": smooth + factor * (images - smooth),
        "posterize": np.floor(images / step) * step,
        "solarize": np.where(images >= 255.0 * (1.0 - level), 255.0 - images, images),
        "autocontrast": autocontrast(np, images),
        "equalize": equalize(layer, images),
    }
    for name, value in candidates.items():
        images = np.where(np.reshape(is_op(np, op, name), (-1, 1, 1, 1)), np.clip(value, 0.0, 255.0), images)
    return images


def smoothed(np, images):
    """PIL's SMOOTH kernel (1 1 1 / 1 5 1 / 1 1 1, over 13), the degenerate image of the sharpness operation."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    box = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]
    return (box + 4.0 * images) / 13.0


def autocontrast(np, images):
    """Each channel stretched to 0..255 (unchanged where it is flat)."""
    low = np.min(images, axis=(1, 2), keepdims=True)
    high = np.max(images, axis=(1, 2), keepdims=True)
    flat = high <= low
    scale = np.where(flat, 1.0, 255.0 / np.where(flat, 1.0, high - low))
    return np.where(flat, images, (images - low) * scale)


def equalize(layer, images):
    """Histogram equalisation per channel, torchvision's formula: a lookup table from the cumulative
    histogram in steps of (pixels - count of the top value) / 255; unchanged where that step is 0."""
    b, np = layer.backend, layer.backend.numpy
    shape = b.shape(images)
    batch, channels = shape[0], images.shape[-1]
    values = b.cast(np.clip(np.round(images), 0, 255), "int32")
    rows = np.transpose(np.reshape(values, (batch, -1, channels)), (0, 2, 1))  # (batch, channels, pixels)
    pixels = b.cast(b.shape(rows)[2], "float32")
    ids = rows + 256 * np.reshape(np.arange(batch * channels, dtype="int32"), (batch, channels, 1))
    hist = b.math.segment_sum(np.ones_like(np.reshape(ids, (-1,)), dtype="float32"), np.reshape(ids, (-1,)),
                              num_segments=batch * channels * 256)  # fmt: skip
    hist = np.reshape(hist, (batch, channels, 256))
    top = np.take_along_axis(hist, np.max(rows, axis=-1, keepdims=True), axis=-1)
    step = np.floor((pixels - top) / 255.0)
    lut = np.floor((np.cumsum(hist, axis=-1) + np.floor(step / 2)) / np.maximum(step, 1.0))
    lut = np.clip(np.concatenate([np.zeros_like(lut[..., :1]), lut[..., :-1]], axis=-1), 0.0, 255.0)
    out = np.where(step > 0, np.take_along_axis(lut, rows, axis=-1), b.cast(rows, "float32"))
    return np.reshape(np.transpose(out, (0, 2, 1)), b.shape(images))
