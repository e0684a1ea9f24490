"""RandAugment as an augmentation preset: it changes images, keeps colour photos coloured, is seeded, and
compiles into the training step under both backends; its trickiest operation matches torchvision's formula."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from inat_keras.config import ScratchConfig, build_config
from inat_keras.data.augment import Augment, AugmentSpec, DeviceAugment, augment_spec
from inat_keras.data.randaugment import OPERATIONS, colour, equalize, geometric
from inat_keras.errors import ConfigError
from inat_keras.training.kinds import KINDS
from inat_keras.outputs.run_folder import read_history

SPEC = AugmentSpec(randaugment_ops=2, randaugment_magnitude=9)


def colour_photos(count=32, size=24) -> np.ndarray:
    """Saturated colour patches with gradients and noise (grey output would be a bug: FACTS.md)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(60, 230, size)
    images = np.zeros((count, size, size, 3), np.float32)
    for i in range(count):
        hue = i % 3
        images[i, ..., hue] = ramp[None, :]
        images[i, ..., (hue + 1) % 3] = ramp[::-1, None] * 0.3
    return np.clip(images + rng.normal(0, 8, images.shape), 0, 255).astype(np.float32)


def spread(images: np.ndarray) -> np.ndarray:
    """Mean gap between an image's strongest and weakest channel: 0 for grey."""
    return (images.max(-1) - images.min(-1)).mean(axis=(1, 2))


def on_host(spec, images, seeds=((3, 0),)):
    """The batch augmented in tf.data once per (run seed, step)."""
    layer = Augment(spec)
    batches = tf.data.Dataset.from_tensor_slices(tf.constant(seeds, tf.int64)).map(lambda s: layer(tf.constant(images), seed=s))
    return [x.numpy() for x in batches]


def test_randaugment_changes_images_and_keeps_them_coloured():
    images = colour_photos()
    for out in on_host(SPEC, images, seeds=((3, 0), (3, 1))):  # the device runs this code in the step (test below)
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
        changed = np.abs(out - images).mean(axis=(1, 2, 3)) > 2
        assert changed.mean() > 0.6  # most images got an operation that shows (identity and small ones do not)
        ratio = spread(out) / spread(images)
        assert ratio.min() > 0.25 and np.median(ratio) > 0.7


def test_randaugment_is_seeded_by_the_batch():
    first, again, next_step, other_seed = on_host(SPEC, colour_photos(8), seeds=((3, 4), (3, 4), (3, 5), (9, 4)))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, next_step) and not np.allclose(first, other_seed)


def test_randaugment_compiles_into_the_training_step():
    inputs = keras.Input((16, 16, 3))
    x = DeviceAugment(SPEC, 0)(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(x)))
    model = keras.Model(inputs, outputs)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    assert model.jit_compile is True
    images = colour_photos(8, 16)
    losses = [model.train_on_batch(images, np.arange(8) % 3) for _ in range(2)]
    assert all(np.isfinite(losses))


def forced(names: list[str], images: np.ndarray, levels: list[float]) -> np.ndarray:
    """Operation names[i] at signed level levels[i] on image i (the active backend's ops)."""
    layer = Augment(SPEC)
    op = keras.ops.convert_to_tensor(np.array([OPERATIONS.index(n) for n in names], "int32"))
    signed = keras.ops.convert_to_tensor(np.array(levels, "float32"))
    x = geometric(layer, keras.ops.convert_to_tensor(images), op, signed)
    return keras.ops.convert_to_numpy(colour(layer, x, op, signed))


def test_equalize_matches_torchvisions_formula():
    rng = np.random.default_rng(1)
    images = np.clip(rng.gamma(2.0, 20.0, (3, 10, 12, 3)), 0, 255).round().astype(np.float32)
    images[2, ..., 1] = 77  # a flat channel stays as it is

    def reference(channel):
        hist = np.bincount(channel.ravel().astype(int), minlength=256)
        step = (hist.sum() - hist[np.flatnonzero(hist)[-1]]) // 255
        if step == 0:
            return channel
        lut = (np.cumsum(hist) + step // 2) // step
        return np.clip(np.concatenate([[0], lut[:-1]]), 0, 255)[channel.astype(int)]

    expected = np.stack([np.stack([reference(img[..., c]) for c in range(3)], -1) for img in images])
    out = keras.ops.convert_to_numpy(equalize(Augment(SPEC), keras.ops.convert_to_tensor(images)))
    np.testing.assert_array_equal(out, expected)


def test_operations_do_what_their_names_say():
    image = colour_photos(1, 20)[0]
    ops = {"identity": 0.3, "translate_x": 10 / 20 / (150 / 331), "brightness": -0.3, "solarize": 0.5, "posterize": 1.0}
    out = dict(zip(ops, forced(list(ops), np.stack([image] * len(ops)), list(ops.values()))))
    np.testing.assert_array_equal(out["identity"], image)
    np.testing.assert_allclose(out["translate_x"][:, 10:], image[:, :10], atol=1e-3)  # 10 pixels to the right
    np.testing.assert_allclose(out["translate_x"][:, :10], np.broadcast_to([124, 116, 104], (20, 10, 3)))  # filled
    np.testing.assert_allclose(out["brightness"], image * (1 - 0.9 * 0.3), rtol=1e-5)
    np.testing.assert_allclose(out["solarize"], np.where(image >= 127.5, 255 - image, image), rtol=1e-6)
    assert len(np.unique(out["posterize"])) <= 16  # 4 bits


def test_the_preset_is_refused_with_the_other_presets_options_and_vice_versa():
    assert augment_spec(build_config(ScratchConfig, {"augmentation": "randaugment"})) == AugmentSpec(0.5, randaugment_ops=2, randaugment_magnitude=9.0)
    with pytest.raises(ConfigError, match="randaugment_ops"):
        build_config(ScratchConfig, {"randaugment_ops": 3})
    with pytest.raises(ConfigError, match="rotation"):
        build_config(ScratchConfig, {"augmentation": "randaugment", "rotation": 0.2})
    with pytest.raises(ConfigError, match="randaugment_magnitude"):
        build_config(ScratchConfig, {"augmentation": "randaugment", "randaugment_magnitude": 31})


def test_training_with_randaugment_and_crops_has_a_finite_loss(image_folder, tmp_path, tiny_cnn_options):
    """On the device (the default place); the host runs the same layer in tf.data (tests above)."""
    values = {**tiny_cnn_options, "epochs": 1, "data_dir": str(image_folder), "output_dir": str(tmp_path / "run"),
              "augmentation": "randaugment", "crop_min_area": 0.25}  # fmt: skip
    KINDS["scratch"].train(build_config(ScratchConfig, values))
    assert np.isfinite(float(read_history(tmp_path / "run" / "history.csv")[0]["loss"]))
