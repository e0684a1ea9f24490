"""Random-resized crops: each covers between crop_min_area and all of the image at torchvision's aspect
ratios, and comes from a decode larger than the model's input (detail that the plain squash loses)."""

import numpy as np
import tensorflow as tf
from PIL import Image

from inat_keras.config import ScratchConfig, build_config
from inat_keras.data import cache
from inat_keras.data.crops import random_resized_crops, train_image_size
from inat_keras.data.pipeline import make_dataset
from inat_keras.data.splits import load_splits


def test_crops_cover_between_the_minimum_area_and_the_whole_image():
    side = 41
    ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    coordinates = np.stack([xs, ys, np.zeros_like(xs)], -1).astype("float32")  # each pixel holds its (x, y)
    batch = np.broadcast_to(coordinates, (400, side, side, 3))
    crops = random_resized_crops(tf.constant(batch), tf.constant([5, 1], tf.int64), 0.1, 16).numpy()
    width = (crops[..., 0].max(axis=(1, 2)) - crops[..., 0].min(axis=(1, 2))) / (side - 1)
    height = (crops[..., 1].max(axis=(1, 2)) - crops[..., 1].min(axis=(1, 2))) / (side - 1)
    area, aspect = width * height, width / height
    assert area.min() >= 0.1 - 1e-4 and area.max() <= 1 + 1e-4
    assert area.min() < 0.2 and area.max() > 0.8  # the whole range is drawn
    assert aspect.min() >= 3 / 4 - 1e-4 and aspect.max() <= 4 / 3 + 1e-4 and aspect.std() > 0.1
    again, other = (random_resized_crops(tf.constant(batch), tf.constant(s, tf.int64), 0.1, 16).numpy() for s in ([5, 1], [5, 2]))
    np.testing.assert_array_equal(again, crops)  # seeded by the batch's (run seed, step)
    assert not np.allclose(other, crops)


def stripes_folder(root, size=64):
    """Vertical 1-pixel stripes: detail that a squash to half the size averages away to flat grey."""
    stripes = np.zeros((size, size, 3), np.uint8)
    stripes[:, ::2] = 255
    stripes[..., 1] //= 2  # coloured, not grey
    for split, count in (("train", 4), ("val", 2)):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(stripes).save(root / split / name / f"{i}.png")
    return root


def test_crops_come_from_the_larger_decode_and_evaluation_keeps_the_plain_squash(tmp_path, monkeypatch, tiny_cnn_options):
    folder = stripes_folder(tmp_path / "stripes")
    values = {**tiny_cnn_options, "crop_min_area": 0.2, "crop_decode_scale": 2.0, "val_fraction": 0.0, "batch_size": 4}
    config = build_config(ScratchConfig, values)
    assert train_image_size(config) == 64
    # the memory budget sees the larger decode: 8 training images at 64x64 do not fit, the test images at 32 do
    monkeypatch.setattr(cache, "available_memory", lambda: int(8 * 48 * 48 * 3 / cache.MEMORY_FRACTION))
    decoded = cache.CACHE_HOME / "decoded"
    before = set(decoded.iterdir()) if decoded.is_dir() else set()
    splits = load_splits(folder, 0.0, 0, config)
    assert [d.name.split("-")[0] for d in set(decoded.iterdir()) - before] == ["64x64x3"]  # train on disk, test in memory
    train = np.concatenate([x.numpy() for x, _ in make_dataset(splits.train, config, training=True, classes=2)])
    test = np.concatenate([x.numpy() for x, _ in make_dataset(splits.test, config, training=False)])
    assert train.shape[1:] == test.shape[1:] == (32, 32, 3)
    assert test[..., 0].std(axis=(1, 2)).max() < 5  # the plain squash: the stripes are gone
    assert np.median(train[..., 0].std(axis=(1, 2))) > 40  # the crops still show them
    assert np.all(train[..., 1] <= train[..., 0] / 2 + 1)  # colour kept
