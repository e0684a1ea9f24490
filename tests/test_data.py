import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inat_keras.config import ScratchConfig, build_config
from inat_keras.data.decode import decode_resize
from inat_keras.data.pipeline import make_dataset, steps_per_epoch
from inat_keras.data.splits import dataset_root, load_splits
from inat_keras.errors import DataError

# backend_independent: finding, splitting, decoding and caching images is tf.data and Python under either backend;
# what Keras layers do in the pipeline (augmentation, seeded shuffles) runs under both.


@pytest.mark.backend_independent
def test_split_is_stratified_disjoint_and_reproducible(tmp_path, make_image_folder, class_names):
    root = make_image_folder(tmp_path, {"train": 20, "val": 3})
    a = load_splits(root, 0.25, seed=1)
    b = load_splits(root, 0.25, seed=1)
    c = load_splits(root, 0.25, seed=2)
    assert a.train.paths == b.train.paths and a.val.paths == b.val.paths
    assert set(a.val.paths) != set(c.val.paths)
    assert not set(a.train.paths) & set(a.val.paths)
    assert len(a.train) + len(a.val) == 20 * len(class_names)
    assert np.bincount(a.val.labels).tolist() == [5, 5, 5]
    assert all("/val/" in p for p in a.test.paths) and len(a.test) == 3 * len(class_names)
    assert not any("/val/" in p for p in a.train.paths + a.val.paths)


@pytest.mark.backend_independent
def test_parent_folder_with_inaturalist_12k_is_found(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "inaturalist_12K", {"train": 2, "val": 1})
    assert dataset_root(tmp_path) == tmp_path / "inaturalist_12K"


@pytest.mark.backend_independent
def test_missing_and_malformed_folders_are_refused(tmp_path, make_image_folder):
    with pytest.raises(DataError, match="not found"):
        dataset_root(tmp_path / "nowhere")
    with pytest.raises(DataError, match="train/ and val/"):
        dataset_root(tmp_path)
    root = make_image_folder(tmp_path / "d", {"train": 2, "val": 1})
    (root / "train" / "emu").mkdir()
    with pytest.raises(DataError, match="emu holds no images"):
        load_splits(root, 0.5, 0)
    (root / "train" / "emu").rmdir()
    (root / "val" / "owl").rename(root / "val" / "ant")
    with pytest.raises(DataError, match=r"only in train/: \['owl'\]; only in val/: \['ant'\]"):
        load_splits(root, 0.5, 0)


@pytest.mark.backend_independent
def test_corrupt_files_are_skipped_and_named(tmp_path, caplog, make_image_folder):
    root = make_image_folder(tmp_path, {"train": 6, "val": 2})
    good = (root / "train" / "cat" / "cat_000.jpg").read_bytes()
    (root / "train" / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "val" / "dog" / "garbage.png").write_bytes(b"not an image at all")
    with caplog.at_level(logging.WARNING):
        splits = load_splits(root, 0.5, 0)
    bad = {p.split("/")[-1] for p, _ in splits.skipped}
    assert bad == {"truncated.jpg", "garbage.png"}
    assert "skipped 2 file(s), unreadable" in caplog.text and "truncated.jpg" in caplog.text and "garbage.png" in caplog.text
    every = splits.train.paths + splits.val.paths + splits.test.paths
    assert not any(p.endswith(("truncated.jpg", "garbage.png")) for p in every)
    assert len(every) == 6 * 3 + 2 * 3


@pytest.mark.backend_independent
@pytest.mark.parametrize("mode, ext", [("L", "jpg"), ("CMYK", "jpg"), ("RGBA", "png"), ("P", "png")])
def test_any_colour_mode_becomes_rgb(tmp_path, mode, ext):
    path = tmp_path / f"x.{ext}"
    Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).convert(mode).save(path)
    image = decode_resize(str(path), 16, 3).numpy()
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8


def _batches(dataset):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(xs), np.concatenate(ys)


def test_augmentation_touches_only_the_training_split(image_folder):
    config = build_config(ScratchConfig, {"image_size": 24, "batch_size": 4, "augment": True, "rotation": 0.1,
                                          "augment_on": "host"})
    splits = load_splits(image_folder, 0.3, 0)
    plain = np.stack([decode_resize(p, 24, 3).numpy() for p in splits.val.paths]).astype(np.float32)
    for part in (splits.val, splits.test):
        dataset = make_dataset(part, config, training=False)
        first, labels = _batches(dataset)
        second, _ = _batches(dataset)
        assert np.array_equal(first, second)
        assert labels.tolist() == part.labels
    val_pixels, _ = _batches(make_dataset(splits.val, config, training=False))
    assert np.array_equal(val_pixels, plain)

    both, labels = _batches(make_dataset(splits.train, config, training=True, epochs=(0, 2)))
    epoch1, epoch2, labels1 = both[: len(splits.train)], both[len(splits.train):], labels[: len(splits.train)]
    assert sorted(labels1.tolist()) == sorted(splits.train.labels)
    raw = np.stack([decode_resize(p, 24, 3).numpy() for p in splits.train.paths]).astype(np.float32)
    assert not any(np.array_equal(img, r) for img in epoch1 for r in raw)
    means1, means2 = np.sort(epoch1.mean(axis=(1, 2, 3))), np.sort(epoch2.mean(axis=(1, 2, 3)))
    assert not np.allclose(means1, means2)  # fresh random transforms every epoch


