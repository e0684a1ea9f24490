"""Where a classifier goes wrong, and how sure we may be of its accuracy: statistics on test predictions.

Arrays in, numbers out (numpy, scipy, scikit-learn); the pictures of these are in analysis.plots.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

CALIBRATION_BINS = 15  # equal-width confidence bins, as Guo et al. (2017) measured ECE
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
EXACT_MCNEMAR_BELOW = 25  # discordant pairs below which the chi-square approximation is poor: exact binomial
MOST_CONFUSED = 10  # class pairs kept in metrics.json


def log_probabilities(logits: np.ndarray) -> np.ndarray:
    return special.log_softmax(np.asarray(logits, np.float64), axis=-1)


def averaged_log_probabilities(*log_probs: np.ndarray) -> np.ndarray:
    """log of the mean of several probability vectors (test-time augmentation), exact where one is ~0."""
    return special.logsumexp(np.stack(log_probs), axis=0) - np.log(len(log_probs))


def losses(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each image's cross-entropy: minus the log probability of its true class."""
    return -log_probs[np.arange(len(labels)), labels]


def top_classes(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k most probable classes, most probable first (ties: the lower class index)."""
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Per equal-width bin of the top-1 confidence (0 excluded, each bin (lo, hi], as in Guo et al.):
    image count, mean confidence and accuracy (NaN for empty bins)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, bins) / counts
        accuracy = np.bincount(index, correct.astype(float), bins) / counts
    return {"edges": edges, "counts": counts, "confidence": mean_confidence, "accuracy": accuracy}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Sum over bins of (bin's share of images) x |accuracy - mean confidence|."""
    table = reliability_bins(probabilities, labels, bins)
    filled = table["counts"] > 0
    gaps = np.abs(table["accuracy"][filled] - table["confidence"][filled])
    return float((table["counts"][filled] / len(labels) * gaps).sum())


def bootstrap_interval(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:  # fmt: skip
    """Percentile bootstrap interval of the mean of `values` (per-image 0/1 correctness for an accuracy;
    paired differences of two models' correctness for a difference), resampling images with replacement."""
    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(1, len(values)))  # bounded memory for large test sets
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        means[start : start + n] = values[rng.integers(0, len(values), (n, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def per_class_scores(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> dict:
    """{class: precision, recall, f1, support}; a class never predicted has precision 0 (not undefined)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(len(class_names)), zero_division=0
    )
    return {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
    }


def most_confused(labels: np.ndarray, predicted: np.ndarray, class_names: list[str], top: int = MOST_CONFUSED) -> list[dict]:
    """The (true, predicted) pairs of different classes that occur most, largest count first (ties by name)."""
    matrix = confusion_matrix(labels, predicted, labels=range(len(class_names)))
    pairs = [
        {"true": class_names[t], "predicted": class_names[p], "count": int(matrix[t, p])}
        for t in range(len(class_names)) for p in range(len(class_names)) if t != p and matrix[t, p]
    ]  # fmt: skip
    return sorted(pairs, key=lambda pair: (-pair["count"], pair["true"], pair["predicted"]))[:top]


def top_loss_indices(image_losses: np.ndarray, labels: np.ndarray, predicted: np.ndarray, count: int) -> np.ndarray:
    """The wrongly predicted images with the largest loss (least probability on the true class) first."""
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-image_losses[wrong], kind="stable")][:count]


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's test of two models on the same images: only the images where exactly one is right count.
    Below EXACT_MCNEMAR_BELOW such images, the exact two-sided binomial test; else the chi-square test with
    continuity correction, (|b - c| - 1)^2 / (b + c) on 1 degree of freedom."""
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    if b + c < EXACT_MCNEMAR_BELOW:
        statistic = None
        p_value = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
        method = "exact binomial, two-sided"
    else:
        statistic = (abs(b - c) - 1) ** 2 / (b + c)
        p_value = float(stats.chi2.sf(statistic, df=1))
        method = "chi-square with continuity correction"
    return {"a_right_b_wrong": b, "a_wrong_b_right": c, "statistic": statistic, "p_value": p_value, "method": method}
