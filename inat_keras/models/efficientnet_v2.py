"""EfficientNetV2-S, the study's backbone (keras-cv), and where its weights come from.

The backbone is built from its constructor arguments, so building never needs the network; only the
`--weights` source may. A source that cannot be had stops the run with a message naming the URL or
handle and the offline alternative: never silently random weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import keras_cv
from keras import layers

from ..errors import WeightsError
from ..keras_compat import replace_class, sublayers
from .backbones import BACKBONE, V2S_ARGUMENTS
from .layers import DepthwiseConv2D

log = logging.getLogger(__name__)

OFFICIAL_FILE = "efficientnetv2-s_notop.h5"
OFFICIAL_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/{OFFICIAL_FILE}"
OFFICIAL_MD5 = "af0682fb74e8c54910f2d4393339c070"  # keras.applications' own hash for this file
KERAS_CV_PRESET = "efficientnetv2_s_imagenet"
KERAS_CV_HANDLE = "kaggle://keras/efficientnetv2/keras/efficientnetv2_s_imagenet/2"

# Pixels arrive as 0..255. The official weights expect -1..1 (x/128 - 1, as keras.applications does);
# a keras-cv preset built with include_rescaling expects 0..1 (x/255).
OFFICIAL_SCALING = (1 / 128, -1.0)
KERAS_CV_SCALING = (1 / 255, 0.0)
NAMED_SOURCES = ("imagenet", "keras-cv", "none")


def build_backbone(image_size: int) -> keras.Model:
    backbone = keras_cv.models.EfficientNetV2Backbone(
        **V2S_ARGUMENTS, include_rescaling=False, input_shape=(image_size, image_size, 3), name=BACKBONE
    )
    # keras-cv creates the depthwise convolutions inside its blocks: give them layers.DepthwiseConv2D's
    # `call` (same weights and outputs; fast under JAX on CPU). Blocks recreate them when a model loads.
    for layer in sublayers(backbone):
        if type(layer) is layers.DepthwiseConv2D:
            replace_class(layer, DepthwiseConv2D)
    return backbone


def copy_weights(source: keras.Model, backbone: keras.Model, origin: str) -> None:
    """Move weights by position after checking every shape (keras.applications and keras-cv share the order)."""
    values = source.get_weights()
    expected = [tuple(w.shape) for w in backbone.weights]
    got = [tuple(v.shape) for v in values]
    if got != expected:
        first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        theirs = got[first] if first < len(got) else "none"
        ours = expected[first] if first < len(expected) else "none"
        raise WeightsError(
            f"{origin} has other shapes than EfficientNetV2-S: {len(got)} weight tensors where the backbone has "
            f"{len(expected)}; first difference at tensor {first}: {theirs} there, {ours} in the backbone"
        )
    backbone.set_weights(values)


def official_weights_file() -> Path:
    """The official ImageNet weights, downloaded once into ~/.keras/models and checked against their MD5."""
    try:
        return Path(keras.utils.get_file(OFFICIAL_FILE, OFFICIAL_URL, cache_subdir="models", file_hash=OFFICIAL_MD5))
    except Exception as err:  # get_file raises bare Exception for network failures, ValueError for bad hashes
        raise WeightsError(
            f"cannot get the ImageNet weights from {OFFICIAL_URL} ({err}). Without internet, download that file "
            f"elsewhere and pass --weights /path/to/{OFFICIAL_FILE} (or put it in ~/.keras/models/); "
            "--weights none trains from random weights (tests and experiments only)"
        ) from err


def brief(err: Exception) -> str:
    """Keras's loading errors span many lines; one line of them is enough here."""
    return " ".join(str(err).split())[:300]


def load_applications_file(backbone: keras.Model, path: Path) -> None:
    """A keras.applications EfficientNetV2-S file (the official .h5): load it there, then transfer."""
    try:
        source = keras.applications.EfficientNetV2S(include_top=False, weights=str(path), input_shape=(None, None, 3))
    except (ValueError, KeyError, OSError) as err:
        raise WeightsError(f"keras.applications' EfficientNetV2-S cannot load {path.name} ({brief(err)})") from err
    copy_weights(source, backbone, str(path))


def load_backbone_file(backbone: keras.Model, path: Path) -> None:
    """Weights saved from a keras-cv EfficientNetV2-S backbone (Keras 3 .weights.h5)."""
    try:
        backbone.load_weights(str(path))
    except (ValueError, KeyError, OSError) as err:
        raise WeightsError(f"the keras-cv backbone cannot load {path.name} ({brief(err)})") from err


def load_file(backbone: keras.Model, path: Path) -> None:
    """Either layout of EfficientNetV2-S weights; the file name says which to try first."""
    if not path.name.endswith((".h5", ".hdf5")):
        raise WeightsError(f"{path}: expected an .h5 weights file (keras.applications or keras-cv EfficientNetV2-S)")
    loaders = [load_applications_file, load_backbone_file]
    if path.name.endswith(".weights.h5"):
        loaders.reverse()
    errors = []
    for loader in loaders:
        try:
            loader(backbone, path)
            return
        except WeightsError as err:
            errors.append(str(err))
    raise WeightsError(f"{path} does not fit EfficientNetV2-S: " + "; ".join(errors))


def load_preset(backbone: keras.Model, preset: str) -> tuple[float, float]:
    """A keras-cv preset (Kaggle handle or local folder); its own config says which scaling its weights expect."""
    try:
        source = keras_cv.models.EfficientNetV2Backbone.from_preset(preset)
    except Exception as err:  # network, Kaggle and preset-format errors surface as many different types
        if Path(preset).is_dir():
            raise WeightsError(f"cannot load the keras-cv preset folder {preset} ({brief(err)})") from err
        raise WeightsError(
            f"cannot get the keras-cv preset {preset!r} from {KERAS_CV_HANDLE} ({brief(err)}). "
            "Without internet, download that preset elsewhere and pass its folder (config.json + "
            f"model.weights.h5) as --weights /path/to/folder, or use --weights /path/to/{OFFICIAL_FILE}"
        ) from err
    copy_weights(source, backbone, f"keras-cv preset {preset!r}")
    return KERAS_CV_SCALING if source.include_rescaling else OFFICIAL_SCALING


def check_source(weights: str) -> None:
    """A --weights value that names nothing that exists is refused before anything is built or written."""
    if weights not in NAMED_SOURCES and not Path(weights).expanduser().exists():
        raise WeightsError(
            f"--weights must be one of {', '.join(NAMED_SOURCES)}, a weights file or a preset folder; "
            f"{weights!r} is none of these (no such file or folder)"
        )


def load_weights(backbone: keras.Model, weights: str) -> tuple[float, float]:
    """Fill the backbone from the --weights source; returns the (scale, offset) its weights expect."""
    check_source(weights)
    if weights == "none":
        log.warning("--weights none: random initialisation, for tests and experiments only")
        return OFFICIAL_SCALING
    if weights == "imagenet":
        load_applications_file(backbone, official_weights_file())
        return OFFICIAL_SCALING
    if weights == "keras-cv":
        return load_preset(backbone, KERAS_CV_PRESET)
    path = Path(weights).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WeightsError(f"{path} is not a keras-cv preset folder (no config.json)")
        return load_preset(backbone, str(path))
    load_file(backbone, path)
    return OFFICIAL_SCALING
