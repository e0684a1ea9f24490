"""The optimizer of a staged run: a fresh Keras Adam per stage, or one Adam whose state carries across
stages as the study's `torch.optim.Adam` did.

`torch.optim.Adam` keeps moments and a step count per parameter; a frozen parameter has no gradient and
is skipped, so a unit unfrozen later starts at step 1 with the usual bias correction, while the head's
moments run on through every unfreezing. Keras builds an optimizer for one list of variables and refuses
another (and its bias correction counts the optimizer's steps, not the variable's), so `CarriedAdam`
holds a slot for every variable that any stage trains, and `activate` tells it, before each stage's
compile, which of them train now. Its variables never change, so a backup taken in one stage restores
into any other. It uses torch's update (eps added to the bias-corrected root of the second moment).

The recipe's options live in `RecipeUpdates`, shared by CarriedAdam and `RecipeAdam` (Keras's Adam, fresh
at every stage): per-variable learning-rate factors (layer-wise rates), fixed when the optimizer is built,
and torch's decoupled weight decay (`p -= lr * factor * wd * p`, before the Adam step), both applied in
`update_step`, so they hold wherever Keras calls it (inside a LossScaleOptimizer, under tf.distribute,
in JAX's stateless step). Clipping by global norm and the weight average (EMA) are Keras's own
(`global_clipnorm`, `use_ema`).
"""

from __future__ import annotations

import keras
from keras import ops

from ..keras_compat import OptimizerSlots, no_automatic_dependency_tracking, sublayers


class RecipeUpdates(OptimizerSlots):
    """Mixin for a Keras optimizer: per-variable rate factors (by variable path; 1 elsewhere) and decoupled
    weight decay on the variables that `exclude_from_weight_decay` leaves in."""

    def __init__(self, *args, weight_decay=None, rate_factors=None, no_decay=(), **kwargs):
        super().__init__(*args, **kwargs)  # Keras's own weight decay stays off: it would use the unscaled rate
        self.decoupled_weight_decay = float(weight_decay or 0.0)
        self.rate_factors = dict(rate_factors or {})
        self.exclude_from_weight_decay(var_list=list(no_decay))  # before build, as Keras asks

    @no_automatic_dependency_tracking
    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.factors = {self.slot_key(v): float(self.rate_factors.get(v.path, 1.0)) for v in variables}

    def decay_and_scale(self, variable, learning_rate):
        """The variable's own rate; its decoupled decay applied with that rate (first, as torch's AdamW)."""
        factor = self.factors[self.slot_key(variable)]
        if factor != 1.0:
            learning_rate = ops.multiply(ops.cast(learning_rate, variable.dtype), factor)
        if self.decoupled_weight_decay and self.decays(variable):
            decay = ops.multiply(ops.cast(learning_rate, variable.dtype), self.decoupled_weight_decay)
            self.assign_sub(variable, ops.multiply(variable, decay))
        return learning_rate

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(gradient, variable, self.decay_and_scale(variable, learning_rate))

    def finalize_variable_values(self, var_list):
        """Keras's fit puts the average into the weights at the end of every fit; a stage's end is not the
        run's: the average reaches the checkpoint through ema.AverageSwap, and training goes on from the raw weights."""

    def get_config(self):
        return {**super().get_config(), "weight_decay": self.decoupled_weight_decay or None, "rate_factors": dict(self.rate_factors)}


@keras.saving.register_keras_serializable(package="inat_keras")
class RecipeAdam(RecipeUpdates, keras.optimizers.Adam):
    """Keras's Adam (AdamW with a weight decay) with the recipe's per-variable rates: the fresh-per-stage optimizer."""


