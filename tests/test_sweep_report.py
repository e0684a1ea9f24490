"""A sweep's pictures and its parameter importance: a parallel-coordinates plot that can be read (text size, a
colour bar that tells close metrics apart, ticks that do not overprint, log axes said), and no ranking of
parameters from too few trials."""

import itertools

import numpy as np
from matplotlib.colors import to_rgb
from PIL import Image

from inat_keras.study.report import importance_table
from inat_keras.sweeps.report import (
    IMPORTANCE_CSV,
    MIN_IMPORTANCE_TRIALS,
    PARALLEL_PNG,
    REPORT_MD,
    SweepRecord,
    importance,
    importance_withheld,
    plot_parallel,
    write_report,
)
from inat_keras.training.kinds import KINDS
import pytest

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent

PARAMETERS = {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2},
              "activation": {"values": ["relu", "gelu"]}}  # fmt: skip


def record(points) -> SweepRecord:
    """A finished trial per (learning rate, activation, metric)."""
    trials = [{"name": f"t{i}", "number": i, "state": "finished", "metric": metric,
               "params": {"learning_rate": lr, "activation": act},
               "config": {"learning_rate": lr, "activation": act, "data_dir": "/data/inaturalist_12K"}}
              for i, (lr, act, metric) in enumerate(points, start=1)]  # fmt: skip
    return SweepRecord("sweep-x", KINDS["scratch"], "val_accuracy", PARAMETERS, trials)


def test_parallel_coordinates_are_readable_and_tell_close_metrics_apart(tmp_path):
    sweep = record([(0.001, "relu", 0.87), (0.0009, "gelu", 0.84), (1e-5, "relu", 0.30), (0.01, "gelu", 0.5)])
    fig = plot_parallel(sweep, tmp_path / "p.png", "sweep sweep-x  ·  data: inaturalist_12K, validation split")
    plot, bar = fig.axes
    colour = {line.get_gid(): np.array(to_rgb(line.get_color())) for line in plot.get_lines() if line.get_gid()}
    assert np.linalg.norm(colour["t1"] - colour["t2"]) > 0.3  # 0.87 and 0.84: far apart on the colour map
    assert "val_accuracy" in bar.get_ylabel() and [t.get_text() for t in bar.get_yticklabels()] == [
        "0.30", "0.50", "0.84", "0.87"]  # fmt: skip
    labels = [t.get_text() for t in plot.get_xticklabels()]
    assert labels == ["learning_rate (log)", "activation", "val_accuracy"]
    texts = plot.texts + plot.get_xticklabels() + bar.get_yticklabels()
    assert min(t.get_fontsize() for t in texts) >= 9
    for left, right in itertools.combinations(plot.texts, 2):  # no tick label overprints another
        assert not left.get_window_extent().overlaps(right.get_window_extent()), (left, right)
    assert not {"0.001", "0.0009"} <= {t.get_text() for t in plot.texts}  # a hair apart on a log axis: one of them
    assert "sweep sweep-x" in fig.get_suptitle()
    assert "sweep sweep-x" in Image.open(tmp_path / "p.png").text["Title"]


def test_parameters_are_not_ranked_from_too_few_trials(tmp_path, capsys):
    few = record([(0.001, "relu", 0.8), (0.0001, "gelu", 0.5), (0.01, "relu", 0.9)])  # correlations of +-0.9 and more
    reason = importance_withheld(few)
    assert reason.startswith("Too few finished trials to rank the parameters: 3") and f"{MIN_IMPORTANCE_TRIALS}" in reason
    assert importance(few) == [] and importance_table(few) == reason
    (tmp_path / IMPORTANCE_CSV).write_text("parameter,importance\nstale,1\n")  # an older report's ranking
    paths = write_report(few, tmp_path)
    assert reason in (tmp_path / REPORT_MD).read_text() and reason in capsys.readouterr().out
    assert IMPORTANCE_CSV not in paths and not (tmp_path / IMPORTANCE_CSV).exists()
    assert (tmp_path / PARALLEL_PNG).is_file()

    rng = np.random.default_rng(0)
    enough = record([(10 ** rng.uniform(-5, -2), ["relu", "gelu"][i % 2], rng.uniform()) for i in range(MIN_IMPORTANCE_TRIALS)])
    assert importance_withheld(enough) is None
    assert {r["parameter"] for r in importance(enough)} == {"learning_rate", "activation=gelu", "activation=relu"}
    assert IMPORTANCE_CSV in write_report(enough, tmp_path / "enough")
