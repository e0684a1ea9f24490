"""Soft training targets: label smoothing, MixUp and CutMix conserve label mass and match the pixels they
mix; the loss and accuracy take soft and integer labels; validation and test stay hard and unmixed."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from inat_keras.config import ScratchConfig, build_config
from inat_keras.data.mixing import TargetSpec, mix_batch
from inat_keras.data.pipeline import make_dataset
from inat_keras.data.splits import load_splits
from inat_keras.training.kinds import KINDS
from inat_keras.outputs.run_folder import read_history
from inat_keras.training.losses import loss_and_metrics

CLASSES = 10


def one_colour_images() -> tuple[np.ndarray, np.ndarray]:
    """Image i is flat with value 10 * i + 5 and has label i: every mixed pixel names its sources."""
    values = 10.0 * np.arange(CLASSES) + 5
    return np.broadcast_to(values[:, None, None, None], (CLASSES, 12, 16, 3)).astype("float32"), np.arange(CLASSES)


def mixed(spec: TargetSpec, step: int):
    images, labels = one_colour_images()
    x, y = mix_batch(tf.constant(images), tf.constant(labels), tf.constant([7, step], tf.int64), spec)
    return images, x.numpy(), y.numpy()


def test_mixup_labels_sum_to_one_and_weigh_the_two_images_as_the_pixels_do():
    for step in range(4):
        images, x, y = mixed(TargetSpec(CLASSES, mixup=0.4), step)
        np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-6)
        assert np.all((y > 1e-6).sum(axis=1) <= 2)  # itself and one partner
        expected = (y @ images[:, 0, 0, 0])[:, None, None, None]  # lambda * x_i + (1 - lambda) * x_partner
        np.testing.assert_allclose(x, np.broadcast_to(expected, x.shape), rtol=1e-5)
    weights = np.concatenate([mixed(TargetSpec(CLASSES, mixup=0.4), s)[2].max(axis=1) for s in range(20)])
    assert weights.min() < 0.8 and weights.std() > 0.05  # Beta(0.4, 0.4) draws, not a constant


def test_cutmix_label_weight_is_the_pasted_area():
    areas = []
    for step in range(6):
        images, x, y = mixed(TargetSpec(CLASSES, cutmix=1.0), step)
        np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-6)
        for i in range(CLASSES):
            sources = np.round((x[i, ..., 0] - 5) / 10).astype(int)  # which image each pixel came from
            share = np.bincount(sources.ravel(), minlength=CLASSES) / sources.size
            np.testing.assert_allclose(y[i], share, atol=1e-6)
            pasted = sources != i
            if pasted.any():  # one axis-aligned rectangle
                rows, cols = np.flatnonzero(pasted.any(1)), np.flatnonzero(pasted.any(0))
                assert pasted[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
            areas.append(1 - y[i, i])
    assert 0.1 < np.mean(areas) < 0.9 and np.std(areas) > 0.05


def test_with_both_each_batch_uses_one_of_them():
    kinds = set()
    for step in range(16):
        images, x, y = mixed(TargetSpec(CLASSES, mixup=0.4, cutmix=1.0), step)
        flat = [len(np.unique(x[i, ..., 0])) == 1 for i in range(CLASSES)]
        kinds.add("mixup" if all(flat) else "cutmix")
        np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-6)
    assert kinds == {"mixup", "cutmix"}


def test_label_smoothing_gives_the_formulas_loss():
    eps = 0.1
    _, targets = mix_batch(tf.zeros((3, 4, 4, 3)), tf.constant([0, 2, 4]), tf.constant([1, 1], tf.int64), TargetSpec(5, eps))
    logits = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = np.mean([-(1 - eps) * log_p[i, c] - eps / 5 * log_p[i].sum() for i, c in enumerate([0, 2, 4])])
    loss = loss_and_metrics(build_config(ScratchConfig, {"label_smoothing": eps}))["loss"]
    assert float(keras.ops.convert_to_numpy(loss(targets.numpy(), logits))) == pytest.approx(expected, rel=1e-5)
    # integer labels (validation, test) count as one-hot: the plain cross-entropy of the true class
    plain = np.mean([-log_p[i, c] for i, c in enumerate([0, 2, 4])])
    assert float(keras.ops.convert_to_numpy(loss(np.array([0, 2, 4]), logits))) == pytest.approx(plain, rel=1e-5)


def test_the_study_configs_keep_the_sparse_loss_and_keras_accuracy():
    chosen = loss_and_metrics(build_config(ScratchConfig, {}))
    assert isinstance(chosen["loss"], keras.losses.SparseCategoricalCrossentropy) and chosen["weighted_metrics"] == ["accuracy"]


def test_soft_accuracy_counts_the_larger_share_and_skips_zero_weight_padding():
    metric = loss_and_metrics(build_config(ScratchConfig, {"mixup": 0.2}))["weighted_metrics"][0]
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]], "float32")
    metric.update_state(np.array([[0.7, 0.3, 0], [0.6, 0.4, 0], [0, 0, 1]], "float32"), logits)
    assert float(metric.result()) == pytest.approx(2 / 3)
    metric.reset_state()
    metric.update_state(np.array([0, 0, 2]), logits, sample_weight=np.array([1.0, 1.0, 0.0]))  # padding weighs 0
    assert float(metric.result()) == pytest.approx(0.5)


def test_training_batches_are_mixed_and_reproducible_validation_is_not(image_folder, tiny_cnn_options):
    config = build_config(ScratchConfig, {**tiny_cnn_options, "mixup": 0.4, "cutmix": 1.0, "label_smoothing": 0.1})
    splits = load_splits(image_folder, 0.3, 0, config)

    def batches(epochs):
        return [(x.numpy(), y.numpy()) for x, y in make_dataset(splits.train, config, training=True, classes=3, epochs=epochs)]

    whole, resumed = batches((0, 2)), batches((1, 2))  # a run resumed at epoch 2 draws what it would have drawn
    assert len(whole) == 2 * len(resumed)
    for (x, y), (x2, y2) in zip(whole[len(resumed) :], resumed):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    for _, y in whole:
        assert y.shape[1] == 3 and np.allclose(y.sum(axis=1), 1.0)
    assert any(np.sort(y, axis=1)[:, -2].max() > 0.05 + 1e-3 for _, y in whole)  # some images mixed beyond smoothing
    assert not np.allclose(whole[0][1], whole[len(resumed)][1])  # a new draw every epoch
    plain = build_config(ScratchConfig, {**tiny_cnn_options, "augment": False})
    for kwargs in ({}, {"even_batches": True, "batch_size": 4}):  # padded (zero-weight) batches too
        val = list(make_dataset(splits.val, config, training=False, **kwargs))
        assert all(batch[1].dtype == tf.int32 and len(batch[1].shape) == 1 for batch in val)
        reference = list(make_dataset(splits.val, plain, training=False, **kwargs))
        for batch, expected in zip(val, reference):
            for got, want in zip(batch, expected):
                np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("options", [{"label_smoothing": 0.1, "mixup": 0.4}, {"cutmix": 1.0, "augment_on": "host"}])
def test_training_with_soft_targets_has_a_finite_loss(image_folder, tmp_path, tiny_cnn_options, options):
    values = {**tiny_cnn_options, "epochs": 1, "data_dir": str(image_folder), "output_dir": str(tmp_path / "run"), **options}
    _, metrics = KINDS["scratch"].train(build_config(ScratchConfig, values))
    row = read_history(tmp_path / "run" / "history.csv")[0]
    assert np.isfinite(float(row["loss"])) and np.isfinite(float(row["val_loss"])) and 0 <= float(row["val_accuracy"]) <= 1
    assert 0 <= float(row["accuracy"]) <= 1 and 0 <= metrics["test_accuracy"] <= 1
