"""A saved model at work: loaded (with every class the project registers), its class names, its input shape,
and the forward pass, in inference mode; what training's final test and every serving command use."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import keras_cv  # noqa: F401  (registers the backbone classes that fine-tuned models use)
import numpy as np
import tensorflow as tf

from ..data.cache import tagged
from ..data.decode import exif_orientation
from ..data.sources import resolve_data_dir
from ..data.splits import Split, list_images
from ..errors import DataError
from ..models import layers  # noqa: F401  (registers the layer classes that the CNN uses)
from ..outputs.run_folder import SPLIT, read_split

EAGER_LIMIT = 32  # TensorFlow runs at most this many images op by op (runs_eagerly says why)


def load_checkpoint(path: str | Path) -> keras.Model:
    path = Path(path)
    if path.is_dir():
        hint = " (give its model.keras)" if (path / "model.keras").is_file() else ""
        raise DataError(f"{path} is a folder, not a .keras model file{hint}")
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    if path.suffix != ".keras":
        raise DataError(f"{path} is not a .keras model file (runs write model.keras)")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a readable Keras model: the .keras archive is truncated or corrupt")
    try:
        return keras.models.load_model(path, compile=False)  # inference only; skips the training optimizer
    except (ValueError, KeyError, OSError, TypeError, zipfile.BadZipFile) as err:
        # TypeError: Keras's safe mode refused a class or function that the archive names (crafted or foreign)
        raise DataError(f"{path} is not a readable Keras model of inat-keras ({' '.join(str(err).split())[:200]})") from None


def data_root(checkpoint: Path, data_dir: str | None, demo: bool) -> Path:
    if data_dir or demo:
        return resolve_data_dir(data_dir, demo)
    saved = read_split(checkpoint.parent)
    if saved is None:
        raise DataError(f"no {SPLIT} beside {checkpoint}: pass --data-dir or --demo")
    return Path(saved["root"])


def class_names_for(checkpoint: Path, model: keras.Model, data_dir: str | None, demo: bool) -> list[str]:
    saved = read_split(checkpoint.parent)
    if data_dir or demo or saved is None:
        names = list_images(data_root(checkpoint, data_dir, demo) / "train")[0]
    else:
        names = saved["class_names"]
    outputs = model.output_shape[-1]
    if len(names) != outputs:
        raise DataError(f"the model predicts {outputs} classes but the dataset has {len(names)}: {', '.join(names)}")
    return names


def image_shape(model: keras.Model) -> tuple[int, int]:
    """(size, channels) that the model's input expects."""
    _, height, _, channels = model.input_shape
    return int(height), int(channels)


def load_images(paths: list[str], size: int, channels: int) -> np.ndarray:
    """Files as the model sees them, upright by their EXIF orientation."""
    return split_images(Split(paths, [0] * len(paths), {p: exif_orientation(p) for p in paths}), size, channels)


def split_images(split: Split, size: int, channels: int) -> np.ndarray:
    """A split's images as the model sees them, from files or from TFDS records, in the split's order."""
    if not len(split):
        return np.zeros((0, size, size, channels), np.uint8)
    return np.stack([x for _, x, _ in tagged(split, size, channels).as_numpy_iterator()])


def runs_eagerly(images: int) -> bool:
    """TensorFlow runs a few images op by op: tracing a predict function costs more than the whole call
    (EfficientNetV2-S, 2 images at 32 px on CPU: 0.7 s eager, 4.7 s traced). JAX always runs the jitted
    predict step: op by op it compiles every operation on its own (a tiny CNN's first call: 5.7 s, jitted 0.5 s)."""
    return keras.backend.backend() == "tensorflow" and images <= EAGER_LIMIT


def forward(model: keras.Model, images: np.ndarray, eager: bool, batch_size: int = 0) -> np.ndarray:
    """Logits of one batch, in inference mode. Compiled, a batch shorter than `batch_size` is padded with black
    images to that size, so that the predict step compiles once, and their rows are cut off."""
    if eager:
        return keras.ops.convert_to_numpy(model(keras.ops.convert_to_tensor(images), training=False))
    count = len(images)
    if count < batch_size:
        images = np.concatenate([images, np.zeros((batch_size - count, *images.shape[1:]), images.dtype)])
    return np.asarray(model.predict_on_batch(images))[:count]


def predict_logits(model: keras.Model, dataset: tf.data.Dataset, flip: bool = False, eager: bool = False):
    """(logits, labels) of every image of `dataset`, in its order; of each image's horizontal mirror with
    `flip`. Batches are (images, labels) or (images, labels, weights), whose zero-weight padding
    (data.pipeline.padded) is dropped. Compiled (not `eager`), a short last batch is padded to the first
    batch's size (`forward`)."""
    logits, labels, size = [], [], None
    for x, y, padded_size in unpadded(dataset):
        size = size or padded_size
        if flip:
            x = np.ascontiguousarray(x[:, :, ::-1])
        logits.append(forward(model, x, eager, size))
        labels.append(y)
    return np.concatenate(logits).astype(np.float32), np.concatenate(labels)


def unpadded(dataset: tf.data.Dataset):
    """(images, labels, batch size before) per batch, without the zero-weight padding of (x, y, weight) batches."""
    for x, y, *weights in dataset.as_numpy_iterator():
        size = len(x)
        if weights:
            x, y = x[weights[0] > 0], y[weights[0] > 0]
        yield x, y, size


