"""Image folders -> checked file lists -> stratified splits -> tf.data pipelines.

The same pipeline feeds both backends. Images leave it as float32 pixels in
0..255; normalisation is the model's first layer, so augmentation always runs
before it and saved models accept raw pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.model_selection import train_test_split

from .config import TrainConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TRAIN_DIR, TEST_DIR = "train", "val"
CACHE_HOME = Path(os.environ.get("INAT_KERAS_CACHE", Path.home() / ".cache" / "inat_keras"))
CACHE_MODES = ("auto", "memory", "disk")
MEMORY_FRACTION = 0.25  # of the available memory, per split (a run caches train, validation and test)
DECODER = "jpeg-ratio-1"  # in every disk-cache key: decoding differently must not reuse old images
JPEG_RATIOS = (1, 2, 4, 8)  # the scalings libjpeg decodes to directly


class DataError(ValueError):
    """The data on disk cannot be used as given; the message names the place."""


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


def _scan_key(path: str) -> str:
    stat = os.stat(path)
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def find_unreadable(paths: list[str]) -> list[tuple[str, str]]:
    """Decode every file once with the pipeline's own decoder; remember good files by size and mtime."""
    cache_file = CACHE_HOME / "checked" / (hashlib.sha1("\n".join(sorted(paths)).encode()).hexdigest() + ".json")
    known: set[str] = set(json.loads(cache_file.read_text())) if cache_file.is_file() else set()
    keys = {p: _scan_key(p) for p in paths}
    todo = [p for p in paths if keys[p] not in known]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(zip(todo, pool.map(_check_one, todo)))
    bad = [(p, reason) for p, reason in results.items() if reason]
    good = known | {keys[p] for p, reason in results.items() if not reason}
    if todo:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(good)))
        os.replace(tmp, cache_file)
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
    """Rebuild the exact split a run saved (split.json)."""
    root = Path(record["root"])
    names = record["class_names"]

    def part(rel_paths):
        paths = [str(root / p) for p in rel_paths]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise DataError(f"{len(missing)} file(s) of the saved split are gone, e.g. {missing[0]}")
        return Split(paths, [names.index(Path(p).parent.name) for p in rel_paths])

    return Splits(root, names, part(record["train"]), part(record["val"]), part(record["test"]), [])


