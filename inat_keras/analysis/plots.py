"""Pictures of a model's test predictions: the confusion matrix (counts and row shares), the accuracy of each
class, the study's 10x3 grid, the top losses and the reliability diagram.

Each function draws, saves and returns its figure (analysis.figures), titled with the caption its caller gives:
the run and the data.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn.metrics import confusion_matrix

from .figures import TEXT, new_figure, save, titled

GRID_ROWS, GRID_COLS = 10, 3
GRID_TILE = 1.0  # inches: an image's side in the 10x3 grid, so that ten rows stay under 1,200 px
TOP_LOSS_COLS, TOP_LOSS_TILE = 3, 1.5
TILE_TEXT = 2.0  # inches of text beside each image
ANNOTATED_CLASSES = 20  # confusion matrices up to this many classes print each cell's value
NAME_CHARS = 26  # a file name longer than this is shortened in the middle


def class_matrices(labels: np.ndarray, predicted: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts, shares): the confusion matrix (rows: true class, columns: predicted) and each row divided by its
    sum, i.e. where each true class's images went (a class without test images: a row of zeros)."""
    counts = confusion_matrix(labels, predicted, labels=range(classes))
    totals = counts.sum(axis=1, keepdims=True)
    return counts, np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def _matrix(fig, ax, values: np.ndarray, class_names: list[str], fmt: str, label: str, vmax: float) -> None:
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
    fig.colorbar(image, ax=ax, shrink=0.8, label=label)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=TEXT)
    ax.set_yticks(ticks, class_names, fontsize=TEXT)
    ax.set(xlabel="predicted class", ylabel="true class")
    if len(class_names) <= ANNOTATED_CLASSES:
        for (row, col), value in np.ndenumerate(values):
            ax.text(col, row, format(value, fmt), ha="center", va="center", fontsize=TEXT,
                    color="white" if value > vmax / 2 else "black")  # fmt: skip


def plot_confusion(labels, predicted, class_names: list[str], path: Path, caption: str = ""):
    """Two panels: the counts, and the counts as shares of each true class (rows sum to 1: each class's recall on
    the diagonal), so that a small class's errors are as visible as a large one's."""
    counts, shares = class_matrices(labels, predicted, len(class_names))
    side = min(max(4.0, 0.4 * len(class_names) + 2.5), 20.0)
    fig = new_figure(2 * side + 1.5, side + 0.8)
    left, right = fig.subplots(1, 2)
    _matrix(fig, left, counts, class_names, "d", "images", max(1, counts.max()))
    left.set_title("counts", fontsize=TEXT + 1)
    _matrix(fig, right, shares, class_names, ".2f", "share of the true class's images", 1.0)
    right.set_title("share of each true class (rows sum to 1)", fontsize=TEXT + 1)
    right_count, total = int(np.trace(counts)), int(counts.sum())
    titled(fig, f"Confusion matrix: {right_count}/{total} test images right ({right_count / max(total, 1):.1%})", caption)
    return save(fig, path)


def plot_class_accuracy(labels, predicted, class_names: list[str], path: Path, caption: str = ""):
    """One bar per class: the share of its test images predicted right, with the count it comes from; the
    overall accuracy as a dashed line."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    support = np.bincount(labels, minlength=len(class_names))
    right = np.bincount(labels[labels == predicted], minlength=len(class_names))
    accuracy = np.divide(right, support, out=np.full(len(class_names), np.nan), where=support > 0)
    fig = new_figure(7.5, max(2.5, 0.32 * len(class_names) + 1.5))
    ax = fig.subplots()
    rows = np.arange(len(class_names))
    ax.barh(rows, np.nan_to_num(accuracy), color="tab:blue", label="accuracy")
    for row, share, k, n in zip(rows, accuracy, right, support):
        text = f"{k}/{n} ({share:.0%})" if n else "no test images"
        ax.text(1.02, row, text, va="center", fontsize=TEXT)  # a column right of the bars
    overall = float((labels == predicted).mean()) if len(labels) else math.nan
    ax.axvline(overall, color="black", linestyle="--", linewidth=1, label=f"all classes: {overall:.1%}")
    ax.set_yticks(rows, class_names, fontsize=TEXT)
    ax.invert_yaxis()  # the first class on top, as in the confusion matrix
    ax.set(xlim=(0, 1.3), xticks=np.linspace(0, 1, 6), xlabel="accuracy (share of the class's test images predicted right)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=TEXT)
    titled(fig, "Accuracy of each class", caption)
    return save(fig, path)


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


def file_name(path: str) -> str:
    """A path's last part, shortened in the middle to NAME_CHARS characters."""
    name = Path(path).name
    return name if len(name) <= NAME_CHARS else f"{name[: NAME_CHARS // 2 - 1]}…{name[-(NAME_CHARS // 2):]}"


