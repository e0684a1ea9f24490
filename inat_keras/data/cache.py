"""The project's cache folder and the decoded-image cache: each split decoded once, in memory or on disk.

The decode that fills the cache is also the check that finds unreadable files (one pass, at the reduced
JPEG ratio): files that fail leave the split with their decoder's reason, and the images of the others
are kept for every later epoch. A disk cache is named by everything that makes its images (decoder, size,
channels, every file's path, label, size and modification time), so a changed file or decoder never
reuses old pixels; the members a listed split kept are recorded beside it, so a later run decodes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from ..config import CACHE_MODES
from ..errors import DataError
from ..files import CACHE_HOME, publish_dir, remove_abandoned, staging_dir, write_text
from .decode import decode_resize, unreadable_reason

log = logging.getLogger(__name__)

MEMORY_FRACTION = 0.25  # of the available memory, per split (a run caches train, validation and test)
DECODER = "decode-3"  # in every disk-cache key: decoding differently must not reuse old images (2: EXIF, alpha; 3: indexed members)


def file_key(path: str) -> str:
    """A file's identity for caches: its path, size and modification time."""
    stat = os.stat(path)
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def available_memory() -> int:
    """Bytes the system can still give (MemAvailable on Linux; half the physical memory elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def cache_key(split, image_size: int, channels: int) -> str:
    """Names one split's decoded images: decoder, size, channels, and every file's path, label, size and mtime."""
    source = getattr(split, "source", None)
    digest = hashlib.sha1(f"{DECODER}|{image_size}|{channels}|{source.identity() if source else ''}".encode())
    for path, label, orientation in zip(split.paths, split.labels, split.upright_codes()):
        digest.update(f"\n{label}|{orientation}|{path if source else file_key(path)}".encode())
    return f"{image_size}x{image_size}x{channels}-{digest.hexdigest()[:20]}"


def tagged(split, image_size: int, channels: int) -> tf.data.Dataset:
    """(index in the split, image, label) of every member that decodes; the failures are left out."""
    if getattr(split, "source", None):
        return split.source.tagged(split, image_size, channels).ignore_errors()
    ds = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(split)), split.paths, np.asarray(split.labels, "int32"), np.asarray(split.upright_codes(), "int32"))
    )
    ds = ds.map(lambda i, p, y, o: (i, decode_resize(p, image_size, channels, o), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.ignore_errors()


def _members(cached: tf.data.Dataset) -> list[int]:
    """Read a cache-filling dataset to its end (which completes the cache): the indices that came through."""
    indices = cached.map(lambda i, x, y: i).batch(4096)
    return [int(i) for batch in indices.as_numpy_iterator() for i in batch]


_MEMORY: dict[str, tuple[tf.data.Dataset, list[int]]] = {}  # this process's filled memory caches, by cache key


_GEOMETRIES: list[str] = []  # the image geometries of _MEMORY, most recent last
KEPT_GEOMETRIES = 2  # a run with random-resized crops caches its training split larger than the others


def _keep_in_memory(key: str, cached: tf.data.Dataset, members: list[int]) -> None:
    """The two most recent image geometries only: a sweep over image sizes must not pile up caches."""
    geometry = key.split("-", 1)[0]
    if geometry in _GEOMETRIES:
        _GEOMETRIES.remove(geometry)
    _GEOMETRIES.append(geometry)
    del _GEOMETRIES[:-KEPT_GEOMETRIES]
    for other in [k for k in _MEMORY if k.split("-", 1)[0] not in _GEOMETRIES]:
        del _MEMORY[other]
    _MEMORY[key] = (cached, members)


def _disk_folder(key: str) -> Path:
    return CACHE_HOME / "decoded" / key


def _disk_cache_of(key: str) -> Path:
    """The folder that holds a split's disk cache: its own, or that of the listed split it was kept from."""
    link = _disk_folder(key).with_suffix(".link")
    return _disk_folder(link.read_text().strip()) if link.is_file() else _disk_folder(key)


