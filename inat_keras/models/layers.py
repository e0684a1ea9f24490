"""The models' own layers: Keras layers that keep one behaviour across backends and device counts.

Pooling, activations and depthwise convolutions are re-expressed, under JAX on a CPU, in forms that
XLA:CPU runs fast; each is its Keras parent (same arguments, weights, checkpoints and outputs, up to
float rounding) and runs the parent's own code on other backends and devices. The profiles behind them
are in BENCHMARKS.md. Batch normalisation takes its statistics over the global batch on any number of
devices.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import keras
from keras import layers, ops

_EXPORTING = contextvars.ContextVar("exporting", default=False)


@contextlib.contextmanager
def exporting():
    """Depthwise convolutions as Keras's own op inside, for graphs that leave Keras. A converter maps that op
    to one ONNX or TensorFlow convolution, but the CPU form below to k*k slices and products per layer
    (jax2onnx spent 150 s on Lite0's 16). Pooling keeps its CPU form: onnxruntime refuses the MaxPool that
    jax2onnx makes of Keras's pooling ("Unsupported pooling size")."""
    token = _EXPORTING.set(True)
    try:
        yield
    finally:
        _EXPORTING.reset(token)


def on_jax_cpu() -> bool:
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu"


@keras.saving.register_keras_serializable(package="inat_keras")
class BlockMaxPooling2D(layers.MaxPooling2D):
    """MaxPooling2D; under JAX on CPU, non-overlapping windows are taken apart with reshapes and slices.

    JAX differentiates `reduce_window` max through select-and-scatter, which XLA:CPU runs as index
    arrays and scatters: 60-75% of the CNN's training step at 224x224. Training takes the max over
    the window axes of a reshape, whose gradient is elementwise and fuses with the activation's.
    Inference takes the elementwise maximum of the window's strided slices: XLA would fuse an
    expensive activation such as Mish into the reshape's reduction, which it does not vectorise.
    Both give the parent's outputs exactly. Where inputs of one window tie for the maximum they share
    its gradient instead of the first taking all of it; both are gradients of the same function.
    """

    def call(self, inputs, training=None):
        if not (
            on_jax_cpu()
            and self.padding == "valid"
            and self.data_format == "channels_last"
            and tuple(self.pool_size) == tuple(self.strides)
        ):
            return super().call(inputs)
        (ph, pw), (_, height, width, channels) = self.pool_size, inputs.shape
        rows, cols = height // ph, width // pw
        x = inputs[:, : rows * ph, : cols * pw, :]
        if training:
            return ops.max(ops.reshape(x, (-1, rows, ph, cols, pw, channels)), axis=(2, 4))
        return functools.reduce(ops.maximum, [x[:, i::ph, j::pw, :] for i in range(ph) for j in range(pw)])


def mish(x):
    """x * tanh(softplus(x)) with one exponential: tanh(log(1 + e)) = n / (n + 2) for n = e (e + 2), e = exp(x).

    Keras's form costs three transcendental functions per element, and three more in the gradient.
    Above 20, n overflows while mish(x) = x to float precision; that branch never sees the formula,
    so that the gradient stays finite.
    """
    large = x > 20.0
    e = ops.exp(ops.where(large, 0.0, x))
    n = e * (e + 2.0)
    return ops.where(large, x, x * n / (n + 2.0))


@keras.saving.register_keras_serializable(package="inat_keras")
class Activation(layers.Activation):
    """Activation; under JAX on CPU, Mish goes through `mish` (3.5x faster forward, 1.3x with its gradient)."""

    def call(self, inputs):
        if on_jax_cpu() and self.activation is keras.activations.mish:
            return mish(inputs)
        return super().call(inputs)


@keras.saving.register_keras_serializable("inat_keras")
class BatchNormalization(layers.BatchNormalization):
    """Statistics over the global batch on any number of devices, as on one.

    JAX data parallelism computes them over the sharded global batch anyway; TensorFlow's
    MirroredStrategy needs `synchronized`, which is not saved because JAX refuses to load it.
    """

    def __init__(self, **kwargs):
        kwargs.pop("synchronized", None)
        super().__init__(synchronized=_mirrored_replicas() > 1, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.pop("synchronized", None)
        return config


def _mirrored_replicas() -> int:
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding (the odd pixel goes after), as Keras uses on every backend."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _taps(x, kernel_hw, strides):
    """The strided window views of (already padded) x, one per kernel position, row-major."""
    (kh, kw), (sh, sw), (height, width) = kernel_hw, strides, x.shape[1:3]
    oh, ow = (height - kh) // sh + 1, (width - kw) // sw + 1
    return [
        x[:, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw, :] for i in range(kh) for j in range(kw)
    ]


@functools.lru_cache(maxsize=None)
def _depthwise_conv(strides: tuple[int, int], padding: str):
    """Depthwise convolution (multiplier 1, channels last) as a sum of shifted products, with its own gradient.

    XLA:CPU runs `feature_group_count=C` convolutions through Eigen one channel at a time, and turns
    their weight gradient (`batch_group_count=C`) into a dense C x C convolution and a diagonal mask:
    C times the work (1536 x for EfficientNetV2-S's last stage). Here the forward pass and the input
    gradient are k*k fused elementwise products, and the kernel gradient one matrix-vector product
    over the k*k products of input and output gradient.
    """
    import jax
    import jax.numpy as jnp

    def pad(x, kernel_hw):
        if padding == "valid":
            return x
        (height, width), (kh, kw) = x.shape[1:3], kernel_hw
        return jnp.pad(x, ((0, 0), _same_padding(height, kh, strides[0]), _same_padding(width, kw, strides[1]), (0, 0)))

    def forward(x, kernel):
        kernel_hw = kernel.shape[:2]
        taps = _taps(pad(x, kernel_hw), kernel_hw, strides)
        weights = kernel.reshape(-1, kernel.shape[2])
        return functools.reduce(lambda a, b: a + b, [tap * weights[n] for n, tap in enumerate(taps)])

    @jax.custom_vjp
    def conv(x, kernel):
        return forward(x, kernel)

    def conv_fwd(x, kernel):
        return forward(x, kernel), (x, kernel)

    def conv_bwd(residuals, grad):
        x, kernel = residuals
        (grad_x,) = jax.vjp(lambda x: forward(x, kernel), x)[1](grad)
        kernel_hw, channels = kernel.shape[:2], kernel.shape[2]
        taps = _taps(pad(x, kernel_hw), kernel_hw, strides)
        products = jnp.concatenate([tap * grad for tap in taps], axis=-1).reshape(-1, len(taps) * channels)
        grad_kernel = jnp.ones((1, products.shape[0]), products.dtype) @ products
        return grad_x, grad_kernel.reshape(kernel.shape).astype(kernel.dtype)

    conv.defvjp(conv_fwd, conv_bwd)
    return conv


@keras.saving.register_keras_serializable(package="inat_keras")
class DepthwiseConv2D(layers.DepthwiseConv2D):
    """DepthwiseConv2D; under JAX on CPU, multiplier 1 runs through `_depthwise_conv` (see there why).

    Same weights and outputs to float rounding (the k*k products are summed in another order).
    """

    def call(self, inputs):
        if not (
            on_jax_cpu()
            and not _EXPORTING.get()
            and self.depth_multiplier == 1
            and self.data_format == "channels_last"
            and tuple(self.dilation_rate) == (1, 1)
            and self.padding in ("same", "valid")
        ):
            return super().call(inputs)
        kernel = ops.convert_to_tensor(self.kernel, dtype=inputs.dtype)
        outputs = _depthwise_conv(tuple(self.strides), self.padding)(inputs, kernel)
        if self.use_bias:
            outputs = outputs + self.bias
        return outputs if self.activation is None else self.activation(outputs)
