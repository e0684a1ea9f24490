"""Looking inside a model: Grad-CAM finds what a constructed model keys on, guided backpropagation matches a
hand computation and keeps neurons apart, every activation follows the guided rule, and `run.py explain`
writes its pictures."""

import json
import math

import keras
import numpy as np
import pytest
from matplotlib.text import Text
from PIL import Image
from scipy.special import erf

from inat_keras.analysis.explain import (grad_cam, gradcam_layer, guided_backprop, guided_model, map_size, run,
                                        strongest_channels)  # fmt: skip
from inat_keras.analysis.explain_plots import plot_feature_maps, plot_gradcam, plot_guided
from inat_keras.cli import main
from inat_keras.config import FinetuneConfig, ScratchConfig, build_config
from inat_keras.errors import ConfigError
from inat_keras.models.cnn import CnnArchitecture, activation_layer, build_cnn
from inat_keras.models.finetune import FinetuneArchitecture, build_finetune_model
from inat_keras.serving.explain import guided_layer

SIZE = 32


def cnn(**values) -> keras.Model:
    options = {"image_size": SIZE, "filters": [4] * 5, "kernel_sizes": [1] * 5, "dense_units": 4, **values}
    return build_cnn(CnnArchitecture.of(build_config(ScratchConfig, options)), 2)


def colour_detector() -> keras.Model:
    """The project's CNN with weights set by hand: block 1's channel 0 fires on red (R - G - B > 0), channel 1
    on green; later blocks pass channels through, so logit 0 is the strongest red pixel, logit 1 the
    strongest green one."""
    model = cnn(activation="relu", input_norm="none")
    first = np.zeros((1, 1, 3, 4), np.float32)
    first[0, 0, :, 0], first[0, 0, :, 1] = (1, -1, -1), (-1, 1, -1)
    model.get_layer("block1_conv").set_weights([first, np.zeros(4, np.float32)])
    for i in range(2, 6):
        model.get_layer(f"block{i}_conv").set_weights([np.eye(4, dtype=np.float32)[None, None], np.zeros(4, np.float32)])
    model.get_layer("dense").set_weights([np.eye(4, dtype=np.float32), np.zeros(4, np.float32)])
    model.get_layer("logits").set_weights([np.eye(4, 2, dtype=np.float32), np.zeros(2, np.float32)])
    return model


def two_patches() -> np.ndarray:
    """Grey, a red square in the top-right quadrant and a dimmer green one in the bottom-left."""
    image = np.full((SIZE, SIZE, 3), 60.0, np.float32)
    image[4:12, 20:28] = (220, 20, 20)
    image[20:28, 4:12] = (20, 160, 20)
    return image[None]


def quadrant_shares(heat: np.ndarray) -> dict:
    half = heat.shape[0] // 2
    total = heat.sum()
    return {
        "top_left": heat[:half, :half].sum() / total, "top_right": heat[:half, half:].sum() / total,
        "bottom_left": heat[half:, :half].sum() / total, "bottom_right": heat[half:, half:].sum() / total,
    }  # fmt: skip


def test_grad_cam_puts_its_mass_where_the_explained_class_is_drawn():
    model, image = colour_detector(), two_patches()
    predicted = grad_cam(model, image, "block1_act")
    assert predicted.classes.tolist() == [0] and predicted.probabilities[0, 0] > 0.99  # red 180 against green 120
    assert predicted.heat.shape == (1, SIZE, SIZE)
    np.testing.assert_allclose(predicted.probabilities, keras.ops.softmax(model.predict(image, verbose=0)), atol=1e-6)
    assert quadrant_shares(predicted.heat[0])["top_right"] > 0.99
    green = grad_cam(model, image, "block1_act", classes=1)
    assert green.classes.tolist() == [1]
    assert quadrant_shares(green.heat[0])["bottom_left"] > 0.99


