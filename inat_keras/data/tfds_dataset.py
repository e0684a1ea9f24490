"""iNaturalist-12K as a TensorFlow Datasets builder, `inaturalist12k`: the same folders, classes, EXIF
and alpha handling as the project's own pipeline, stored once as TFDS records that any program can load.

    import inat_keras, tensorflow_datasets as tfds
    ds = tfds.load("inaturalist12k", split="train")  # `import inat_keras` registers the name, lazily

Or build ahead, from Python with `prepare(data_dir, manual_dir)`, or with the TFDS command line, which
in TFDS 4.9 takes the module through --imports (`--imports inat_keras` works too); the dataset argument
must be the name: a dotted module name is rejected as a dataset name, and the path of this file fails on
its relative imports:

    tfds build inaturalist12k --imports inat_keras.data.tfds_dataset [--manual_dir DIR] [--data_dir DIR]

(The `tfds` program of TFDS 4.9.10 imports apache_beam and mlcroissant at start-up for its other
subcommands: without those packages it stops before reading its arguments.)

Where the images come from, in order:
1. `manual_dir` (TFDS's manual-download folder, by default <data_dir>/downloads/manual) when it holds
   train/ and val/, or inaturalist_12K/train and val/: the unzipped archive, nothing is downloaded. A manual
   folder that holds anything else is an error, and so is an empty or missing one given to `prepare`.
2. Otherwise (no manual folder, or TFDS's default one empty) the archive at INAT_URL, or at the builder's `url` argument or $INAT_KERAS_INAT_URL (a
   file:// URL works, for tests and mirrors), fetched into the download folder with the project's
   resumable download and unpacked there.

The archive's size and sha256 are recorded on first use in <download_dir>/inaturalist12k_checksums.json
(keyed by URL; the installed package may be read-only) and checked on every later build, so a
truncated or swapped archive is an error, never a silently different dataset.

Splits: `train` is the archive's train/, `test` its val/ (the project's test set). Upright RGB JPEGs
are stored byte for byte; every other file (EXIF-rotated, PNG with alpha, gray, GIF, BMP, WebP) is
decoded with Pillow, turned upright and composited over decode.BACKGROUND as the project's decoder does,
and stored as PNG. Files that cannot be decoded are left out, all named in one warning per split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, ImageOps

from ..errors import DataError
from ..files import publish_dir, staging_dir, write_json
from ..keras_compat import keep_builder_argument
from .decode import BACKGROUND, exif_orientation, unreadable_reason
from .sources import INAT_CLASSES, INAT_URL, download
from .splits import TEST_DIR, TRAIN_DIR, dataset_root, list_folder

log = logging.getLogger(__name__)

URL_ENV = "INAT_KERAS_INAT_URL"
CHECKSUMS_FILE = "inaturalist12k_checksums.json"
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
MANUAL_CONTENTS = "inaturalist_12K/train/ and inaturalist_12K/val/ (or train/ and val/)"
BY_HAND = ("download nature_12K.zip by hand, unzip it and give that folder as --manual-dir (run.py tfds; --manual_dir "
           "with tfds build)")  # fmt: skip


class Inaturalist12k(tfds.core.GeneratorBasedBuilder):
    """The 10-class iNaturalist-12K photos (train/ and val/ of nature_12K.zip) as TFDS splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: train/ and val/ as train and test; EXIF orientation and alpha applied; "
        "image, label and file_name (path within the split folder).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional. To build without downloading, unzip nature_12K.zip into the manual folder so that it "
        "holds inaturalist_12K/train/ and inaturalist_12K/val/ (or train/ and val/ directly). Without it "
        f"the archive is downloaded from {INAT_URL} (or ${URL_ENV})."
    )

    def __init__(self, *, url: str | None = None, **kwargs):
        """`url` overrides $INAT_KERAS_INAT_URL and INAT_URL, e.g. with a file:// URL for a local copy."""
        self._url = url
        super().__init__(**kwargs)
        keep_builder_argument(self, "url", url)  # so a pickled builder (multiprocessing) keeps its source

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file, where TFDS looks for an optional checksums.tsv. TFDS 4.9.10 would find it through
        the importlib_resources package, which it only installs on Python < 3.9: without it, a builder
        outside TFDS fails with ModuleNotFoundError."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="iNaturalist-12K: 10 classes of nature photos (train 9,999, val 2,000 images).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=INAT_CLASSES),
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),  # "skipped": {split: [[file_name, reason], ...]}
            homepage="https://www.inaturalist.org/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = _manual_root(dl_manager) or self.downloaded_root(Path(dl_manager.download_dir))
        return {
            "train": self._generate_examples(root / TRAIN_DIR),
            "test": self._generate_examples(root / TEST_DIR),
        }

    def downloaded_root(self, download_dir: Path) -> Path:
        """Fetch (or reuse) the archive, check it against its record, unpack it once per content."""
        url = self._url or os.environ.get(URL_ENV) or INAT_URL
        download_dir.mkdir(parents=True, exist_ok=True)
        archive = fetch(url, download_dir / (Path(urlparse(url).path).name or "inaturalist12k.zip"))
        sha256 = check_or_record(archive, url, download_dir / CHECKSUMS_FILE)
        # Named by content: a replaced archive never reuses the folder unpacked from the old one.
        extracted = download_dir / "extracted" / f"inaturalist12k-{sha256[:16]}"
        if not extracted.is_dir():
            extracted.parent.mkdir(parents=True, exist_ok=True)
            staging = staging_dir(extracted)
            shutil.unpack_archive(archive, staging)
            publish_dir(staging, extracted)
        return dataset_root(extracted)

    def _generate_examples(self, folder: Path):
        listing = list_folder(folder)
        check_classes(folder, listing.class_names)
        with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:  # Pillow decodes outside the GIL
            checks = list(pool.map(inspect_image, listing.paths))
        skipped = [(path, why) for path, (why, _) in zip(listing.paths, checks) if why] + listing.unsupported
        split = "train" if folder.name == TRAIN_DIR else "test"
        self.info.metadata.setdefault("skipped", {})[split] = sorted(
            [Path(path).relative_to(folder).as_posix(), why] for path, why in skipped
        )  # read back by data.tfds_source, which reports them as a folder run does
        if skipped:
            lines = "".join(f"\n  {Path(path).relative_to(folder).as_posix()}: {why}" for path, why in skipped)
            log.warning("%s: left out %d file(s):%s", folder, len(skipped), lines)
        for path, label, (why, keep_bytes) in zip(listing.paths, listing.labels, checks):
            if why:
                continue
            name = Path(path).relative_to(folder).as_posix()
            image = path if keep_bytes else upright_rgb(path)
            yield name, {"image": image, "label": label, "file_name": name}


