"""A model on the test split: logits, metrics, the error analysis and its pictures."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from ..analysis import errors
from ..analysis.plots import (grid_indices, plot_class_accuracy, plot_confusion, plot_predictions, plot_reliability,
                              plot_top_losses)  # fmt: skip
from ..data.splits import Split
from ..errors import DataError
from ..files import write_text
from ..outputs import tracking
from ..outputs.run_folder import PREDICTIONS
from .checkpoint import predict_logits, runs_eagerly, unpadded

TOP_K = 3  # classes per image in predictions.csv and the W&B table
TOP_LOSSES = 12  # images in top_losses.png
THUMBNAIL = 128  # largest side of the W&B table's pictures, in pixels
PICTURES = ("confusion_matrix", "class_accuracy", "predictions_grid", "top_losses", "reliability_diagram")  # NAME.png
TTA_METHOD = "mean softmax of each image and its horizontal mirror"


def gather_images(dataset: tf.data.Dataset, indices) -> np.ndarray:
    """The images at `indices` (positions in `dataset`), as uint8 pixels, in one pass over the cached
    dataset: no file is decoded again."""
    indices = np.asarray(indices, int)
    found, start = None, 0
    for x, _, _ in unpadded(dataset):
        if found is None:
            found = np.zeros((len(indices), *x.shape[1:]), np.uint8)
        inside = (indices >= start) & (indices < start + len(x))
        found[inside] = x[indices[inside] - start]
        start += len(x)
    return found


def test_metrics(logits: np.ndarray, labels: np.ndarray, class_names: list[str], flipped_logits=None) -> dict:
    """The test report of metrics.json; with `flipped_logits` (of the mirrored images) also the TTA figures."""
    log_probs = errors.log_probabilities(logits)
    probabilities = np.exp(log_probs)
    predicted = logits.argmax(axis=1)
    correct = predicted == labels
    per_class = {
        name: float(correct[labels == i].mean()) if (labels == i).any() else None for i, name in enumerate(class_names)
    }
    metrics = {
        "test_loss": float(errors.losses(log_probs, labels).mean()),
        "test_accuracy": float(correct.mean()),
        "test_accuracy_ci95": list(errors.bootstrap_interval(correct)),
        "test_images": int(len(labels)),
        "per_class_test_accuracy": per_class,
        "per_class": errors.per_class_scores(labels, predicted, class_names),
        "most_confused": errors.most_confused(labels, predicted, class_names),
        "expected_calibration_error": errors.expected_calibration_error(probabilities, labels),
    }
    if flipped_logits is not None:
        averaged = errors.averaged_log_probabilities(log_probs, errors.log_probabilities(flipped_logits))
        metrics.update({
            "tta_test_loss": float(errors.losses(averaged, labels).mean()),
            "tta_test_accuracy": float((averaged.argmax(axis=1) == labels).mean()),
            "tta": TTA_METHOD,
        })  # fmt: skip
    return metrics


def evaluate_model(model: keras.Model, test: Split, test_ds, class_names: list[str], out_dir: Path, seed: int = 0,
                   tta: bool = False, wandb_run=None, caption: str = "", pictures: bool = True):  # fmt: skip
    """Metrics, predictions.csv and (unless `pictures` is off) the pictures for a model on the test split; returns
    (metrics, picture paths). With `tta`, also the test-time-augmented figures; with a W&B run that logs, the
    predictions table. `caption` (analysis.figures.caption: the run and the data) goes under every picture's title."""
    eager = runs_eagerly(len(test))
    logits, labels = predict_logits(model, test_ds, eager=eager)
    if len(labels) != len(test):
        raise DataError(f"the test pipeline gave {len(labels)} images for a test list of {len(test)}")
    flipped = predict_logits(model, test_ds, flip=True, eager=eager)[0] if tta else None
    metrics = test_metrics(logits, labels, class_names, flipped)
    log_probs = errors.log_probabilities(logits)
    probabilities, image_losses, predicted = np.exp(log_probs), errors.losses(log_probs, labels), logits.argmax(axis=1)
    rows = prediction_rows(test.paths, labels, probabilities, image_losses, class_names)
    write_predictions(out_dir / PREDICTIONS, rows)
    if tracking.logs_to_wandb(wandb_run):
        wandb_run.log({"test_predictions": tracking.predictions_table(thumbnails(test_ds), rows)})
    if not pictures:
        return metrics, {}

    paths = {name: out_dir / f"{name}.png" for name in PICTURES}
    plot_confusion(labels, predicted, class_names, paths["confusion_matrix"], caption)
    plot_class_accuracy(labels, predicted, class_names, paths["class_accuracy"], caption)
    chosen = np.array(grid_indices(labels, seed), int)
    worst = errors.top_loss_indices(image_losses, labels, predicted, TOP_LOSSES)
    images = gather_images(test_ds, np.concatenate([chosen, worst]))
    plot_predictions(images[: len(chosen)], labels[chosen], predicted[chosen], probabilities[chosen, predicted[chosen]],
                     class_names, paths["predictions_grid"], [test.paths[i] for i in chosen], caption)  # fmt: skip
    plot_top_losses(images[len(chosen) :], labels[worst], predicted[worst],
                    probabilities[worst, predicted[worst]], probabilities[worst, labels[worst]], image_losses[worst],
                    class_names, paths["top_losses"], [test.paths[i] for i in worst], caption)  # fmt: skip
    plot_reliability(errors.reliability_bins(probabilities, labels), metrics["expected_calibration_error"],
                     paths["reliability_diagram"], caption)  # fmt: skip
    return metrics, paths


