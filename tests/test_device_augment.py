"""Augmentation inside the compiled training step: the same transforms as on the host, in training only,
seeded by a step counter that the model saves, and absent from what a checkpoint predicts."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import ks_2samp

from inat_keras.config import ScratchConfig, build_config
from inat_keras.data.augment import Augment, AugmentSpec, DeviceAugment
from inat_keras.training.kinds import KINDS


def on_device(spec: AugmentSpec, images: np.ndarray, calls: int = 1, seed: int = 3) -> np.ndarray:
    """`calls` training steps of the layer inside a model (the compiled step's code path)."""
    inputs = keras.Input(images.shape[1:])
    model = keras.Model(inputs, DeviceAugment(spec, seed)(inputs))
    return np.concatenate([keras.ops.convert_to_numpy(model(images, training=True)) for _ in range(calls)])


def on_host(spec: AugmentSpec, images: np.ndarray, calls: int = 1) -> np.ndarray:
    layer = Augment(spec)
    seeds = tf.data.Dataset.range(calls).map(lambda step: tf.stack([tf.constant(3, tf.int64), step]))
    ds = seeds.map(lambda seed: layer(tf.constant(images), seed=seed))
    return np.concatenate([x.numpy() for x in ds])


def dot_angles_and_radii(batch: np.ndarray, centre: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.unravel_index(batch.max(-1).reshape(len(batch), -1).argmax(axis=1), batch.shape[1:3])
    return np.degrees(np.arctan2(ys - centre, xs - centre)), np.hypot(ys - centre, xs - centre)


def test_device_augmentation_acts_in_training_only():
    images = np.random.default_rng(0).uniform(0, 255, (4, 8, 10, 3)).astype("float32")
    inputs = keras.Input((8, 10, 3))
    model = keras.Model(inputs, DeviceAugment(AugmentSpec(horizontal_flip=1.0), 0)(inputs))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(images, training=True)), images[:, :, ::-1])
    np.testing.assert_array_equal(model.predict(images, verbose=0), images)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(images)), images)


def test_device_and_host_draw_the_same_distribution_of_transforms():
    dot = np.zeros((100, 33, 33, 3), np.float32)
    dot[:, 16, 28] = 255  # 12 pixels right of the centre
    rotation = AugmentSpec(rotation=20 / 360)
    for batch in (on_device(rotation, dot, calls=3), on_host(rotation, dot, calls=3)):
        angles, _ = dot_angles_and_radii(batch, 16)
        assert np.abs(angles).max() <= 20 + 5 and np.abs(angles).max() > 14  # within +-20 degrees, and spread
    device_angles = dot_angles_and_radii(on_device(rotation, dot, calls=3), 16)[0]
    host_angles = dot_angles_and_radii(on_host(rotation, dot, calls=3), 16)[0]
    assert ks_2samp(device_angles, host_angles).pvalue > 1e-3

    zoom = AugmentSpec(zoom=0.3)
    radii = [dot_angles_and_radii(batch, 16)[1] / 12 for batch in (on_device(zoom, dot, 3), on_host(zoom, dot, 3))]
    for ratio in radii:
        assert ratio.min() >= 0.7 - 0.1 and ratio.max() <= 1.3 + 0.1 and ratio.std() > 0.1
    assert ks_2samp(*radii).pvalue > 1e-3

    half = np.zeros((300, 8, 8, 3), np.float32)
    half[:, :, :4] = 255
    for batch in (on_device(AugmentSpec(horizontal_flip=0.5), half), on_host(AugmentSpec(horizontal_flip=0.5), half)):
        flipped = batch[:, :, 4:].mean(axis=(1, 2, 3)) > 128
        assert np.all(batch[flipped] == half[0, :, ::-1]) and 0.4 < flipped.mean() < 0.6


def test_device_draws_follow_the_saved_step_counter():
    spec = AugmentSpec(rotation=0.1, jitter=0.2)
    images = np.random.default_rng(1).uniform(0, 255, (6, 12, 12, 3)).astype("float32")
    layer, twin = DeviceAugment(spec, 5), DeviceAugment(spec, 5)
    first = keras.ops.convert_to_numpy(layer(images, training=True))
    second = keras.ops.convert_to_numpy(layer(images, training=True))
    assert not np.allclose(first, second)  # a new draw every step
    assert int(keras.ops.convert_to_numpy(layer.steps)) == 2
    twin.seed_generator.state.assign(keras.ops.convert_to_numpy(layer.seed_generator.state) - [0, 1])  # restored
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(twin(images, training=True)), second)
    other_seed = keras.ops.convert_to_numpy(DeviceAugment(spec, 6)(images, training=True))
    assert not np.allclose(other_seed, first)