def jpeg_ratio_index(contents: tf.Tensor, image_size: int) -> tf.Tensor:
    """Index into JPEG_RATIOS of the largest ratio that still decodes both sides to >= image_size.

    Decoding at 1/r costs about 1/r^2 of a full decode; the antialiased resize that follows sees
    nearly the same picture (libjpeg's scaled IDCT averages the pixels it drops).
    """
    height, width = tf.unstack(tf.image.extract_jpeg_shape(contents)[:2])
    short = tf.minimum(height, width)
    return tf.add_n([tf.cast(short // r >= image_size, tf.int32) for r in JPEG_RATIOS[1:]])


def decode_rgb(contents: tf.Tensor, image_size: int) -> tf.Tensor:
    """JPEGs at the reduced ratio their size allows, any other format (PNG, GIF, BMP) in full."""

    def jpeg():
        branches = [lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r) for r in JPEG_RATIOS]
        return tf.switch_case(jpeg_ratio_index(contents, image_size), branches)

    def other():
        return tf.io.decode_image(contents, channels=3, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(contents), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def decode_resize(path: tf.Tensor, image_size: int, channels: int) -> tf.Tensor:
    """Any JPEG/PNG (grayscale, CMYK, alpha) -> RGB or gray, squashed to image_size, uint8."""
    image = decode_rgb(tf.io.read_file(path), image_size)
    if channels == 1:
        image = tf.image.rgb_to_grayscale(image)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def available_memory() -> int:
    """Bytes the system can still give (MemAvailable on Linux; half the physical memory elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def cache_key(split: Split, image_size: int, channels: int) -> str:
    """Names one split's decoded images: decoder, size, channels, and every file's path, label, size and mtime."""
    digest = hashlib.sha1(f"{DECODER}|{image_size}|{channels}".encode())
    for path, label in zip(split.paths, split.labels):
        digest.update(f"\n{label}|{_scan_key(path)}".encode())
    return f"{image_size}x{image_size}x{channels}-{digest.hexdigest()[:20]}"


def _remove_abandoned(folder: Path) -> None:
    """Partial caches of processes that no longer run: they stopped before finishing."""
    for partial in folder.parent.glob(f"{folder.name}.partial-*"):
        try:
            os.kill(int(partial.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def fill_disk_cache(decoded: tf.data.Dataset, folder: Path) -> str:
    """Write the decoded split once and return the cache's file prefix.

    The cache is written into a private folder that is renamed to `folder` only after the last image,
    so `folder` exists only complete: an interrupted fill is never read back, and the next run refills.
    """
    prefix = str(folder / "images")
    if folder.is_dir():
        return prefix
    _remove_abandoned(folder)
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log.info("decoding %s once into the disk cache", folder.name)
    decoded.cache(str(partial / "images")).reduce(np.int64(0), lambda n, _: n + 1)
    try:
        os.rename(partial, folder)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(partial, ignore_errors=True)
    return prefix


def cache_decoded(decoded: tf.data.Dataset, split: Split, image_size: int, channels: int, mode: str) -> tf.data.Dataset:
    """Keep the resized images after their first decode: in memory if they fit, else on disk."""
    if mode not in CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
    if mode == "auto":
        needed = len(split) * image_size * image_size * channels
        mode = "memory" if needed <= MEMORY_FRACTION * available_memory() else "disk"
    if mode == "memory":
        return decoded.cache()
    return decoded.cache(fill_disk_cache(decoded, CACHE_HOME / "decoded" / cache_key(split, image_size, channels)))


def augmenter(config: TrainConfig) -> keras.layers.Pipeline | None:
    """Keras preprocessing layers, run inside tf.data (never inside the model, which keeps JAX jit on)."""
    if not config.augment:
        return None
    seed = config.seed
    steps = []
    if config.flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if config.rotation:
        steps.append(keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=seed + 1))
    if config.zoom:
        steps.append(keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed + 2))
    if config.color_jitter and getattr(config, "channels", 3) == 3:
        j = config.color_jitter
        steps.append(
            keras.layers.RandomColorJitter(
                value_range=(0, 255), brightness_factor=j, contrast_factor=j, saturation_factor=j, seed=seed + 3
            )
        )
    return keras.layers.Pipeline(steps) if steps else None


def make_dataset(
    split: Split,
    config: TrainConfig,
    training: bool,
    channels: int = 3,
    cache: str = "auto",
    batch_size: int | None = None,
    even_batches: bool = False,
    epochs: tuple[int, int] = (0, 1),
) -> tf.data.Dataset:
    """Decode in parallel and cache the resized images (`cache`: auto, memory or disk), so that later
    epochs decode nothing; then shuffle and augment (training only, fresh every epoch), batch, prefetch.

    Training yields the epochs [first, last) as one stream (fit needs `steps_per_epoch`); each epoch is
    shuffled with a seed of its own, so the order is the same on any device count and after a resume.
    `even_batches` (data parallelism splits every batch evenly over devices and processes): training
    drops a last partial batch, a different one each epoch; evaluation pads it to a full batch with
    zero-weight images, so that each real image still counts exactly once.
    """
    batch_size = batch_size or config.batch_size
    ds = tf.data.Dataset.from_tensor_slices((split.paths, np.asarray(split.labels, dtype="int32")))
    size = config.image_size
    ds = ds.map(lambda p, y: (decode_resize(p, size, channels), y), num_parallel_calls=tf.data.AUTOTUNE)
    ds = cache_decoded(ds, split, size, channels, cache)
    if training:
        ds = shuffled_epochs(ds, len(split), config.seed, epochs, batch_size, drop_remainder=even_batches)
    elif even_batches:
        ds = padded(ds, len(split), batch_size, (size, size, channels)).batch(batch_size, drop_remainder=True)
    else:
        ds = ds.batch(batch_size)
    ds = ds.map(lambda x, *rest: (tf.cast(x, tf.float32), *rest), num_parallel_calls=tf.data.AUTOTUNE)
    augment = augmenter(config) if training else None
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def padded(ds: tf.data.Dataset, size: int, batch_size: int, shape: tuple) -> tf.data.Dataset:
    """(image, label, weight 1) for each image, then (black image, 0, weight 0) up to a full last batch."""
    filler = tf.data.Dataset.from_tensors((tf.zeros(shape, tf.uint8), tf.constant(0, tf.int32), 0.0))
    return ds.map(lambda x, y: (x, y, 1.0)).concatenate(filler.repeat(-size % batch_size))


def shuffled_epochs(
    cached: tf.data.Dataset, size: int, seed: int, epochs: tuple[int, int], batch_size: int, drop_remainder: bool
) -> tf.data.Dataset:
    """No reshuffle state: tf.distribute copies the pipeline and loses such state (the order then
    differs from one device's); a seed per epoch is part of the pipeline itself."""

    def epoch(index):
        order = cached.shuffle(size, seed=index + seed * 100_003, reshuffle_each_iteration=False)
        return order.batch(batch_size, drop_remainder=drop_remainder)

    return tf.data.Dataset.range(*epochs).flat_map(epoch)


def steps_per_epoch(images: int, batch_size: int, even_batches: bool = False) -> int:
    return images // batch_size if even_batches else math.ceil(images / batch_size)
