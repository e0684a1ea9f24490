import logging

import numpy as np
import pytest
from PIL import Image

from inat_keras.config import ScratchConfig, build_config
from inat_keras.data import DataError, dataset_root, decode_resize, load_splits, make_dataset

from conftest import CLASSES, write_image_folder


def test_split_is_stratified_disjoint_and_reproducible(tmp_path):
    root = write_image_folder(tmp_path, {"train": 20, "val": 3})
    a = load_splits(root, 0.25, seed=1)
    b = load_splits(root, 0.25, seed=1)
    c = load_splits(root, 0.25, seed=2)
    assert a.train.paths == b.train.paths and a.val.paths == b.val.paths
    assert set(a.val.paths) != set(c.val.paths)
    assert not set(a.train.paths) & set(a.val.paths)
    assert len(a.train) + len(a.val) == 20 * len(CLASSES)
    assert np.bincount(a.val.labels).tolist() == [5, 5, 5]
    assert all("/val/" in p for p in a.test.paths) and len(a.test) == 3 * len(CLASSES)
    assert not any("/val/" in p for p in a.train.paths + a.val.paths)


def test_parent_folder_with_inaturalist_12k_is_found(tmp_path):
    write_image_folder(tmp_path / "inaturalist_12K", {"train": 2, "val": 1})
    assert dataset_root(tmp_path) == tmp_path / "inaturalist_12K"


def test_missing_and_malformed_folders_are_refused(tmp_path):
    with pytest.raises(DataError, match="not found"):
        dataset_root(tmp_path / "nowhere")
    with pytest.raises(DataError, match="train/ and val/"):
        dataset_root(tmp_path)
    root = write_image_folder(tmp_path / "d", {"train": 2, "val": 1})
    (root / "train" / "emu").mkdir()
    with pytest.raises(DataError, match="emu holds no images"):
        load_splits(root, 0.5, 0)
    (root / "train" / "emu").rmdir()
    (root / "val" / "owl").rename(root / "val" / "ant")
    with pytest.raises(DataError, match=r"only in train/: \['owl'\]; only in val/: \['ant'\]"):
        load_splits(root, 0.5, 0)


def test_corrupt_files_are_skipped_and_named(tmp_path, caplog):
    root = write_image_folder(tmp_path, {"train": 6, "val": 2})
    good = (root / "train" / "cat" / "cat_000.jpg").read_bytes()
    (root / "train" / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "val" / "dog" / "garbage.png").write_bytes(b"not an image at all")
    with caplog.at_level(logging.WARNING):
        splits = load_splits(root, 0.5, 0)
    bad = {p.split("/")[-1] for p, _ in splits.skipped}
    assert bad == {"truncated.jpg", "garbage.png"}
    assert "skipped 2 unreadable" in caplog.text and "truncated.jpg" in caplog.text and "garbage.png" in caplog.text
    every = splits.train.paths + splits.val.paths + splits.test.paths
    assert not any(p.endswith(("truncated.jpg", "garbage.png")) for p in every)
    assert len(every) == 6 * 3 + 2 * 3


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
    config = build_config(ScratchConfig, {"image_size": 24, "batch_size": 4, "augment": True, "rotation": 0.1})
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

    train = make_dataset(splits.train, config, training=True)
    epoch1, labels1 = _batches(train)
    epoch2, _ = _batches(train)
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
