"""The recipe's optimizer options, fresh (RecipeAdam) and carried (CarriedAdam): AdamW's decay where it
belongs, clipping by global norm, layer-wise rates (also inside a LossScaleOptimizer and a compiled,
distributed or stateless step) and the backbones' units they follow."""

import contextlib
import dataclasses
import math
import re

import keras
import numpy as np
import pytest

from inat_keras.config import ConfigError, FinetuneConfig, ScratchConfig, build_config
from inat_keras.models.backbones import BACKBONES
from inat_keras.models.finetune import FinetuneArchitecture, build_finetune_model
from inat_keras.training.kinds import KINDS
from inat_keras.training.layer_rates import layer_rate_factors, unit_depths
from inat_keras.training.optimizers import CarriedAdam, make_optimizer

LR = 0.01


def settings(**values) -> ScratchConfig:
    return build_config(ScratchConfig, {"image_size": 32, "wandb": "disabled", **values})


def small_model() -> keras.Model:
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten()(keras.layers.Dense(3, name="body")(x))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    rng = np.random.default_rng(0)
    for variable in model.trainable_variables:  # no zeros: a bias or offset left alone must be seen to stay
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    return model


def optimizer_for(kind, config, model, rate_factors=None):
    if kind == "carried":
        optimizer = make_optimizer(config, model, LR, rate_factors, candidates=model.trainable_variables)
        optimizer.activate(model.trainable_variables)
        return optimizer
    optimizer = make_optimizer(config, model, LR, rate_factors)
    optimizer.build(model.trainable_variables)
    return optimizer


def values(model) -> dict[str, np.ndarray]:
    return {v.path: keras.ops.convert_to_numpy(v).astype(np.float64) for v in model.trainable_variables}


def gradients(model, seed=1, scale=1.0) -> list:
    rng = np.random.default_rng(seed)
    return [keras.ops.convert_to_tensor((scale * rng.choice([-1, 1], v.shape) * rng.uniform(0.5, 2, v.shape)).astype("float32"))
            for v in model.trainable_variables]  # fmt: skip


@pytest.mark.parametrize("kind", ["fresh", "carried"])
def test_adamw_decays_kernels_and_leaves_biases_and_batch_norm_alone(kind):
    model = small_model()
    optimizer = optimizer_for(kind, settings(optimizer="adamw", weight_decay=0.1), model)
    before = values(model)
    zeros = [keras.ops.zeros(v.shape) for v in model.trainable_variables]  # Adam moves nothing: only the decay acts
    optimizer.apply(zeros, model.trainable_variables)
    after = values(model)
    for path in before:
        kept = path.endswith(("/bias", "bn/gamma", "bn/beta"))
        expected = before[path] if kept else before[path] * (1 - LR * 0.1)
        np.testing.assert_allclose(after[path], expected, rtol=1e-6, err_msg=path)
    assert sum(not p.endswith(("/bias", "bn/gamma", "bn/beta")) for p in before) == 3  # conv, body, head kernels


def test_carried_adamw_is_torchs_adamw():
    model = small_model()
    optimizer = optimizer_for("carried", settings(optimizer="adamw", weight_decay=0.05, optimizer_state="carry"), model)
    params = values(model)
    state = {p: {"m": 0.0, "v": 0.0} for p in params}
    for t in (1, 2, 3):
        grads = gradients(model, seed=t)
        optimizer.apply(grads, model.trainable_variables)
        for (path, p), g in zip(list(params.items()), grads):
            g = keras.ops.convert_to_numpy(g).astype(np.float64)
            if not path.endswith(("/bias", "bn/gamma", "bn/beta")):
                p = p * (1 - LR * 0.05)  # torch.optim.AdamW: decay first, then the Adam step
            s = state[path]
            s["m"] = 0.9 * s["m"] + 0.1 * g
            s["v"] = 0.999 * s["v"] + 0.001 * g * g
            params[path] = p - LR / (1 - 0.9**t) * s["m"] / (np.sqrt(s["v"]) / math.sqrt(1 - 0.999**t) + 1e-8)
    for path, value in values(model).items():
        np.testing.assert_allclose(value, params[path], rtol=1e-5, atol=1e-7, err_msg=path)


