"""The training loss and accuracy for the label format training uses (data.mixing).

Integer labels (the study configs): sparse cross-entropy and Keras's accuracy, exactly as before. Soft
targets (label smoothing, MixUp, CutMix): cross-entropy against the target distribution. Validation, test
and the benchmark feed integer labels to the same compiled model, so the loss and the accuracy take either
form: integer labels count as one-hot. Label smoothing is in the training targets, not in the loss, so
val_loss and test_loss stay the plain cross-entropy of the true class, comparable with the study's.
"""

from __future__ import annotations

import keras

from ..config import TrainConfig
from ..data.mixing import soft_targets


def _as_distribution(y_true, y_pred):
    """Integer labels (one rank less than the logits) -> one-hot; soft targets as they are."""
    if len(y_true.shape) < len(y_pred.shape):
        return keras.ops.one_hot(keras.ops.cast(y_true, "int32"), y_pred.shape[-1], dtype=y_pred.dtype)
    return keras.ops.cast(y_true, y_pred.dtype)


@keras.saving.register_keras_serializable(package="inat_keras")
class TargetCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy from logits against integer labels or soft targets."""

    def __init__(self, name="target_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return keras.losses.categorical_crossentropy(_as_distribution(y_true, y_pred), y_pred, from_logits=True)


def target_accuracy(y_true, y_pred):
    """Right when the top logit is the target's largest share: the true class, or under MixUp and CutMix
    the image with the larger weight."""
    target = keras.ops.argmax(_as_distribution(y_true, y_pred), axis=-1)
    return keras.ops.cast(keras.ops.equal(keras.ops.argmax(y_pred, axis=-1), target), "float32")


@keras.saving.register_keras_serializable(package="inat_keras")
class TargetAccuracy(keras.metrics.MeanMetricWrapper):
    def __init__(self, name="accuracy", dtype=None):
        super().__init__(target_accuracy, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def loss_and_metrics(config: TrainConfig) -> dict:
    """compile's `loss` and `weighted_metrics` (weighted, so that zero-weight padding, data.pipeline.padded,
    is not counted)."""
    if not soft_targets(config):
        return {"loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "weighted_metrics": ["accuracy"]}
    return {"loss": TargetCrossentropy(), "weighted_metrics": [TargetAccuracy()]}
