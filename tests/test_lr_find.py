"""The learning-rate finder: the exponential ramp reaches the compiled step, the suggestion, divergence."""

import json

import numpy as np
import pytest
from PIL import Image

from inat_keras.cli import main
from inat_keras.config import ConfigError
from inat_keras.training.lr_find import LRFindResult, plot, smooth, steepest


def test_the_suggestion_is_where_the_loss_falls_fastest_before_its_minimum():
    rates = list(np.logspace(-6, 0, 121))
    x = np.log10(rates)
    loss = 2 - np.tanh(2 * (x + 3))  # falls fastest at 1e-3
    loss = np.where(x > -1, loss + 40 * (x + 1) ** 2 - 30 * (x + 1) ** 3, loss)  # past its minimum: rises, then plunges
    suggestion = steepest(rates, list(loss))
    assert abs(np.log10(suggestion) + 3) < 0.06, suggestion
    with pytest.raises(ConfigError, match="at least 3"):
        steepest(rates[:2], list(loss[:2]))


def test_smoothing_is_bias_corrected():
    assert smooth([2.0] * 5) == pytest.approx([2.0] * 5)  # an uncorrected average would start near 0.04
    assert smooth([1.0, 3.0], beta=0.5) == pytest.approx([1.0, (0.25 + 1.5) / 0.75])


def test_lr_find_follows_the_ramp_plots_suggests_and_stops_when_the_loss_diverges(tmp_path, capsys, make_image_folder, tiny_cnn_flags):
    data = make_image_folder(tmp_path / "data", {"train": 8, "val": 1})
    flags = tiny_cnn_flags()
    out = tmp_path / "find"
    assert main(["lr-find", "scratch", *flags, "--data-dir", str(data), "--start-lr", "1e-3", "--end-lr", "1e7",
                 "--steps", "30", "--output-dir", str(out)]) == 0  # fmt: skip
    result = json.loads((out / "lr_find.json").read_text())
    steps = result["steps_run"]
    assert result["diverged"] and 3 <= steps < 30  # Adam at 1e4 and more throws the weights far off
    assert len(result["rates"]) == len(result["losses"]) == steps
    assert result["rates"] == pytest.approx([1e-3 * 1e10 ** (i / 29) for i in range(steps)], rel=1e-5)
    assert result["smoothed_losses"] == pytest.approx(smooth(result["losses"]))
    smoothed = result["smoothed_losses"]
    assert all(smoothed[i] <= 4 * min(smoothed[: i + 1]) for i in range(steps - 1))  # it stopped at the first divergence
    suggestion = result["suggested_learning_rate"]
    assert result["rates"][0] <= suggestion < result["rates"][-1] and suggestion in result["rates"]
    assert suggestion == steepest(result["rates"], result["smoothed_losses"])
    with Image.open(out / "lr_find.png") as picture:
        assert picture.size[0] > 300 and "run find  ·  data: data train (" in picture.text["Title"]
    assert f"{suggestion}"[:5] in capsys.readouterr().out


def test_the_plot_holds_every_raw_loss_and_draws_the_suggested_rate(tmp_path):
    rates = list(np.logspace(-5, 0, 40))
    losses = [2.0 - 0.02 * i for i in range(30)] + [1.5, 1.2, 9.0, 1.4, 2.5, 4.0, 6.0, 8.0, 11.0, 14.0]  # a spike
    smoothed = smooth(losses)
    result = LRFindResult(rates, losses, smoothed, steepest(rates, smoothed), rates[20] / 10, True)
    fig = plot(result, tmp_path / "lr.png", "run lr-find-x  ·  data: d train (8 images)")
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert low <= min(losses) and max(losses) <= high  # the raw loss is on the chart, spike and blow-up too
    vertical = {line.get_xdata()[0] for line in ax.get_lines() if len(set(line.get_xdata())) == 1}
    assert result.suggestion in vertical and result.minimum in vertical
    assert "run lr-find-x" in fig.get_suptitle()
