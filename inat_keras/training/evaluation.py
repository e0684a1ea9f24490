"""A model on the test split: logits, metrics and pictures; and top-k classes for image files."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ..analysis.plots import grid_indices, plot_confusion, plot_predictions
from ..data.cache import tagged
from ..data.decode import exif_orientation
from ..data.splits import Split


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


def predict_logits(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = [], []
    for x, y in dataset:
        logits.append(keras.ops.convert_to_numpy(model(keras.ops.convert_to_tensor(x.numpy()), training=False)))
        labels.append(y.numpy())
    return np.concatenate(logits).astype(np.float32), np.concatenate(labels)


def test_metrics(logits: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    predicted = logits.argmax(axis=1)
    per_class = {
        name: float((predicted[labels == i] == i).mean()) if (labels == i).any() else None
        for i, name in enumerate(class_names)
    }
    return {
        "test_loss": float(keras.ops.convert_to_numpy(loss)),
        "test_accuracy": float((predicted == labels).mean()),
        "test_images": int(len(labels)),
        "per_class_test_accuracy": per_class,
    }


def evaluate_model(model: keras.Model, test: Split, test_ds, class_names: list[str], out_dir: Path, seed: int = 0):
    """Metrics and both pictures for a model on the test split; returns (metrics, picture paths)."""
    logits, labels = predict_logits(model, test_ds)
    metrics = test_metrics(logits, labels, class_names)
    predicted = logits.argmax(axis=1)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    confusion_path, grid_path = out_dir / "confusion_matrix.png", out_dir / "predictions_grid.png"
    plot_confusion(labels, predicted, class_names, confusion_path)
    chosen = grid_indices(labels, seed)
    size, channels = image_shape(model)
    images = split_images(test.take(chosen), size, channels)
    plot_predictions(
        images, labels[chosen], predicted[chosen], probabilities[chosen, predicted[chosen]], class_names, grid_path
    )
    return metrics, {"confusion_matrix": confusion_path, "predictions_grid": grid_path}


def top_k(model: keras.Model, paths: list[str], class_names: list[str], k: int = 3) -> list[list[tuple[str, float]]]:
    size, channels = image_shape(model)
    images = load_images(paths, size, channels).astype("float32")
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(images, verbose=0), axis=-1))
    results = []
    for row in probabilities:
        best = np.argsort(row)[::-1][:k]
        results.append([(class_names[i], float(row[i])) for i in best])
    return results
