"""Test-set evaluation and its pictures: metrics, confusion matrix, 10x3 prediction grid, top-k."""

from __future__ import annotations

from pathlib import Path

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # noqa: E402

from .data import Split, decode_resize  # noqa: E402

GRID_ROWS, GRID_COLS = 10, 3


def image_shape(model: keras.Model) -> tuple[int, int]:
    """(size, channels) that the model's input expects."""
    _, height, _, channels = model.input_shape
    return int(height), int(channels)


def load_images(paths: list[str], size: int, channels: int) -> np.ndarray:
    ds = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda p: decode_resize(p, size, channels), num_parallel_calls=tf.data.AUTOTUNE
    )
    return np.stack([x.numpy() for x in ds]) if paths else np.zeros((0, size, size, channels), np.uint8)


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


def plot_confusion(labels: np.ndarray, predicted: np.ndarray, class_names: list[str], path: Path):
    matrix = confusion_matrix(labels, predicted, labels=range(len(class_names)))
    fig, ax = plt.subplots(figsize=(8, 7))
    ConfusionMatrixDisplay(matrix, display_labels=class_names).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45
    )
    ax.set_title(f"Test set: {np.trace(matrix)}/{matrix.sum()} correct")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def grid_indices(labels: np.ndarray, seed: int, rows: int = GRID_ROWS, cols: int = GRID_COLS) -> list[int]:
    """Three images per class for up to ten classes (random where classes are fewer or more)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    picked: list[int] = []
    if len(classes) == rows:
        for c in classes:
            members = np.flatnonzero(labels == c)
            picked += rng.choice(members, size=min(cols, len(members)), replace=False).tolist()
    rest = np.setdiff1d(np.arange(len(labels)), picked)
    need = min(rows * cols - len(picked), len(rest))
    picked += rng.choice(rest, size=need, replace=False).tolist()
    return picked


def plot_predictions(images, labels, predicted, probabilities, class_names, path: Path):
    fig, axes = plt.subplots(GRID_ROWS, GRID_COLS, figsize=(GRID_COLS * 3.2, GRID_ROWS * 3.0))
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, true, pred, prob in zip(axes.flat, images, labels, predicted, probabilities):
        ok = true == pred
        ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None)
        ax.set_title(
            f"{'✓' if ok else '✗'} true: {class_names[true]}\npred: {class_names[pred]} ({prob:.0%})",
            color="green" if ok else "red",
            fontsize=9,
        )
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color("green" if ok else "red")
            spine.set_linewidth(3)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Test predictions (green: correct, red: wrong)")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=80)
    plt.close(fig)


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
    images = load_images([test.paths[i] for i in chosen], size, channels)
    plot_predictions(
        images, labels[chosen], predicted[chosen], probabilities[chosen, predicted[chosen]], class_names, grid_path
    )
    return metrics, {"confusion_matrix": confusion_path, "predictions_grid": grid_path}, (labels, predicted)


def top_k(model: keras.Model, paths: list[str], class_names: list[str], k: int = 3) -> list[list[tuple[str, float]]]:
    size, channels = image_shape(model)
    images = load_images(paths, size, channels).astype("float32")
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(images, verbose=0), axis=-1))
    results = []
    for row in probabilities:
        best = np.argsort(row)[::-1][:k]
        results.append([(class_names[i], float(row[i])) for i in best])
    return results
