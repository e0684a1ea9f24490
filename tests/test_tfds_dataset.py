"""The TFDS builder on a tiny iNaturalist-12K-shaped archive: built from a file:// URL and from a manual
folder, with EXIF rotation, alpha, a corrupt file left out with a warning, checksums recorded and
enforced, and `tfds.load("inaturalist12k")` working after a bare `import inat_keras`."""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import inat_keras  # noqa: F401  (registers "inaturalist12k" with TFDS)
from inat_keras.cli import main
from inat_keras.data import tfds_dataset
from inat_keras.data.decode import BACKGROUND, composite
from inat_keras.data.sources import INAT_CLASSES
from inat_keras.errors import DataError

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parent.parent
ROTATED = "Mammalia/b.jpg"  # stored 40 wide x 30 high with EXIF orientation 6: upright it is 30 x 40
CUTOUT = "Plantae/cutout.png"
TRAIN_FILES = {f"{c}/{n}.jpg" for c in INAT_CLASSES for n in "ab"} | {CUTOUT}  # Aves/broken.jpg left out
TEST_FILES = {f"{c}/a.jpg" for c in INAT_CLASSES}
SEMI = (200, 10, 10, 128)  # a half-transparent red


def class_colour(label: int) -> np.ndarray:
    return np.array([25 * label, 255 - 25 * label, 120], np.uint8)


