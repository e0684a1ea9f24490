"""Where the images come from: the real iNaturalist-12K download, or the embedded demo data."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import requests
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ..errors import DataError
from ..files import publish_dir, staging_dir
from .cache import CACHE_HOME
from .splits import TEST_DIR, TRAIN_DIR, dataset_root, list_images

log = logging.getLogger(__name__)

INAT_URL = "https://storage.googleapis.com/wandb_datasets/nature_12K.zip"
INAT_FOLDER = "inaturalist_12K"
INAT_CLASSES = [
    "Amphibia", "Animalia", "Arachnida", "Aves", "Fungi",
    "Insecta", "Mammalia", "Mollusca", "Plantae", "Reptilia",
]  # fmt: skip
INAT_MIN_IMAGES = {TRAIN_DIR: 9_999, TEST_DIR: 2_000}
DEMO_FOLDER = "demo_digits"


def download(url: str, target: Path, chunk_bytes: int = 1 << 20, timeout: float = 30.0,
             by_hand: str = "download it by hand and pass --data-dir") -> Path:  # fmt: skip
    """Download with resume: bytes land in target.part and are renamed only once complete.

    A restarted download asks the server for the missing range; the final size is
    checked against the server's Content-Length before the rename. `by_hand`: what the command's user can do instead.
    """
    if target.exists():
        return target
    partial = target.with_name(target.name + ".part")
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.RequestException as err:
        raise DataError(f"cannot reach {url} ({err}); {by_hand}") from err
    with response:
        if response.status_code == 416:
            total = have
        elif response.status_code not in (200, 206):
            raise DataError(f"{url} answered HTTP {response.status_code}; {by_hand}")
        else:
            if response.status_code == 200:
                have = 0
            total = have + int(response.headers.get("Content-Length", 0))
            progress = keras.utils.Progbar(total or None, unit_name="byte")
            progress.update(have)
            with open(partial, "ab" if have else "wb") as f:
                try:
                    for chunk in response.iter_content(chunk_bytes):
                        f.write(chunk)
                        progress.add(len(chunk))
                except requests.RequestException as err:
                    raise DataError(f"download of {url} broke off ({err}); run again to resume") from err
    size = partial.stat().st_size
    if total and size != total:
        raise DataError(f"download of {url} stopped at {size} of {total} bytes; run again to resume")
    os.replace(partial, target)
    return target


def check_inat(root: Path) -> None:
    """A complete dataset has the 10 known classes and at least the published image counts."""
    for split, minimum in INAT_MIN_IMAGES.items():
        names, paths, _ = list_images(root / split)
        if names != INAT_CLASSES or len(paths) < minimum:
            raise DataError(
                f"{root / split} looks incomplete: {len(names)} classes, {len(paths)} images "
                f"(expected {len(INAT_CLASSES)} classes, at least {minimum} images); delete it and fetch again"
            )


def fetch_inaturalist(cache_dir: Path = CACHE_HOME) -> Path:
    """Download and unpack iNaturalist-12K once; extraction goes to a temporary folder, then one rename."""
    final = cache_dir / INAT_FOLDER
    if final.is_dir():
        return dataset_root(final)
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = download(INAT_URL, cache_dir / "nature_12K.zip")
    staging = Path(tempfile.mkdtemp(prefix="extract-", dir=cache_dir))
    try:
        shutil.unpack_archive(archive, staging)
        root = dataset_root(staging)
        check_inat(root)
        os.replace(root, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def write_demo_data(cache_dir: Path = CACHE_HOME, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """scikit-learn's 1,797 real 8x8 handwritten digits as PNG files in the train/val layout.

    Written once; the demo then runs exactly the pipeline that real photos do.
    """
    final = cache_dir / DEMO_FOLDER
    if final.is_dir():
        return final
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    index = np.arange(len(images))
    train_idx, test_idx = train_test_split(
        index, test_size=test_fraction, stratify=digits.target, random_state=seed
    )
    staging = staging_dir(final)
    for split, idx in ((TRAIN_DIR, train_idx), (TEST_DIR, test_idx)):
        for i in idx:
            folder = staging / split / f"digit_{digits.target[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")
    return publish_dir(staging, final)


def resolve_data_dir(data_dir: str | None, demo: bool) -> Path:
    if demo:
        return write_demo_data()
    if data_dir:
        return dataset_root(data_dir)
    log.info("no --data-dir given: using (and if needed downloading) iNaturalist-12K in %s", CACHE_HOME)
    return fetch_inaturalist()
