"""Photo-like JPEG folders, for measuring the input pipeline where the real dataset is absent.

Flat colours would flatter the decoder: JPEG time grows with the detail it encodes. These images have
texture at every scale (noise whose amplitude falls slowly with frequency, as in natural photos) and
come out at about the size of an iNaturalist-12K photo: 800x600, ~120 KB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..files import publish_dir, staging_dir
from .cache import CACHE_HOME
from .splits import TEST_DIR, TRAIN_DIR

WIDTH, HEIGHT, QUALITY = 800, 600, 90
SCALES = (3, 6, 12, 24, 48, 96, 192)  # noise cells across the width, coarse to fine
VERSION = "photos-1"  # in the cached folder's name: a different generator must not reuse old files


def photo(rng: np.random.Generator, tint: np.ndarray, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """One uint8 RGB image: brightness texture at every scale, weaker colour texture, a tint."""
    texture = np.zeros((height, width, 3), np.float32)
    for cells in SCALES:
        grid = rng.normal(size=(cells * height // width + 2, cells + 2, 3)).astype(np.float32)
        grid[..., 1:] *= 0.3  # channel 0 is brightness, 1-2 colour
        layer = [np.asarray(Image.fromarray(grid[..., c]).resize((width, height), Image.BICUBIC)) for c in range(3)]
        texture += np.stack(layer, axis=-1) * cells**-0.35
    texture += rng.normal(scale=0.08, size=texture.shape).astype(np.float32)
    texture /= texture[..., 0].std() + 1e-6
    to_rgb = np.array([[1.0, 1.0, 1.0], [0.6, -0.3, -0.3], [0.0, 0.5, -0.5]], np.float32)
    return np.clip(tint + 40.0 * texture @ to_rgb, 0, 255).astype(np.uint8)


def write_photo_folder(root: Path, classes: int, per_class: dict[str, int], seed: int = 0) -> Path:
    """root/<split>/class_<k>/*.jpg, each class with its own tint."""
    rng = np.random.default_rng(seed)
    tints = rng.uniform(70, 170, size=(classes, 3)).astype(np.float32)
    for split, count in per_class.items():
        for k in range(classes):
            folder = root / split / f"class_{k:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(photo(rng, tints[k])).save(folder / f"{i:04d}.jpg", quality=QUALITY)
    return root


def cached_photo_folder(train_images: int) -> Path:
    """A dataset folder (train/ and val/) of about `train_images` photos in up to 10 classes, made once
    under the cache; small folders get fewer classes, so that a 20% validation split holds each class."""
    classes = max(2, min(10, train_images // 10))
    per_class = max(5, -(-train_images // classes))
    root = CACHE_HOME / "synthetic" / f"{VERSION}-{classes}x{per_class}"
    if root.is_dir():
        return root
    partial = staging_dir(root)
    write_photo_folder(partial, classes, {TRAIN_DIR: per_class, TEST_DIR: max(1, per_class // 5)})
    return publish_dir(partial, root)
