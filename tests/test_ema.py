"""The weight average (EMA): validation and the checkpoint hold the exponential average of the raw weights
(computed here from the raw weights of every step), training goes on from the raw weights, and the average
survives stages and a resume (it is in the backup)."""

import dataclasses

import keras
import numpy as np

from inat_keras.config import ScratchConfig, build_config
from inat_keras.training.kinds import KINDS
from inat_keras.training.optimizers import CarriedAdam
from inat_keras.outputs.run_folder import read_checkpoint_record

MOMENTUM = 0.7


def weights(variables) -> dict[str, np.ndarray]:
    return {v.path: keras.ops.convert_to_numpy(v).astype(np.float64) for v in variables}


class Recorder(keras.callbacks.Callback):
    """The raw weights that train after every step, the weights that validation sees (by epoch), and the
    weights each fit starts from."""

    def __init__(self):
        super().__init__()
        self.raw, self.validated, self.steps_at_epoch_end, self.starts = [], {}, {}, []

    def on_train_begin(self, logs=None):
        self.starts.append(weights(self.model.variables))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.raw.append(weights(self.model.trainable_variables))  # `self.model` syncs JAX's state

    def on_epoch_end(self, epoch, logs=None):
        self.steps_at_epoch_end[epoch] = len(self.raw)

    def on_test_batch_end(self, batch, logs=None):
        self.validated[self.epoch] = weights(self.model.trainable_variables)


def averages(raw: list[dict]) -> list[dict]:
    """After each step, every variable's average from its own first trained step: a = m a + (1 - m) w."""
    out, current = [], {}
    for step in raw:
        current = {p: w if p not in current else MOMENTUM * current[p] + (1 - MOMENTUM) * w for p, w in step.items()}
        out.append(dict(current))
    return out


def assert_close(actual: dict, expected: dict):
    assert set(expected) <= set(actual)
    for path, value in expected.items():
        np.testing.assert_allclose(actual[path], value, rtol=1e-5, atol=1e-6, err_msg=path)


def run_config(folder, out, options, **values):
    return build_config(ScratchConfig, {**options, "ema": True, "ema_momentum": MOMENTUM, "data_dir": str(folder),
                                        "output_dir": str(out), **values})  # fmt: skip


def test_validation_and_the_checkpoint_use_the_average(image_folder, tmp_path, tiny_cnn_options):
    recorder = Recorder()
    kind = dataclasses.replace(KINDS["scratch"], callbacks=lambda model: [recorder])
    run_dir, _ = kind.train(run_config(image_folder, tmp_path / "run", tiny_cnn_options, epochs=2))
    expected = averages(recorder.raw)
    for epoch, seen in recorder.validated.items():
        at_end = recorder.steps_at_epoch_end[epoch] - 1
        assert_close(seen, expected[at_end])
        differs = max(np.abs(seen[p] - recorder.raw[at_end][p]).max() for p in seen)
        assert differs > 1e-4  # the average, not the raw weights
    epoch = read_checkpoint_record(run_dir)["epoch"]
    saved = weights(keras.models.load_model(run_dir / "model.keras", compile=False).trainable_variables)
    assert_close(saved, expected[recorder.steps_at_epoch_end[epoch - 1] - 1])
    assert len(recorder.validated) == 2


def test_a_carried_average_runs_through_stages_and_a_resume(image_folder, tmp_path, tiny_cnn_options, head_then_all, interrupt):
    """One CarriedAdam: each variable's average starts at its own first step (the conv layers' in the second
    stage); the run is killed inside the first stage and resumed; the checkpoint is the last epoch's average."""
    settings = run_config(image_folder, tmp_path / "run", tiny_cnn_options, epochs=3, val_fraction=0,
                          batch_size=10, optimizer_state="carry")  # fmt: skip
    first, resumed = Recorder(), Recorder()
    with_stages = dataclasses.replace(KINDS["scratch"], plan_stages=head_then_all)
    try:
        dataclasses.replace(with_stages, callbacks=lambda model: [first, interrupt(1)]).train(settings)
    except KeyboardInterrupt:
        pass
    run_dir, _ = dataclasses.replace(with_stages, callbacks=lambda model: [resumed]).train(settings)
    raw = first.raw + resumed.raw
    assert len(raw) == 9 and len(first.raw) == 3  # 30 images, batches of 10, 3 epochs; killed after one
    expected = averages(raw)[-1]
    saved = weights(keras.models.load_model(run_dir / "model.keras", compile=False).trainable_variables)
    assert_close(saved, expected)
    # the second stage trained on from the raw weights, not from the average the first stage's end held
    assert_close(resumed.starts[1], raw[5])
    conv = [p for p in expected if "_conv/" in p]
    assert conv and all(not np.allclose(saved[p], raw[-1][p]) for p in conv)


def test_carried_adam_averages_each_variable_from_its_first_step():
    head, unit = keras.Variable(np.ones(3, "float32"), name="head"), keras.Variable(np.ones(2, "float32"), name="unit")
    optimizer = CarriedAdam([head, unit], learning_rate=0.1, use_ema=True, ema_momentum=MOMENTUM)
    raw, rng = [], np.random.default_rng(0)
    for step in range(5):
        active = [head] if step < 3 else [head, unit]
        optimizer.activate(active)
        optimizer.apply([keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32")) for v in active], active)
        raw.append(weights(active))
    expected = averages(raw)[-1]
    got = {v.path: keras.ops.convert_to_numpy(a) for v, a in zip(optimizer.candidates, optimizer.candidate_averages)}
    assert_close(got, expected)