@pytest.fixture(scope="module")
def efficientnet():
    """A fine-tuning model (Lite0: what is checked here is the nesting of the backbone, which both backbones share,
    and Lite0 builds in a fifth of V2-S's time)."""
    keras.utils.set_random_seed(0)  # its random weights decide the maps
    config = build_config(FinetuneConfig, {"image_size": SIZE, "weights": "none", "backbone": "efficientnet_lite0"})
    return build_finetune_model(FinetuneArchitecture.of(config), 3)


@pytest.mark.large
def test_grad_cam_of_efficientnet_reads_the_backbone_and_depends_on_the_class(efficientnet):
    """One image three times, each copy explained for another class (one compiled backward pass under JAX)."""
    assert gradcam_layer(efficientnet) == "backbone"
    image = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    each_class = grad_cam(efficientnet, np.repeat(image, 3, axis=0), classes=[0, 1, 2])
    assert each_class.heat.shape == (3, 1, 1) and np.isfinite(each_class.heat).all() and (each_class.heat >= 0).all()
    assert len({heat.tobytes() for heat in each_class.heat}) > 1  # a map that ignored the class would be the same
    assert each_class.classes.tolist() == [0, 1, 2]
    np.testing.assert_allclose(each_class.probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_grad_cam_reads_the_last_feature_map_of_7x7_or_more_by_default():
    model = cnn()  # 32 px, 1x1 kernels: blocks 1-5 at 32, 16, 8, 4 and 2 px
    assert gradcam_layer(model) == "block3_act" and map_size(model, "block3_act") == (8, 8)
    assert grad_cam(model, two_patches()).heat.shape == (1, 8, 8)
    inputs = keras.Input((12, 12, 3))  # none learned as large as 7x7: the largest, the latest of equals
    x = keras.layers.Rescaling(1 / 255, name="scale")(inputs)  # 12x12, but the input's pixels, not features
    x = keras.layers.Conv2D(2, 7, name="a")(x)
    x = keras.layers.Conv2D(2, 1, name="b")(x)
    x = keras.layers.Conv2D(2, 3, name="c")(x)
    small = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    assert gradcam_layer(small) == "b"


def test_explain_pictures_say_how_they_are_scaled(tmp_path):
    image = np.full((16, 16, 3), 120, np.uint8)
    heat = np.zeros((4, 4))
    heat[1, 2] = 3.0
    fig = plot_gradcam(image, heat, "WRONG: predicted b (60%), true class a", tmp_path / "g.png", "run r  ·  data: x", True)
    [title] = [t for t in fig.findobj(Text) if t.get_text() == fig.get_suptitle()]
    assert title.get_text().endswith("run r  ·  data: x") and title.get_color() == "tab:red"
    bar = [ax for ax in fig.axes if "share of its peak" in ax.get_ylabel()]
    assert len(bar) == 1 and fig.axes[1].images[0].get_cmap().name == "inferno"
    assert fig.axes[1].images[0].get_array().shape == (4, 4)  # the map at its own resolution, not smoothed

    rng = np.random.default_rng(0)
    maps = rng.normal(0, 1e-3, (2, 16, 16, 3))
    maps[:, 0, 0, 0] = 10.0  # one extreme pixel, which had turned the rest of each panel grey
    fig = plot_guided(image, maps, [3, 5], "guided", tmp_path / "b.png")
    shown = fig.axes[1].images[0].get_array()
    assert np.std(shown) > 0.15 and np.mean((shown == 0) | (shown == 1)) < 0.05
    assert "99th percentile" in fig.get_suptitle() and "mean correlation" in fig.get_suptitle()

    layer = rng.uniform(0, 1, (6, 6, 4)) * np.array([1, 10, 100, 1000])
    fig = plot_feature_maps(layer, [3, 0], "maps", tmp_path / "f.png")
    limits = {ax.images[0].get_clim() for ax in fig.axes if ax.images}
    assert limits == {(layer[..., [3, 0]].min(), layer[..., [3, 0]].max())}  # one scale for every map
    assert any("one scale for all" in ax.get_ylabel() for ax in fig.axes)


def test_guided_backprop_is_refused_for_efficientnet_layers_and_skipped_by_default(efficientnet):
    assert guided_layer(efficientnet, None) is None
    with pytest.raises(ConfigError, match="--layer needs the CNN"):
        guided_layer(efficientnet, "block5_act")


def relu_net() -> keras.Model:
    inputs = keras.Input((5, 5, 1))
    x = keras.layers.Conv2D(3, 3, name="c1")(inputs)
    x = keras.layers.Activation("relu", name="a1")(x)
    x = keras.layers.Conv2D(2, 1, name="c2")(x)
    x = keras.layers.Activation("relu", name="a2")(x)
    outputs = keras.layers.Dense(2, name="logits")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.get_layer("c1").set_weights([np.random.default_rng(0).normal(0, 1, (3, 3, 1, 3)), np.full(3, 0.5)])
    model.get_layer("c2").set_weights([np.array([[[[1.0, -0.5], [-1.0, 1.0], [0.5, 1.0]]]]), np.full(2, 0.5)])  # mixed signs
    return model


def hand_guided(model, image, channel, guided=True):
    """The guided gradient of max(a2[..., channel]) with respect to the image, written out in NumPy."""
    (w1, b1), (w2, b2) = model.get_layer("c1").get_weights(), model.get_layer("c2").get_weights()
    z1 = np.zeros((3, 3, 3))
    for i in range(3):
        for j in range(3):
            z1[i, j] = np.tensordot(image[i : i + 3, j : j + 3, :], w1, axes=3) + b1
    z2 = np.maximum(z1, 0) @ w2[0, 0] + b2
    g2 = np.zeros_like(z2)
    g2[np.unravel_index(np.argmax(np.maximum(z2[..., channel], 0)), (3, 3)) + (channel,)] = 1.0
    g2 *= (z2 > 0) & (g2 > 0) if guided else z2 > 0
    g1 = g2 @ w2[0, 0].T
    g1 *= (z1 > 0) & (g1 > 0) if guided else z1 > 0
    grad = np.zeros(image.shape)
    for i in range(3):
        for j in range(3):
            grad[i : i + 3, j : j + 3, :] += np.tensordot(w1, g1[i, j], axes=([3], [0]))
    return grad


def test_guided_backprop_of_a_relu_network_equals_the_hand_computation():
    model = relu_net()
    image = np.random.default_rng(4).normal(0, 1, (1, 5, 5, 1)).astype(np.float32)
    maps = guided_backprop(model, image, "a2", [0, 1])
    assert maps.shape == (1, 2, 5, 5, 1)
    for n, channel in enumerate([0, 1]):
        expected = hand_guided(model, image[0], channel)
        np.testing.assert_allclose(maps[0, n], expected, atol=1e-5)
        assert np.abs(expected).max() > 0.1
        assert not np.allclose(expected, hand_guided(model, image[0], channel, guided=False), atol=1e-3)


def test_each_neurons_map_is_its_own_whatever_else_is_asked():
    model = cnn(activation="gelu", batch_norm=True, filters=[16] * 5)  # enough channels for maps that survive the rule
    images = np.random.default_rng(5).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    channels = strongest_channels(model, images, "block3_act", 3)
    alone = guided_backprop(model, images, "block3_act", channels[:1])
    together = guided_backprop(model, images, "block3_act", channels)
    peak = np.abs(alone).max()
    assert peak > 0
    np.testing.assert_allclose(together[:, 0], alone[:, 0], rtol=1e-5, atol=1e-6 * peak)
    for other in (1, 2):  # had the neurons' values been summed before differentiating, map 0 would have changed
        assert np.abs(together[:, other]).max() > 0
        assert not np.allclose(together[:, other], together[:, 0], atol=0.1 * peak)


def numpy_activation(name):
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    return {
        "relu": lambda x: np.maximum(x, 0), "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
        "parametric_relu": lambda x: np.where(x > 0, x, 0.25 * x), "gelu": lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))),
        "silu": lambda x: x * sigmoid(x), "mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    }[name]  # fmt: skip


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "parametric_relu", "gelu", "silu", "mish"])
def test_guided_rule_passes_the_activations_own_slope_only_for_positive_inputs_and_gradients(name):
    inputs = keras.Input((1, 12, 1))
    layer = activation_layer(name, "block1_act")
    model = keras.Model(inputs, layer(inputs))
    if name == "parametric_relu":
        layer.set_weights([np.full(w.shape, 0.25, np.float32) for w in layer.get_weights()])
    x = np.linspace(-2.75, 2.75, 12, dtype=np.float32).reshape(1, 1, 12, 1)
    upstream = np.tile(np.array([1.5, -0.5, 0.75, -1.25], np.float32), 3).reshape(1, 1, 12, 1)
    outputs, grad = run(guided_model(model, "block1_act"), x, lambda y: y * upstream)
    f, x64 = numpy_activation(name), x.astype(np.float64)
    np.testing.assert_allclose(outputs, f(x64), atol=1e-5)  # the forward pass stays the activation's own
    slope = (f(x64 + 1e-6) - f(x64 - 1e-6)) / 2e-6
    np.testing.assert_allclose(grad, np.where((x > 0) & (upstream > 0), upstream * slope, 0.0), atol=1e-4)
    _, plain = run(model, x, lambda y: y * upstream)
    negative = (x < 0) & (upstream > 0)
    assert (grad[negative] == 0).all()
    if name != "relu":  # these pass gradient for negative inputs when unguided
        assert (np.abs(plain[negative]) > 1e-3).all()


