"""Fine-tuning strategies: exactly the intended weights train, batch norm as documented, stages continue.

Which weight belongs to which group is read here from the weight's path (block6o_/..., top_conv/...),
independently of how inat_keras.models.strategies finds the layers.
"""

import dataclasses
import json
import os
import re

import keras
import numpy as np
import pytest

from inat_keras.outputs import tracking
from inat_keras.outputs.run_folder import read_history
from inat_keras.cli import main
from inat_keras.config import ConfigError, FinetuneConfig, build_config
from inat_keras.models.backbones import BACKBONES
from inat_keras.models.finetune import FinetuneArchitecture, build_finetune_model
from inat_keras.models.strategies import (
    layer_groups,
    plan_stages,
    stage_logger,
    trainable_counts,
    unit_groups,
)
from inat_keras.training.kinds import KINDS
from inat_keras.training.loop import compile_model

SIZE = 32
REPEATS = [2, 4, 4, 6, 9, 15]
BLOCKS = [f"block{stage}{chr(ord('a') + i)}" for stage, n in enumerate(REPEATS, start=1) for i in range(n)]
GROUPS = ["stem", *BLOCKS, "top", "head"]
BATCH_NORM = ("gamma", "beta", "moving_mean", "moving_variance")
# plan_stages only reads whether the weights are pretrained; nothing is downloaded in these tests
PRETRAINED = "imagenet"


def config(**values) -> FinetuneConfig:
    return build_config(FinetuneConfig, {"image_size": SIZE, "weights": "none", "wandb": "disabled", "pictures": False,
                                         **values})  # fmt: skip


LITE_BLOCKS = ["block1a", "block2a", "block2b", "block3a", "block3b", "block4a", "block4b", "block4c", "block5a",
               "block5b", "block5c", "block6a", "block6b", "block6c", "block6d", "block7a"]  # fmt: skip
LITE_GROUPS = ["stem", *LITE_BLOCKS, "top", "head"]


def group_of(path: str) -> str:
    """keras-cv's V2-S: block6o_/block6o_dwconv2/kernel; Lite0: block6d_dwconv/kernel; both: stem_*, top_*, logits."""
    first = path.split("/")[0]
    block = re.match(r"block\d+[a-z]+", first)
    return block.group(0) if block else {"stem": "stem", "top": "top", "logits": "head"}[first.split("_")[0]]


def should_train(weight_paths, groups, batch_norm=False) -> set[str]:
    """Every weight of those groups; batch norm's only when it trains (random weights)."""
    return {p for p in weight_paths if group_of(p) in groups and (batch_norm or not p.endswith(BATCH_NORM))}


def paths(model: keras.Model) -> list[str]:
    return [w.path for w in model.weights]


def snapshot(model: keras.Model) -> dict[str, np.ndarray]:
    return {w.path: keras.ops.convert_to_numpy(w).copy() for w in model.weights}