def test_without_augmentation_training_images_are_untouched(image_folder):
    config = build_config(ScratchConfig, {"image_size": 24, "batch_size": 4, "augment": False})
    splits = load_splits(image_folder, 0.3, 0)
    images, _ = _batches(make_dataset(splits.train, config, training=True))
    raw = np.stack([decode_resize(p, 24, 3).numpy() for p in splits.train.paths]).astype(np.float32)
    assert sorted(map(bytes, images)) == sorted(map(bytes, raw))


def _photo_file(path, width=800, height=600):
    from inat_keras.data.synthetic import photo

    Image.fromarray(photo(np.random.default_rng(3), np.full(3, 120, np.float32), width, height)).save(path, quality=90)
    return str(path)


def _full_decode(path, size):
    import tensorflow as tf

    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, (size, size), antialias=True)), 0, 255), tf.uint8)


@pytest.mark.backend_independent
def test_big_jpegs_decode_at_reduced_ratio_to_almost_the_same_image(tmp_path):
    import tensorflow as tf

    from inat_keras.data.decode import jpeg_ratio_index

    path = _photo_file(tmp_path / "photo.jpg")
    contents = tf.io.read_file(path)
    # the largest 1/r that keeps the short side (600) >= the target
    assert [2 ** int(jpeg_ratio_index(contents, s)) for s in (601, 600, 300, 224, 150, 75, 40)] == [1, 1, 2, 2, 4, 8, 8]
    for size in (224, 64):
        fast = decode_resize(path, size, 3).numpy().astype(int)
        full = _full_decode(path, size).numpy().astype(int)
        assert 0 < np.abs(fast - full).mean() < 1.5 and np.abs(fast - full).max() <= 8


@pytest.mark.backend_independent
def test_pngs_decode_in_full(tmp_path):
    path = str(tmp_path / "photo.png")
    Image.open(_photo_file(tmp_path / "photo.jpg")).save(path)
    assert np.array_equal(decode_resize(path, 96, 3).numpy(), _full_decode(path, 96).numpy())


def _move_away(folder):
    folder.rename(folder.with_name(folder.name + "-gone"))


@pytest.mark.backend_independent
@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cached_epochs_read_no_files(tmp_path, cache, make_image_folder):
    root = make_image_folder(tmp_path / "data", {"train": 6, "val": 1})
    config = build_config(ScratchConfig, {"image_size": 24, "batch_size": 4, "augment": False})
    splits = load_splits(root, 0.3, 0)
    expected = np.stack([decode_resize(p, 24, 3).numpy() for p in splits.val.paths]).astype(np.float32)
    dataset = make_dataset(splits.val, config, training=False, cache=cache)
    if cache == "disk":
        _move_away(root)  # filled when made: not even the first epoch reads a file
    first, _ = _batches(dataset)
    if cache == "memory":
        _move_away(root)  # filled by the first epoch
    again, labels = _batches(dataset)
    assert np.array_equal(first, expected) and np.array_equal(again, expected)
    assert labels.tolist() == splits.val.labels


@pytest.mark.backend_independent
def test_disk_cache_is_named_by_size_channels_and_file_content(tmp_path, make_image_folder):
    from inat_keras.data.cache import CACHE_HOME, cache_key

    root = make_image_folder(tmp_path / "data", {"train": 4, "val": 1})
    splits = load_splits(root, 0.5, 0)
    key = cache_key(splits.train, 24, 3)
    assert key != cache_key(splits.train, 32, 3) and key != cache_key(splits.train, 24, 1)
    assert key != cache_key(splits.val, 24, 3)
    config = build_config(ScratchConfig, {"image_size": 24, "batch_size": 4, "augment": False})
    make_dataset(splits.train, config, training=False, cache="disk")
    assert (CACHE_HOME / "decoded" / key).is_dir()

    changed = splits.train.paths[0]
    Image.fromarray(np.full((30, 40, 3), 7, np.uint8)).save(changed, format="PNG" if changed.endswith("png") else "JPEG")
    assert cache_key(splits.train, 24, 3) != key
    images, _ = _batches(make_dataset(splits.train, config, training=False, cache="disk"))
    assert np.array_equal(images[0], decode_resize(changed, 24, 3).numpy().astype(np.float32))


