"""Which image goes where: class folders listed, unreadable files found, train/ split into train and
validation (stratified), val/ kept as the test set; and the record of a split that a run saves."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from sklearn.model_selection import train_test_split

from ..errors import DataError
from ..files import write_text
from .cache import CACHE_HOME, file_key

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TRAIN_DIR, TEST_DIR = "train", "val"


@dataclass
class Split:
    paths: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Splits:
    root: Path
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    skipped: list[tuple[str, str]]

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


def list_images(folder: Path) -> tuple[list[str], list[str], list[int]]:
    """Class names (sorted folder names), file paths and integer labels of one split folder."""
    if not folder.is_dir():
        raise DataError(f"split folder not found: {folder}")
    class_names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_names:
        raise DataError(f"{folder} has no class folders (expected {folder}/<class>/<image>)")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = sorted(
            str(p) for p in (folder / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DataError(f"class folder {folder / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += files
        labels += [label] * len(files)
    return class_names, paths, labels


def _check_one(path: str) -> str | None:
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        if image.shape[0] < 1 or image.shape[1] < 1:
            return "empty image"
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnknownError) as err:
        return err.message.splitlines()[0][:200]
    return None


def find_unreadable(paths: list[str]) -> list[tuple[str, str]]:
    """Decode every file once with the pipeline's own decoder; remember good files by size and mtime."""
    cache_file = CACHE_HOME / "checked" / (hashlib.sha1("\n".join(sorted(paths)).encode()).hexdigest() + ".json")
    known: set[str] = set(json.loads(cache_file.read_text())) if cache_file.is_file() else set()
    keys = {p: file_key(p) for p in paths}
    todo = [p for p in paths if keys[p] not in known]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(zip(todo, pool.map(_check_one, todo)))
    bad = [(p, reason) for p, reason in results.items() if reason]
    good = known | {keys[p] for p, reason in results.items() if not reason}
    if todo:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_text(cache_file, json.dumps(sorted(good)))
    return sorted(bad)


def _drop(paths, labels, bad_paths):
    kept = [(p, y) for p, y in zip(paths, labels) if p not in bad_paths]
    return [p for p, _ in kept], [y for _, y in kept]


def load_splits(root: Path, val_fraction: float, seed: int) -> Splits:
    """train/ -> stratified train/validation (none when val_fraction is 0); val/ is only the test set."""
    class_names, train_paths, train_labels = list_images(root / TRAIN_DIR)
    test_names, test_paths, test_labels = list_images(root / TEST_DIR)
    if test_names != class_names:
        raise DataError(
            f"the test set's classes differ from train's: only in {TRAIN_DIR}/: "
            f"{sorted(set(class_names) - set(test_names)) or 'none'}; only in {TEST_DIR}/: "
            f"{sorted(set(test_names) - set(class_names)) or 'none'}"
        )
    skipped = find_unreadable(train_paths + test_paths)
    if skipped:
        names = "\n  ".join(f"{p}: {reason}" for p, reason in skipped)
        log.warning("skipped %d unreadable image(s):\n  %s", len(skipped), names)
        bad = {p for p, _ in skipped}
        train_paths, train_labels = _drop(train_paths, train_labels, bad)
        test_paths, test_labels = _drop(test_paths, test_labels, bad)
    counts = np.bincount(train_labels, minlength=len(class_names))
    if counts.min() < 2:
        empty = [class_names[i] for i in np.flatnonzero(counts < 2)]
        raise DataError(f"{root / TRAIN_DIR}: class(es) {', '.join(empty)} have fewer than 2 readable images")
    if val_fraction:
        fit_paths, val_paths, fit_labels, val_labels = train_test_split(
            train_paths, train_labels, test_size=val_fraction, stratify=train_labels, random_state=seed
        )
    else:  # retraining a chosen configuration on all of train/
        fit_paths, val_paths, fit_labels, val_labels = train_paths, [], train_labels, []
    return Splits(
        root=root,
        class_names=class_names,
        train=Split(list(fit_paths), [int(y) for y in fit_labels]),
        val=Split(list(val_paths), [int(y) for y in val_labels]),
        test=Split(test_paths, test_labels),
        skipped=skipped,
    )


def splits_from_record(record: dict) -> Splits:
    """Rebuild the exact split a run saved (split.json), its skipped files included."""
    root = Path(record["root"])
    names = record["class_names"]

    def part(rel_paths):
        paths = [str(root / p) for p in rel_paths]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise DataError(f"{len(missing)} file(s) of the saved split are gone, e.g. {missing[0]}")
        return Split(paths, [names.index(Path(p).parent.name) for p in rel_paths])

    skipped = [(str(root / s["path"]), s["reason"]) for s in record.get("skipped", [])]
    return Splits(root, names, part(record["train"]), part(record["val"]), part(record["test"]), skipped)
