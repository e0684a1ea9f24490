"""Every file of a class folder is used or reported: formats, nested folders, hidden files, EXIF
orientation, transparency, and a split too small to stratify."""

import logging

import numpy as np
import pytest
from PIL import Image

from inat_keras.data.decode import BACKGROUND, decode_resize
from inat_keras.data.splits import load_splits
from inat_keras.data.split_record import splits_from_record
from inat_keras.errors import DataError


def photo(width=800, height=600, seed=0) -> Image.Image:
    """A photo-sized picture whose top-left quadrant is red, so that any turn or flip shows."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(120, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    pixels[: height // 2, : width // 2] = (220, 20, 20)
    return Image.fromarray(pixels)


def test_every_supported_format_and_nested_folder_is_used(tmp_path, caplog, make_image_folder):
    root = make_image_folder(tmp_path / "data", {"train": 4, "val": 2})
    cat = root / "train" / "cat"
    for fmt in ("gif", "bmp", "webp"):
        photo(64, 48).save(cat / f"extra.{fmt}")
    (cat / "2024" / "june").mkdir(parents=True)
    photo(64, 48).save(cat / "2024" / "june" / "deep.jpg")
    (cat / "notes.txt").write_text("not an image")
    (cat / ".DS_Store").write_bytes(b"\0\0")
    (cat / "scan.tiff").write_bytes(b"II*\0")
    with caplog.at_level(logging.INFO):
        splits = load_splits(root, 0.0, 0)
    used = [p for p in splits.train.paths if "/cat/" in p]
    assert {p.rsplit("/", 1)[1] for p in used} >= {"extra.gif", "extra.bmp", "extra.webp", "deep.jpg"}
    assert [(p.rsplit("/", 1)[1], r.split(" (")[0]) for p, r in splits.skipped] == [("scan.tiff", "not a supported image format")]
    assert "2 hidden or non-image file(s) ignored" in caplog.text and "1 skipped" in caplog.text
    again = splits_from_record(splits.describe())  # labels from the class folder, however deep the file
    assert again.train.labels == splits.train.labels


def test_exif_orientation_is_applied_everywhere(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", {"train": 4, "val": 2})
    path = root / "train" / "cat" / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    photo().save(path, exif=exif.tobytes(), quality=92)
    splits = load_splits(root, 0.0, 0)
    assert splits.train.orientations == {str(path): 6}
    upright = decode_resize(str(path), 60, 3, 6).numpy().astype(float)
    # stored: red top-left; viewed after a clockwise turn the red quadrant is at the top right
    quadrants = [upright[:30, :30], upright[:30, 30:], upright[30:, :30], upright[30:, 30:]]
    redness = [q[..., 0].mean() - q[..., 1].mean() for q in quadrants]
    assert int(np.argmax(redness)) == 1
    from PIL import ImageOps

    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).resize((60, 60)), dtype=float)
    assert np.abs(upright - expected).mean() < 8
    assert splits_from_record(splits.describe()).train.orientations == {str(path): 6}


def test_transparent_pixels_are_composited_over_the_fixed_background(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = (0, 255, 0)  # garbage colour in the transparent half
    rgba[:, 10:, :3] = (200, 30, 30)
    rgba[:, 10:, 3] = 255
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = decode_resize(str(path), 20, 3).numpy()
    np.testing.assert_array_equal(image[5, 2], BACKGROUND)
    np.testing.assert_array_equal(image[5, 17], (200, 30, 30))
    gray_alpha = np.stack([np.full((20, 20), 90, np.uint8), np.full((20, 20), 0, np.uint8)], axis=-1)
    Image.fromarray(gray_alpha, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(decode_resize(str(tmp_path / "la.png"), 20, 3).numpy()[3, 3], BACKGROUND)


@pytest.mark.parametrize("per_class, fraction", [(3, 0.2), (10, 0.95)])
def test_a_split_too_small_to_stratify_is_one_clear_error(tmp_path, per_class, fraction):
    root = tmp_path / "data"
    for k in range(10):
        for i in range(per_class):
            (root / "train" / f"c{k}").mkdir(parents=True, exist_ok=True)
            (root / "val" / f"c{k}").mkdir(parents=True, exist_ok=True)
            photo(16, 16, seed=i).save(root / "train" / f"c{k}" / f"{i}.png")
        photo(16, 16).save(root / "val" / f"c{k}" / "0.png")
    with pytest.raises(DataError, match=r"--val-fraction .* cannot split the .* by class.*use a val_fraction"):
        load_splits(root, fraction, 0)


def test_a_disk_cached_split_shuffles_in_bounded_memory(tmp_path, make_image_folder):
    from inat_keras.config import ScratchConfig, build_config
    from inat_keras.data.pipeline import make_dataset

    root = make_image_folder(tmp_path / "data", {"train": 20, "val": 1})
    splits = load_splits(root, 0.0, 0)
    config = build_config(ScratchConfig, {"image_size": 16, "batch_size": 5, "augment": False, "cache": "disk",
                                          "shuffle_buffer": 8})  # fmt: skip
    stream = list(make_dataset(splits.train, config, training=True, epochs=(0, 2)))
    images = np.concatenate([x.numpy() for x, _ in stream]).reshape(2, len(splits.train), -1)
    keys = [sorted(map(bytes, epoch.astype(np.uint8))) for epoch in images]
    assert keys[0] == keys[1] and len(set(keys[0])) == len(splits.train)  # every image once per epoch
    assert not np.array_equal(images[0], images[1])  # in another order
    from inat_keras.data.cache import shards_of

    shards = shards_of(splits.train, 8, 0)
    assert len(shards) == 8 and sorted(p for s in shards for p in s.paths) == sorted(splits.train.paths)