def write_archive_tree(base: Path) -> Path:
    """base/inaturalist_12K/{train,val}/<class>/...: plain JPEGs of one colour per class, plus the cases."""
    root = base / "inaturalist_12K"
    for split, names in (("train", "ab"), ("val", "a")):
        for label, name in enumerate(INAT_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for n in names:
                Image.fromarray(np.full((30, 40, 3), class_colour(label))).save(folder / f"{n}.jpg", quality=95)
    rotated = np.zeros((30, 40, 3), np.uint8)
    rotated[:15] = (255, 0, 0)  # top half red, bottom half blue: turned clockwise, the red is on the right
    rotated[15:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rotated).save(root / "train" / ROTATED, exif=exif, quality=95)
    cutout = np.zeros((20, 20, 4), np.uint8)
    cutout[:, :10] = (0, 255, 0, 0)  # fully transparent (its green must not show)
    cutout[:10, 10:] = (10, 20, 30, 255)  # opaque
    cutout[10:, 10:] = SEMI
    Image.fromarray(cutout, "RGBA").save(root / "train" / CUTOUT)
    (root / "train" / "Aves" / "broken.jpg").write_bytes(b"not a jpeg at all" * 10)
    (root / "train" / "Fungi" / "scan.tiff").write_bytes(b"II*\0")  # not a supported format: listed, left out
    (root / "train" / "Fungi" / "notes.txt").write_text("ignored without a word")
    return root


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("source")
    write_archive_tree(base / "tree")
    return Path(shutil.make_archive(str(base / "nature_tiny"), "zip", base / "tree"))


@pytest.fixture(scope="module")
def built(archive, tmp_path_factory):
    """One build through tfds.load, its URL given by the environment variable; the warnings it logged."""
    data_dir = tmp_path_factory.mktemp("tfds")
    records = Records()
    logger = logging.getLogger(tfds_dataset.__name__)
    logger.addHandler(records)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv(tfds_dataset.URL_ENV, archive.as_uri())
            splits, info = tfds.load("inaturalist12k", data_dir=str(data_dir), split=["train", "test"], with_info=True)
    finally:
        logger.removeHandler(records)
    return data_dir, splits, info, records.messages


def examples(ds) -> dict:
    return {ex["file_name"].decode(): ex for ex in tfds.as_numpy(ds)}


def test_a_build_from_a_url_holds_every_readable_image_once(built):
    _, (train, test), info, _ = built
    train, test = examples(train), examples(test)
    assert set(train) == TRAIN_FILES and set(test) == TEST_FILES
    assert info.splits["train"].num_examples == len(TRAIN_FILES) and info.splits["test"].num_examples == len(TEST_FILES)
    assert info.features["label"].names == INAT_CLASSES
    assert info.supervised_keys == ("image", "label")
    for name, ex in {**train, **test}.items():
        assert INAT_CLASSES[ex["label"]] == name.split("/")[0], name
    for name in ("Aves/a.jpg", "Reptilia/b.jpg"):
        label = INAT_CLASSES.index(name.split("/")[0])
        assert train[name]["image"].shape == (30, 40, 3)
        assert np.abs(train[name]["image"].astype(int) - class_colour(label)).max() <= 6  # JPEG's loss


def test_upright_rgb_jpegs_are_stored_byte_for_byte_and_the_others_decoded(built, archive):
    data_dir, *_ = built
    raw = tfds.load("inaturalist12k", data_dir=str(data_dir), split="train",
                    decoders={"image": tfds.decode.SkipDecoding()})  # fmt: skip
    stored = {ex["file_name"].decode(): ex["image"] for ex in tfds.as_numpy(raw)}
    source = archive.parent / "tree" / "inaturalist_12K" / "train"
    assert stored["Fungi/a.jpg"] == (source / "Fungi" / "a.jpg").read_bytes()
    assert stored[ROTATED].startswith(b"\x89PNG") and stored[CUTOUT].startswith(b"\x89PNG")


def test_exif_orientation_is_applied(built):
    _, (train, _), *_ = built
    image = examples(train)[ROTATED]["image"].astype(int)
    assert image.shape == (40, 30, 3)
    assert np.abs(image[:, 17:] - (255, 0, 0)).max() <= 40  # the top of the stored picture, now on the right
    assert np.abs(image[:, :13] - (0, 0, 255)).max() <= 40


def test_transparent_pixels_are_composited_over_the_background_as_the_decoder_does(built):
    _, (train, _), *_ = built
    image = examples(train)[CUTOUT]["image"]
    assert (image[:, :10] == BACKGROUND).all()
    assert (image[:10, 10:] == (10, 20, 30)).all()
    expected = composite(tf.constant([[SEMI[:3]]], tf.uint8), tf.constant([[SEMI[3:]]], tf.uint8)).numpy()[0, 0]
    assert (image[10:, 10:] == expected).all() and not (expected == SEMI[:3]).all()


def test_files_that_cannot_be_read_are_left_out_in_one_warning(built):
    *_, messages = built
    assert len(messages) == 1 and Path(messages[0].split(": left out ")[0]).name == "train", messages
    assert "left out 2 file(s)" in messages[0]
    assert "\n  Aves/broken.jpg: Unknown image file format" in messages[0]  # the project decoder's reason
    assert "\n  Fungi/scan.tiff: not a supported image format" in messages[0]


def test_the_archive_checksum_is_recorded_by_url(built, archive):
    data_dir, *_ = built
    record = json.loads((data_dir / "downloads" / tfds_dataset.CHECKSUMS_FILE).read_text())
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert record == {archive.as_uri(): {"size": archive.stat().st_size, "sha256": sha256}}


def rebuild(downloads: Path, data_dir: Path, url: str):
    return tfds_dataset.prepare(str(data_dir), download_dir=str(downloads), url=url)


def test_a_tampered_archive_or_record_is_an_error_naming_both_checksums(built, archive, tmp_path):
    data_dir, *_ = built
    downloads = tmp_path / "downloads"
    shutil.copytree(data_dir / "downloads", downloads)
    record_file = downloads / tfds_dataset.CHECKSUMS_FILE
    good = json.loads(record_file.read_text())
    url, sha256 = archive.as_uri(), good[archive.as_uri()]["sha256"]
    assert rebuild(downloads, tmp_path / "fine", url).info.splits["test"].num_examples == len(TEST_FILES)  # it checks out

    record_file.write_text(json.dumps({url: {**good[url], "sha256": "0" * 64}}))
    with pytest.raises(DataError, match=rf"nature_tiny\.zip has sha256 {sha256}, expected 0{{64}}; delete it and build"):
        rebuild(downloads, tmp_path / "a", url)

    record_file.write_text(json.dumps(good))
    copy = downloads / archive.name
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    copy.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(DataError, match=rf"has sha256 {actual}, expected {sha256}; delete it"):
        rebuild(downloads, tmp_path / "b", url)

    copy.write_bytes(bytes(data[:-5]))
    with pytest.raises(DataError, match=rf"is {len(data) - 5} bytes, expected {len(data)} \(sha256 {sha256}\)"):
        rebuild(downloads, tmp_path / "c", url)
    assert not tfds_dataset.Inaturalist12k(data_dir=str(tmp_path / "c")).is_prepared()


def test_a_manual_folder_is_used_without_downloading(archive, tmp_path):
    downloads = tmp_path / "downloads"
    builder = tfds_dataset.prepare(str(tmp_path / "tfds"), manual_dir=str(archive.parent / "tree"),
                                   download_dir=str(downloads), url=(tmp_path / "missing.zip").as_uri())  # fmt: skip
    assert builder.info.splits["train"].num_examples == len(TRAIN_FILES)
    assert builder.info.splits["test"].num_examples == len(TEST_FILES)
    assert not (downloads / tfds_dataset.CHECKSUMS_FILE).exists()


def test_class_folders_other_than_the_ten_classes_are_an_error(archive, tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(archive.parent / "tree" / "inaturalist_12K", manual)
    (manual / "train" / "Aves").rename(manual / "train" / "Birds")
    wrong = r"train does not hold the iNaturalist-12K class folders: missing \['Aves'\], extra \['Birds'\]"
    with pytest.raises(DataError, match=wrong):
        tfds_dataset.prepare(str(tmp_path / "tfds"), manual_dir=str(manual), url=(tmp_path / "missing.zip").as_uri())


def test_a_missing_file_url_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match=r"missing\.zip: no such file"):
        tfds_dataset.prepare(str(tmp_path / "tfds"), url=(tmp_path / "missing.zip").as_uri())


def test_tfds_finds_the_builder_after_a_bare_import_of_the_package(built):
    """In a fresh process: `import inat_keras` loads neither TFDS nor TensorFlow, and tfds.load then works."""
    data_dir, *_ = built
    code = f"""
import sys, inat_keras
heavy = [m for m in ("tensorflow", "tensorflow_datasets", "keras") if m in sys.modules]
import tensorflow_datasets as tfds
test = tfds.load("inaturalist12k", data_dir={str(data_dir)!r}, split="test")
print(heavy, len(list(test)), type(tfds.builder("inaturalist12k", data_dir={str(data_dir)!r})).__module__)
"""
    env = {k: v for k, v in os.environ.items() if k != tfds_dataset.URL_ENV}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == f"[] {len(TEST_FILES)} inat_keras.data.tfds_dataset"


def test_training_from_the_records_splits_reports_and_learns_as_from_the_folder(built, archive, tmp_path, tiny_cnn_options):
    """The same tree as TFDS records and as a folder: the same split.json parts (by file name), the same
    skipped files with the same reasons, and one epoch of training from the records under this backend."""
    from inat_keras.config import ScratchConfig, build_config
    from inat_keras.training.kinds import KINDS

    data_dir = built[0]
    common = {**tiny_cnn_options, "epochs": 1, "val_fraction": 0.5, "batch_size": 4}
    runs = {}
    for source, values in (("tfds", {"tfds_dir": str(data_dir)}), ("folder", {"data_dir": str(archive.parent / "tree")})):
        config = build_config(ScratchConfig, {**common, **values, "output_dir": str(tmp_path / source)})
        run_dir, metrics = KINDS["scratch"].train(config)
        runs[source] = json.loads((run_dir / "split.json").read_text()), metrics
    (records, from_records), (folder, from_folder) = runs["tfds"], runs["folder"]
    for part in ("train", "val", "test"):
        assert sorted(records[part]) == sorted(folder[part]) and records[part]
    assert records["skipped"] == folder["skipped"] and [s["path"] for s in records["skipped"]] == [
        "train/Aves/broken.jpg", "train/Fungi/scan.tiff"]  # fmt: skip
    assert records["source"] == {"tfds": str(data_dir)} and "source" not in folder
    assert from_records["train_images"] == from_folder["train_images"] and from_records["test_images"] == len(TEST_FILES)
    assert 0.0 <= from_records["test_accuracy"] <= 1.0


def test_an_empty_or_wrong_manual_folder_is_an_error_saying_what_it_must_hold(tmp_path, capsys):
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    (other / "photos").mkdir(parents=True)
    url = (tmp_path / "missing.zip").as_uri()  # never reached: nothing is downloaded
    for folder, state in ((empty, "is empty"), (other, "holds no dataset"), (tmp_path / "absent", "does not exist")):
        with pytest.raises(DataError) as caught:
            tfds_dataset.prepare(str(tmp_path / "tfds"), manual_dir=str(folder), url=url)
        assert str(caught.value).startswith(f"the manual folder {folder} {state}: it must hold inaturalist_12K/train/")
    assert main(["tfds", "--tfds-dir", str(tmp_path / "tfds"), "--manual-dir", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: the manual folder {empty} is empty")


def test_a_failed_download_names_the_flag_that_builds_without_one(tmp_path):
    with pytest.raises(DataError) as caught:  # a closed local port: the download fails at once
        tfds_dataset.prepare(str(tmp_path / "tfds"), url="http://127.0.0.1:9/nature_12K.zip")
    assert "--manual-dir" in str(caught.value) and "--data-dir" not in str(caught.value)
