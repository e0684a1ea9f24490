"""Which image goes where: class folders listed (nested folders walked, as
keras.utils.image_dataset_from_directory does), every file used or skipped with a reason, EXIF
orientations read, train/ split into train and validation (stratified), val/ kept as the test set;
and the record of a split that a run saves."""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from ..errors import DataError
from ..config import TrainConfig
from .cache import cache_mode, cache_units, decode_once
from .crops import decode_size
from .decode import IMAGE_EXTENSIONS, exif_orientation, unreadable_reason

log = logging.getLogger(__name__)

TRAIN_DIR, TEST_DIR = "train", "val"
# Files that are obviously not images: left out without a word each, but counted in the summary line.
NOT_IMAGES = (".txt", ".md", ".json", ".csv", ".tsv", ".yaml", ".yml", ".xml", ".html", ".ini", ".db", ".log", ".pdf")


@dataclass
class Split:
    paths: list[str]
    labels: list[int]
    orientations: dict[str, int] = field(default_factory=dict)  # EXIF orientation of the paths not upright (1)
    source: object | None = None  # where the bytes are when not in files (data.tfds_source.TfdsSource)

    def __len__(self) -> int:
        return len(self.paths)

    def upright_codes(self) -> list[int]:
        return [self.orientations.get(p, 1) for p in self.paths]

    def take(self, indices) -> Split:
        """The members at `indices`, with their orientations."""
        paths = [self.paths[i] for i in indices]
        turned = {p: self.orientations[p] for p in paths if p in self.orientations}
        return Split(paths, [self.labels[i] for i in indices], turned, self.source)


@dataclass
class Splits:
    root: Path
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    skipped: list[tuple[str, str]]
    ignored: int = 0  # hidden and non-image files

    def describe(self) -> dict:
        """What is needed to reproduce the split: relative paths per part."""
        def rel(split: Split) -> list[str]:
            return [os.path.relpath(p, self.root) for p in split.paths]

        return {
            "root": str(self.root),
            "class_names": self.class_names,
            "train": rel(self.train),
            "val": rel(self.val),
            "test": rel(self.test),
            "skipped": [{"path": os.path.relpath(p, self.root), "reason": r} for p, r in self.skipped],
            "orientation": {
                os.path.relpath(p, self.root): o
                for part in (self.train, self.val, self.test)
                for p, o in part.orientations.items()
            },
            **({"source": self.train.source.describe()} if self.train.source else {}),
        }


def dataset_root(data_dir: str | Path) -> Path:
    """Accept the folder holding train/ and val/, or its parent holding inaturalist_12K/."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    for candidate in (data_dir, data_dir / "inaturalist_12K"):
        if (candidate / TRAIN_DIR).is_dir() and (candidate / TEST_DIR).is_dir():
            return candidate
    raise DataError(
        f"{data_dir} does not hold {TRAIN_DIR}/ and {TEST_DIR}/ class folders "
        f"(expected <dir>/{TRAIN_DIR}/<class>/*.jpg and <dir>/{TEST_DIR}/<class>/*.jpg, or <dir>/inaturalist_12K/...)"
    )


@dataclass
class Listing:
    """One split folder: class names, the candidate image files with their labels, what was left out."""

    class_names: list[str]
    paths: list[str]
    labels: list[int]
    unsupported: list[tuple[str, str]]  # files that may be images but are of no readable format
    ignored: int  # hidden files and obvious non-images


def list_images(folder: Path) -> tuple[list[str], list[str], list[int]]:
    """Class names (sorted folder names), file paths and integer labels of one split folder."""
    listing = list_folder(folder)
    return listing.class_names, listing.paths, listing.labels


def list_folder(folder: Path) -> Listing:
    if not folder.is_dir():
        raise DataError(f"split folder not found: {folder}")
    class_names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_names:
        raise DataError(f"{folder} has no class folders (expected {folder}/<class>/<image>)")
    paths, labels, unsupported, ignored = [], [], [], 0
    for label, name in enumerate(class_names):
        found, odd, left_out = walk_images(folder / name)
        unsupported, ignored = unsupported + odd, ignored + left_out
        if not found:
            raise DataError(f"class folder {folder / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += found
        labels += [label] * len(found)
    return Listing(class_names, paths, labels, sorted(unsupported), ignored)


def walk_images(folder: Path) -> tuple[list[str], list[tuple[str, str]], int]:
    """The image files under `folder` and its nested folders (hidden ones skipped), sorted; the files of no
    readable format, with the reason; and the count of hidden files and obvious non-images left out."""
    found, unsupported, ignored = [], [], 0
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in files:
            path, suffix = os.path.join(parent, file), os.path.splitext(file)[1].lower()
            if file.startswith(".") or suffix in NOT_IMAGES:
                ignored += 1
            elif suffix in IMAGE_EXTENSIONS:
                found.append(path)
            else:
                unsupported.append((path, f"not a supported image format ({', '.join(IMAGE_EXTENSIONS)})"))
    return sorted(found), sorted(unsupported), ignored


def _read_header(path: str) -> tuple[bool, int]:
    """(whether the header reads, the EXIF orientation): no pixels are decoded here."""
    try:
        return True, exif_orientation(path)
    except (OSError, ValueError, SyntaxError):
        return False, 1


def read_headers(paths: list[str]) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """The files whose header cannot be read, with their reasons, and the EXIF orientations that are not
    upright. Pixels are decoded once, later, by the cache (data.cache.decode_once)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(zip(paths, pool.map(_read_header, paths)))
    bad = [(p, unreadable_reason(p) or "unreadable header") for p, (ok, _) in results.items() if not ok]
    return sorted(bad), {p: o for p, (ok, o) in results.items() if ok and o != 1}


