"""EfficientNetV2-S: the exact weight transfer, every --weights source, and the refusals."""

import keras
import keras_cv
import numpy as np
import pytest
from keras_cv.src.utils.preset_utils import save_to_preset

from inat_keras.cli import main
from inat_keras.config import ConfigError, FinetuneConfig, build_config
from inat_keras.errors import WeightsError
from inat_keras.models.backbones import BACKBONE, HEAD, PREPROCESS, V2S_ARGUMENTS
from inat_keras.models.efficientnet_v2 import (
    KERAS_CV_HANDLE,
    OFFICIAL_FILE,
    OFFICIAL_MD5,
    OFFICIAL_URL,
    build_backbone,
    load_weights,
)
from inat_keras.models.finetune import FinetuneArchitecture, build_finetune_model

SIZE = 32  # the smallest size the model takes: fast, and keras.applications accepts it


def config(**values) -> FinetuneConfig:
    return build_config(FinetuneConfig, {"image_size": SIZE, "weights": "none", "wandb": "disabled", **values})


def features(model: keras.Model) -> keras.Model:
    """Raw pixels to the backbone's feature map, inside the fine-tuning model."""
    return keras.Model(model.input, model.get_layer("avg_pool").input)


def pixels(count=3, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, SIZE, SIZE, 3)).astype("float32")


def values(tensor) -> np.ndarray:
    return keras.ops.convert_to_numpy(tensor)


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    """keras.applications' EfficientNetV2-S with random weights, saved as the official file is (legacy .h5).

    Batch-norm statistics and scales are random too (fresh ones are 0 and 1), so that a transfer that
    dropped or swapped them would change the outputs.
    """
    keras.utils.set_random_seed(1)
    source = keras.applications.EfficientNetV2S(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    rng = np.random.default_rng(1)
    for w in source.weights:
        if w.path.endswith(("moving_variance", "gamma")):
            w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
        elif w.path.endswith(("moving_mean", "beta")):
            w.assign(rng.normal(0.0, 0.1, w.shape).astype("float32"))
    path = tmp_path_factory.mktemp("weights") / OFFICIAL_FILE
    source.save(path)
    return source, path


@pytest.fixture(scope="module")
def random_model():
    keras.utils.set_random_seed(0)
    return build_finetune_model(FinetuneArchitecture.of(config(weights="none")), 3)


@pytest.fixture(scope="module")
def backbone():
    """A bare backbone for the refusals (a refused source must leave it usable, not half-loaded and silent)."""
    return build_backbone(SIZE)


@pytest.mark.large
def test_imagenet_weights_transfer_exactly(official_file, random_model, monkeypatch):
    source, path = official_file
    asked = []

    def fake_get_file(fname, origin, **kwargs):
        asked.append((fname, origin, kwargs))
        return str(path)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    model = build_finetune_model(FinetuneArchitecture.of(config(weights="imagenet")), 3)
    assert asked == [(OFFICIAL_FILE, OFFICIAL_URL, {"cache_subdir": "models", "file_hash": OFFICIAL_MD5})]
    images = pixels()
    expected = values(source(images, training=False))
    got = values(features(model)(images, training=False))
    assert np.isfinite(expected).all() and expected.std() > 0
    for copied, original in zip(model.get_layer(BACKBONE).get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(copied, original)
    # Equal up to rounding, which 40 blocks of random-looking weights amplify: under JAX on a CPU the
    # depthwise convolutions sum their products in another order, and threads reduce in varying order.
    def relative_error(a):
        return np.linalg.norm(a - expected) / np.linalg.norm(expected)

    assert relative_error(got) < 1e-2
    assert relative_error(values(features(random_model)(images, training=False))) > 0.5


@pytest.mark.large
def test_the_model_takes_raw_pixels_and_ends_in_float32_logits(random_model):
    scaled = values(random_model.get_layer(PREPROCESS)(np.array([[0.0, 128.0, 255.0]], dtype="float32")))
    np.testing.assert_allclose(scaled, [[-1.0, 0.0, 255 / 128 - 1]], rtol=1e-6)
    assert random_model.layers[1].name == PREPROCESS  # first, so augmentation always sees raw pixels
    assert random_model.get_layer(BACKBONE).count_params() == 20_331_360
    assert random_model.get_layer(HEAD).units == 3 and random_model.output_shape == (None, 3)

    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = build_finetune_model(FinetuneArchitecture.of(config()), 7)
    finally:
        keras.config.set_dtype_policy("float32")
    assert mixed.get_layer(BACKBONE).compute_dtype == "float16"
    assert keras.backend.standardize_dtype(mixed(pixels(1)).dtype) == "float32"


@pytest.mark.large
def test_a_local_keras_cv_preset_folder_brings_its_weights_and_scaling(tmp_path):
    source = keras_cv.models.EfficientNetV2Backbone(**V2S_ARGUMENTS, include_rescaling=True)
    save_to_preset(source, tmp_path / "preset")
    model = build_finetune_model(FinetuneArchitecture.of(config(weights=str(tmp_path / "preset"))), 3)
    for mine, theirs in zip(model.get_layer(BACKBONE).weights, source.weights):
        np.testing.assert_array_equal(values(mine), values(theirs))
    assert model.get_layer(PREPROCESS).scale == pytest.approx(1 / 255)  # what include_rescaling=True means
    assert model.get_layer(PREPROCESS).offset == 0


def test_a_local_weights_file_fills_the_backbone(backbone, tmp_path):
    """--weights PATH.weights.h5: a backbone's own saved weights, loaded whole, with the official scaling."""
    backbone.save_weights(tmp_path / "mine.weights.h5")
    keras.utils.set_random_seed(3)
    fresh = build_backbone(SIZE)
    assert not all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), backbone.get_weights()))
    assert load_weights(fresh, str(tmp_path / "mine.weights.h5")) == (1 / 128, -1.0)
    for loaded, saved in zip(fresh.get_weights(), backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, saved)


