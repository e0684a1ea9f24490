"""Training curves from a run's history.csv rows (so they can be drawn offline, after the fact, on resume): loss,
accuracy and learning rate per epoch, with the stages of gradual unfreezing marked; and several runs' validation
curves on one picture (the study's strategy comparison)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from .figures import TEXT, new_figure, save, titled

CURVES = "curves.png"  # in every run folder, written when its training ends
UNIT_NAMES = {"top": "top conv", "head": "head", "stem": "stem"}
OVERLAY_STYLES = ("-o", "--s", "-.^", ":D")  # lines told apart without colour too
SPELLED_UNITS = 3  # a stage that adds more units than this is named by its strategy label instead


def column(rows: list[dict], name: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of one history column, leaving out epochs where it is empty or not finite."""
    epochs, values = [], []
    for row in rows:
        text = row.get(name)
        try:
            value = float(text)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            epochs.append(int(float(row["epoch"])))
            values.append(value)
    return epochs, values


def unit_name(unit: str) -> str:
    """"stage6" -> "stage 6", "top" -> "top conv"; blocks keep Keras's names (block6o)."""
    if unit.startswith("stage"):
        return f"stage {unit[5:]}"
    return UNIT_NAMES.get(unit, unit)


def strategy_name(label: str) -> str:
    """A stage's label (models.strategies.describe) in words: "last_5" -> "last 5 units", "full" -> "all units"."""
    if label.startswith("last_"):
        return f"last {label[5:]} units"
    return {"full": "all units"}.get(label, label)


def stage_marks(schedule: list[dict] | None) -> list[tuple[int, str]]:
    """(first epoch, what it trains) per stage of metrics.json's `unfreezing_schedule`: the first stage by all it
    trains, each later one by what it adds, top down ("+ top conv, stage 6")."""
    marks, before = [], []
    for stage in schedule or []:
        if not stage.get("epochs"):
            continue
        units, label = list(stage.get("trainable_groups") or []), stage.get("label", "")
        added = [u for u in reversed(units) if u not in before]  # trainable_groups run bottom-up
        if not marks:
            text = "trains " + (" + ".join(map(unit_name, units)) if len(units) <= SPELLED_UNITS else strategy_name(label))
        else:
            text = "+ " + (", ".join(map(unit_name, added)) if len(added) <= SPELLED_UNITS else strategy_name(label))
        marks.append((int(stage["epochs"][0]), text))
        before = units
    return marks


def mark_stages(ax, marks: list[tuple[int, str]]) -> None:
    """A dotted line before each stage's first epoch, labelled along it."""
    for epoch, text in marks:
        ax.axvline(epoch - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.text(epoch - 0.45, 0.98, text, rotation=90, va="top", ha="left", fontsize=TEXT - 1, color="dimgrey",
                transform=ax.get_xaxis_transform(), bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})  # fmt: skip


def epoch_axis(ax, last: int) -> None:
    ax.set_xlim(0.4, max(last, 1) + 0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch", fontsize=TEXT)
    ax.tick_params(labelsize=TEXT)


def plot_curves(rows: list[dict], schedule: list[dict] | None, path: Path, caption: str = ""):
    """Three panels: loss and accuracy (training and validation) and the learning rate, per epoch; stage
    boundaries from `schedule` (metrics.json's unfreezing_schedule, absent for one-stage runs)."""
    fig = new_figure(12, 3.8)
    axes = fig.subplots(1, 3)
    marks, last = stage_marks(schedule), max(column(rows, "epoch")[1] or [1])
    for ax, metric, scale in ((axes[0], "loss", 1), (axes[1], "accuracy", 100)):
        for name, label, style in ((metric, "training", "-o"), (f"val_{metric}", "validation", "--s")):
            epochs, values = column(rows, name)
            if values:
                ax.plot(epochs, [scale * v for v in values], style, markersize=3, label=label)
        ax.set_title(f"{metric}{' (%)' if scale != 1 else ''}", fontsize=TEXT + 1)
        ax.ticklabel_format(axis="y", useOffset=False)  # 2.3004, not "+2.3" above the axis and 0.0004 on it
        if ax.lines:
            ax.legend(fontsize=TEXT, loc="best")
    epochs, rates = column(rows, "learning_rate")
    axes[2].plot(epochs, rates, "-o", markersize=3, color="tab:green")
    if rates and min(rates) > 0 and max(rates) / min(rates) > 10:
        axes[2].set_yscale("log")
    elif rates:
        axes[2].set_ylim(0, 1.15 * max(rates) or 1)  # a constant rate as a level line, not magnified noise
    axes[2].set_title("learning rate", fontsize=TEXT + 1)
    for ax in axes:
        epoch_axis(ax, int(last))
        mark_stages(ax, marks)
    titled(fig, f"Training curves ({int(last)} epoch{'s' if last != 1 else ''})", caption)
    return save(fig, path)


def plot_overlay(histories: dict[str, list[dict]], path: Path, caption: str = "", title: str = "Validation curves"):
    """Validation accuracy and loss per epoch, one line per run (`histories`: {legend label: history rows})."""
    fig = new_figure(11, 3.8)
    axes = fig.subplots(1, 2)
    last = 1
    for (label, rows), style in zip(histories.items(), itertools.cycle(OVERLAY_STYLES)):
        for ax, name, scale in ((axes[0], "val_accuracy", 100), (axes[1], "val_loss", 1)):
            epochs, values = column(rows, name)
            if values:
                ax.plot(epochs, [scale * v for v in values], style, markersize=4, label=label)
                last = max(last, *epochs)
    for ax, title in zip(axes, ("validation accuracy (%)", "validation loss")):
        ax.set_title(title, fontsize=TEXT + 1)
        epoch_axis(ax, last)
    if axes[0].lines:
        axes[0].legend(fontsize=TEXT, loc="best")
    titled(fig, f"{title}, one line per run", caption)
    return save(fig, path)