def first_moments(optimizer, model) -> list[np.ndarray]:
    moments = optimizer.first_moments if isinstance(optimizer, CarriedAdam) else optimizer._momentums
    return [keras.ops.convert_to_numpy(moments[optimizer._get_variable_index(v)]) for v in model.trainable_variables]


@pytest.mark.parametrize("kind", ["fresh", "carried"])
def test_a_huge_gradient_is_clipped_to_the_global_norm(kind):
    for scale, clipped in ((1e6, True), (1e-3, False)):
        model = small_model()
        optimizer = optimizer_for(kind, settings(clip_norm=2.0), model)
        grads = gradients(model, scale=scale)
        optimizer.apply(grads, model.trainable_variables)
        norm = math.sqrt(sum(float(np.sum(keras.ops.convert_to_numpy(g).astype(np.float64) ** 2)) for g in grads))
        used = [m / 0.1 for m in first_moments(optimizer, model)]  # Adam's first moment after one step: 0.1 x gradient
        used_norm = math.sqrt(sum(float(np.sum(u.astype(np.float64) ** 2)) for u in used))
        assert used_norm == pytest.approx(2.0 if clipped else norm, rel=1e-4)
        for u, g in zip(used, grads):  # the direction is kept
            np.testing.assert_allclose(u, keras.ops.convert_to_numpy(g) * used_norm / norm, rtol=1e-4)


FACTORS = {"body/kernel": 0.25, "body/bias": 0.25, "conv/kernel": 0.0625, "conv/bias": 0.0625}


def compiled_apply(optimizer, grads, variables):
    """One update as fit runs it: TensorFlow inside a distribution strategy's replica, JAX stateless and jitted."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.get_strategy()
        tf.function(lambda: strategy.run(lambda: optimizer.apply(grads, variables)))()
        return
    import jax

    step = jax.jit(lambda opt, g, train: optimizer.stateless_apply(opt, g, train))
    trained, state = step([v.value for v in optimizer.variables], grads, [v.value for v in variables])
    for variable, value in zip(variables, trained):
        variable.assign(value)


def scope_for(kind):
    if kind == "compiled" and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy(["/cpu:0"]).scope()
    return contextlib.nullcontext()


@pytest.mark.parametrize("kind", ["fresh", "carried", "loss_scaled", "compiled"])
def test_each_group_moves_at_its_rate(kind):
    """Adam's first step moves every weight by the rate times sign(gradient): the move shows the rate."""
    with scope_for(kind):
        model = small_model()
        config = settings(optimizer="adamw", weight_decay=0.0)
        optimizer = optimizer_for("carried" if kind == "carried" else "fresh", config, model, FACTORS)
        grads = gradients(model)
        before = values(model)
        if kind == "loss_scaled":  # as mixed_float16 wraps it; it unscales the gradients before our optimizer sees them
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(model.trainable_variables)
            grads = [g * optimizer.initial_scale for g in grads]
        if kind == "compiled" or (kind == "loss_scaled" and keras.backend.backend() == "jax"):  # JAX: only stateless
            compiled_apply(optimizer, grads, model.trainable_variables)
        else:
            optimizer.apply(grads, model.trainable_variables)
    for path, value in values(model).items():
        moved = np.abs(value - before[path]) / LR
        np.testing.assert_allclose(moved, FACTORS.get(path, 1.0), rtol=1e-4, err_msg=path)


def test_weight_decay_follows_each_groups_rate():
    model = small_model()
    optimizer = optimizer_for("fresh", settings(optimizer="adamw", weight_decay=0.5), model, FACTORS)
    before = values(model)
    optimizer.apply([keras.ops.zeros(v.shape) for v in model.trainable_variables], model.trainable_variables)
    for path, value in values(model).items():
        if path.endswith("kernel"):
            np.testing.assert_allclose(value, before[path] * (1 - LR * FACTORS.get(path, 1.0) * 0.5), rtol=1e-6)


