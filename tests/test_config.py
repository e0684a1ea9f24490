import pytest

from inat_keras.cli import build_parser
from inat_keras.config import (
    ConfigError,
    ScratchConfig,
    build_config,
    load_config,
    overrides_from_args,
)

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent


def test_presets_resolve_to_five_blocks():
    config = build_config(ScratchConfig, {"filters": "doubling32", "kernel_sizes": "decreasing"})
    assert config.filter_list() == [32, 64, 128, 256, 512]
    assert config.kernel_list() == [5, 5, 3, 3, 1]


def test_comma_lists_are_accepted():
    assert build_config(ScratchConfig, {"filters": "8,8,16,16,32"}).filter_list() == [8, 8, 16, 16, 32]


@pytest.mark.parametrize(
    "values, words",
    [
        ({"filters": "equal128"}, ["filters", "equal16"]),
        ({"filters": [32, 32]}, ["filters", "5 positive integers"]),
        ({"kernel_sizes": [3, 3, 0, 3, 3]}, ["kernel_sizes"]),
        ({"activation": "tanh"}, ["activation", "mish"]),
        ({"dropout": 1.5}, ["dropout"]),
        ({"val_fraction": 1.0}, ["val_fraction"]),
        ({"wandb": "maybe"}, ["wandb", "offline"]),
        ({"batch_norm": "False"}, ["batch_norm", "bool"]),
        ({"epochs": 2.5}, ["epochs", "int"]),
        ({"colour": "red"}, ["unknown option", "colour"]),
    ],
)
def test_bad_values_are_refused_by_name(values, words):
    with pytest.raises(ConfigError) as err:
        build_config(ScratchConfig, values)
    for word in words:
        assert word in str(err.value)


def test_yaml_then_demo_overrides_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("image_size: 128\nepochs: 3\ndemo_overrides:\n  image_size: 96\n  epochs: 1\n")
    assert load_config(ScratchConfig, path).image_size == 128
    demo = load_config(ScratchConfig, path, {"demo": True})
    assert (demo.image_size, demo.epochs) == (96, 1)
    flagged = load_config(ScratchConfig, path, {"demo": True, "epochs": 5})
    assert (flagged.image_size, flagged.epochs) == (96, 5)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(ScratchConfig, tmp_path / "nope.yaml")


@pytest.mark.parametrize("flag, expected", [("--batch-norm", True), ("--no-batch-norm", False)])
def test_boolean_flags_take_both_spellings(flag, expected):
    args = build_parser().parse_args(["scratch", flag, "--image-size", "96"])
    overrides = overrides_from_args(args, ScratchConfig)
    assert overrides["batch_norm"] is expected
    assert overrides["image_size"] == 96
    assert "dropout" not in overrides  # flags not typed do not override the YAML


def test_boolean_flags_take_no_value():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["scratch", "--batch-norm", "False"])
