"""Every use of a private part of Keras (and of keras-cv, JAX, TFDS and W&B), in one place, each with its reason.

The rest of the project calls these names and touches no private attribute (tests/test_package.py fails when one
does). Where a public API does the job it is used instead; what is left here has none (checked against Keras
3.15). When a library release breaks one of these, this file is the one to mend; pyproject.toml pins the versions
it was checked with.

Keras loads on first use (the classes below through `__getattr__`), so that the command line's start-up can use
`jax_started` before TensorFlow or JAX load.
"""

from __future__ import annotations

import sys
from pathlib import Path


def __getattr__(name: str):
    """DataLayer: Keras's base for layers that run inside tf.data (not exported); no_automatic_dependency_tracking:
    keeps an optimizer from owning the model's variables; StageSwapEMA: below."""
    if name == "DataLayer":
        from keras.src.layers.preprocessing.data_layer import DataLayer

        return DataLayer
    if name == "no_automatic_dependency_tracking":
        from keras.src.utils.tracking import no_automatic_dependency_tracking

        return no_automatic_dependency_tracking
    if name == "StageSwapEMA":
        return _stage_swap_ema()
    raise AttributeError(name)


def sublayers(layer) -> list:
    """The layer and every layer nested in it, parents first: `Model.layers` is not recursive, and keras-cv's blocks
    are layers holding layers, with no public listing."""
    return layer._flatten_layers(include_self=True, recursive=True)


def replace_class(layer, cls: type) -> None:
    """Give a layer that a library built a subclass's behaviour (same weights): keras-cv builds its blocks' layers
    itself and offers no hook to choose their class."""
    layer.__class__ = cls


def build_train_step(model, batch_spec) -> None:
    """Create the loss and metric variables for this batch structure now, as Keras does itself under tf.distribute,
    so that TensorFlow traces the training step once instead of twice."""
    model._symbolic_build(data_batch=batch_spec)


def learning_rate_schedule(optimizer):
    """The optimizer's schedule object (or its float rate): `optimizer.learning_rate` gives only the next step's value."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's
    return inner._learning_rate


def last_rate(optimizer) -> float:
    """The rate of the optimizer's last step (of the epoch that just ended): the schedule at iterations - 1."""
    import keras
    from keras import ops

    inner = getattr(optimizer, "inner_optimizer", optimizer)
    schedule = learning_rate_schedule(inner)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return float(ops.convert_to_numpy(schedule(ops.maximum(inner.iterations - 1, 0))))
    return float(ops.convert_to_numpy(inner.learning_rate))


def backup_files(callback) -> tuple[list[Path], list[Path]]:
    """(weights files, metadata files) that BackupAndRestore writes, current and previous: their names are its own."""
    weights = [Path(callback._weights_path), Path(callback._prev_weights_path)]
    metadata = [Path(callback._training_metadata_path), Path(callback._prev_training_metadata_path)]
    return weights, metadata


def prepare_monitor(callback) -> None:
    """Let EarlyStopping compare values before its first epoch (it picks its comparison lazily, at the first epoch)."""
    if callback.monitor_op is None:
        callback._set_monitor_op()


def is_improvement(callback, value: float, best: float) -> bool:
    """EarlyStopping's own test (its mode and min_delta), for values from an earlier process's history."""
    return bool(callback._is_improvement(value, best))


def _stage_swap_ema():
    import keras

    class StageSwapEMA(keras.callbacks.SwapEMAWeights):
        """SwapEMAWeights with its swap exposed and the end-of-fit copy of the average over the weights switched
        off: a staged run's fit ends at each stage, not at the run's end (training.ema)."""

        def swap(self) -> None:
            self._swap_variables()

        @property
        def average_in_model(self) -> bool:
            return self._ema_weights_in_model

        @average_in_model.setter
        def average_in_model(self, value: bool) -> None:
            self._ema_weights_in_model = value

        def _finalize_ema_values(self):
            """Keras copies the average over the raw weights at a fit's last epoch; a stage's end is not the run's."""

    globals()["StageSwapEMA"] = StageSwapEMA  # made once
    return StageSwapEMA


class OptimizerSlots:
    """Mixin for a Keras optimizer that keeps state for a fixed list of variables and trains a changing subset.

    Keras applies gradients to the variables an optimizer was built with, looked up by two private attributes, and
    averages weights (use_ema) in a private method: these are the hooks (training.optimizers.CarriedAdam)."""

    def slot_key(self, variable) -> str:
        return self._var_key(variable)

    def slot_of(self, variable) -> int:
        return self._get_variable_index(variable)

    def decays(self, variable) -> bool:
        """Whether weight decay applies to the variable (exclude_from_weight_decay)."""
        return self._use_weight_decay(variable)

    def built_averages(self) -> list:
        return list(getattr(self, "_model_variables_moving_average", []))

    def train_only(self, variables, slots: dict, averages: list | None) -> None:
        """Apply gradients to `variables` (slot indices by slot_key) and average them with `averages`, from now on."""
        self._trainable_variables = list(variables)
        self._trainable_variables_indices = slots
        if averages is not None:
            self._model_variables_moving_average = averages

    def _update_model_variables_moving_average(self, trainable_variables):
        """A subclass's own `update_averages`, where it has one; else Keras's."""
        if hasattr(self, "update_averages"):
            self.update_averages(trainable_variables)
        else:
            super()._update_model_variables_moving_average(trainable_variables)


class LoggedRate:
    """Mixin for WandbMetricsLogger, which reads the rate in a private method (its `.numpy()` fails on JAX arrays):
    the rate of the epoch's last step instead, the one history.csv logs."""

    def _get_lr(self):
        return last_rate(self.model.optimizer)


def jax_started() -> bool:
    """Whether JAX has created its backends (after which XLA_FLAGS are read no more): JAX has no public query."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def wandb_credentials(base_url: str) -> bool:
    """Whether W&B has a key for this server (the environment, its .netrc entry for that host, its settings), found
    as W&B itself finds it but without its interactive prompt: W&B offers that lookup only inside its login code."""
    from wandb.sdk.lib import wbauth

    try:
        return wbauth.authenticate_session(host=base_url, source="inat-keras", prompt=False, update_session=False) is not None
    except Exception:  # a key in a format W&B refuses counts as none
        return False


def keep_builder_argument(builder, name: str, value) -> None:
    """TFDS rebuilds a pickled builder (multiprocessing) from its constructor arguments, kept in a private dict."""
    builder._original_state[name] = value
