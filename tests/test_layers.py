import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from inat_keras.models.cnn import CnnArchitecture, build_cnn
from inat_keras.config import ScratchConfig, build_config
from inat_keras.models.layers import Activation, BlockMaxPooling2D, DepthwiseConv2D, mish

REPO = Path(__file__).resolve().parent.parent
BACKEND = keras.backend.backend()
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="the re-expressed forms are JAX's")


def input_gradient(fn, x, weights):
    """d/dx of sum(fn(x) * weights), with the active backend's autodiff."""
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: (fn(v) * weights).sum())(x))
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(fn(x) * weights)
    return tape.gradient(total, x).numpy()


def jaxpr(fn, x) -> str:
    import jax

    return str(jax.make_jaxpr(jax.grad(lambda v: fn(v).sum()))(x))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 7, 9, 5)])
def test_pooling_outputs_and_gradients_equal_max_poolings(shape, training):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype("float32")  # no ties
    ours, keras_pool = BlockMaxPooling2D(2), keras.layers.MaxPooling2D(2)
    out = keras.ops.convert_to_numpy(ours(x, training=training))
    assert out.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    assert np.array_equal(out, keras.ops.convert_to_numpy(keras_pool(x)))
    weights = rng.normal(size=out.shape).astype("float32")
    ours_grad = input_gradient(lambda v: ours(v, training=training), x, weights)
    assert np.allclose(ours_grad, input_gradient(keras_pool, x, weights))


@jax_only
def test_under_jax_pooling_gradients_need_no_window_reduction():
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    assert "reduce_window" in jaxpr(keras.layers.MaxPooling2D(2), x)  # what the layer avoids
    for training in (True, False):
        traced = jaxpr(lambda v, t=training: BlockMaxPooling2D(2)(v, training=t), x)
        assert "reduce_window" not in traced and "scatter" not in traced


@pytest.mark.parametrize("strides, padding, size", [(1, "same", 7), (2, "same", 9), (2, "same", 8), (1, "valid", 6)])
def test_depthwise_outputs_and_gradients_equal_keras_depthwise(strides, padding, size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size, 5)).astype("float32")
    ours = DepthwiseConv2D(3, strides=strides, padding=padding, use_bias=False)
    theirs = keras.layers.DepthwiseConv2D(3, strides=strides, padding=padding, use_bias=False)
    ours.build(x.shape), theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    out = keras.ops.convert_to_numpy(ours(x))
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(theirs(x)), rtol=1e-5, atol=1e-5)
    weights = rng.normal(size=out.shape).astype("float32")
    np.testing.assert_allclose(input_gradient(ours, x, weights), input_gradient(theirs, x, weights), rtol=1e-4, atol=1e-5)
    if BACKEND == "jax":
        import jax

        def kernel_gradient(layer):
            return np.asarray(jax.grad(lambda k: (layer.stateless_call([k], [], x)[0] * weights).sum())(layer.kernel.value))

        np.testing.assert_allclose(kernel_gradient(ours), kernel_gradient(theirs), rtol=1e-4, atol=1e-4)


@jax_only
def test_under_jax_depthwise_kernel_gradients_are_no_grouped_convolution():
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")
    ours, theirs = DepthwiseConv2D(3, padding="same"), keras.layers.DepthwiseConv2D(3, padding="same")
    ours.build(x.shape), theirs.build(x.shape)
    import jax

    def traced(layer):
        return str(jax.make_jaxpr(jax.grad(lambda k: layer.stateless_call([k, layer.bias.value], [], x)[0].sum()))(layer.kernel.value))

    assert "feature_group_count=4" in traced(theirs) or "batch_group_count=4" in traced(theirs)
    assert "conv_general_dilated" not in traced(ours)


def test_mish_equals_keras_mish_and_its_gradient_stays_finite():
    x = np.concatenate([np.linspace(-90, 90, 20001), [-1e4, -30.0, 19.99, 20.0, 20.01, 1e4]]).astype("float32")
    ours = keras.ops.convert_to_numpy(mish(keras.ops.convert_to_tensor(x)))
    assert np.allclose(ours, keras.ops.convert_to_numpy(keras.activations.mish(x)), rtol=2e-6, atol=2e-6)
    weights = np.ones_like(x)
    ours_grad = input_gradient(mish, x, weights)
    assert np.isfinite(ours_grad).all()
    assert np.allclose(ours_grad, input_gradient(keras.activations.mish, x, weights), rtol=1e-5, atol=1e-5)


@jax_only
def test_under_jax_the_mish_layer_takes_one_exponential():
    x = np.linspace(-5, 5, 11).astype("float32")
    assert "tanh" in jaxpr(keras.layers.Activation("mish"), x)
    traced = jaxpr(Activation("mish"), x)
    assert "tanh" not in traced and "log1p" not in traced and traced.count("exp ") == 1
    assert "tanh" in jaxpr(Activation("tanh"), x)  # other activations are Keras's


@pytest.mark.large
def test_cnn_checkpoints_load_on_both_backends(tmp_path, tiny_cnn_options):
    config = build_config(ScratchConfig, {**tiny_cnn_options, "activation": "mish", "batch_norm": True})
    model = build_cnn(CnnArchitecture.of(config), 3)
    assert {type(layer) for layer in model.layers if layer.name.endswith("_pool")} == {BlockMaxPooling2D}
    assert {type(layer) for layer in model.layers if layer.name.endswith("_act")} == {Activation}
    path = tmp_path / "model.keras"
    model.save(path)
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", keras.ops.convert_to_numpy(model(x)))
    check = (
        "import sys, numpy as np, keras, inat_keras.models.layers; "
        f"m = keras.models.load_model(r'{path}'); x = np.load(r'{tmp_path / 'x.npy'}'); "
        f"e = np.load(r'{tmp_path / 'expected.npy'}'); out = keras.ops.convert_to_numpy(m(x)); "
        "sys.exit(0 if np.allclose(out, e, rtol=1e-4, atol=1e-4) else 1)"
    )
    # saved under this pass's backend, loaded in a fresh process under the other: the two passes cover both ways
    # (a fresh process under the same backend: test_api's bare-import load)
    other = {"tensorflow": "jax", "jax": "tensorflow"}[keras.backend.backend()]
    env = {"KERAS_BACKEND": other, "PATH": "", "HOME": str(Path.home()), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{other}: {done.stderr[-2000:]}"
