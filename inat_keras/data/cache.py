"""The project's cache folder and the decoded-image cache: each split decoded once, in memory or on disk.

A disk cache is named by everything that makes its images (decoder, size, channels, every file's path,
label, size and modification time), so a changed file or decoder never reuses old pixels.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from ..config import CACHE_MODES
from ..files import publish_dir, remove_abandoned, staging_dir

log = logging.getLogger(__name__)

CACHE_HOME = Path(os.environ.get("INAT_KERAS_CACHE", Path.home() / ".cache" / "inat_keras"))
MEMORY_FRACTION = 0.25  # of the available memory, per split (a run caches train, validation and test)
DECODER = "decode-2"  # in every disk-cache key: decoding differently must not reuse old images (2: EXIF, alpha)


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
    digest = hashlib.sha1(f"{DECODER}|{image_size}|{channels}".encode())
    for path, label, orientation in zip(split.paths, split.labels, split.upright_codes()):
        digest.update(f"\n{label}|{orientation}|{file_key(path)}".encode())
    return f"{image_size}x{image_size}x{channels}-{digest.hexdigest()[:20]}"


def fill_disk_cache(decoded: tf.data.Dataset, folder: Path) -> str:
    """Write the decoded split once and return the cache's file prefix.

    The cache is written into a private folder that is renamed to `folder` only after the last image,
    so `folder` exists only complete: an interrupted fill is never read back, and the next run refills.
    """
    prefix = str(folder / "images")
    if folder.is_dir():
        return prefix
    remove_abandoned(folder)
    partial = staging_dir(folder)
    log.info("decoding %s once into the disk cache", folder.name)
    decoded.cache(str(partial / "images")).reduce(np.int64(0), lambda n, _: n + 1)
    publish_dir(partial, folder)
    return prefix


def cache_mode(split, image_size: int, channels: int, mode: str) -> str:
    """memory or disk: `auto` keeps a split in memory if it fits in MEMORY_FRACTION of what is free."""
    if mode not in CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
    if mode == "auto":
        needed = len(split) * image_size * image_size * channels
        mode = "memory" if needed <= MEMORY_FRACTION * available_memory() else "disk"
    return mode


def cache_decoded(decoded: tf.data.Dataset, split, image_size: int, channels: int, mode: str) -> tf.data.Dataset:
    """Keep the resized images after their first decode: in memory if they fit, else on disk."""
    if cache_mode(split, image_size, channels, mode) == "memory":
        return decoded.cache()
    return decoded.cache(fill_disk_cache(decoded, CACHE_HOME / "decoded" / cache_key(split, image_size, channels)))