def _fill_disk(split, image_size: int, channels: int, folder: Path) -> None:
    """Write the decoded split and its member list into a private folder renamed to `folder` only once
    complete: an interrupted fill is never read back, and the next run refills."""
    remove_abandoned(folder)
    partial = staging_dir(folder)
    log.info("decoding %d images once into the disk cache %s", len(split), folder.name)
    members = _members(tagged(split, image_size, channels).cache(str(partial / "images")))
    write_text(partial / "members.json", json.dumps(members))
    publish_dir(partial, folder)


def decode_once(split, image_size: int, channels: int, mode: str):
    """Decode a split into its cache (memory or disk), if not done before: (the members that decoded, as a
    split, and the others with their reasons). The kept split's own key then finds the same cache."""
    key = cache_key(split, image_size, channels)
    if mode == "memory":
        if key not in _MEMORY:
            cached = tagged(split, image_size, channels).cache()
            _keep_in_memory(key, cached, _members(cached))
        cached, members = _MEMORY[key]
    else:
        folder = _disk_cache_of(key)
        if not (folder / "members.json").is_file():
            _fill_disk(split, image_size, channels, folder)
        members = json.loads((folder / "members.json").read_text())
    if len(members) == len(split):
        return split, []
    lost = sorted(set(range(len(split))) - set(members))
    source = getattr(split, "source", None)
    bad = [(split.paths[i], (None if source else unreadable_reason(split.paths[i])) or "could not be decoded") for i in lost]
    kept = split.take(members)
    kept_key = cache_key(kept, image_size, channels)
    if mode == "memory":
        _keep_in_memory(kept_key, cached, list(range(len(kept))))
    elif not _disk_folder(kept_key).is_dir():
        write_text(_disk_folder(kept_key).with_suffix(".link"), folder.name)
    return kept, bad


def cached_images(split, image_size: int, channels: int, mode: str) -> tf.data.Dataset:
    """(image, label) of a split, read from its cache (decoded now if it is not there yet). Every member
    must decode: the split was checked when it was made, so a failure now means the file changed."""
    kept, bad = decode_once(split, image_size, channels, mode)
    if bad:
        path, reason = bad[0]
        raise DataError(f"{len(bad)} image(s) of the split can no longer be decoded, e.g. {path}: {reason}")
    key = cache_key(split, image_size, channels)
    if mode == "memory":
        cached = _MEMORY[key][0]
    else:
        cached = tagged(split, image_size, channels).cache(str(_disk_cache_of(key) / "images"))  # reads, decodes nothing
    # ignore_errors leaves the count unknown; tf.distribute then mis-reports the last validation step
    return cached.map(lambda i, x, y: (x, y)).apply(tf.data.experimental.assert_cardinality(len(split)))


def cache_units(split, mode: str, buffer: int, seed: int) -> list:
    """How a training split is cached: whole, or in shards when it is on disk and larger than the buffer."""
    return shards_of(split, buffer, seed) if mode == "disk" and len(split) > buffer else [split]


def shards_of(split, buffer: int, seed: int) -> list:
    """The split in about len/buffer disk-cached shards, each member's shard fixed by its path and the
    seed: dropping an unreadable file moves no other file to another shard."""
    count = min(64, math.ceil(len(split) / buffer))
    shard = [int(hashlib.sha1(f"{seed}|{p}".encode()).hexdigest()[:8], 16) % count for p in split.paths]
    parts = [[i for i, s in enumerate(shard) if s == k] for k in range(count)]
    return [split.take(part) for part in parts if part]


def cache_mode(split, image_size: int, channels: int, mode: str) -> str:
    """memory or disk: `auto` keeps a split in memory if it fits in MEMORY_FRACTION of what is free."""
    if mode not in CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
    if mode == "auto":
        needed = len(split) * image_size * image_size * channels
        mode = "memory" if needed <= MEMORY_FRACTION * available_memory() else "disk"
    return mode
