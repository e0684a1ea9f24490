"""The optimizer of a staged run: a fresh Keras Adam per stage, or one Adam whose state carries across
stages as the study's `torch.optim.Adam` did.

`torch.optim.Adam` keeps moments and a step count per parameter; a frozen parameter has no gradient and
is skipped, so a unit unfrozen later starts at step 1 with the usual bias correction, while the head's
moments run on through every unfreezing. Keras builds an optimizer for one list of variables and refuses
another (and its bias correction counts the optimizer's steps, not the variable's), so `CarriedAdam`
holds a slot for every variable that any stage trains, and `activate` tells it, before each stage's
compile, which of them train now. Its variables never change, so a backup taken in one stage restores
into any other. It uses torch's update (eps added to the bias-corrected root of the second moment).
"""

from __future__ import annotations

import keras
from keras import ops
from keras.src.utils.tracking import no_automatic_dependency_tracking  # what Keras's own optimizers use


class CarriedAdam(keras.optimizers.Optimizer):
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
        self.candidate_slots = {self._var_key(v): i for i, v in enumerate(variables)}
        self.first_moments = [self.add_variable_from_reference(v, "m") for v in variables]
        self.second_moments = [self.add_variable_from_reference(v, "v") for v in variables]
        self.steps = [self.add_variable((), initializer="zeros", dtype="float32", name=f"step_{i}") for i, _ in enumerate(variables)]

    @no_automatic_dependency_tracking
    def activate(self, trainable) -> None:
        """The variables that train from now on: each must be a candidate; their state carries on."""
        trainable = list(trainable)
        unknown = [v.path for v in trainable if self._var_key(v) not in self.candidate_slots]
        if unknown:
            raise ValueError(f"CarriedAdam holds no state for {unknown[:3]}: it was made for other variables")
        # Keras applies gradients to the list the optimizer was built with, looked up by these two
        # attributes: pointing them at the active variables (and their candidate slots) is the whole trick.
        self._trainable_variables = trainable
        self._trainable_variables_indices = {self._var_key(v): self.candidate_slots[self._var_key(v)] for v in trainable}

    def update_step(self, gradient, variable, learning_rate):
        slot = self._get_variable_index(variable)
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