class FirstStepOfStage(keras.callbacks.Callback):
    """How far each weight moves in the first step of the epoch given (`self.model` syncs JAX's state)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.moved = epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch and batch == 0:
            self.before = values(self.model)

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 0:
            self.moved = {p: np.abs(v - self.before[p]).max() for p, v in values(self.model).items()}


@pytest.mark.parametrize("state", ["fresh", "carry"])
@pytest.mark.large
def test_a_run_gives_its_rate_factors_to_each_stages_optimizer(state, image_folder, tmp_path, tiny_cnn_options, head_then_all):
    """The conv layers join in the second stage at 1/8 of the rate: their first step (step 1 of their Adam
    state, fresh or carried) moves each at most rate / 8."""
    def factors(model, config):
        return {v.path: 0.125 for v in model.weights if "_conv/" in v.path}

    kind = dataclasses.replace(KINDS["scratch"], plan_stages=head_then_all, rate_factors=factors)
    probe = FirstStepOfStage(2)
    config = build_config(ScratchConfig, {**tiny_cnn_options, "epochs": 3, "val_fraction": 0, "batch_size": 10,
                                          "optimizer_state": state, "data_dir": str(image_folder), "output_dir": str(tmp_path / "run")})  # fmt: skip
    dataclasses.replace(kind, callbacks=lambda model: [probe]).train(config)
    conv = {p: m for p, m in probe.moved.items() if "_conv/" in p}
    assert len(conv) == 10
    for path, moved in conv.items():
        assert moved / config.learning_rate == pytest.approx(0.125, rel=1e-3), path


def test_layer_rates_decay_from_the_top_unit_down():
    config = build_config(FinetuneConfig, {"image_size": 32, "weights": "none", "wandb": "disabled", "unfreeze_unit": "stage",
                                           "backbone": "efficientnet_lite0", "backbone_lr": 0.5, "layer_decay": 0.8})  # fmt: skip
    model = build_finetune_model(FinetuneArchitecture.of(config), 3)
    factors = layer_rate_factors(model, config)
    # depth from the top, read from the weight's own path: top conv 0, stage 7 1, ..., stage 1 7, stem 8 (Lite0's
    # 7 stages; the rule reads the backbone's layout, the same data for V2-S's 6)
    for variable in model.weights:
        first = variable.path.split("/")[0]
        if first == "logits":
            assert variable.path not in factors
            continue
        depth = 0 if first.startswith("top_") else 8 if first.startswith("stem_") else 8 - int(first[5])
        assert factors[variable.path] == pytest.approx(0.5 * 0.8**depth), variable.path
    assert len(factors) == len(model.weights) - 2  # every backbone weight once; the head's kernel and bias not
    # V2-S's 6 stages by the same rule, from its layout alone (no model): top conv 0, stage 6 1, ..., stem 7
    v2s = {"top": 0, **{f"stage{stage}": 7 - stage for stage in range(1, 7)}, "stem": 7}
    assert unit_depths(BACKBONES["efficientnetv2_s"], "stage") == v2s
    off = build_config(FinetuneConfig, {"image_size": 32, "weights": "none", "wandb": "disabled",
                                        "backbone": "efficientnet_lite0"})  # fmt: skip
    assert layer_rate_factors(model, off) == {}


def test_optimizer_options_are_checked_by_name():
    for values_, message in [
        ({"optimizer": "sgd"}, "optimizer must be one of adam, adamw"),
        ({"weight_decay": 0.01}, "weight_decay 0.01 needs --optimizer adamw"),
        ({"optimizer": "adamw", "weight_decay": -1.0}, "weight_decay must be at least 0 (0: off), got -1.0"),
        ({"clip_norm": -1.0}, "clip_norm must be at least 0 (0: off)"),
        ({"ema_momentum": 1.0}, "ema_momentum must be in (0, 1)"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            settings(**values_)
    for name in ("backbone_lr", "layer_decay"):
        with pytest.raises(ConfigError, match=f"{name} must be in"):
            build_config(FinetuneConfig, {"image_size": 32, name: 0.0})