def prepare(data_dir: str | None = None, manual_dir: str | None = None, *, download_dir: str | None = None,
            url: str | None = None) -> tfds.core.DatasetBuilder:  # fmt: skip
    """Build the TFDS records if they are not there yet and return the builder (`builder.as_dataset(...)`). A
    `manual_dir` given must hold the unzipped archive: an empty or other folder is an error, not a download."""
    if manual_dir is not None:
        manual_root(Path(manual_dir))
    builder = Inaturalist12k(data_dir=data_dir, url=url)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder.download_and_prepare(download_dir=download_dir, download_config=config)
    return builder


def _manual_root(dl_manager: tfds.download.DownloadManager) -> Path | None:
    """The dataset folder inside manual_dir, or None (a download) when manual_dir is absent or empty; a folder
    holding other things is an error."""
    try:
        manual = Path(dl_manager.manual_dir)
    except AssertionError:  # TFDS's answer for a manual_dir that does not exist or is empty
        return None
    return manual_root(manual)


def manual_root(folder: Path) -> Path:
    """The unzipped archive in a manual folder; any other folder is one error saying what it must hold."""
    try:
        return dataset_root(folder)
    except DataError:
        state = "does not exist" if not folder.exists() else "is empty" if not any(folder.iterdir()) else "holds no dataset"
        raise DataError(f"the manual folder {folder} {state}: it must hold {MANUAL_CONTENTS}, as nature_12K.zip "
                        "unzips; unzip it there, or give no manual folder to download the archive") from None  # fmt: skip


