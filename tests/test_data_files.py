"""Every file of a class folder is used or reported: formats, nested folders, hidden files, links, images outside
the class folders, images too large, EXIF orientation, transparency, files added since a run's split, and a split
too small to stratify."""

import io
import logging
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from inat_keras.data.decode import BACKGROUND, decode_resize
from inat_keras.data.splits import load_splits
from inat_keras.data.split_record import splits_from_record
from inat_keras.errors import DataError

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent


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


def huge_png(path, width, height):
    """A PNG of a few hundred bytes whose header claims width x height pixels: a small PNG's IHDR patched, its CRC
    fixed, as a decompression bomb is made."""
    buffer = io.BytesIO()
    photo(8, 8).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # after the signature (8 bytes), the chunk's length and b"IHDR"
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the CRC of the chunk's type and 13 data bytes
    path.write_bytes(bytes(data))
    return path


def test_links_reach_each_real_file_once(tmp_path, caplog, make_image_folder):
    root = make_image_folder(tmp_path / "data", {"train": 6, "val": 2})
    train = root / "train"
    os.symlink(".", train / "cat" / "loopdir")  # a loop: followed blindly it is entered ~40 times
    os.symlink(train / "cat" / "cat_000.jpg", train / "dog" / "alias.jpg")  # one file in two classes
    os.symlink(train / "owl" / "owl_001.png", root / "val" / "owl" / "leak.png")  # a training file in the test set
    with caplog.at_level(logging.INFO):
        splits = load_splits(root, 0.25, 0)
    parts = [splits.train.paths, splits.val.paths, splits.test.paths]
    real = [[os.path.realpath(p) for p in part] for part in parts]
    assert [len(part) for part in parts] == [len(set(r)) for r in real] and sum(map(len, parts)) == 6 * 3 + 2 * 3
    assert not set(real[0]) & set(real[1]) and not (set(real[0]) | set(real[1])) & set(real[2])
    assert splits.train.labels.count(0) + splits.val.labels.count(0) == 6  # cat: its 6 files, once each
    left_out = {os.path.relpath(p, root): reason for p, reason in splits.skipped}
    assert set(left_out) == {"train/cat/loopdir", "train/dog/alias.jpg", "val/owl/leak.png"}
    assert left_out["train/cat/loopdir"].startswith(f"a link to {train / 'cat'}")
    assert left_out["val/owl/leak.png"].startswith(f"the same file as {train / 'owl' / 'owl_001.png'}")
    assert "3 skipped" in caplog.text and "loopdir" in caplog.text
    assert {s["path"] for s in splits.describe()["skipped"]} == set(left_out)


@pytest.mark.parametrize("link, other", [("train/emu", "train/cat"), ("val/cat", "train/cat")])
def test_two_class_folders_that_are_one_folder_are_refused(tmp_path, make_image_folder, link, other):
    root = make_image_folder(tmp_path / "data", {"train": 2, "val": 1})
    if link.startswith("val"):
        shutil.rmtree(root / link)
    os.symlink(root / other, root / link)
    with pytest.raises(DataError, match=rf"class folder {root / link} is the same folder as {root / other} \("):
        load_splits(root, 0.5, 0)


def test_images_outside_the_class_folders_are_reported(tmp_path, caplog, make_image_folder):
    root = make_image_folder(tmp_path / "data", {"train": 4, "val": 2})
    (root / "train" / ".hidden").mkdir()
    (root / "train" / "cat" / ".thumbs").mkdir()
    photo(32, 32).save(root / "train" / ".hidden" / "x.jpg")
    photo(32, 32).save(root / "train" / "cat" / ".thumbs" / "t.png")
    photo(32, 32).save(root / "train" / "stray.jpg")
    photo(32, 32).save(root / "val" / "stray.png")
    (root / "train" / "README.txt").write_text("not an image")
    with caplog.at_level(logging.INFO):
        splits = load_splits(root, 0.0, 0)
    recorded = {s["path"]: s["reason"] for s in splits.describe()["skipped"]}
    assert set(recorded) == {"train/.hidden/x.jpg", "train/cat/.thumbs/t.png", "train/stray.jpg", "val/stray.png"}
    assert recorded["train/.hidden/x.jpg"].startswith("in a hidden folder")
    assert recorded["val/stray.png"].startswith(f"not inside a class folder ({root / 'val'}/<class>/<image>)")
    assert "4 skipped, 1 hidden or non-image file(s) ignored" in caplog.text
    assert len(splits.train) == 4 * 3 and len(splits.test) == 2 * 3


def test_a_resumed_split_names_the_files_added_since(tmp_path, caplog, make_image_folder):
    from inat_keras.config import ScratchConfig, build_config
    from inat_keras.outputs.run_folder import write_split
    from inat_keras.training.loop import prepare_splits

    root = make_image_folder(tmp_path / "data", {"train": 4, "val": 2})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    saved = load_splits(root, 0.25, 0)
    write_split(run_dir, saved.describe())  # what a run wrote before it was interrupted
    for i in range(5):
        photo(32, 32, seed=i).save(root / "train" / "dog" / f"new_{i}.jpg")
    config = build_config(ScratchConfig, {"data_dir": str(root)})
    with caplog.at_level(logging.WARNING):
        resumed = prepare_splits(config, run_dir, resuming=True)
    assert resumed.train.paths == saved.train.paths and resumed.val.paths == saved.val.paths
    warning = [r.getMessage() for r in caplog.records if "changed since" in r.getMessage()]
    assert len(warning) == 1 and "5 file(s) added since" in warning[0] and "and 2 more" in warning[0]
    assert f"{root / 'train' / 'dog' / 'new_0.jpg'}, {root / 'train' / 'dog' / 'new_1.jpg'}" in warning[0]

    os.remove(saved.val.paths[0])  # the other way round: a file of the split is gone
    with pytest.raises(DataError, match=rf"changed since the run's split .* 1 file\(s\) of the split are gone: {saved.val.paths[0]}"):
        prepare_splits(config, run_dir, resuming=True)


@pytest.mark.parametrize("width, height", [(20000, 20000), (10000, 9000)])
def test_an_image_too_large_is_skipped_from_its_header(tmp_path, make_image_folder, width, height):
    root = make_image_folder(tmp_path / "data", {"train": 4, "val": 2})
    bomb = huge_png(root / "train" / "cat" / "bomb.png", width, height)
    huge_png(root / "val" / "dog" / "bomb.png", width, height)
    assert bomb.stat().st_size < 1000  # past Pillow's warning limit (89,478,485 pixels); the first past its error limit
    splits = load_splits(root, 0.25, 0)
    reasons = {os.path.relpath(p, root): r for p, r in splits.skipped}
    assert set(reasons) == {"train/cat/bomb.png", "val/dog/bomb.png"}
    assert reasons["train/cat/bomb.png"].startswith(f"image too large: its header declares {width * height:,} pixels")
    assert len(splits.train) + len(splits.val) == 4 * 3 and len(splits.test) == 2 * 3
