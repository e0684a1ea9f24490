"""The plus configs change how the study's models train, not what is trained on or measured."""

import dataclasses

import pytest

from inat_keras.config import FinetuneConfig, ScratchConfig, TrainConfig, load_config, shipped_config

# The recipe: the options a plus config may set otherwise than its study config.
RECIPE = {
    "optimizer", "weight_decay", "clip_norm", "learning_rate", "lr_schedule", "warmup_epochs", "min_lr_fraction",
    "schedule_unit", "ema", "ema_momentum", "label_smoothing", "mixup", "cutmix", "crop_min_area",
    "crop_decode_scale", "augmentation", "flip", "rotation", "zoom", "color_jitter", "randaugment_ops",
    "randaugment_magnitude", "tta", "backbone_lr", "layer_decay",
}  # fmt: skip
PAIRS = [
    (ScratchConfig, "scratch_best.yaml", "scratch_plus.yaml"),
    (FinetuneConfig, "finetune.yaml", "finetune_plus.yaml"),
]


@pytest.mark.parametrize("cls, study_file, plus_file", PAIRS)
@pytest.mark.parametrize("demo", [False, True])
def test_plus_config_keeps_the_study_protocol_and_model(cls, study_file, plus_file, demo):
    overrides = {"demo": True, "weights": "none"} if demo and cls is FinetuneConfig else {"demo": demo}
    study = dataclasses.asdict(load_config(cls, shipped_config(study_file), overrides))
    plus = dataclasses.asdict(load_config(cls, shipped_config(plus_file), overrides))
    changed = {name for name in study if study[name] != plus[name]}
    assert changed <= RECIPE, f"{plus_file} changes more than the training recipe: {sorted(changed - RECIPE)}"
    assert {"optimizer", "lr_schedule", "label_smoothing"} <= changed  # it is a recipe, not a copy
    assert plus["optimizer"] == "adamw" and plus["weight_decay"] > 0


def test_recipe_names_are_options():
    fields = {f.name for cls in (TrainConfig, FinetuneConfig) for f in dataclasses.fields(cls)}
    assert RECIPE <= fields
