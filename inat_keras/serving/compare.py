"""`run.py compare RUN_A RUN_B`: two models on the same test images, paired image by image from the
predictions.csv that every final run and every evaluate writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis import errors
from ..errors import DataError
from ..inference.evaluation import read_predictions
from ..outputs.run_folder import PREDICTIONS

BOOTSTRAP = (f"percentile bootstrap, {errors.BOOTSTRAP_RESAMPLES} resamples of the test images (paired: both runs "
             f"keep the same images), seed {errors.BOOTSTRAP_SEED}")  # fmt: skip


def predictions_file(where: str | Path) -> Path:
    """A run folder or an evaluate output folder (or its predictions.csv itself)."""
    where = Path(where)
    path = where / PREDICTIONS if where.is_dir() else where
    if not path.is_file():
        raise DataError(f"no {PREDICTIONS} in {where}: give a final run's folder or an evaluate output folder "
                        "(run.py evaluate --checkpoint RUN/model.keras writes one)")  # fmt: skip
    return path


def paired(a: dict, b: dict, name_a: str, name_b: str) -> np.ndarray:
    """The positions in `b` of `a`'s test images, or a one-line error saying how the test lists differ."""
    if len(a["path"]) != len(b["path"]):
        raise DataError(f"different test lists: {name_a} has {len(a['path'])} test images, {name_b} {len(b['path'])}")
    for name, table in ((name_a, a), (name_b, b)):
        paths, counts = np.unique(table["path"], return_counts=True)
        if (counts > 1).any():
            raise DataError(f"{name} lists the test image {paths[counts > 1][0]} more than once")
    where = {path: i for i, path in enumerate(b["path"])}
    for path in a["path"]:
        if path not in where:
            raise DataError(f"different test lists: {path} is in {name_a} but not in {name_b}")
    order = np.array([where[path] for path in a["path"]])
    differ = np.flatnonzero(a["true_class"] != b["true_class"][order])
    if len(differ):
        i = differ[0]
        raise DataError(f"{a['path'][i]} is of class {a['true_class'][i]} in {name_a} but "
                        f"{b['true_class'][order][i]} in {name_b}: the runs label the test set differently")  # fmt: skip
    return order


def run_figures(table: dict, correct: np.ndarray, where: Path) -> dict:
    return {
        "predictions": str(where),
        "test_accuracy": float(correct.mean()),
        "test_accuracy_ci95": list(errors.bootstrap_interval(correct)),
        "test_loss": float(table["loss"].mean()),
    }


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict:
    """Both runs' test figures on their common test list, A's accuracy minus B's with its paired bootstrap
    interval, and McNemar's test of the images where exactly one of them is right."""
    path_a, path_b = predictions_file(run_a), predictions_file(run_b)
    a, b = read_predictions(path_a), read_predictions(path_b)
    order = paired(a, b, str(path_a), str(path_b))
    correct_a = a["predicted_class"] == a["true_class"]
    correct_b = (b["predicted_class"] == b["true_class"])[order]
    difference = correct_a.astype(float) - correct_b.astype(float)
    return {
        "test_images": len(correct_a),
        "a": run_figures(a, correct_a, path_a),
        "b": run_figures(b, correct_b, path_b),
        "accuracy_difference": float(difference.mean()),
        "accuracy_difference_ci95": list(errors.bootstrap_interval(difference)),
        "bootstrap": BOOTSTRAP,
        "mcnemar": errors.mcnemar(correct_a, correct_b),
    }


def summary_table(result: dict) -> str:
    """A few lines for the console."""
    lines = [f"{'run':<4} {'test accuracy':>14} {'95% interval':>18} {'test loss':>10}  predictions"]
    for key in ("a", "b"):
        run = result[key]
        low, high = run["test_accuracy_ci95"]
        lines.append(f"{key.upper():<4} {run['test_accuracy']:>14.2%} {f'{low:.2%} - {high:.2%}':>18} "
                     f"{run['test_loss']:>10.4f}  {run['predictions']}")  # fmt: skip
    low, high = result["accuracy_difference_ci95"]
    test = result["mcnemar"]
    lines += [
        f"A - B {result['accuracy_difference']:+.2%} (95% interval {low:+.2%} to {high:+.2%}; {result['bootstrap']})",
        f"McNemar ({test['method']}): A right and B wrong {test['a_right_b_wrong']}, A wrong and B right "
        f"{test['a_wrong_b_right']}, p = {test['p_value']:.4g}   ({result['test_images']} test images)",
    ]
    return "\n".join(lines)
