"""Pictures of what a model looks at: Grad-CAM overlays, guided-backpropagation grids, filters, feature maps.

Drawn on matplotlib `Figure` objects directly (no pyplot): no global state, no window, no backend choice.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def _show(ax, image: np.ndarray, **kwargs) -> None:
    """An (H, W, 1|3) image in 0..1 or 0..255, without axes."""
    image = np.asarray(image)
    pixels = image.max() > 1
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255 if pixels else 1, **kwargs)
    else:
        ax.imshow(image.astype(np.uint8) if pixels else image, **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(count: int, cols: int, tile: float = 1.6, title: str = "") -> tuple[Figure, list]:
    rows = max(1, math.ceil(count / cols))
    fig = Figure(figsize=(cols * tile, rows * (tile + 0.25) + (0.5 if title else 0)))  # room for tile titles
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig, axes


def _save(fig: Figure, path: Path, dpi: int = 100) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def signed_unit(x: np.ndarray) -> np.ndarray:
    """Gradients to 0..1 with zero at grey 0.5, scaled by the largest magnitude (a blank map stays grey)."""
    peak = np.abs(x).max()
    return 0.5 + x / (2 * peak) if peak > 0 else np.full_like(x, 0.5)


def unit(x: np.ndarray) -> np.ndarray:
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def plot_gradcam(image: np.ndarray, heat: np.ndarray, title: str, path: Path) -> None:
    """The image, and the image under its heat map (stretched over it, bright = counts most for the class)."""
    fig = Figure(figsize=(7, 3.8))
    left, right = fig.subplots(1, 2)
    _show(left, image)
    left.set_title("input")
    _show(right, image)
    height, width = image.shape[:2]
    peak = heat.max()
    right.imshow(heat / peak if peak > 0 else heat, cmap="jet", alpha=0.45, vmin=0, vmax=1,
                 extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="bilinear")  # fmt: skip
    right.set_title("Grad-CAM")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_guided(image: np.ndarray, maps: np.ndarray, channels: list[int], title: str, path: Path) -> None:
    """The image, then one tile per neuron: its guided gradient (grey = 0, each tile scaled on its own)."""
    fig, axes = _grid(len(channels) + 1, cols=min(len(channels) + 1, 6), tile=2.0, title=title)
    _show(axes[0], image)
    axes[0].set_title("input", fontsize=9)
    for ax, grad, channel in zip(axes[1:], maps, channels):
        _show(ax, signed_unit(grad))
        ax.set_title(f"channel {channel}", fontsize=9)
    _save(fig, path)


def plot_filters(kernel: np.ndarray, title: str, path: Path) -> None:
    """Each filter (rows, cols, in) min-max scaled on its own: RGB for 3 inputs, else the mean over inputs."""
    count = kernel.shape[-1]
    fig, axes = _grid(count, cols=min(count, 16), tile=0.8, title=title)
    for i, ax in enumerate(axes[:count]):
        weights = kernel[..., i]
        if weights.shape[-1] not in (1, 3):
            weights = weights.mean(axis=-1, keepdims=True)
        _show(ax, unit(weights), interpolation="nearest")
    _save(fig, path)


def plot_feature_maps(maps: np.ndarray, channels: list[int], title: str, path: Path) -> None:
    """The chosen channels of one layer's output, each scaled on its own (dark = low, bright = high)."""
    fig, axes = _grid(len(channels), cols=min(len(channels), 8), tile=1.4, title=title)
    for ax, channel in zip(axes, channels):
        ax.imshow(maps[..., channel], cmap="viridis")
        ax.set_title(f"ch {channel}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)