def noise(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8 noise images and labels: two batches of 4. compile_model gets one batch's spec (batch_spec), so that
    TensorFlow traces the training step once, not twice."""
    images = np.random.default_rng(seed).uniform(0, 255, (8, SIZE, SIZE, 3)).astype("float32")
    return images, np.arange(8) % 3


def changed(before: dict, after: dict) -> set[str]:
    return {path for path in before if not np.array_equal(before[path], after[path])}


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)  # its random weights decide which weights a short fit moves visibly
    return build_finetune_model(FinetuneArchitecture.of(config()), 3)


@pytest.fixture(scope="module")
def lite():
    keras.utils.set_random_seed(0)
    return build_finetune_model(FinetuneArchitecture.of(config(backbone="efficientnet_lite0")), 3)


def test_every_lite0_weight_is_in_exactly_one_group_and_stages_gather_their_blocks(lite):
    groups = layer_groups(lite)
    assert list(groups) == LITE_GROUPS and BACKBONES["efficientnet_lite0"].blocks == LITE_BLOCKS
    assert {group_of(w.path) for w in lite.weights} == set(LITE_GROUPS)
    owned = [id(w) for members in groups.values() for layer in members for w in layer.weights]
    assert len(owned) == len(set(owned)) == len(lite.weights)
    stages = unit_groups(lite, "stage")
    assert list(stages) == ["stem", *(f"stage{i}" for i in range(1, 8)), "top", "head"]
    assert {layer.name.split("_")[0] for layer in stages["stage6"]} == {"block6a", "block6b", "block6c", "block6d"}


@pytest.mark.parametrize(
    "values, groups",
    [
        ({"strategy": "head"}, {"head"}),
        ({"strategy": "last_k", "k": 1, "unfreeze_unit": "block"}, {"head", "top", "block7a"}),
        ({"strategy": "last_k", "k": 3, "unfreeze_unit": "stage"}, {"head", "top", "block7a", "block6a", "block6b",
                                                                      "block6c", "block6d"}),  # fmt: skip
        ({"strategy": "full"}, set(LITE_GROUPS)),
    ],
)
@pytest.mark.large
def test_a_short_lite0_fit_changes_exactly_the_intended_weights(lite, values, groups):
    settings = config(backbone="efficientnet_lite0", weights=PRETRAINED, learning_rate=1e-3, **values)
    [stage] = plan_stages(lite, settings)
    stage.apply(lite)
    images, labels = noise(0)
    compile_model(lite, settings, batch_spec=(images[:4], labels[:4]))
    before = snapshot(lite)
    lite.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    expected = should_train(before, groups)  # pretrained: batch norm never moves
    assert {w.path for w in lite.trainable_weights} == expected
    # Nothing else moves. Not every expected tensor moves visibly: on noise, Lite0's ReLU6 blocks pass some
    # gradients of 1e-12, whose Adam steps vanish in float32 (measured), so only the top is required to move.
    moved = changed(before, snapshot(lite))
    assert moved <= expected and {"logits/kernel", "top_conv/kernel"} & expected <= moved
    assert trainable_counts(lite)["trainable_blocks"] == len(groups & set(LITE_BLOCKS))


def test_the_study_batch_norm_on_lite0_moves_statistics_everywhere_and_scales_only_where_unfrozen(lite):
    settings = config(backbone="efficientnet_lite0", weights=PRETRAINED, strategy="last_k", k=1, unfreeze_unit="block",
                      batch_norm_mode="study", learning_rate=1e-3)  # fmt: skip
    [stage] = plan_stages(lite, settings)
    stage.apply(lite)
    images, labels = noise(1)
    compile_model(lite, settings, batch_spec=(images[:4], labels[:4]))
    before = snapshot(lite)
    lite.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    moved = changed(before, snapshot(lite))
    assert {"block1a_bn/moving_mean", "stem_bn/moving_variance", "block7a_bn/moving_mean"} <= moved
    assert not {p for p in moved if p.endswith(("gamma", "beta")) and group_of(p) not in {"top", "block7a"}}
    assert {"block7a_bn/gamma", "top_bn/beta"} <= moved


def test_every_weight_is_in_exactly_one_group(model):
    groups = layer_groups(model)
    assert list(groups) == GROUPS
    assert {group_of(w.path) for w in model.weights} == set(GROUPS)
    owned = [id(w) for members in groups.values() for layer in members for w in layer.weights]
    assert len(owned) == len(set(owned)) == len(model.weights)


def test_the_study_schedule_and_its_edges(model):
    study = plan_stages(model, config(strategy="gradual", epochs=10, unfreeze_every=2, unfreeze_step=1))
    assert [(s.start, s.stop, s.label) for s in study] == [
        (0, 2, "head"), (2, 4, "last_1"), (4, 6, "last_2"), (6, 8, "last_3"), (8, 10, "last_4"),
    ]  # fmt: skip
    fast = plan_stages(
        model, config(strategy="gradual", epochs=6, unfreeze_every=1, unfreeze_step=20, weights=PRETRAINED)
    )
    assert [(s.start, s.stop, s.label) for s in fast] == [
        (0, 1, "head"), (1, 2, "last_20"), (2, 3, "last_40"), (3, 6, "full"),
    ]  # fmt: skip
    fast[2].apply(model)  # all 40 blocks, the stem still frozen
    assert trainable_counts(model)["trainable_blocks"] == 40
    assert {w.path for w in model.trainable_weights} == should_train(paths(model), set(GROUPS) - {"stem"})
    fast[3].apply(model)
    assert {w.path for w in model.trainable_weights} == should_train(paths(model), GROUPS)
    [everything] = plan_stages(model, config(strategy="last_k", k=40))
    assert everything.label == "last_40"


def test_a_stage_sets_every_flag_whatever_the_previous_one_left(model):
    """Under TensorFlow `layer.trainable = True` is skipped when the layer already is trainable, so a
    block unfrozen again would keep the batch-norm flags an earlier stage froze inside it."""
    last_block = {"head", "top", "block6o"}
    for weights in (PRETRAINED, "none", PRETRAINED, "none"):
        [stage] = plan_stages(model, config(strategy="last_k", k=1, weights=weights))
        stage.apply(model)
        expected = should_train(paths(model), last_block, batch_norm=weights == "none")
        assert {w.path for w in model.trainable_weights} == {p for p in expected if "moving_" not in p}, weights


@pytest.mark.large
def test_a_short_fit_of_v2s_changes_exactly_the_last_blocks_weights_and_its_batch_norm(model):
    """One V2-S fit (40 blocks compile in about a minute on CI): random weights, so batch norm trains in the
    unfrozen block and nowhere else. Head only, full and pretrained batch norm: the Lite0 fits above."""
    groups = {"head", "top", "block6o"}
    settings = config(strategy="last_k", k=1, weights="none", learning_rate=1e-3)
    [stage] = plan_stages(model, settings)
    stage.apply(model)
    images, labels = noise(0)
    compile_model(model, settings, batch_spec=(images[:4], labels[:4]))
    before = snapshot(model)
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    expected, moved = should_train(before, groups, batch_norm=True), changed(before, snapshot(model))
    assert moved == expected
    assert {w.path for w in model.trainable_weights} == {p for p in expected if "moving_" not in p}
    counts = trainable_counts(model)
    assert counts["trainable_blocks"] == 1
    assert counts["trainable_params"] == sum(before[p].size for p in expected if "moving_" not in p)
    assert {p for p in moved if p.startswith("block6o_") and not p.endswith(BATCH_NORM)} == {
        "block6o_/block6o_dwconv2/kernel", "block6o_/block6o_expand_conv/kernel",
        "block6o_/block6o_project_conv/kernel", "block6o_/block6o_se_expand/bias",
        "block6o_/block6o_se_expand/kernel", "block6o_/block6o_se_reduce/bias",
        "block6o_/block6o_se_reduce/kernel",
    }  # one block: all of its 7 tensors, not one tensor  # fmt: skip


class Recorder(keras.callbacks.Callback):
    """Weights before training and after every epoch; the checkpoint file's state at every epoch start."""

    def __init__(self, checkpoint):
        super().__init__()
        self.checkpoint = checkpoint
        self.weights, self.checkpoint_stamps, self.iterations = {}, {}, []

    def on_train_begin(self, logs=None):
        self.weights.setdefault(-1, snapshot(self.model))

    def on_epoch_begin(self, epoch, logs=None):
        self.checkpoint_stamps[epoch] = self.stamp()
        self.iterations.append((epoch, int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))))

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = snapshot(self.model)

    def stamp(self):
        return os.stat(self.checkpoint).st_mtime_ns if os.path.exists(self.checkpoint) else None


