"""What a model looks at: Grad-CAM, guided backpropagation, first-layer filters and feature maps.

Pure functions: a Keras model and NumPy arrays in, NumPy arrays out. Gradients come from the active
backend (TensorFlow's tape or `jax.grad` over `stateless_call`), always in inference mode, so the images
of one batch never influence each other: that is what lets many neurons share one backward pass while
each one's map comes from that neuron alone.

Models are split at a layer by calling their layers again on new inputs; this needs the model to be a
chain (each layer takes the previous one's output), as both of this project's models are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers, ops

from ..errors import ConfigError

GRADCAM_MIN_SIZE = 7  # the coarsest Grad-CAM map chosen by default: the 7x7 of ImageNet classifiers at 224 px
NEURON_SCORE = "max"  # a neuron of a feature map: its channel's largest value, i.e. the most active unit
_NOT_FEATURE_MAPS = (layers.MaxPooling2D, layers.AveragePooling2D, layers.Dropout, layers.SpatialDropout2D)


def _backend() -> str:
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise ConfigError(f"explain computes gradients under the tensorflow or jax backend, not {backend}")
    return backend


def run(model: keras.Model, x: np.ndarray, score=None) -> tuple[np.ndarray, np.ndarray | None]:
    """(model(x), the gradient of sum(score(model(x))) with respect to x, or None without `score`), in
    inference mode. Under JAX both are compiled: op by op, the backward pass of EfficientNetV2-S takes minutes."""
    x = np.asarray(x, np.float32)
    if _backend() == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = model(x, training=False)
            total = None if score is None else tf.reduce_sum(score(outputs))
        grad = None if score is None else tape.gradient(total, x).numpy()
        return keras.tree.map_structure(ops.convert_to_numpy, outputs), grad
    variables = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
    if score is None:
        return keras.tree.map_structure(np.asarray, _jax_programs(model, None)(*variables, x)), None
    (_, outputs), grad = _jax_programs(model, score)(*variables, x)
    return np.asarray(outputs), np.asarray(grad)


@functools.lru_cache(maxsize=8)
def _jax_programs(model: keras.Model, score):
    """The compiled forward pass, or forward and backward pass, of `run`; one per model and score."""
    import jax

    def outputs_of(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=False)[0]

    if score is None:
        return jax.jit(outputs_of)

    def total(trainable, non_trainable, x):
        outputs = outputs_of(trainable, non_trainable, x)
        return ops.sum(score(outputs)), outputs

    return jax.jit(jax.value_and_grad(total, argnums=2, has_aux=True))


def _guided_gradient(x, g):
    return ops.where((x > 0) & (g > 0), g, ops.zeros_like(g))


def guided(fn, x):
    """fn(x) forward; backward, fn's own derivative times the incoming gradient where both the input and
    that gradient are positive, zero elsewhere (guided backpropagation's rule for any activation).

    For ReLU, leaky ReLU and PReLU the derivative is 1 on positive inputs, so this is exactly guided ReLU:
    their negative slope never carries gradient. For GELU, SiLU and Mish it keeps their own slope there.
    """
    if _backend() == "tensorflow":
        import tensorflow as tf

        @tf.custom_gradient
        def guided_fn(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = fn(x)

            def grad(g, variables=None):  # PReLU reads its slope variable: it gets no gradient here
                dx = tape.gradient(y, x, output_gradients=_guided_gradient(x, g))
                return (dx, [tf.zeros_like(v) for v in variables]) if variables else dx

            return y, grad

        return guided_fn(x)
    import jax

    @jax.custom_vjp
    def guided_fn(x):
        return fn(x)

    def forward(x):
        y, vjp = jax.vjp(fn, x)
        return y, (x, vjp)

    def backward(residuals, g):
        x, vjp = residuals
        return vjp(_guided_gradient(x, g))

    guided_fn.defvjp(forward, backward)
    return guided_fn(x)


class GuidedActivation(layers.Layer):
    """An activation layer (Keras's or the project's, PReLU with its weights) under the `guided` rule."""

    def __init__(self, inner: layers.Layer, **kwargs):
        super().__init__(name=inner.name, dtype=inner.dtype_policy, **kwargs)
        self.inner = inner

    def build(self, input_shape):
        self.built = True

    def call(self, inputs):
        return guided(self.inner, inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


def is_activation(layer: layers.Layer) -> bool:
    return isinstance(layer, (layers.Activation, layers.ReLU, layers.LeakyReLU, layers.PReLU, layers.ELU))


def _inner_layers(model: keras.Model) -> list[layers.Layer]:
    return [layer for layer in model.layers if not isinstance(layer, layers.InputLayer)]


def check_chain(model: keras.Model) -> None:
    """Refuse a graph that splitting would rebuild wrongly (branches, several inputs)."""
    inner = _inner_layers(model)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConfigError(f"explain needs a model with one input and one output; {model.name} has "
                          f"{len(model.inputs)} and {len(model.outputs)}")  # fmt: skip
    previous = model.inputs[0]
    for layer in inner:
        # a nested model's `input` and `output` are its own graph's, not the outer one's: not comparable
        nested = isinstance(layer, keras.Model)
        if previous is not None and not nested and layer.input is not previous:
            raise ConfigError(f"explain needs a model whose layers form one chain; in {model.name}, {layer.name} "
                              "does not take the previous layer's output")  # fmt: skip
        previous = None if nested else layer.output


def split(model: keras.Model, name: str, wrap=None) -> tuple[keras.Model, keras.Model]:
    """(input -> output of layer `name`, that output -> the model's output); `wrap` swaps layers of the first part."""
    check_chain(model)
    inner = _inner_layers(model)
    names = [layer.name for layer in inner]
    if name not in names:
        raise ConfigError(f"no layer {name!r} in {model.name}; its layers: {', '.join(names)}")
    cut = names.index(name) + 1
    front_in = keras.Input(model.input_shape[1:], name="image")
    x = front_in
    for layer in inner[:cut]:
        x = (wrap(layer) if wrap else layer)(x)
    back_in = keras.Input(x.shape[1:], name=f"{name}_output")
    y = back_in
    for layer in inner[cut:]:
        y = layer(y)
    return keras.Model(front_in, x, name=f"{model.name}_to_{name}"), keras.Model(back_in, y, name=f"{model.name}_from_{name}")


def feature_map_layers(model: keras.Model) -> list[str]:
    """Layers with 4-D outputs that are neither pooling nor dropout: what a block computes."""
    return [
        layer.name
        for layer in _inner_layers(model)
        if len(layer.output.shape) == 4 and not isinstance(layer, _NOT_FEATURE_MAPS)
    ]


def map_size(model: keras.Model, name: str) -> tuple[int, int]:
    """(rows, cols) of a feature-map layer's output."""
    shape = model.get_layer(name).output.shape
    return int(shape[1]), int(shape[2])


def gradcam_layer(model: keras.Model) -> str:
    """The last learned feature map of at least GRADCAM_MIN_SIZE x GRADCAM_MIN_SIZE (the CNN's last block that is
    still that large; EfficientNetV2-S's backbone output, 7x7 at 224 px): a later, coarser one gives a map of a
    few blobs that no longer follow the image. With none that large (small images), the largest, latest one.
    Learned: from the first layer with weights on (input scaling is no feature map of the model's own)."""
    inner = _inner_layers(model)
    first = next((i for i, layer in enumerate(inner) if layer.weights), len(inner))
    learned = {layer.name for layer in inner[first:]}
    candidates = [name for name in feature_map_layers(model) if name in learned]
    if not candidates:
        raise ConfigError(f"{model.name} has no layer with a 2-D feature map for Grad-CAM")
    useful = [name for name in candidates if min(map_size(model, name)) >= GRADCAM_MIN_SIZE]
    if useful:
        return useful[-1]
    return max(reversed(candidates), key=lambda name: min(map_size(model, name)))


@dataclass
class GradCam:
    heat: np.ndarray  # (images, rows, cols): ReLU(sum_k alpha_k A_k) at the layer's resolution, not normalised
    classes: np.ndarray  # the class each map explains
    probabilities: np.ndarray  # (images, classes): the model's softmax


def grad_cam(model: keras.Model, images: np.ndarray, layer: str | None = None, classes=None) -> GradCam:
    """Grad-CAM (Selvaraju et al.): the feature maps A_k of `layer` weighted by the spatial mean of the
    class logit's gradient with respect to each, summed and passed through ReLU. `classes`: one class
    index per image, or one for all; default the predicted class."""
    front, back = split(model, layer or gradcam_layer(model))
    features = run(front, images)[0].astype(np.float32)
    if len(features.shape) != 4:
        raise ConfigError(f"Grad-CAM needs a layer with a 2-D feature map; {layer} gives shape {features.shape[1:]}")
    num_classes = back.output_shape[-1]
    given = None if classes is None else np.broadcast_to(np.asarray(classes), (len(features),))

    def class_logit(logits):
        chosen = ops.argmax(logits, axis=-1) if given is None else ops.convert_to_tensor(given)
        return ops.cast(logits, "float32") * ops.one_hot(chosen, num_classes)

    logits, grads = run(back, features, class_logit)
    weights = grads.mean(axis=(1, 2))
    heat = np.maximum(np.einsum("nhwk,nk->nhw", features, weights), 0.0)
    logits = logits.astype(np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    chosen = logits.argmax(axis=1) if given is None else given
    return GradCam(heat, np.asarray(chosen), probabilities)


def neuron_values(outputs):
    """One value per channel: its maximum over the feature map (a dense layer's units are their own)."""
    rank = len(outputs.shape)
    return ops.max(outputs, axis=tuple(range(1, rank - 1))) if rank > 2 else outputs


def guided_model(model: keras.Model, layer: str) -> keras.Model:
    """Input -> `layer`'s output, with every activation layer on the way under the guided rule."""
    return split(model, layer, wrap=lambda l: GuidedActivation(l) if is_activation(l) else l)[0]


def strongest_channels(model: keras.Model, images: np.ndarray, layer: str, count: int) -> list[int]:
    """The `count` channels of `layer` with the largest neuron value, averaged over the images."""
    front = split(model, layer)[0]
    values = ops.convert_to_numpy(neuron_values(run(front, images)[0]))
    return [int(c) for c in np.argsort(-values.mean(axis=0), kind="stable")[:count]]


def guided_backprop(model: keras.Model, images: np.ndarray, layer: str, channels: list[int]) -> np.ndarray:
    """(images, neurons, H, W, C): each neuron's guided gradient with respect to the input pixels.

    Every neuron gets its own copy of the image in one batch and only its own value is differentiated
    on that copy, so no neuron's gradient reaches another's map."""
    front = guided_model(model, layer)
    width = front.output_shape[-1]
    bad = [c for c in channels if not 0 <= c < width]
    if bad:
        raise ConfigError(f"layer {layer} has channels 0..{width - 1}; asked for {bad}")
    select = np.eye(width, dtype=np.float32)[list(channels)]

    def own_neuron(outputs):  # copy i of the image: neuron i's value only
        return ops.cast(neuron_values(outputs), "float32") * select

    return np.stack([run(front, np.repeat(image[None], len(channels), axis=0), own_neuron)[1] for image in images])


def feature_maps(model: keras.Model, image: np.ndarray, names: list[str]) -> list[np.ndarray]:
    """Each named layer's output (rows, cols, channels) for one image."""
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    return [o[0] for o in run(probe, np.asarray(image)[None])[0]]


def first_conv_kernel(model: keras.Model) -> tuple[str, np.ndarray] | None:
    """(name, kernel (rows, cols, in, out)) of the first Conv2D, looking inside nested models too."""
    for layer in _inner_layers(model) if isinstance(model, keras.Model) else []:
        if isinstance(layer, layers.Conv2D):
            return layer.name, layer.get_weights()[0]
        if isinstance(layer, keras.Model):
            found = first_conv_kernel(layer)
            if found:
                return found
    return None
