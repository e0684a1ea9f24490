"""Understand the errors: the statistics against hand counts, the compiled forward pass, test-time
augmentation, the W&B table, and what a final run and evaluate write."""

import csv
import json
import math

import keras
import numpy as np
import pytest
import wandb
from PIL import Image

from inat_keras.analysis import errors, plots
from inat_keras.config import ScratchConfig, build_config
from inat_keras.data.pipeline import make_dataset
from inat_keras.data.splits import Split, list_images
from inat_keras.serving.compare import compare_runs
from inat_keras.inference import checkpoint, evaluation
from inat_keras.config import EvaluateOptions
from inat_keras.serving.evaluate import evaluate_checkpoint
from inat_keras.training.kinds import KINDS
from inat_keras.outputs.tracking import predictions_table

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent


def test_expected_calibration_error_equals_a_hand_computed_value():
    # confidences 0.96 (right) and 0.94 (wrong) share the bin (14/15, 1]; 0.7 (right) and 0.55 (wrong) are alone
    probabilities = np.array([[0.96, 0.04], [0.94, 0.06], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0])
    by_hand = 2 / 4 * abs(0.5 - (0.96 + 0.94) / 2) + 1 / 4 * abs(1 - 0.7) + 1 / 4 * abs(0 - 0.55)
    assert errors.expected_calibration_error(probabilities, labels) == pytest.approx(by_hand)  # 15 bins
    one_bin = abs(0.5 - (0.96 + 0.94 + 0.7 + 0.55) / 4)
    assert errors.expected_calibration_error(probabilities, labels, bins=1) == pytest.approx(one_bin)
    table = errors.reliability_bins(probabilities, labels)
    assert table["counts"].sum() == 4 and table["counts"][14] == 2 and table["accuracy"][14] == 0.5


def test_bootstrap_interval_holds_the_accuracy_and_narrows_with_more_images():
    small = np.arange(100) % 10 < 7  # 70% right
    large = np.arange(10_000) % 10 < 7
    low, high = errors.bootstrap_interval(small)
    assert low < 0.7 < high
    assert errors.bootstrap_interval(small) == (low, high)  # fixed seed
    big_low, big_high = errors.bootstrap_interval(large)
    assert big_low < 0.7 < big_high and big_high - big_low < (high - low) / 5
    normal = 2 * 1.96 * math.sqrt(0.7 * 0.3 / 10_000)  # the binomial's normal approximation
    assert big_high - big_low == pytest.approx(normal, rel=0.15)


