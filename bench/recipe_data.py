"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package as the project's folder layout.

The recipe evidence needs real images that can be had offline. No PyPI or Debian package found here
ships a colour photo dataset inside the package (the CIFAR, STL-10, EuroSAT, MedMNIST, flower and
TinyImageNet packages on PyPI all download at run time); Debian's `dataset-fashion-mnist`
(0.0~git20200523.55506a9-1, a 30.9 MB .deb, Expat licence, Zalando SE) ships the whole of Fashion-MNIST:
70,000 real 28x28 grayscale product photos in 10 classes. This draws a stratified subset of its training
set into train/<class>/ (the runs split it into training and validation) and of its test set into
val/<class>/ (the project's test set), as PNG files.

    apt-get install dataset-fashion-mnist
    python bench/recipe_data.py --out ~/.cache/inat_keras/fashion_mnist_250_100
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inat_keras.files import publish_dir, staging_dir  # noqa: E402

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")
PARTS = {"train": "train", "val": "t10k"}  # the project's folder name -> Fashion-MNIST's file prefix


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (big-endian dimension sizes after a 4-byte magic number) as a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def stratified_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picks = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in range(len(CLASSES))]
    return np.sort(np.concatenate(picks))


def write_folder(out: Path, source: Path, per_class: dict[str, int], seed: int) -> Path:
    if out.is_dir():
        return out
    if not (source / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"error: Fashion-MNIST not found in {source}; install it with `apt-get install dataset-fashion-mnist`")
    rng = np.random.default_rng(seed)
    staging = staging_dir(out)
    for part, prefix in PARTS.items():
        images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
        for index in stratified_subset(labels, per_class[part], rng):
            folder = staging / part / CLASSES[labels[index]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(folder / f"{prefix}_{index:05d}.png")
    return publish_dir(staging, out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to create (kept if it exists)")
    parser.add_argument("--source", type=Path, default=SOURCE, help="folder with the four IDX files")
    parser.add_argument("--train-per-class", type=int, default=250, help="images per class from the training set")
    parser.add_argument("--test-per-class", type=int, default=100, help="images per class from the test set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = write_folder(args.out.expanduser(), args.source, {"train": args.train_per_class, "val": args.test_per_class}, args.seed)
    print(out)


if __name__ == "__main__":
    main()