def prediction_rows(paths: list[str], labels: np.ndarray, probabilities: np.ndarray, image_losses: np.ndarray,
                    class_names: list[str]) -> list[dict]:  # fmt: skip
    """One row per image: path, true and predicted class, the top TOP_K classes with probabilities (blank
    where there are fewer classes), loss."""
    best = errors.top_classes(probabilities, min(TOP_K, len(class_names)))
    rows = []
    for i, path in enumerate(paths):
        row = {"path": path, "true_class": class_names[labels[i]], "predicted_class": class_names[best[i, 0]]}
        for rank in range(TOP_K):
            ranked = rank < best.shape[1]
            row[f"top{rank + 1}_class"] = class_names[best[i, rank]] if ranked else ""
            row[f"top{rank + 1}_probability"] = float(f"{probabilities[i, best[i, rank]]:.6g}") if ranked else ""
        row["loss"] = float(f"{image_losses[i]:.6g}")
        rows.append(row)
    return rows


def write_predictions(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["path"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


PREDICTION_COLUMNS = ("path", "true_class", "predicted_class", "loss")  # what read_predictions needs


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """A predictions.csv as arrays: path, true_class, predicted_class (names) and loss."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    missing = [c for c in PREDICTION_COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise DataError(f"{path} is not a predictions file of inat-keras: no rows or no {', '.join(missing)} column")
    cut = next((line for line, row in enumerate(rows, start=2) if None in row or None in row.values()), None)
    if cut:
        raise DataError(f"{path} is damaged (line {cut} has another number of fields than the header: cut short?); "
                        "write it again with run.py evaluate --checkpoint RUN/model.keras")  # fmt: skip
    try:
        loss = np.array([float(r["loss"]) for r in rows])
    except ValueError as err:
        raise DataError(f"{path}: a loss is not a number ({err})") from None
    table = {name: np.array([r[name] for r in rows]) for name in PREDICTION_COLUMNS if name != "loss"}
    return {**table, "loss": loss}


def thumbnails(dataset: tf.data.Dataset) -> list[np.ndarray]:
    """The dataset's images at most THUMBNAIL pixels wide (a whole test set at full size may not fit in memory)."""
    small = []
    for x, _, _ in unpadded(dataset):
        for image in x.astype(np.uint8):
            picture = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
            picture.thumbnail((THUMBNAIL, THUMBNAIL))
            small.append(np.asarray(picture))
    return small