@pytest.mark.backend_independent
def test_an_interrupted_disk_cache_is_never_read_and_a_file_that_broke_is_named(tmp_path, make_image_folder):
    from inat_keras.data.cache import CACHE_HOME, cache_key
    from inat_keras.data.splits import Split

    root = make_image_folder(tmp_path / "data", {"train": 4, "val": 1})
    paths = sorted(str(p) for p in (root / "train").rglob("*.jpg"))
    good = Path(paths[-1]).read_bytes()
    Path(paths[-1]).write_bytes(good[:100])  # a file of a checked split that broke since
    split = Split(paths, [0] * len(paths))
    config = build_config(ScratchConfig, {"image_size": 24, "batch_size": 2, "augment": False})
    folder = CACHE_HOME / "decoded" / cache_key(split, 24, 3)
    abandoned = folder.with_name(folder.name + ".partial-999999999")  # no such process
    abandoned.mkdir(parents=True)
    with pytest.raises(DataError, match=rf"1 image\(s\) of the split can no longer be decoded, e.g. {paths[-1]}: Invalid JPEG"):
        make_dataset(split, config, training=False, cache="disk")
    assert not abandoned.exists()
    assert len(json.loads((folder / "members.json").read_text())) == len(paths) - 1

    Path(paths[-1]).write_bytes(good)
    split = Split(paths, [0] * len(paths))
    images, _ = _batches(make_dataset(split, config, training=False, cache="disk"))
    assert np.array_equal(images, np.stack([decode_resize(p, 24, 3).numpy() for p in paths]).astype(np.float32))


@pytest.mark.backend_independent
def test_auto_cache_uses_the_disk_when_memory_is_short(tmp_path, monkeypatch, make_image_folder):
    import inat_keras.data.cache as data

    root = make_image_folder(tmp_path / "data", {"train": 4, "val": 1})
    splits = load_splits(root, 0.5, 0)
    config = build_config(ScratchConfig, {"image_size": 24, "batch_size": 4, "augment": False})
    folder = data.CACHE_HOME / "decoded" / data.cache_key(splits.train, 24, 3)
    monkeypatch.setattr(data, "available_memory", lambda: 10**12)
    make_dataset(splits.train, config, training=False)
    assert not folder.exists()
    monkeypatch.setattr(data, "available_memory", lambda: 1000)
    make_dataset(splits.train, config, training=False)
    assert folder.is_dir()


def test_augmentation_differs_every_epoch_over_the_disk_cache(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", {"train": 6, "val": 1})
    config = build_config(ScratchConfig, {"image_size": 24, "batch_size": 4, "augment": True, "rotation": 0.1,
                                          "augment_on": "host"})
    splits = load_splits(root, 0.3, 0)
    train = make_dataset(splits.train, config, training=True, cache="disk", epochs=(0, 2))
    _move_away(root)
    both, _ = _batches(train)
    epoch1, epoch2 = both[: len(splits.train)], both[len(splits.train):]
    means1, means2 = np.sort(epoch1.mean(axis=(1, 2, 3))), np.sort(epoch2.mean(axis=(1, 2, 3)))
    assert not np.allclose(means1, means2)


def test_a_run_seeded_zero_shuffles_its_epochs(image_folder):
    """TensorFlow compares (global seed, op seed) with (0, 0) in Python: with seed 0 a tensor op seed crashed."""
    import keras

    keras.utils.set_random_seed(0)  # what a run with --seed 0 does first
    config = build_config(ScratchConfig, {"image_size": 16, "batch_size": 4, "seed": 0, "augment_on": "host"})
    splits = load_splits(image_folder, 0.3, 0)
    both, labels = _batches(make_dataset(splits.train, config, training=True, epochs=(0, 2)))
    n = len(splits.train)
    assert sorted(labels[:n].tolist()) == sorted(labels[n:].tolist()) == sorted(splits.train.labels)
    assert labels[:n].tolist() != labels[n:].tolist() or not np.array_equal(both[:n], both[n:])


@pytest.mark.backend_independent
def test_a_short_last_batch_is_trained_counted_and_resumed(image_folder):
    """30 images in batches of 8: four steps an epoch, the last of 6 (not dropped), as fit counts them; a stream
    that resumes at epoch 2 is the second epoch of the whole one. (The training tests use whole batches: under JAX
    a short batch is a second program to compile.)"""
    config = build_config(ScratchConfig, {"image_size": 16, "batch_size": 8, "augment": False})
    train = load_splits(image_folder, 0.0, 0).train
    whole = [(x.numpy(), y.numpy()) for x, y in make_dataset(train, config, training=True, epochs=(0, 2))]
    assert len(train) == 30 and steps_per_epoch(30, 8) == 4
    assert [len(y) for _, y in whole] == [8, 8, 8, 6] * 2
    assert sorted(np.concatenate([y for _, y in whole[:4]]).tolist()) == sorted(train.labels)
    resumed = [(x.numpy(), y.numpy()) for x, y in make_dataset(train, config, training=True, epochs=(1, 2))]
    assert len(resumed) == 4
    for (x, y), (x0, y0) in zip(resumed, whole[4:], strict=True):
        assert np.array_equal(x, x0) and np.array_equal(y, y0)
