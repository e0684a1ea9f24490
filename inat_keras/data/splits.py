"""Which image goes where: class folders listed (nested folders walked, as
keras.utils.image_dataset_from_directory does), every file used or skipped with a reason, EXIF
orientations read, train/ split into train and validation (stratified), val/ kept as the test set;
and the record of a split that a run saves."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from sklearn.model_selection import train_test_split

from ..errors import DataError
from ..files import write_text
from .cache import CACHE_HOME, file_key
from .decode import IMAGE_EXTENSIONS, decode_rgb, exif_orientation

log = logging.getLogger(__name__)

TRAIN_DIR, TEST_DIR = "train", "val"
# Files that are obviously not images: left out without a word each, but counted in the summary line.
NOT_IMAGES = (".txt", ".md", ".json", ".csv", ".tsv", ".yaml", ".yml", ".xml", ".html", ".ini", ".db", ".log", ".pdf")


@dataclass
class Split:
    paths: list[str]
    labels: list[int]
    orientations: dict[str, int] = field(default_factory=dict)  # EXIF orientation of the paths not upright (1)

    def __len__(self) -> int:
        return len(self.paths)

    def upright_codes(self) -> list[int]:
        return [self.orientations.get(p, 1) for p in self.paths]

    def take(self, indices) -> Split:
        """The members at `indices`, with their orientations."""
        paths = [self.paths[i] for i in indices]
        return Split(paths, [self.labels[i] for i in indices], {p: self.orientations[p] for p in paths if p in self.orientations})


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
        found = []
        for parent, dirs, files in os.walk(folder / name, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for file in files:
                path, suffix = os.path.join(parent, file), os.path.splitext(file)[1].lower()
                if file.startswith(".") or suffix in NOT_IMAGES:
                    ignored += 1
                elif suffix in IMAGE_EXTENSIONS:
                    found.append(path)
                else:
                    unsupported.append((path, f"not a supported image format ({', '.join(IMAGE_EXTENSIONS)})"))
        if not found:
            raise DataError(f"class folder {folder / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += sorted(found)
        labels += [label] * len(found)
    return Listing(class_names, paths, labels, sorted(unsupported), ignored)


def _check_one(path: str) -> tuple[str | None, int]:
    """(why it cannot be used, or None; its EXIF orientation), with the pipeline's own decoder."""
    try:
        image = decode_rgb(tf.io.read_file(path), 1)
        if image.shape[0] < 1 or image.shape[1] < 1:
            return "empty image", 1
        return None, exif_orientation(path)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnknownError) as err:
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:.*$", "", err.message.splitlines()[0])
        return message.strip()[:200], 1
    except (OSError, ValueError, SyntaxError) as err:  # PIL cannot read a header that TensorFlow decoded
        return f"unreadable header: {err}"[:200], 1


def scan_images(paths: list[str]) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Decode every file once; returns the unreadable ones with their reasons and the EXIF orientations
    that are not upright. Good files are remembered by path, size and mtime, with their orientation."""
    cache_file = CACHE_HOME / "checked" / (hashlib.sha1("\n".join(sorted(paths)).encode()).hexdigest() + ".json")
    known = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    known = known if isinstance(known, dict) else {}
    keys = {p: file_key(p) for p in paths}
    todo = [p for p in paths if keys[p] not in known]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(zip(todo, pool.map(_check_one, todo)))
    bad = [(p, reason) for p, (reason, _) in results.items() if reason]
    good = {**known, **{keys[p]: orientation for p, (reason, orientation) in results.items() if not reason}}
    if todo:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_text(cache_file, json.dumps(good))
    orientations = {p: good[keys[p]] for p in paths if good.get(keys[p], 1) != 1}
    return sorted(bad), orientations


def find_unreadable(paths: list[str]) -> list[tuple[str, str]]:
    return scan_images(paths)[0]


def _drop(paths, labels, bad_paths):
    kept = [(p, y) for p, y in zip(paths, labels) if p not in bad_paths]
    return [p for p, _ in kept], [y for _, y in kept]


def load_splits(root: Path, val_fraction: float, seed: int) -> Splits:
    """train/ -> stratified train/validation (none when val_fraction is 0); val/ is only the test set."""
    train, test = list_folder(root / TRAIN_DIR), list_folder(root / TEST_DIR)
    class_names = train.class_names
    if test.class_names != class_names:
        raise DataError(
            f"the test set's classes differ from train's: only in {TRAIN_DIR}/: "
            f"{sorted(set(class_names) - set(test.class_names)) or 'none'}; only in {TEST_DIR}/: "
            f"{sorted(set(test.class_names) - set(class_names)) or 'none'}"
        )
    unreadable, orientations = scan_images(train.paths + test.paths)
    skipped = sorted(train.unsupported + test.unsupported + unreadable)
    bad = {p for p, _ in skipped}
    train_paths, train_labels = _drop(train.paths, train.labels, bad)
    test_paths, test_labels = _drop(test.paths, test.labels, bad)
    if skipped:
        names = "\n  ".join(f"{p}: {reason}" for p, reason in skipped)
        log.warning("skipped %d unreadable image(s) or unsupported file(s):\n  %s", len(skipped), names)
    log.info("%s: %d training and %d test images in %d classes; %d skipped, %d hidden or non-image file(s) ignored",
             root, len(train_paths), len(test_paths), len(class_names), len(skipped), train.ignored + test.ignored)  # fmt: skip
    counts = np.bincount(train_labels, minlength=len(class_names))
    if counts.min() < 2:
        empty = [class_names[i] for i in np.flatnonzero(counts < 2)]
        raise DataError(f"{root / TRAIN_DIR}: class(es) {', '.join(empty)} have fewer than 2 readable images")
    if val_fraction:
        check_stratifiable(root, len(train_paths), len(class_names), val_fraction)
        fit_paths, val_paths, fit_labels, val_labels = train_test_split(
            train_paths, train_labels, test_size=val_fraction, stratify=train_labels, random_state=seed
        )
    else:  # retraining a chosen configuration on all of train/
        fit_paths, val_paths, fit_labels, val_labels = train_paths, [], train_labels, []

    def part(paths, labels):
        return Split(list(paths), [int(y) for y in labels], {p: orientations[p] for p in paths if p in orientations})

    return Splits(root, class_names, part(fit_paths, fit_labels), part(val_paths, val_labels),
                  part(test_paths, test_labels), skipped, train.ignored + test.ignored)  # fmt: skip


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


def splits_from_record(record: dict) -> Splits:
    """Rebuild the exact split a run saved (split.json), its skipped files included."""
    root = Path(record["root"])
    names = record["class_names"]

    turned = record.get("orientation", {})

    def part(rel_paths):
        paths = [str(root / p) for p in rel_paths]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise DataError(f"{len(missing)} file(s) of the saved split are gone, e.g. {missing[0]}")
        labels = [names.index(Path(p).parts[1]) for p in rel_paths]  # <split>/<class>/[folders/]file
        return Split(paths, labels, {str(root / p): turned[p] for p in rel_paths if p in turned})

    skipped = [(str(root / s["path"]), s["reason"]) for s in record.get("skipped", [])]
    return Splits(root, names, part(record["train"]), part(record["val"]), part(record["test"]), skipped)