def fetch(url: str, target: Path) -> Path:
    """The project's resumable download, plus file:// URLs (which `requests` cannot read), copied the
    same way: into target.part, renamed once complete. An archive already at `target` is reused."""
    if target.exists():
        return target
    if urlparse(url).scheme != "file":
        return download(url, target, by_hand=BY_HAND)
    source = Path(url2pathname(urlparse(url).path))
    if not source.is_file():
        raise DataError(f"{url}: no such file; fix the URL (${URL_ENV} or the builder's url argument)")
    partial = target.with_name(target.name + ".part")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    return target


def check_or_record(archive: Path, url: str, record_file: Path) -> str:
    """The archive's sha256, checked against what was recorded for `url` (size first: no hashing needed
    to catch a truncated file), or recorded now if this URL was never seen."""
    try:
        records = json.loads(record_file.read_text()) if record_file.exists() else {}
    except json.JSONDecodeError as err:
        raise DataError(f"{record_file} is not valid JSON ({err}); delete it and build again") from err
    redo = (
        f"delete it and build again to fetch a fresh copy (if the source itself changed, "
        f"also remove its entry in {record_file})"
    )
    size, expected = archive.stat().st_size, records.get(url)
    if expected and size != expected["size"]:
        raise DataError(f"{archive} is {size} bytes, expected {expected['size']} (sha256 {expected['sha256']}); {redo}")
    sha256 = file_sha256(archive)
    if expected and sha256 != expected["sha256"]:
        raise DataError(f"{archive} has sha256 {sha256}, expected {expected['sha256']}; {redo}")
    if not expected:
        write_json(record_file, {**records, url: {"size": size, "sha256": sha256}})
    return sha256


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def check_classes(folder: Path, class_names: list[str]) -> None:
    if class_names != INAT_CLASSES:
        missing = [c for c in INAT_CLASSES if c not in class_names]
        extra = [c for c in class_names if c not in INAT_CLASSES]
        raise DataError(
            f"{folder} does not hold the iNaturalist-12K class folders: missing {missing}, extra {extra} "
            f"(expected {', '.join(INAT_CLASSES)})"
        )


def inspect_image(path: str) -> tuple[str | None, bool]:
    """(why the file cannot be used, or None; whether its bytes can be stored as they are).

    The project's own decoder judges first (the same reasons as a run from the folder gives); Pillow's full
    decode then catches what it cannot turn upright or composite.
    """
    reason = unreadable_reason(path)
    if reason:
        return reason, False
    try:
        with Image.open(path) as image:
            image.load()
            plain_jpeg = image.format == "JPEG" and image.mode == "RGB"
        return None, plain_jpeg and exif_orientation(path) == 1
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"[:200], False


def upright_rgb(path: str) -> np.ndarray:
    """Any readable image as upright RGB uint8, transparency composited over BACKGROUND."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ALPHA_MODES or "transparency" in image.info:
            rgba = np.asarray(image.convert("RGBA"))
            return over_background(rgba[..., :3], rgba[..., 3:])
        return np.asarray(image.convert("RGB"))


def over_background(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """decode.composite in NumPy: the same float32 arithmetic and rounding, so the pixels match exactly."""
    a = alpha.astype(np.float32) / np.float32(255.0)
    mixed = colour.astype(np.float32) * a + np.asarray(BACKGROUND, np.float32) * (np.float32(1.0) - a)
    return np.round(mixed).astype(np.uint8)