def test_explain_command_writes_every_picture_and_skips_what_does_not_decode(tiny_run, tmp_path, capsys):
    run_dir, data, _ = tiny_run
    images = [str(sorted((data / "val" / name).iterdir())[0]) for name in ("cat", "owl")]
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    out = tmp_path / "explained"
    checkpoint = str(run_dir / "model.keras")
    assert main(["explain", "--checkpoint", checkpoint, images[0], str(broken), images[1], "--output-dir", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    named = [line for line in err if "broken.jpg" in line]
    assert len(named) == 1 and named[0].startswith(f"skipped {broken}: ")
    index = json.loads((out / "explain.json").read_text())
    assert [e["path"] for e in index["images"]] == images and index["skipped"][0]["path"] == str(broken)
    assert index["gradcam_layer"] == "block3_act" and index["gradcam_resolution"] == [8, 8]  # block4 is 4x4
    assert index["guided_layer"] == "block5_act"
    for entry, true in zip(index["images"], ("cat", "owl")):  # the class folder each file is in
        assert entry["true_class"] == true and entry["correct"] == (entry["predicted"] == true)
        with Image.open(out / entry["gradcam"]) as picture:
            title = picture.text["Title"]
        verdict = "right" if entry["correct"] else "WRONG"
        assert title.startswith(f"{verdict}: predicted {entry['predicted']}") and f"true class {true}" in title
        assert "block3_act (8x8)" in title and f"run {run_dir.name}" in title
    assert len(index["channels"]) == 4  # the tiny CNN's blocks have 4 channels; 10 were asked for
    pictures = [e[k] for e in index["images"] for k in ("gradcam", "guided")] + [index["filters"]]
    pictures += [index["feature_maps"][f"block{i}_act"] for i in range(1, 6)]
    for name in pictures:
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and min(picture.size) > 100
    assert main(["explain", "--checkpoint", checkpoint, images[0], "--output-dir", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    for flag, value, accepted in (("--class", "bat", "cat, dog, owl"), ("--layer", "block9_act", "block1_act")):
        assert main(["explain", "--checkpoint", checkpoint, images[0], flag, value, "--output-dir", str(tmp_path / flag)]) == 2
        message = capsys.readouterr().err.strip().splitlines()
        assert len(message) == 1 and value in message[0] and accepted in message[0]
        assert not (tmp_path / flag).exists()
