"""The study's parameterised 5-block CNN, built with the functional API.

Pixels 0..255 -> [ImageNet mean/std normalisation] -> 5 blocks of 'valid' conv -> [batch norm] ->
activation -> [channel-wise or element-wise dropout] -> 2x2 max-pool; then flatten -> dense ->
[batch norm] -> activation -> [dropout] -> logits. Normalising inside the model keeps saved models
taking raw pixels, and augmentation before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from ..errors import ConfigError
from .layers import Activation, BatchNormalization, BlockMaxPooling2D


def activation_layer(name: str, layer_name: str) -> keras.layers.Layer:
    """Layers rather than strings, so that PReLU gets its own weights per use."""
    if name == "leaky_relu":
        return layers.LeakyReLU(negative_slope=0.01, name=layer_name)
    if name == "parametric_relu":
        return layers.PReLU(shared_axes=[1, 2] if layer_name.startswith("block") else None, name=layer_name)
    return Activation(name, name=layer_name)


def min_image_size(kernel_sizes: list[int]) -> int:
    size = 1
    for k in reversed(kernel_sizes):
        size = 2 * size + k - 1
    return size


def check_geometry(image_size: int, kernel_sizes: list[int]) -> None:
    size = image_size
    for block, k in enumerate(kernel_sizes, start=1):
        if size < k or (size - k + 1) // 2 < 1:
            raise ConfigError(
                f"image size {image_size} is too small for kernel sizes {kernel_sizes}: the feature map is "
                f"{size}x{size} before block {block} (kernel {k}x{k} then 2x2 pool); "
                f"the smallest image size that works is {min_image_size(kernel_sizes)}"
            )
        size = (size - k + 1) // 2


IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's, as the study normalised (RGB, pixels in 0..1)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalisation(channels: int) -> layers.Rescaling:
    """(x / 255 - mean) / std per channel, as one Rescaling; a grayscale input takes the channel average."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return layers.Rescaling([1 / (255 * s) for s in std], [-m / s for m, s in zip(mean, std)], name="normalise")


@dataclass(frozen=True)
class CnnArchitecture:
    """What the CNN builder needs, and nothing of the training around it."""

    image_size: int
    channels: int
    filters: tuple[int, ...]
    kernel_sizes: tuple[int, ...]
    activation: str = "relu"
    dense_units: int = 2048
    batch_norm: bool = False
    dropout: float = 0.0
    conv_dropout: str = "channel"
    input_norm: str = "imagenet"

    @classmethod
    def of(cls, config) -> CnnArchitecture:
        """From a ScratchConfig (its presets resolved)."""
        return cls(config.image_size, config.channels, tuple(config.filter_list()), tuple(config.kernel_list()),
                   config.activation, config.dense_units, config.batch_norm, config.dropout, config.conv_dropout,
                   config.input_norm)  # fmt: skip


def build_cnn(config: CnnArchitecture, num_classes: int, augment: layers.Layer | None = None) -> keras.Model:
    """`augment`: a layer on raw pixels, before normalisation, that acts in training only."""
    check_geometry(config.image_size, list(config.kernel_sizes))
    inputs = keras.Input((config.image_size, config.image_size, config.channels), name="image")
    x = augment(inputs) if augment else inputs
    x = imagenet_normalisation(config.channels)(x) if config.input_norm == "imagenet" else x
    conv_dropout = layers.SpatialDropout2D if config.conv_dropout == "channel" else layers.Dropout
    for i, (filters, kernel) in enumerate(zip(config.filters, config.kernel_sizes), start=1):
        x = layers.Conv2D(filters, kernel, padding="valid", name=f"block{i}_conv")(x)
        if config.batch_norm:
            x = BatchNormalization(name=f"block{i}_bn")(x)
        x = activation_layer(config.activation, f"block{i}_act")(x)
        if config.dropout:
            x = conv_dropout(config.dropout, name=f"block{i}_dropout")(x)
        x = BlockMaxPooling2D(2, name=f"block{i}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(config.dense_units, name="dense")(x)
    if config.batch_norm:
        x = BatchNormalization(name="dense_bn")(x)
    x = activation_layer(config.activation, "dense_act")(x)
    if config.dropout:
        x = layers.Dropout(config.dropout, name="dense_dropout")(x)
    outputs = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name="cnn5")


def closed_form_params(config: CnnArchitecture, num_classes: int) -> int:
    """The study's style of formula: spatial size halves each block without flooring.

    It approximates the flattened size, so it differs from the exact count.
    """
    size, total, channels = float(config.image_size), 0, config.channels
    for filters, k in zip(config.filters, config.kernel_sizes):
        total += (k * k * channels + 1) * filters
        channels = filters
        size = (size - k + 1) / 2
    flat = channels * size * size
    total += (flat + 1) * config.dense_units + (config.dense_units + 1) * num_classes
    if config.batch_norm:
        total += 4 * (sum(config.filters) + config.dense_units)
    return round(total)


def layer_flops(layer: keras.layers.Layer) -> int:
    """Forward FLOPs per image (2 per multiply-add) of conv and dense layers."""
    if isinstance(layer, layers.Conv2D):
        _, h, w, c_out = layer.output.shape
        kh, kw = layer.kernel_size
        c_in = layer.input.shape[-1]
        return 2 * h * w * c_out * kh * kw * c_in
    if isinstance(layer, layers.Dense):
        return 2 * layer.input.shape[-1] * layer.units
    return 0


def model_flops(model: keras.Model) -> int:
    return sum(layer_flops(layer) for layer in model.layers)


def describe(model: keras.Model, config: CnnArchitecture, num_classes: int) -> str:
    """Layer table, exact and closed-form parameter counts, and forward FLOPs."""
    rows = [f"{'layer':<18}{'output shape':<22}{'params':>12}{'MFLOPs':>12}"]
    for layer in model.layers:
        shape = tuple(layer.output.shape[1:])
        rows.append(f"{layer.name:<18}{str(shape):<22}{layer.count_params():>12,}{layer_flops(layer) / 1e6:>12.1f}")
    exact = model.count_params()
    approx = closed_form_params(config, num_classes)
    rows += [
        "",
        f"parameters (exact):        {exact:,}",
        f"parameters (closed form):  {approx:,}  (study's approximation, off by {approx - exact:+,})",
        f"forward FLOPs per image:   {model_flops(model) / 1e9:.3f} GFLOP",
    ]
    return "\n".join(rows)