@pytest.mark.backend_independent  # which files are refused, and how: nothing computes
def test_weights_that_cannot_be_had_stop_with_the_place_and_the_offline_alternative(backbone, monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(WeightsError, match="efficientnetv2-s_notop.h5") as err:
        load_weights(backbone, "imagenet")
    assert OFFICIAL_URL in str(err.value) and "--weights /path/to/" in str(err.value)

    monkeypatch.setattr(keras_cv.models.EfficientNetV2Backbone, "from_preset", offline)
    with pytest.raises(WeightsError) as err:
        load_weights(backbone, "keras-cv")
    assert KERAS_CV_HANDLE in str(err.value) and "--weights /path/to/folder" in str(err.value)


@pytest.mark.backend_independent  # which files are refused, and how: nothing computes
def test_the_command_stops_instead_of_training_random_weights(image_folder, tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    code = main(["finetune", "--data-dir", str(image_folder), "--image-size", str(SIZE), "--wandb", "disabled",
                 "--output-dir", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and OFFICIAL_URL in err
    assert not (tmp_path / "run" / "model.keras").exists() and not (tmp_path / "run" / "history.csv").exists()


@pytest.mark.backend_independent  # which files are refused, and how: nothing computes
def test_weights_that_do_not_fit_are_refused(backbone, tmp_path):
    tiny = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    tiny.save(tmp_path / "tiny.h5")
    tiny.save_weights(tmp_path / "tiny.weights.h5")
    for name in ("tiny.h5", "tiny.weights.h5"):
        with pytest.raises(WeightsError, match="does not fit EfficientNetV2-S"):
            load_weights(backbone, str(tmp_path / name))

    smaller = keras_cv.models.EfficientNetV2Backbone(
        **{**V2S_ARGUMENTS, "stackwise_num_repeats": [1, 1, 1, 1, 1, 1]}, include_rescaling=False
    )
    save_to_preset(smaller, tmp_path / "other-preset")
    with pytest.raises(WeightsError, match="other shapes than EfficientNetV2-S"):
        load_weights(backbone, str(tmp_path / "other-preset"))

    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("no weights")
    refusals = {
        str(tmp_path / "missing.h5"): "no such file or folder",
        str(tmp_path / "empty"): "no config.json",
        str(tmp_path / "notes.txt"): "expected an .h5 weights file",
        "imagnet": "must be one of imagenet, keras-cv, none",
    }
    for weights, message in refusals.items():
        with pytest.raises(WeightsError, match=message):
            load_weights(backbone, weights)


def test_an_image_size_below_the_minimum_is_refused(capsys):
    assert config(image_size=32).image_size == 32
    with pytest.raises(ConfigError, match="smallest image size that works is 32"):
        config(image_size=31)
    assert main(["finetune", "--demo", "--backbone", "efficientnetv2_s", "--weights", "none", "--image-size", "16",
                 "--wandb", "disabled"]) == 2  # fmt: skip
    assert "image_size 16 is too small for EfficientNetV2-S" in capsys.readouterr().err


def test_the_study_settings_are_the_default_config():
    from inat_keras.config import load_config
    from inat_keras.config import shipped_config

    study = load_config(FinetuneConfig, shipped_config("finetune.yaml"))
    assert (study.image_size, study.strategy, study.unfreeze_every, study.unfreeze_step) == (384, "gradual", 2, 1)
    assert (study.learning_rate, study.batch_size, study.epochs, study.augment) == (1e-4, 16, 10, True)
    assert study.weights == "imagenet"
    demo = load_config(FinetuneConfig, shipped_config("finetune.yaml"), {"demo": True, "weights": "none"})
    assert demo.image_size < 384 and demo.epochs < 10 and demo.strategy == "gradual" and demo.weights == "none"
