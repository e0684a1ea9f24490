"""What every saved picture shares: a title that names its run and its data (a PNG found on its own is not
ambiguous), text large enough to read at the saved resolution, and one way to save.

Figures are matplotlib `Figure` objects made directly (no pyplot): no global state, no window, no backend
choice, nothing to close; a plotting function can return its figure for a test to read what it drew.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure

from ..files import save_figure

DPI = 100  # every picture is saved at this resolution
TEXT = 9  # points: the smallest text of a picture, 12.5 px at DPI
TITLE = 11
TICK_GAP = 0.08  # of an axis's length: the closest two tick labels may be (9-pt text on a 5-inch axis)


def caption(run: str, data: str) -> str:
    """The line under every picture's title: which run made it and on which images, e.g.
    "run finetune-gradual-...  ·  data: inaturalist_12K test (2000 images)"."""
    return f"{run}  ·  data: {data}"


def new_figure(width: float, height: float) -> Figure:
    """A figure whose layout makes room for titles, colour bars and legends outside the axes."""
    return Figure(figsize=(width, height), layout="constrained")


def titled(fig: Figure, title: str, caption_line: str = "", colour: str = "black") -> None:
    """The figure's title, and under it the caption that names the run and the data."""
    fig.suptitle(f"{title}\n{caption_line}" if caption_line else title, fontsize=TITLE, color=colour)


def save(fig: Figure, path: Path, dpi: int = DPI) -> Figure:
    """Publish the picture whole (files.save_figure), its title also in the PNG's Title field (a file browser or
    a script reads which run it shows without opening it); the figure comes back for a caller to read."""
    save_figure(fig, path, dpi=dpi, metadata={"Title": fig.get_suptitle()})
    return fig


def spread_ticks(ticks: list[tuple[float, str]], gap: float = TICK_GAP) -> list[tuple[float, str]]:
    """The (position on 0..1, label) ticks, in the order given (most wanted first), that are at least `gap` from
    every one kept before: labels that would overprint ("0.001" over "0.0009") are left out."""
    kept: list[tuple[float, str]] = []
    for position, label in ticks:
        if all(abs(position - other) >= gap for other, _ in kept):
            kept.append((position, label))
    return sorted(kept)


def rank_colours(values: np.ndarray, cmap: str = "viridis"):
    """(colour map, norm, levels): one colour per distinct value, in rank order, so that close values (0.84,
    0.87) get colours as far apart as distant ones; a colour bar of them has one segment per value."""
    levels = np.unique(values)
    half = np.diff(levels) / 2 if len(levels) > 1 else np.array([max(abs(levels[0]) * 0.01, 0.01)])
    bounds = np.concatenate([[levels[0] - half[0]], levels[:-1] + half[: len(levels) - 1], [levels[-1] + half[-1]]])
    return colormaps[cmap].resampled(len(levels)), BoundaryNorm(bounds, len(levels)), levels


def distinct_labels(values) -> list[str]:
    """The values with as few decimals (2 to 6) as keep them apart."""
    for digits in range(2, 7):
        labels = [f"{v:.{digits}f}" for v in values]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{v:.6g}" for v in values]