@keras.saving.register_keras_serializable(package="inat_keras")
class CarriedAdam(RecipeUpdates, keras.optimizers.Optimizer):
    def __init__(self, candidates, learning_rate=1e-4, beta_1=0.9, beta_2=0.999, epsilon=1e-8, name="carried_adam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.build(list(candidates))

    @no_automatic_dependency_tracking  # the model's variables are referenced here, not owned
    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.candidates = list(variables)
        self.candidate_averages = self.built_averages()
        self.candidate_slots = {self.slot_key(v): i for i, v in enumerate(variables)}
        self.first_moments = [self.add_variable_from_reference(v, "m") for v in variables]
        self.second_moments = [self.add_variable_from_reference(v, "v") for v in variables]
        self.steps = [self.add_variable((), initializer="zeros", dtype="float32", name=f"step_{i}") for i, _ in enumerate(variables)]

    @no_automatic_dependency_tracking
    def activate(self, trainable) -> None:
        """The variables that train from now on: each must be a candidate; their state carries on."""
        trainable = list(trainable)
        unknown = [v.path for v in trainable if self.slot_key(v) not in self.candidate_slots]
        if unknown:
            raise ValueError(f"CarriedAdam holds no state for {unknown[:3]}: it was made for other variables")
        # Keras applies gradients to the variables the optimizer was built with: pointing it at the active ones (and
        # their candidate slots) is the whole trick. Keras pairs the average list with the trainable list by position.
        slots = {self.slot_key(v): self.candidate_slots[self.slot_key(v)] for v in trainable}
        averages = [self.candidate_averages[slots[self.slot_key(v)]] for v in trainable] if self.use_ema else None
        self.train_only(trainable, slots, averages)

    def update_averages(self, trainable_variables):
        """Keras starts every average at the optimizer's first step; here each variable's starts at its own
        first step (a unit unfrozen later would otherwise average from zero)."""
        for variable in trainable_variables:
            slot = self.slot_of(variable)
            average, step = self.candidate_averages[slot], self.steps[slot]
            momentum = ops.multiply(ops.cast(ops.greater(step, 1.0), variable.dtype), self.ema_momentum)
            self.assign(average, ops.add(ops.multiply(momentum, average), ops.multiply(ops.subtract(1.0, momentum), variable)))

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = self.decay_and_scale(variable, learning_rate)
        slot = self.slot_of(variable)
        m, v, step = self.first_moments[slot], self.second_moments[slot], self.steps[slot]
        gradient = ops.cast(gradient, variable.dtype)
        lr = ops.cast(learning_rate, variable.dtype)
        self.assign_add(step, 1.0)
        t = ops.cast(step, variable.dtype)
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        correction_1 = 1 - ops.power(ops.cast(self.beta_1, variable.dtype), t)
        correction_2 = 1 - ops.power(ops.cast(self.beta_2, variable.dtype), t)
        denominator = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(correction_2)), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(lr / correction_1, m), denominator))

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """A saved model comes back with a RecipeAdam of the same settings: the carried state belongs to a run's
        backup, and a loaded model has no stages to carry it through."""
        return RecipeAdam.from_config(config, custom_objects)


def no_decay_variables(model: keras.Model) -> list:
    """Biases and the variables of normalisation layers (scales, offsets): weight decay leaves them alone."""
    norms = (keras.layers.BatchNormalization, keras.layers.LayerNormalization, keras.layers.GroupNormalization)
    chosen = {}
    for layer in sublayers(model):
        for variable in layer.weights:
            if isinstance(layer, norms) or variable.name == "bias":
                chosen[id(variable)] = variable
    return list(chosen.values())


def make_optimizer(config, model: keras.Model, learning_rate, rate_factors: dict | None = None, candidates=None):
    """The run's optimizer: a RecipeAdam for the model's trainable variables, or (with `candidates`) one
    CarriedAdam for all of them; the config chooses AdamW's decay, clipping and the average."""
    options = {
        "learning_rate": learning_rate,
        "weight_decay": config.weight_decay if config.optimizer == "adamw" else None,
        "global_clipnorm": config.clip_norm or None,
        "use_ema": config.ema,
        "ema_momentum": config.ema_momentum,
        "rate_factors": rate_factors,
        "no_decay": no_decay_variables(model),
    }
    if candidates is not None:
        return CarriedAdam(candidates, **options)
    return RecipeAdam(**options)
