"""Training-time augmentation: one Keras data layer whose code runs in tf.data on the host (`Augment`) or
as the model's first layer, inside the compiled training step on the accelerator (`DeviceAugment`, the
default: on a 2-4 core notebook host, augmenting in tf.data caps training far below what a GPU takes).
`DataLayer` switches to TensorFlow ops inside tf.data and runs the active backend's ops elsewhere.

Every random draw takes a stateless seed made of the run's seed and the batch's position in training:
(epoch, step) from the pipeline on the host; on the device a step counter that the model saves with every
backup. A resumed run so continues with new draws instead of replaying its first
epoch's. Colour factors mean "up to j either way" around no change,
as torchvision's ColorJitter: brightness, contrast and saturation multiply by a factor drawn from
[1 - j, 1 + j], hue turns by up to h of the circle. Pixels stay in 0..255 (augmentation runs before
normalisation, which is the model's first layer).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import asdict, dataclass

import keras

from ..config import TrainConfig
from ..keras_compat import DataLayer
from .randaugment import rand_augment

BLUR_SIGMA = (0.1, 2.0)  # torchvision GaussianBlur's default sigma range


@dataclass(frozen=True)
class AugmentSpec:
    """Probabilities per image, and ranges; zero turns a transform off."""

    horizontal_flip: float = 0.0
    vertical_flip: float = 0.0
    rotation: float = 0.0  # up to this fraction of a full turn, either way
    zoom: float = 0.0  # scale by up to this fraction, in or out
    jitter: float = 0.0  # brightness, contrast and saturation, up to this much either way
    hue: float = 0.0  # up to this fraction of the hue circle, either way
    jitter_probability: float = 1.0
    blur_probability: float = 0.0  # a 3x3 Gaussian blur, sigma drawn from BLUR_SIGMA
    randaugment_ops: int = 0  # RandAugment's N operations per image (data.randaugment); 0 = off
    randaugment_magnitude: float = 0.0  # its M, 0..30


# The study's transforms (partA/data_utils.py), without its two bugs: applied before normalisation, and
# to the training split only.
STUDY = AugmentSpec(horizontal_flip=0.05, vertical_flip=0.05, rotation=20 / 360, jitter=0.2, hue=0.2,
                    jitter_probability=0.05, blur_probability=0.05)  # fmt: skip


def augment_spec(config: TrainConfig) -> AugmentSpec | None:
    """The config's preset; None when augmentation is off or has nothing to do."""
    if not config.augment:
        return None
    if config.augmentation == "study":
        spec = STUDY
    elif config.augmentation == "randaugment":  # with horizontal flips, as torchvision's and timm's recipes
        spec = AugmentSpec(horizontal_flip=0.5, randaugment_ops=config.randaugment_ops,
                           randaugment_magnitude=config.randaugment_magnitude)  # fmt: skip
    else:
        spec = AugmentSpec(horizontal_flip=0.5 if config.flip else 0.0, rotation=config.rotation, zoom=config.zoom,
                           jitter=config.color_jitter)  # fmt: skip
    if config.image_channels() == 1:
        spec = dataclasses.replace(spec, jitter=0.0, hue=0.0, jitter_probability=1.0)  # grey: no colour jitter (RandAugment copes)
    return spec if spec != AugmentSpec() else None


def device_augment(config: TrainConfig) -> DeviceAugment | None:
    """The layer that augments inside the model, when the config puts augmentation on the device."""
    spec = augment_spec(config)
    return DeviceAugment(spec, config.seed) if spec and config.augment_on == "device" else None


def reflect(coordinate, size, np, b):
    """Input coordinates mirrored about the outer pixel edges (-0.5 and size - 0.5), as Keras's "reflect" fill."""
    size = b.cast(size, "float32")
    t = np.mod(coordinate + 0.5, 2 * size)
    return np.clip(np.where(t >= size, 2 * size - t, t) - 0.5, 0, size - 1)