def find_unreadable(paths: list[str]) -> list[tuple[str, str]]:
    """Every file that cannot be used, with its reason (a full check, for the test list that evaluate reads)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return [(p, r) for p, r in zip(paths, pool.map(unreadable_reason, paths)) if r]


def _drop(paths, labels, bad_paths):
    kept = [(p, y) for p, y in zip(paths, labels) if p not in bad_paths]
    return [p for p, _ in kept], [y for _, y in kept]


def load_splits(root: Path, val_fraction: float, seed: int, config: TrainConfig | None = None) -> Splits:
    """train/ -> stratified train/validation (none when val_fraction is 0); val/ is only the test set.

    The split is made from every file whose header reads; each part is then decoded once into the cache
    at the config's image size (the defaults' without one), and the files that do not decode leave it.
    So the same files give the same split whether or not their failures are already known."""
    train, test = list_folder(root / TRAIN_DIR), list_folder(root / TEST_DIR)
    if test.class_names != train.class_names:
        raise DataError(
            f"the test set's classes differ from train's: only in {TRAIN_DIR}/: "
            f"{sorted(set(train.class_names) - set(test.class_names)) or 'none'}; only in {TEST_DIR}/: "
            f"{sorted(set(test.class_names) - set(train.class_names)) or 'none'}"
        )
    unreadable, orientations = read_headers(train.paths + test.paths)
    skipped = train.unsupported + test.unsupported + unreadable
    bad = {p for p, _ in skipped}
    train_part, test_part = (Split(*_drop(part.paths, part.labels, bad)) for part in (train, test))
    for part in (train_part, test_part):
        part.orientations.update({p: orientations[p] for p in part.paths if p in orientations})
    return split_and_decode(root, train.class_names, train_part, test_part, skipped, train.ignored + test.ignored,
                            val_fraction, seed, config)  # fmt: skip


def split_and_decode(root: Path, class_names: list[str], train: Split, test: Split, skipped: list, ignored: int,
                     val_fraction: float, seed: int, config: TrainConfig | None) -> Splits:  # fmt: skip
    """The part of making a split that every source shares: stratify train into train and validation,
    decode each part once (dropping what fails), report what was left out. Members are drawn by file name,
    and parts keep the listing's order (a TFDS source reads its records in that order)."""
    counts = np.bincount(train.labels, minlength=len(class_names))
    if counts.min() < 2:
        empty = [class_names[i] for i in np.flatnonzero(counts < 2)]
        raise DataError(f"{root / TRAIN_DIR}: class(es) {', '.join(empty)} have fewer than 2 readable images")
    if val_fraction:
        check_stratifiable(root, len(train), len(class_names), val_fraction)
        by_name = sorted(range(len(train)), key=lambda i: train.paths[i])  # the same split for any listing order
        fit, held_out = train_test_split(np.asarray(by_name), test_size=val_fraction, random_state=seed,
                                         stratify=[train.labels[i] for i in by_name])  # fmt: skip
    else:  # retraining a chosen configuration on all of train/
        fit, held_out = np.arange(len(train)), np.arange(0)
    skipped = list(skipped)

    def decoded(part: Split, training=False) -> Split:
        kept, failed = decode_part(part, config or TrainConfig(), training)
        skipped.extend(failed)
        return kept

    parts = decoded(train.take(sorted(fit)), True), decoded(train.take(sorted(held_out))), decoded(test)
    skipped.sort()
    if skipped:
        names = "\n  ".join(f"{p}: {reason}" for p, reason in skipped)
        log.warning("skipped %d unreadable image(s) or unsupported file(s):\n  %s", len(skipped), names)
    log.info("%s: %d training and %d test images in %d classes; %d skipped, %d hidden or non-image file(s) ignored",
             root, len(parts[0]) + len(parts[1]), len(parts[2]), len(class_names), len(skipped), ignored)  # fmt: skip
    counts = np.bincount(parts[0].labels, minlength=len(class_names))
    if counts.min() < 1:
        empty = [class_names[i] for i in np.flatnonzero(counts < 1)]
        raise DataError(f"{root / TRAIN_DIR}: class(es) {', '.join(empty)} have no training image that decodes")
    return Splits(root, class_names, *parts, skipped, ignored)


def decode_part(split: Split, config: TrainConfig, training: bool) -> tuple[Split, list[tuple[str, str]]]:
    """Decode a part once into the cache that training will read (a disk-cached training part in the
    shards the pipeline reads): the members that decoded, and the others with their reasons."""
    if not len(split):
        return split, []
    channels, size = config.image_channels(), decode_size(config, training)
    mode = cache_mode(split, size, channels, config.cache)
    units = cache_units(split, mode, config.shuffle_buffer, config.seed) if training else [split]
    results = [decode_once(unit, size, channels, mode) for unit in units]
    kept = {p for unit, _ in results for p in unit.paths}
    return split.take([i for i, p in enumerate(split.paths) if p in kept]), [b for _, bad in results for b in bad]


def check_stratifiable(root: Path, images: int, classes: int, val_fraction: float) -> None:
    """A stratified split needs every class in both parts (scikit-learn's own error is a traceback)."""
    held_out = math.ceil(val_fraction * images)
    if held_out >= classes and images - held_out >= classes:
        return
    low, high = classes / images, 1 - classes / images
    accepted = f"between {low:.2f} and {high:.2f}" if low < high else "0 (too few images to hold any out)"
    raise DataError(
        f"--val-fraction {val_fraction} cannot split the {images} training images of {root / TRAIN_DIR} by class: "
        f"{held_out} validation and {images - held_out} training images for {classes} classes, and each part needs "
        f"one image of every class; use a val_fraction {accepted}, or add images"
    )