def gradual(folder, out, **values) -> FinetuneConfig:
    """Lite0: the stage mechanics are the backbone's layout (data), and Lite0 compiles about 3x faster than V2-S."""
    return config(backbone="efficientnet_lite0", strategy="gradual", data_dir=str(folder), output_dir=str(out),
                  batch_size=8, **values)


def train(settings, *extra):
    kind = dataclasses.replace(KINDS["finetune"], callbacks=lambda model: stage_logger(model) + list(extra))
    return kind.train(settings)


@pytest.mark.large
def test_gradual_unfreezing_grows_on_schedule_and_continues_across_stages(image_folder, tmp_path, monkeypatch):
    logged, runs = [], []
    start_run = tracking.start_run

    def counted_start_run(*args, **kwargs):
        runs.append(start_run(*args, **kwargs))
        monkeypatch.setattr(tracking.wandb, "log", lambda data, **kw: logged.append(dict(data)))  # init replaces it
        return runs[-1]

    monkeypatch.setattr(tracking, "start_run", counted_start_run)
    settings = gradual(
        image_folder, tmp_path / "run", epochs=3, unfreeze_every=1, unfreeze_step=1, weights="imagenet"
    )  # real weights: on random ones some of Lite0's ReLU6 units pass no gradient, and their kernels stay put
    recorder = Recorder(tmp_path / "run" / "model.keras")
    run_dir, metrics = train(settings, recorder)

    schedule = [{"head"}, {"head", "top", "block7a"}, {"head", "top", "block7a", "block6d"}]
    initial = recorder.weights[-1]
    for epoch, groups in enumerate(schedule):
        assert changed(recorder.weights[epoch - 1], recorder.weights[epoch]) == should_train(initial, groups), epoch

    history = read_history(run_dir / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert [int(r["trainable_blocks"]) for r in history] == [0, 1, 2]
    params = [sum(initial[p].size for p in should_train(initial, groups)) for groups in schedule]
    assert [int(r["trainable_params"]) for r in history] == params
    assert [s["label"] for s in metrics["unfreezing_schedule"]] == ["head", "last_1", "last_2"]
    assert [s["epochs"] for s in metrics["unfreezing_schedule"]] == [[1], [2], [3]]
    assert [s["trainable_params"] for s in metrics["unfreezing_schedule"]] == params
    assert json.loads((run_dir / "metrics.json").read_text())["unfreezing_schedule"] == metrics["unfreezing_schedule"]
    assert metrics["trainable_params"] == params[-1]

    # the best checkpoint is rewritten exactly when val_accuracy beats the best of all earlier stages
    accuracy = [float(r["val_accuracy"]) for r in history]
    stamps = [recorder.checkpoint_stamps[e] for e in (1, 2)] + [recorder.stamp()]
    rewritten = [e for e in range(3) if stamps[e] != recorder.checkpoint_stamps[e]]
    assert rewritten == [e for e in range(3) if accuracy[e] > max(accuracy[:e], default=-1.0)]
    assert metrics["best_val_accuracy"] == pytest.approx(max(accuracy))

    assert len(runs) == 1  # one W&B run for all stages, epochs in order, with the trainable counts
    epochs = [entry for entry in logged if "epoch/epoch" in entry]
    assert [e["epoch/epoch"] for e in epochs] == [1, 2, 3]
    assert [e["epoch/trainable_blocks"] for e in epochs] == [0, 1, 2]

    # evaluate and predict on a gradual Lite0 checkpoint: test_efficientnet_lite's every-option run


@pytest.mark.large
def test_an_interrupted_gradual_run_resumes_with_the_right_stage_and_adam_state(image_folder, tmp_path, interrupt):
    # The stages of the test above (its weights, split and batches): under JAX their programs come from the
    # compilation cache (tests/conftest.py) instead of compiling again
    settings = gradual(image_folder, tmp_path / "run", epochs=3, unfreeze_every=2, weights="imagenet")  # head 0-1, last_1 2
    steps = 3  # 24 training images (6 of the 30 validate) in batches of 8
    with pytest.raises(KeyboardInterrupt):
        train(settings, interrupt(1))
    assert [int(r["epoch"]) for r in read_history(tmp_path / "run" / "history.csv")] == [1]

    resumed = Recorder(tmp_path / "run" / "model.keras")
    run_dir, metrics = train(settings, resumed)
    # inside the head stage the saved Adam state comes back; the next stage starts with a fresh Adam
    assert resumed.iterations == [(1, steps), (2, 0)]
    history = read_history(run_dir / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert [int(r["trainable_blocks"]) for r in history] == [0, 0, 1]
    assert metrics["epochs_run"] == 3 and not (run_dir / "backup").exists()


def test_bad_strategy_options_are_refused_clearly(capsys):
    with pytest.raises(ConfigError, match="strategy must be one of full, head, last_k, gradual"):
        config(strategy="last_5")
    with pytest.raises(ConfigError, match="k must be at most 40"):
        config(strategy="last_k", k=41)
    assert config(strategy="last_k", k=40).k == 40
    for flags, message in [
        (["--strategy", "partial"], "strategy must be one of"),
        (["--strategy", "last_k", "--k", "41", "--unfreeze-unit", "block", "--backbone", "efficientnetv2_s"],
         "k must be at most 40 (EfficientNetV2-S has 40 blocks)"),
        (["--strategy", "last_k", "--k", "9", "--backbone", "efficientnetv2_s"], "k must be at most 8 (EfficientNetV2-S has 8 stage units"),
        (["--strategy", "last_k", "--k", "17", "--unfreeze-unit", "block"], "k must be at most 16 (EfficientNet-Lite0 has 16 blocks)"),
        (["--strategy", "last_k", "--k", "10"], "k must be at most 9 (EfficientNet-Lite0 has 9 stage units"),
        (["--backbone", "efficientnet_b0"], "backbone must be one of efficientnetv2_s, efficientnet_lite0"),
        (["--unfreeze-unit", "stages"], "unfreeze_unit must be one of stage, block"),
        (["--batch-norm-mode", "train"], "batch_norm_mode must be one of frozen, study"),
        (["--optimizer-state", "keep"], "optimizer_state must be one of carry, fresh"),
        (["--unfreeze-every", "0"], "unfreeze_every must be at least 1"),
    ]:
        assert main(["finetune", "--demo", "--weights", "none", "--wandb", "disabled", *flags]) == 2
        assert message in capsys.readouterr().err