def test_precision_recall_f1_match_a_hand_count():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    scores = errors.per_class_scores(labels, predicted, ["a", "b", "c", "d"])
    assert scores["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert scores["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert scores["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert scores["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_most_confused_pairs_come_largest_first():
    pairs = [(0, 1)] * 3 + [(2, 0)] * 2 + [(1, 2)] * 2 + [(1, 0)] + [(0, 0)] * 5 + [(2, 2)] * 4
    labels, predicted = map(np.array, zip(*pairs))
    found = errors.most_confused(labels, predicted, ["a", "b", "c"])
    assert found == [
        {"true": "a", "predicted": "b", "count": 3},
        {"true": "b", "predicted": "c", "count": 2},
        {"true": "c", "predicted": "a", "count": 2},
        {"true": "b", "predicted": "a", "count": 1},
    ]
    assert errors.most_confused(labels, predicted, ["a", "b", "c"], top=1) == found[:1]


def paired_correctness(both, only_a, only_b, neither):
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return np.array(a), np.array(b)


def test_mcnemar_exact_for_few_discordant_pairs_else_chi_square_with_continuity_correction():
    result = errors.mcnemar(*paired_correctness(50, 10, 2, 8))
    assert (result["a_right_b_wrong"], result["a_wrong_b_right"]) == (10, 2)
    assert result["method"].startswith("exact binomial")
    # two-sided: 2 x P(X >= 10) for X ~ Binomial(12, 1/2)
    assert result["p_value"] == pytest.approx(2 * (math.comb(12, 10) + math.comb(12, 11) + 1) / 2**12)
    result = errors.mcnemar(*paired_correctness(100, 40, 20, 5))
    statistic = (abs(40 - 20) - 1) ** 2 / 60
    assert result["method"] == "chi-square with continuity correction"
    assert result["statistic"] == pytest.approx(statistic)
    assert result["p_value"] == pytest.approx(math.erfc(math.sqrt(statistic / 2)))  # chi-square, 1 d.o.f.
    assert errors.mcnemar(*paired_correctness(5, 0, 0, 5))["p_value"] == 1.0


def test_top_losses_are_the_wrong_images_with_the_largest_loss():
    image_losses = np.array([0.1, 3.0, 2.0, 5.0, 0.2])
    labels = np.array([0, 1, 1, 0, 1])
    predicted = np.array([0, 0, 0, 0, 0])  # images 1 and 2 wrong; 3 has a large loss but is right
    assert errors.top_loss_indices(image_losses, labels, predicted, 5).tolist() == [1, 2, 4]
    assert errors.top_loss_indices(image_losses, labels, predicted, 1).tolist() == [1]


def test_averaged_log_probabilities_are_the_log_of_the_mean_probability():
    rng = np.random.default_rng(0)
    first, second = errors.log_probabilities(rng.normal(size=(4, 3))), errors.log_probabilities(rng.normal(size=(4, 3)))
    averaged = errors.averaged_log_probabilities(first, second)
    assert np.exp(averaged) == pytest.approx((np.exp(first) + np.exp(second)) / 2)
    hard = errors.log_probabilities(np.array([[0.0, 2000.0]]))  # probability of class 0: exp(-2000), 0 in floats
    assert errors.averaged_log_probabilities(hard, hard)[0, 0] == pytest.approx(-2000.0)


def evaluation_set(folder, batch_size=5, even=False):
    names, paths, labels = list_images(folder / "val")
    test = Split(paths, labels)
    config = build_config(ScratchConfig, {"image_size": 32, "wandb": "disabled"})
    return names, test, make_dataset(test, config, training=False, batch_size=batch_size, even_batches=even)


def pooled_model(left_half_only: bool) -> keras.Model:
    """Global average pooling sees a horizontal mirror as the same image; pooling the left half alone does not."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Cropping2D(((0, 0), (0, 16)))(inputs) if left_half_only else inputs
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, kernel_initializer=keras.initializers.RandomNormal(0, 0.05, seed=1))(x)
    return keras.Model(inputs, outputs)


def test_the_compiled_forward_pass_counts_every_test_image_once(image_folder):
    model = pooled_model(left_half_only=True)
    for even in (False, True):  # 12 images: batches 5, 5, 2 (even: + 3 zero-weight padding images)
        names, test, dataset = evaluation_set(image_folder, batch_size=5, even=even)
        logits, labels = checkpoint.predict_logits(model, dataset, eager=False)
        images = evaluation.gather_images(dataset, range(len(test))).astype("float32")
        assert labels.tolist() == test.labels and len(images) == 12
        assert logits == pytest.approx(keras.ops.convert_to_numpy(model(images, training=False)), abs=1e-4)
        mirrored, _ = checkpoint.predict_logits(model, dataset, flip=True, eager=False)
        assert mirrored == pytest.approx(keras.ops.convert_to_numpy(model(images[:, :, ::-1].copy())), abs=1e-4)
    assert images == pytest.approx(checkpoint.split_images(test, 32, 3))  # the same pixels as the files give


class RecordingRun:
    """Stands in for a W&B run that logs: what evaluate_model hands to `log`."""

    disabled = False

    def __init__(self):
        self.logged = []

    def log(self, data):
        self.logged.append(data)


def test_tta_keeps_a_mirror_invariant_model_and_changes_a_mirror_sensitive_one(image_folder, tmp_path):
    names, test, dataset = evaluation_set(image_folder)
    run = RecordingRun()
    (tmp_path / "a").mkdir()
    invariant, _ = evaluation.evaluate_model(pooled_model(False), test, dataset, names, tmp_path / "a", tta=True,
                                             wandb_run=run)  # fmt: skip
    assert invariant["tta_test_accuracy"] == invariant["test_accuracy"]
    assert invariant["tta_test_loss"] == pytest.approx(invariant["test_loss"], abs=1e-5)
    [logged] = run.logged
    table = logged["test_predictions"]
    assert isinstance(table, wandb.Table) and len(table.data) == len(test)
    assert table.columns[:4] == ["image", "path", "true_class", "predicted_class"]
    assert all(isinstance(row[0], wandb.Image) for row in table.data)

    sensitive = pooled_model(True)
    logits, labels = checkpoint.predict_logits(sensitive, dataset)
    flipped, _ = checkpoint.predict_logits(sensitive, dataset, flip=True)
    metrics = evaluation.test_metrics(logits, labels, names, flipped)
    assert abs(metrics["tta_test_loss"] - metrics["test_loss"]) > 1e-4
    plain = evaluation.test_metrics(logits, labels, names)
    assert plain["test_loss"] == metrics["test_loss"] and "tta_test_loss" not in plain


def test_the_wandb_table_holds_one_row_per_image_with_its_picture():
    rows = [{"path": f"x{i}.jpg", "true_class": "cat", "loss": 0.5 * i} for i in range(3)]
    images = [np.full((8, 8, 3), 40 * i, np.uint8) for i in range(3)]
    table = predictions_table(images, rows)
    assert table.columns == ["image", "path", "true_class", "loss"]
    assert [row[1:] for row in table.data] == [["x0.jpg", "cat", 0.0], ["x1.jpg", "cat", 0.5], ["x2.jpg", "cat", 1.0]]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_final_run_and_evaluate_write_the_error_analysis(image_folder, tmp_path, tiny_cnn_options, class_names):
    config = build_config(ScratchConfig, {**tiny_cnn_options, "data_dir": str(image_folder),
                                          "output_dir": str(tmp_path / "run"), "tta": True, "pictures": True})  # fmt: skip
    run_dir, metrics = KINDS["scratch"].train(config)
    for name in ("predictions.csv", *(f"{picture}.png" for picture in evaluation.PICTURES)):
        assert (run_dir / name).is_file(), name
    for picture in evaluation.PICTURES:  # each titled with its run and its data
        title = Image.open(run_dir / f"{picture}.png").text["Title"]
        assert f"run {run_dir.name}  ·  data: data test (12 images)" in title, picture
    saved = json.loads((run_dir / "metrics.json").read_text())
    rows = read_csv(run_dir / "predictions.csv")
    split = json.loads((run_dir / "split.json").read_text())
    assert len(rows) == len(split["test"]) == 12
    assert list(rows[0]) == ["path", "true_class", "predicted_class", "top1_class", "top1_probability", "top2_class",
                             "top2_probability", "top3_class", "top3_probability", "loss"]  # fmt: skip
    assert {r["true_class"] for r in rows} == set(class_names)
    correct = [r["true_class"] == r["predicted_class"] for r in rows]
    assert saved["test_accuracy"] == pytest.approx(np.mean(correct))
    assert saved["test_loss"] == pytest.approx(np.mean([float(r["loss"]) for r in rows]), rel=1e-4)
    low, high = saved["test_accuracy_ci95"]
    assert low <= saved["test_accuracy"] <= high
    assert sum(c["support"] for c in saved["per_class"].values()) == 12
    wrong = {}
    for r in rows:
        if r["true_class"] != r["predicted_class"]:
            wrong[(r["true_class"], r["predicted_class"])] = wrong.get((r["true_class"], r["predicted_class"]), 0) + 1
    assert {(p["true"], p["predicted"]): p["count"] for p in saved["most_confused"]} == wrong
    assert 0.0 <= saved["expected_calibration_error"] <= 1.0
    assert 0.0 <= saved["tta_test_accuracy"] <= 1.0 and saved["tta_test_loss"] > 0

    out, again = evaluate_checkpoint(EvaluateOptions(checkpoint=str(run_dir / "model.keras"), output_dir=str(tmp_path / "eval")))
    title = Image.open(out / "confusion_matrix.png").text["Title"]
    assert f"run {run_dir.name} (re-evaluated: eval)  ·  data: data test (12 images)" in title
    assert "tta_test_accuracy" not in again  # off by default
    assert again["most_confused"] == saved["most_confused"]
    assert [r["predicted_class"] for r in read_csv(out / "predictions.csv")] == [r["predicted_class"] for r in rows]
    same = compare_runs(run_dir, out)  # the run and its re-evaluation: one model, paired image by image
    assert same["accuracy_difference"] == 0 and same["mcnemar"]["p_value"] == 1.0


# ---- the pictures --------------------------------------------------------------------------------------------

CAPTION = "run r-20260101  ·  data: tiny test (4 images)"


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_the_reliability_diagram_shows_each_accuracy_whole_even_above_the_confidence(tmp_path):
    # an under-confident model: 0.6 confidence in bin (0.6, 0.667] is right 3 times in 4
    probabilities = np.array([[0.62, 0.38]] * 4 + [[0.95, 0.05]] * 2)
    labels = np.array([0, 0, 0, 1, 0, 1])
    bins = errors.reliability_bins(probabilities, labels)
    ece = errors.expected_calibration_error(probabilities, labels)
    fig = plots.plot_reliability(bins, ece, tmp_path / "r.png", CAPTION)
    top = fig.axes[0]
    [accuracy] = [c for c in top.containers if c.get_label().startswith("accuracy")]
    filled = bins["counts"] > 0
    assert [bar.get_height() for bar in accuracy] == pytest.approx(bins["accuracy"][filled].tolist())
    assert [bar.get_y() for bar in accuracy] == [0, 0]  # from 0: nothing is drawn over them in their colour
    assert bins["accuracy"][filled][0] == 0.75 > bins["confidence"][filled][0]
    legend, axes_box = top.get_legend().get_window_extent(), top.get_window_extent()
    assert legend.x0 >= axes_box.x1  # beside the bins, covering none
    title = fig.get_suptitle()
    assert f"ECE {ece:.3f}" in title and CAPTION in title
    assert CAPTION in Image.open(tmp_path / "r.png").text["Title"]


def test_top_losses_come_largest_loss_first_with_each_file_and_both_probabilities(tmp_path):
    images = np.zeros((3, 8, 8, 3), np.uint8)
    image_losses = np.array([0.9, 3.0, 1.5])  # given out of order
    fig = plots.plot_top_losses(images, np.array([0, 1, 2]), np.array([1, 2, 0]), np.array([0.6, 0.17, 0.5]),
                                np.exp(-image_losses), image_losses, ["a", "b", "c"], tmp_path / "t.png",
                                paths=["x/a1.jpg", "x/b2.jpg", "x/c3.jpg"], caption=CAPTION)  # fmt: skip
    shown = [t for t in texts(fig) if t.startswith("#")]
    assert [t.splitlines()[0] for t in shown] == ["#1  loss 3.00", "#2  loss 1.50", "#3  loss 0.90"]
    assert shown[0].splitlines()[1:] == ["b2.jpg", "true: b (5%)", "pred: c (17%)"]
    assert "largest loss first" in fig.get_suptitle() and CAPTION in fig.get_suptitle()


def test_the_prediction_grid_is_compact_and_marks_wrong_images_in_words(tmp_path):
    count = plots.GRID_ROWS * plots.GRID_COLS
    labels, predicted = np.arange(count) % 10, np.arange(count) % 10
    predicted[0] = 3
    plots.plot_predictions(np.zeros((count, 64, 64, 3), np.uint8), labels, predicted, np.full(count, 0.5),
                           [f"class{i}" for i in range(10)], tmp_path / "g.png", [f"f{i}.jpg" for i in range(count)],
                           CAPTION)  # fmt: skip
    with Image.open(tmp_path / "g.png") as picture:
        assert picture.size[1] <= 1200 and CAPTION in picture.text["Title"]


def test_the_confusion_matrix_has_row_shares_beside_counts_and_each_class_its_accuracy(tmp_path):
    labels, predicted = np.array([0, 0, 0, 0, 1, 1, 2]), np.array([0, 0, 0, 1, 1, 2, 2])
    names = ["a", "b", "c", "d"]
    fig = plots.plot_confusion(labels, predicted, names, tmp_path / "c.png", CAPTION)
    counts, shares = (ax.images[0].get_array() for ax in fig.axes if ax.images)
    assert counts.tolist()[:3] == [[3, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]]
    assert shares.tolist() == [[0.75, 0.25, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    fig = plots.plot_class_accuracy(labels, predicted, names, tmp_path / "a.png", CAPTION)
    bars = fig.axes[0].containers[0]
    assert [bar.get_width() for bar in bars] == pytest.approx([0.75, 0.5, 1.0, 0.0])
    assert {"3/4 (75%)", "1/2 (50%)", "1/1 (100%)", "no test images"} <= set(texts(fig))
    assert all(CAPTION in Image.open(tmp_path / name).text["Title"] for name in ("c.png", "a.png"))