class Augment(DataLayer):
    """Batched augmentation of (batch, height, width, channels) pixels in 0..255, one seed per call."""

    def __init__(self, spec: AugmentSpec, **kwargs):
        super().__init__(**{"dtype": "float32", **kwargs})  # pixels in float32 whatever the model's policy
        self.spec = spec

    def call(self, images, seed):
        b, np, spec = self.backend, self.backend.numpy, self.spec
        batch = b.shape(images)[0]
        seeds = itertools.count()

        def uniform(low=0.0, high=1.0):
            return self.stateless_uniform((batch,), low, high, np.add(seed, [0, 7919 * next(seeds)]))

        def chosen(probability):
            return np.reshape(np.less(uniform(), probability), (-1, 1, 1, 1))

        if spec.horizontal_flip:
            images = np.where(chosen(spec.horizontal_flip), np.flip(images, axis=2), images)
        if spec.vertical_flip:
            images = np.where(chosen(spec.vertical_flip), np.flip(images, axis=1), images)
        if spec.rotation or spec.zoom:
            angle = uniform(-2 * math.pi * spec.rotation, 2 * math.pi * spec.rotation)
            scale = uniform(1 - spec.zoom, 1 + spec.zoom)
            images = self.rotate_and_zoom(images, angle, scale)
        if spec.jitter or spec.hue:
            images = np.where(chosen(spec.jitter_probability), self.jitter_colours(images, uniform), images)
        if spec.blur_probability:
            images = np.where(chosen(spec.blur_probability), self.blur(images, uniform(*BLUR_SIGMA)), images)
        if spec.randaugment_ops:
            images = rand_augment(self, images, uniform, spec.randaugment_ops, spec.randaugment_magnitude)
        return images

    def stateless_uniform(self, shape, low, high, seed):
        """Uniform draws from a seed tensor (Keras's own random ops take integers or SeedGenerators only)."""
        if self.backend.name == "tensorflow":
            import tensorflow as tf

            seed = tf.cast(tf.math.floormod(tf.cast(seed, tf.int64), 2**31 - 1), tf.int32)
            return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)
        if self.backend.name == "jax":
            import jax
            import jax.numpy as jnp

            key = jnp.mod(jnp.asarray(seed), 2**31 - 1).astype(jnp.uint32)
            return jax.random.uniform(key, shape, minval=low, maxval=high)
        raise ValueError(f"augmentation runs in tf.data or under the jax backend, not {self.backend.name}")

    def rotate_and_zoom(self, images, angle, scale):
        """One affine map per image about its centre, sampled bilinearly, reflecting at the borders.

        Written with gathers rather than `keras.ops.image.affine_transform`, whose TensorFlow kernel has no
        XLA form: this one compiles inside the training step on both backends.
        """
        b, np = self.backend, self.backend.numpy
        shape = b.shape(images)
        height, width = shape[1], shape[2]
        cos, sin = np.cos(angle) / scale, np.sin(angle) / scale  # output -> input: rotate back, unzoom
        cy, cx = (b.cast(height, "float32") - 1) / 2, (b.cast(width, "float32") - 1) / 2
        ys, xs = np.meshgrid(np.arange(height, dtype="float32") - cy, np.arange(width, dtype="float32") - cx, indexing="ij")
        ys, xs = np.reshape(ys, (1, -1)), np.reshape(xs, (1, -1))
        cos, sin = np.reshape(cos, (-1, 1)), np.reshape(sin, (-1, 1))
        x_in = reflect(cos * xs - sin * ys + cx, width, np, b)
        y_in = reflect(sin * xs + cos * ys + cy, height, np, b)
        return self.sample(images, x_in, y_in)

    def sample(self, images, x_in, y_in):
        """Bilinear samples at (batch, height * width) input coordinates inside the image: one per output pixel."""
        b, np = self.backend, self.backend.numpy
        shape = b.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        x0, y0 = np.floor(x_in), np.floor(y_in)
        fx, fy = np.expand_dims(x_in - x0, -1), np.expand_dims(y_in - y0, -1)
        x0, y0 = b.cast(x0, "int32"), b.cast(y0, "int32")
        x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
        flat = np.reshape(images, (batch, -1, shape[3]))

        def at(y, x):
            return np.take_along_axis(flat, np.expand_dims(y * width + x, -1), axis=1)

        top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
        bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
        return np.reshape(top * (1 - fy) + bottom * fy, shape)

    def jitter_colours(self, images, uniform):
        b, np, spec = self.backend, self.backend.numpy, self.spec

        def factor(j):
            return np.reshape(uniform(1 - j, 1 + j), (-1, 1, 1, 1))

        def gray(x):
            return np.sum(x * np.array([0.299, 0.587, 0.114], dtype=x.dtype), axis=-1, keepdims=True)

        if spec.jitter:
            images = np.clip(images * factor(spec.jitter), 0, 255)
            mean = np.mean(gray(images), axis=(1, 2, 3), keepdims=True)
            images = np.clip((images - mean) * factor(spec.jitter) + mean, 0, 255)
            grey = gray(images)
            images = np.clip((images - grey) * factor(spec.jitter) + grey, 0, 255)
        if spec.hue:
            hsv = b.image.rgb_to_hsv(images / 255.0)
            turn = np.reshape(uniform(-spec.hue, spec.hue), (-1, 1, 1))
            hue = np.mod(hsv[..., 0] + turn, 1.0)
            images = b.image.hsv_to_rgb(np.stack([hue, hsv[..., 1], hsv[..., 2]], axis=-1)) * 255.0
        return images

    def blur(self, images, sigma):
        """3x3 Gaussian, separable, reflecting at the borders (torchvision's GaussianBlur)."""
        np = self.backend.numpy
        side = np.exp(-1.0 / (2.0 * np.reshape(sigma, (-1, 1, 1, 1)) ** 2))
        total = 1.0 + 2.0 * side
        centre, side = 1.0 / total, side / total
        padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        rows = side * padded[:, :-2] + centre * padded[:, 1:-1] + side * padded[:, 2:]
        return side * rows[:, :, :-2] + centre * rows[:, :, 1:-1] + side * rows[:, :, 2:]

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="inat_keras")
class DeviceAugment(Augment):
    """Augment as a model layer: active in training calls only, so evaluate, predict and a saved model
    see the identity. Each training step draws with the seed (run seed, step): a Keras SeedGenerator's
    state, which the model saves and restores like its weights but does not count as parameters. Under
    tf.distribute each replica adds its index, so that replicas draw different transforms."""

    def __init__(self, spec: AugmentSpec | dict, seed: int, **kwargs):
        super().__init__(AugmentSpec(**spec) if isinstance(spec, dict) else spec, **{"name": "augment", **kwargs})
        self.seed = int(seed) % (2**31 - 1)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="augment_seed")

    @property
    def steps(self):
        """Training steps drawn so far."""
        return self.seed_generator.state[1]

    def call(self, images, training=None):
        if not training:
            return images
        seed = self.backend.cast(self.seed_generator.next(), "int32")
        return super().call(images, self.backend.numpy.add(seed, self.backend.numpy.stack([0, self.replica_offset()])))

    def replica_offset(self):
        if self.backend.name != "tensorflow":
            return 0  # under JAX one compiled step sees the whole global batch
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return 0
        return tf.cast(context.replica_id_in_sync_group, tf.int32) * 1_000_003

    def save_own_variables(self, store):
        """Keras saves no seed-generator state; this one goes into checkpoints and backups, so that a
        resumed run continues the draws."""
        store["0"] = keras.ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store):
        self.seed_generator.state.assign(store["0"][...])

    def get_config(self):
        return {**super().get_config(), "spec": asdict(self.spec), "seed": self.seed}
