"""Which image goes where: class folders listed (nested folders walked, as
keras.utils.image_dataset_from_directory does, each real folder and file once whatever links lead to it),
every file used or skipped with a reason, EXIF orientations read, train/ split into train and validation
(stratified), val/ kept as the test set; and the record of a split that a run saves."""

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
    unsupported: list[tuple[str, str]]  # files left out with their reason: of no readable format, reached twice
    # through links, in a hidden folder, outside any class folder (split.json's "skipped" keeps them)
    ignored: int  # hidden files and obvious non-images


@dataclass
class Found:
    """What a walk reached: images to read, files left out with their reason, and how many it ignored."""

    images: list[str] = field(default_factory=list)
    unsupported: list[tuple[str, str]] = field(default_factory=list)  # of no readable format
    left_out: list[tuple[str, str]] = field(default_factory=list)  # reached twice, in a hidden folder, or outside a class
    ignored: int = 0  # hidden files and obvious non-images


HIDDEN_FOLDER = "in a hidden folder, left out as hidden files are; move it out to use it"


class Walk:
    """The one walk of image folders (training's scan and predict's alike). Links are followed, and every folder and
    file is reached once by its real path: a link loop or a second way into a folder is not entered, a file reached
    a second time is used once; both are left out with the path that reached them first."""

    def __init__(self):
        self.folders: dict[str, str] = {}  # real path -> the path that reached it first
        self.files: dict[str, str] = {}

    @staticmethod
    def first(seen: dict[str, str], path: str) -> str | None:
        """None when `path` is the first to reach its real place (it claims it), else the path that was first."""
        real = os.path.realpath(path)
        if real in seen:
            return seen[real]
        seen[real] = path
        return None

    def folder(self, folder: Path, found: Found, hidden: bool = False, claimed: bool = False) -> Found:
        """Add the files under `folder` (`claimed`: by the caller already) and its nested folders, sorted, a folder's
        own files before a link's; the images of a hidden folder (or all, with `hidden`) are left out."""
        top = str(folder)
        if not claimed and (first := self.first(self.folders, top)):
            found.left_out.append((top, f"the same folder as {first}, read once"))
            return found
        for parent, dirs, files in os.walk(top, followlinks=True):
            below = os.path.relpath(parent, top)
            inside_hidden = hidden or (below != "." and any(part.startswith(".") for part in below.split(os.sep)))
            kept = []
            for name in _direct_first(parent, dirs):
                path = os.path.join(parent, name)
                if first := self.first(self.folders, path):
                    found.left_out.append((path, f"a link to {first}, already reached: its files count once"))
                else:
                    kept.append(name)
            dirs[:] = sorted(kept)
            for name in _direct_first(parent, files):
                self.file(os.path.join(parent, name), found, inside_hidden)
        return found

    def file(self, path: str, found: Found, hidden: bool = False) -> None:
        name = os.path.basename(path)
        suffix = os.path.splitext(name)[1].lower()
        if name.startswith(".") or suffix in NOT_IMAGES or (hidden and suffix not in IMAGE_EXTENSIONS):
            found.ignored += 1
        elif hidden:
            found.left_out.append((path, HIDDEN_FOLDER))
        elif first := self.first(self.files, path):
            found.left_out.append((path, f"the same file as {first} (through a link), used once"))
        elif suffix in IMAGE_EXTENSIONS:
            found.images.append(path)
        else:
            found.unsupported.append((path, f"not a supported image format ({', '.join(IMAGE_EXTENSIONS)})"))


def _direct_first(parent: str, names: list[str]) -> list[str]:
    """Names sorted, the real entries before the links: a file or folder is claimed by its own path first."""
    return sorted(names, key=lambda name: (os.path.islink(os.path.join(parent, name)), name))


def list_images(folder: Path) -> tuple[list[str], list[str], list[int]]:
    """Class names (sorted folder names), file paths and integer labels of one split folder."""
    listing = list_folder(folder)
    return listing.class_names, listing.paths, listing.labels


def list_folder(folder: Path, walk: Walk | None = None) -> Listing:
    """One split folder's classes and images. `walk`, shared by the split folders of one dataset, reaches each real
    folder and file once across them. Two class folders that are one folder are an error; images in hidden folders
    or directly in `folder` are left out with their reason."""
    if not folder.is_dir():
        raise DataError(f"split folder not found: {folder}")
    walk = walk or Walk()
    entries = sorted(folder.iterdir())
    classes = [d for d in entries if d.is_dir() and not d.name.startswith(".")]
    if not classes:
        raise DataError(f"{folder} has no class folders (expected {folder}/<class>/<image>)")
    for d in classes:  # all claimed first: a link inside one class to another is not walked as its own
        if first := walk.first(walk.folders, str(d)):
            raise DataError(f"class folder {d} is the same folder as {first} ({os.path.realpath(d)}) through a link; "
                            f"give each class a folder of its own (copy the images, or remove the link)")  # fmt: skip
    found, paths, labels = Found(), [], []
    for label, d in enumerate(classes):
        start = len(found.images)
        walk.folder(d, found, claimed=True)
        if len(found.images) == start:
            raise DataError(f"class folder {d} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += sorted(found.images[start:])
        labels += [label] * (len(found.images) - start)
    for entry in entries:
        if entry.is_dir() and entry.name.startswith("."):
            walk.folder(entry, found, hidden=True)
        elif not entry.is_dir() and not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_EXTENSIONS:
            found.left_out.append((str(entry), f"not inside a class folder ({folder}/<class>/<image>); move it into one"))
        elif not entry.is_dir():
            found.ignored += 1
    return Listing([d.name for d in classes], paths, labels, sorted(found.unsupported + found.left_out), found.ignored)


def first_few(paths: list[str], shown: int = 3) -> str:
    """`a, b, c and 4 more`: the first files of a list, and how many more it holds."""
    return ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def added_since(root: Path, record: dict) -> list[str]:
    """The files of train/ and val/ that a scan now uses or reports and that a saved split (split.json) does not
    name: added since it was made. A listing only, no header is read."""
    walk, now = Walk(), set()
    for part in (TRAIN_DIR, TEST_DIR):
        listing = list_folder(root / part, walk)
        now.update(listing.paths, (path for path, _ in listing.unsupported))
    named = {str(root / p) for part in ("train", "val", "test") for p in record[part]}
    named.update(str(root / s["path"]) for s in record.get("skipped", []))
    return sorted(now - named)


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
    walk = Walk()  # one for both folders: a file of val/ that is also in train/ is used once
    train, test = list_folder(root / TRAIN_DIR, walk), list_folder(root / TEST_DIR, walk)
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
        log.warning("skipped %d file(s), unreadable, unsupported or not where images are read:\n  %s", len(skipped), names)
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
