"""The weight average (EMA) of a staged run: validation and the checkpoint see it, training never does.

Keras's optimizers keep the average (`use_ema`); its `SwapEMAWeights(swap_on_epoch=True)` swaps it into the
model for validation and for the callbacks after it at each epoch's end, and back as the next epoch begins.
A staged run fits once per stage, so two things change here: the last epoch of a stage swaps back when
its fit ends (Keras would leave the average in the model and copy it over the raw weights, and the next
stage would train from it), and a fit starts with the average swapped in when the optimizer has one (a
restored backup), so that a checkpoint rewritten from the backup on resume holds the average too.

In the callback list it goes after the backup (which must hold the raw weights and, in the optimizer's
variables, the average) and before the checkpoint.
"""

from __future__ import annotations

import keras
from keras import ops

from ..keras_compat import StageSwapEMA


def optimizer_of(model: keras.Model):
    return getattr(model.optimizer, "inner_optimizer", model.optimizer)  # a LossScaleOptimizer's


class AverageSwap(StageSwapEMA):
    def __init__(self):
        super().__init__(swap_on_epoch=True)

    def on_train_begin(self, logs=None):
        if int(ops.convert_to_numpy(optimizer_of(self.model).iterations)) > 0:  # a fresh optimizer has no average yet
            self.swap()
            self.average_in_model = True

    def on_train_end(self, logs=None):
        if self.average_in_model:
            self.swap()
            self.average_in_model = False
