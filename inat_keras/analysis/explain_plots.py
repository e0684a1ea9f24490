"""Pictures of what a model looks at: Grad-CAM overlays, guided-backpropagation grids, filters, feature maps.

Each function draws, saves and returns its figure (analysis.figures); each says how its values are scaled.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .figures import TEXT, new_figure, save, titled

HEAT_MAP = "inferno"  # perceptually uniform: brightness alone orders the values, in colour or in grey
GUIDED_CLIP = 99.0  # percentile of |gradient| that fills a guided panel's grey scale; above it, clipped


def _show(ax, image: np.ndarray, **kwargs):
    """An (H, W, 1|3) image in 0..1 or 0..255, without axes."""
    image = np.asarray(image)
    pixels = image.max() > 1
    if image.shape[-1] == 1:
        shown = ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255 if pixels else 1, **kwargs)
    else:
        shown = ax.imshow(image.astype(np.uint8) if pixels else image, **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def _grid(count: int, cols: int, tile: float, header: float = 0.9):
    rows = max(1, math.ceil(count / cols))
    fig = new_figure(max(cols * tile, 6.0), rows * (tile + 0.3) + header)  # room for tile titles and the caption
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def clipped_signed(x: np.ndarray, percentile: float = GUIDED_CLIP) -> np.ndarray:
    """A gradient to 0..1 with zero at grey 0.5: the `percentile` of its non-zero |x| at 0 and 1, the few larger
    values clipped, so that one extreme pixel no longer turns the rest of the panel grey (a blank map stays grey)."""
    magnitude = np.abs(x)
    if not magnitude.any():
        return np.full_like(x, 0.5)
    scale = np.percentile(magnitude[magnitude > 0], percentile)
    return np.clip(0.5 + x / (2 * scale), 0, 1)


def unit(x: np.ndarray) -> np.ndarray:
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def mean_correlation(maps: np.ndarray) -> float:
    """The mean Pearson correlation between every two maps that are not blank (NaN for fewer than two): near 1,
    they show the same thing."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    flat = flat[flat.std(axis=1) > 0]
    if len(flat) < 2:
        return math.nan
    return float(np.corrcoef(flat)[np.triu_indices(len(flat), 1)].mean())


def plot_gradcam(image: np.ndarray, heat: np.ndarray, title: str, path: Path, caption: str = "", wrong: bool = False):
    """The image; the Grad-CAM map at its layer's own resolution; the map stretched over the image. One colour
    bar: the share of the map's peak. A wrong prediction's title is red (and says WRONG: the caller's words)."""
    fig = new_figure(10, 4.2)
    left, middle, right = fig.subplots(1, 3)
    _show(left, image)
    left.set_title("input", fontsize=TEXT)
    peak = heat.max()
    scaled = heat / peak if peak > 0 else heat
    native = middle.imshow(scaled, cmap=HEAT_MAP, vmin=0, vmax=1, interpolation="nearest")
    middle.set(xticks=[], yticks=[])
    middle.set_title(f"map at the layer's {heat.shape[0]}x{heat.shape[1]}", fontsize=TEXT)
    _show(right, image)
    height, width = image.shape[:2]
    right.imshow(scaled, cmap=HEAT_MAP, alpha=0.5, vmin=0, vmax=1, interpolation="bilinear",
                 extent=(-0.5, width - 0.5, height - 0.5, -0.5))  # fmt: skip
    right.set_title("map over the input", fontsize=TEXT)
    fig.colorbar(native, ax=[middle, right], shrink=0.8, label="Grad-CAM, share of its peak")
    titled(fig, title, caption, "tab:red" if wrong else "black")
    return save(fig, path)


def plot_guided(image: np.ndarray, maps: np.ndarray, channels: list[int], title: str, path: Path, caption: str = ""):
    """The image, then one panel per neuron: the input pixels whose increase would raise the neuron's largest
    value, its gradient with only positive signals let back through each activation (grey = 0, colour = the
    sign per RGB channel), each panel to its own GUIDED_CLIP-th percentile. The title gives the panels' mean
    correlation: near 1, the neurons' maps do not differ (guided backpropagation tends to redraw the image's
    edges whatever the neuron)."""
    fig, axes = _grid(len(channels) + 1, cols=min(len(channels) + 1, 6), tile=2.0, header=1.5)
    axes = axes.ravel()
    _show(axes[0], image)
    axes[0].set_title("input", fontsize=TEXT)
    for ax, grad, channel in zip(axes[1:], maps, channels):
        _show(ax, clipped_signed(grad))
        ax.set_title(f"channel {channel}" + ("" if np.any(grad) else ": blank"), fontsize=TEXT)
    similarity = mean_correlation(maps)
    alike = "n/a" if math.isnan(similarity) else f"{similarity:.2f}" + (" (near-identical)" if similarity > 0.9 else "")
    note = (f"grey = 0; each panel scaled to its own {GUIDED_CLIP:g}th percentile of non-zero |gradient|\n"
            f"blank: no gradient reaches the image; the other panels' mean correlation: {alike}")  # fmt: skip
    titled(fig, f"{title}\n{note}", caption)
    return save(fig, path)


def plot_filters(kernel: np.ndarray, title: str, path: Path, caption: str = ""):
    """Each filter (rows, cols, in) min-max scaled on its own: RGB for 3 inputs, else the mean over inputs."""
    count = kernel.shape[-1]
    fig, axes = _grid(count, cols=min(count, 16), tile=0.8)
    for i, ax in enumerate(axes.ravel()[:count]):
        weights = kernel[..., i]
        if weights.shape[-1] not in (1, 3):
            weights = weights.mean(axis=-1, keepdims=True)
        _show(ax, unit(weights), interpolation="nearest")
    titled(fig, f"{title}\neach filter scaled to its own range", caption)
    return save(fig, path)


def plot_feature_maps(maps: np.ndarray, channels: list[int], title: str, path: Path, caption: str = ""):
    """The chosen channels of one layer's output on one shared scale (one colour bar), so that a weak channel
    looks weak."""
    fig, axes = _grid(len(channels), cols=min(len(channels), 8), tile=1.4)
    chosen = maps[..., list(channels)]
    low, high = float(chosen.min()), float(chosen.max())
    shown = None
    for ax, channel in zip(axes.ravel(), channels):
        shown = ax.imshow(maps[..., channel], cmap="viridis", vmin=low, vmax=high if high > low else low + 1)
        ax.axis("on")
        ax.set(xticks=[], yticks=[])
        ax.set_title(f"ch {channel}", fontsize=TEXT)
    if shown is not None:
        fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, label="activation (one scale for all)")
    titled(fig, title, caption)
    return save(fig, path)
