"""Pictures of a model's test predictions: the confusion matrix and the study's 10x3 grid."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # noqa: E402

GRID_ROWS, GRID_COLS = 10, 3


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