class TileGrid:
    """A compact grid of images, each with its lines of text beside it (not above: a row stays one image tall),
    drawn on one axes measured in inches (a few thousand times faster to lay out than an axes per tile)."""

    def __init__(self, count: int, cols: int, tile: float, header: float = 0.7):
        self.cols, self.tile = cols, tile
        self.cell = (tile + TILE_TEXT, tile + 0.1)
        rows = max(1, math.ceil(count / cols))
        width, height = cols * self.cell[0], rows * self.cell[1]
        self.fig = Figure(figsize=(width, height + header))
        self.ax = self.fig.add_axes((0, 0, 1, height / (height + header)))
        self.ax.set(xlim=(0, width), ylim=(height, 0))
        self.ax.axis("off")

    def show(self, index: int, image, lines: list[str], colour: str) -> None:
        """Tile `index` (row by row): the image framed in `colour`, its lines beside it."""
        x = index % self.cols * self.cell[0] + 0.05
        y = index // self.cols * self.cell[1] + 0.05
        image = np.asarray(image)
        self.ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None,
                       extent=(x, x + self.tile, y + self.tile, y))  # fmt: skip
        self.ax.add_patch(Rectangle((x, y), self.tile, self.tile, fill=False, edgecolor=colour, linewidth=2.5))
        self.ax.text(x + self.tile + 0.1, y + self.tile / 2, "\n".join(lines), va="center", ha="left", fontsize=TEXT,
                     color=colour)  # fmt: skip


def plot_predictions(images, labels, predicted, probabilities, class_names, path: Path, paths=None, caption: str = ""):
    """The 10x3 grid: each image's file, true class, predicted class and its probability; wrong ones in red and
    marked WRONG (not by colour alone)."""
    paths = paths if paths is not None else [""] * len(images)
    grid = TileGrid(len(images), GRID_COLS, GRID_TILE)
    for i, (image, true, pred, prob, where) in enumerate(zip(images, labels, predicted, probabilities, paths)):
        ok = true == pred
        lines = [file_name(where), f"true: {class_names[true]}", f"pred: {class_names[pred]} ({prob:.0%})"]
        grid.show(i, image, lines + ([] if ok else ["WRONG"]), "tab:green" if ok else "tab:red")
    titled(grid.fig, "Test predictions (green: right; red: WRONG); pred: the predicted class and its probability", caption)
    return save(grid.fig, path)


TOP_LOSSES_TITLE = ("Top losses: the wrong test images with the least probability on their true class "
                    "(largest loss first)")  # fmt: skip


def plot_top_losses(images, labels, predicted, predicted_probability, true_probability, image_losses, class_names,
                    path: Path, paths=None, caption: str = ""):  # fmt: skip
    """The wrong predictions given, largest loss (-log of the true class's probability) first, whatever order
    they come in; a figure that says so when there are none."""
    order = np.argsort(-np.asarray(image_losses, float), kind="stable")
    paths = paths if paths is not None else [""] * len(images)
    grid = TileGrid(len(order), TOP_LOSS_COLS, TOP_LOSS_TILE)
    for rank, i in enumerate(order, start=1):
        lines = [f"#{rank}  loss {image_losses[i]:.2f}", file_name(paths[i]),
                 f"true: {class_names[labels[i]]} ({true_probability[i]:.0%})",
                 f"pred: {class_names[predicted[i]]} ({predicted_probability[i]:.0%})"]  # fmt: skip
        grid.show(rank - 1, images[i], lines, "tab:red")
    if not len(order):
        grid.ax.text(0.1, TOP_LOSS_TILE / 2, "no wrong predictions", va="center", fontsize=TEXT)
    titled(grid.fig, TOP_LOSSES_TITLE, caption)
    return save(grid.fig, path)


def plot_reliability(bins: dict, ece: float, path: Path, caption: str = ""):
    """Accuracy against mean confidence per bin (analysis.errors.reliability_bins): the accuracy as whole bars,
    the mean confidence as a line across each bar, the gap between them hatched (over the bar's top:
    over-confident; inside the bar: under-confident); below, how many images each bin holds."""
    edges, counts = bins["edges"], bins["counts"]
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    filled = counts > 0
    accuracy, confidence = bins["accuracy"][filled], bins["confidence"][filled]
    fig = new_figure(7.5, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centres[filled], accuracy, width=width, color="tab:blue", edgecolor="black", linewidth=0.5,
            label="accuracy of the bin's images")  # fmt: skip
    top.bar(centres[filled], np.abs(confidence - accuracy), bottom=np.minimum(confidence, accuracy), width=width,
            fill=False, hatch="///", edgecolor="tab:red", linewidth=0, label="gap to the mean confidence")  # fmt: skip
    top.hlines(confidence, centres[filled] - width / 2, centres[filled] + width / 2, color="tab:red", linewidth=2,
               label="mean confidence of the bin")  # fmt: skip
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="accuracy")
    top.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=TEXT)  # outside the bins
    bottom.bar(centres, counts, width=width, color="tab:gray", edgecolor="black", linewidth=0.5)
    bottom.set(xlim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="images")
    titled(fig, f"Reliability diagram: ECE {ece:.3f} ({len(counts)} equal-width bins, {int(counts.sum())} images)", caption)
    return save(fig, path)
