"""Pictures of a model's test predictions: the confusion matrix, the study's 10x3 grid, the top losses and
the reliability diagram."""

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
        title = f"{'✓' if ok else '✗'} true: {class_names[true]}\npred: {class_names[pred]} ({prob:.0%})"
        show_tile(ax, image, title, "green" if ok else "red")
    fig.suptitle("Test predictions (green: correct, red: wrong)")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def show_tile(ax, image, title: str, colour: str):
    """One image in a grid cell, framed and titled in `colour`."""
    ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None)
    ax.set_title(title, color=colour, fontsize=9)
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_color(colour)
        spine.set_linewidth(3)
    ax.axis("on")
    ax.set_xticks([])
    ax.set_yticks([])


TOP_LOSS_COLS = 4


def plot_top_losses(images, labels, predicted, predicted_probability, true_probability, image_losses, class_names,
                    path: Path):  # fmt: skip
    """The wrong predictions given, in order (analysis.errors.top_loss_indices picks them); a figure that
    says so when there are none."""
    rows = max(1, -(-len(images) // TOP_LOSS_COLS))
    fig, axes = plt.subplots(rows, TOP_LOSS_COLS, figsize=(TOP_LOSS_COLS * 3.2, rows * 3.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, true, pred, p_pred, p_true, loss in zip(
        axes.flat, images, labels, predicted, predicted_probability, true_probability, image_losses
    ):
        title = f"pred: {class_names[pred]} ({p_pred:.0%})\ntrue: {class_names[true]} ({p_true:.0%})\nloss {loss:.2f}"
        show_tile(ax, image, title, "red")
    if not len(images):
        axes.flat[0].text(0.5, 0.5, "no wrong predictions", ha="center", va="center", transform=axes.flat[0].transAxes)
    fig.suptitle("Top losses: the most confidently wrong test images")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_reliability(bins: dict, ece: float, path: Path):
    """Accuracy against mean confidence per bin (analysis.errors.reliability_bins), and how many images each holds."""
    edges, counts = bins["edges"], bins["counts"]
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    filled = counts > 0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centres[filled], bins["accuracy"][filled], width=width, edgecolor="black", label="accuracy")
    top.bar(centres[filled], (bins["confidence"] - bins["accuracy"])[filled], bottom=bins["accuracy"][filled],
            width=width, color="red", alpha=0.3, label="gap to confidence")  # fmt: skip
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="accuracy", title=f"Reliability ({len(counts)} bins): ECE {ece:.3f}")
    top.legend(loc="upper left")
    bottom.bar(centres, counts, width=width, edgecolor="black")
    bottom.set(xlim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
