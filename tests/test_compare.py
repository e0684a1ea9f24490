"""`run.py compare`: two runs' predictions.csv paired image by image; refused when the test lists differ."""

import json
import math

import numpy as np
import pytest

from inat_keras.analysis import errors
from inat_keras.cli import main
from inat_keras.errors import DataError
from inat_keras.serving.compare import compare_runs
from inat_keras.inference.evaluation import prediction_rows, write_predictions

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent

NAMES = ["cat", "dog", "owl"]  # the classes of the hand-written predictions below (the messages tested name them)


def write_run(folder, labels, predicted, paths=None):
    """A run folder holding only the predictions.csv of a model that predicts `predicted` with probability 0.8."""
    folder.mkdir(parents=True)
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    probabilities = np.full((len(labels), 3), 0.1)
    probabilities[np.arange(len(labels)), predicted] = 0.8
    image_losses = -np.log(probabilities[np.arange(len(labels)), labels])
    paths = paths or [f"/data/val/{NAMES[y]}/{i:03d}.jpg" for i, y in enumerate(labels)]
    write_predictions(folder / "predictions.csv", prediction_rows(paths, labels, probabilities, image_losses, NAMES))
    return folder


def paired_runs(tmp_path, only_a, only_b, both=30, neither=6):
    """A right and B wrong on `only_a` images, the reverse on `only_b`; B's rows in another order."""
    n = both + only_a + only_b + neither
    labels = np.arange(n) % 3
    wrong = (labels + 1) % 3
    right_a = np.r_[np.ones(both + only_a, bool), np.zeros(only_b + neither, bool)]
    right_b = np.r_[np.ones(both, bool), np.zeros(only_a, bool), np.ones(only_b, bool), np.zeros(neither, bool)]
    a = write_run(tmp_path / "a", labels, np.where(right_a, labels, wrong))
    paths = [f"/data/val/{NAMES[y]}/{i:03d}.jpg" for i, y in enumerate(labels)]
    order = np.random.default_rng(0).permutation(n)
    b = write_run(tmp_path / "b", labels[order], np.where(right_b, labels, wrong)[order], [paths[i] for i in order])
    return a, b, right_a, right_b


def test_compare_pairs_the_images_and_tests_the_difference(tmp_path):
    a, b, right_a, right_b = paired_runs(tmp_path, only_a=9, only_b=2)
    result = compare_runs(a, b)
    assert result["test_images"] == 47
    assert result["a"]["test_accuracy"] == pytest.approx(right_a.mean())
    assert result["b"]["test_accuracy"] == pytest.approx(right_b.mean())
    assert result["a"]["test_loss"] == pytest.approx(-np.log(np.where(right_a, 0.8, 0.1)).mean(), rel=1e-5)
    assert result["accuracy_difference"] == pytest.approx((9 - 2) / 47)
    low, high = result["accuracy_difference_ci95"]
    assert low < 7 / 47 < high
    assert (low, high) == errors.bootstrap_interval(right_a.astype(float) - right_b)  # paired, by image
    test = result["mcnemar"]
    assert (test["a_right_b_wrong"], test["a_wrong_b_right"]) == (9, 2)
    assert test["method"].startswith("exact binomial")
    assert test["p_value"] == pytest.approx(2 * sum(math.comb(11, k) for k in range(9, 12)) / 2**11)

    many = compare_runs(*paired_runs(tmp_path / "many", only_a=30, only_b=10)[:2])["mcnemar"]
    assert many["method"] == "chi-square with continuity correction"
    assert many["statistic"] == pytest.approx((30 - 10 - 1) ** 2 / 40)


def test_compare_refuses_different_test_lists(tmp_path):
    labels = [0, 1, 2, 0]
    a = write_run(tmp_path / "a", labels, labels)
    fewer = write_run(tmp_path / "fewer", labels[:3], labels[:3])
    with pytest.raises(DataError, match=r"has 4 test images, .*fewer/predictions.csv 3$"):
        compare_runs(a, fewer)
    paths = [f"/data/val/{NAMES[y]}/{i:03d}.jpg" for i, y in enumerate(labels)]
    other = write_run(tmp_path / "other", labels, labels, paths[:3] + ["/data/val/cat/new.jpg"])
    with pytest.raises(DataError, match="different test lists: /data/val/cat/003.jpg is in .*a/predictions.csv but not in"):
        compare_runs(a, other)
    relabelled = write_run(tmp_path / "relabelled", [1, 1, 2, 0], [1, 1, 2, 0], paths)
    with pytest.raises(DataError, match="000.jpg is of class cat in .* but dog in"):
        compare_runs(a, relabelled)
    with pytest.raises(DataError, match="no predictions.csv in"):
        compare_runs(a, tmp_path)


def test_compare_command_prints_a_table_and_writes_json(tmp_path, capsys):
    a, b, _, _ = paired_runs(tmp_path, only_a=3, only_b=1)
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "compare.json")]) == 0
    printed = capsys.readouterr().out
    assert "McNemar (exact binomial" in printed and "A - B +5.00%" in printed
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["accuracy_difference"] == pytest.approx(2 / 40)
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "error: no predictions.csv in" in capsys.readouterr().err


def test_a_truncated_predictions_file_is_one_error_naming_it(tmp_path, capsys):
    a, b, _, _ = paired_runs(tmp_path, only_a=3, only_b=1)
    text = (b / "predictions.csv").read_text()
    (b / "predictions.csv").write_text(text[: text.index("\n", len(text) // 2) + 30])  # a full disk, mid-row
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {b / 'predictions.csv'} is damaged (line ")
    assert "run.py evaluate" in err[0]