def test_device_augmentation_compiles_into_the_training_step():
    """XLA on both backends (TensorFlow's affine-transform kernel has none, which the gather sampler avoids)."""
    spec = AugmentSpec(horizontal_flip=0.5, vertical_flip=0.5, rotation=0.05, zoom=0.1, jitter=0.2, hue=0.1,
                       blur_probability=0.5)  # fmt: skip
    inputs = keras.Input((16, 16, 3))
    x = DeviceAugment(spec, 0)(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(x)))
    model = keras.Model(inputs, outputs)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    images = np.random.default_rng(2).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    losses = [model.train_on_batch(images, np.arange(8) % 3) for _ in range(3)]
    assert all(np.isfinite(losses))
    assert int(keras.ops.convert_to_numpy(model.get_layer("augment").steps)) == 3


def test_a_checkpoint_predicts_as_the_same_weights_without_augmentation(image_folder, tmp_path, tiny_cnn_options):
    values = {**tiny_cnn_options, "data_dir": str(image_folder), "output_dir": str(tmp_path / "run"), "rotation": 0.1}
    config = build_config(ScratchConfig, values)
    run_dir, metrics = KINDS["scratch"].train(config)
    saved = keras.models.load_model(run_dir / "model.keras")
    steps_per_epoch = -(-metrics["train_images"] // config.batch_size)
    steps = int(keras.ops.convert_to_numpy(saved.get_layer("augment").steps))
    assert steps in (steps_per_epoch, 2 * steps_per_epoch)  # the counter as of the kept epoch
    plain = KINDS["scratch"].build_model(build_config(ScratchConfig, {**values, "augment": False}), 3)
    assert "augment" not in [layer.name for layer in plain.layers]
    for layer in plain.layers:
        layer.set_weights(saved.get_layer(layer.name).get_weights())
    images = np.random.default_rng(3).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(saved.predict(images, verbose=0), plain.predict(images, verbose=0))


@pytest.mark.parametrize("place", ["host", "device"])
def test_the_pipeline_augments_only_where_the_config_says(image_folder, tiny_cnn_options, place):
    from inat_keras.data.pipeline import make_dataset
    from inat_keras.data.splits import load_splits

    config = build_config(ScratchConfig, {**tiny_cnn_options, "augment_on": place, "rotation": 0.2})
    train = load_splits(image_folder, 0.3, 0).train
    plain = build_config(ScratchConfig, {**tiny_cnn_options, "augment": False})
    fed = np.concatenate([x.numpy() for x, _ in make_dataset(train, config, training=True)])
    raw = np.concatenate([x.numpy() for x, _ in make_dataset(train, plain, training=True)])
    assert np.array_equal(np.sort(fed.ravel()), np.sort(raw.ravel())) == (place == "device")


def test_a_resumed_run_continues_the_device_draws(image_folder, tmp_path, tiny_cnn_options, interrupt):
    """The counter comes back from the backup: epoch 2 after a resume draws what it would have drawn."""
    import dataclasses

    values = {**tiny_cnn_options, "data_dir": str(image_folder), "val_fraction": 0.0, "rotation": 0.1, "batch_size": 10}
    whole, metrics = KINDS["scratch"].train(build_config(ScratchConfig, {**values, "output_dir": str(tmp_path / "a")}))
    resumed = build_config(ScratchConfig, {**values, "output_dir": str(tmp_path / "b")})
    with pytest.raises(KeyboardInterrupt):
        dataclasses.replace(KINDS["scratch"], callbacks=lambda model: [interrupt(1)]).train(resumed)
    KINDS["scratch"].train(resumed)
    counters = [keras.models.load_model(d / "model.keras").get_layer("augment").steps for d in (whole, tmp_path / "b")]
    steps_per_epoch = -(-metrics["train_images"] // 10)
    assert [int(keras.ops.convert_to_numpy(c)) for c in counters] == [2 * steps_per_epoch] * 2
