"""Configs as data: a YAML file builds on a `base:` file and lists only what differs, a key given twice is refused
with both lines, validation changes nothing, and every command's `--help` groups its options by section, with
their choices."""

import dataclasses

import pytest

from inat_keras.cli import build_parser
from inat_keras.config import ConfigError, FinetuneConfig, ScratchConfig, load_config, read_config_file, shipped_config, to_dict

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent


def test_a_file_builds_on_its_base_and_its_demo_section_on_the_bases(tmp_path):
    (tmp_path / "parent.yaml").write_text("epochs: 7\nlearning_rate: 0.01\ndemo_overrides:\n  epochs: 2\n  image_size: 40\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nlearning_rate: 0.002\ndemo_overrides:\n  image_size: 36\n")
    child = load_config(ScratchConfig, tmp_path / "child.yaml")
    assert (child.epochs, child.learning_rate) == (7, 0.002)
    demo = load_config(ScratchConfig, tmp_path / "child.yaml", {"demo": True})
    assert (demo.epochs, demo.image_size, demo.learning_rate) == (2, 36, 0.002)
    assert read_config_file(tmp_path / "child.yaml")["demo_overrides"] == {"epochs": 2, "image_size": 36}


def test_the_shipped_configs_that_build_on_another_differ_from_it_in_what_they_list():
    study = to_dict(load_config(FinetuneConfig, shipped_config("finetune.yaml")))
    final = to_dict(load_config(FinetuneConfig, shipped_config("finetune_final.yaml")))
    assert {k for k in study if study[k] != final[k]} == {"unfreeze_start", "val_fraction"}
    assert len(shipped_config("finetune_final.yaml").read_text().splitlines()) < 10  # was 29 lines, 21 of them repeated


def test_a_base_that_is_missing_or_circular_is_one_clear_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="build on each other in a circle"):
        load_config(ScratchConfig, tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml is not found beside it nor among the shipped configs"):
        load_config(ScratchConfig, tmp_path / "c.yaml")


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("epochs: 1\nbatch_size: 8\nepochs: 2\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: epochs is given twice \(lines 1 and 3\)"):
        load_config(ScratchConfig, path)
    nested = tmp_path / "nested.yaml"
    nested.write_text("epochs: 1\ndemo_overrides:\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"epochs is given twice \(lines 3 and 4\)"):
        load_config(ScratchConfig, nested)


def test_validation_checks_and_changes_nothing():
    config = load_config(ScratchConfig, shipped_config("scratch_best.yaml"))
    before = dataclasses.asdict(config)
    config.validate()
    assert dataclasses.asdict(config) == before and config.filters == "equal32"  # the preset stays as written
    assert config.filter_list() == [32] * 5 and config.kernel_list() == [5, 5, 3, 3, 1]


def test_a_bad_flag_value_is_blamed_on_the_command_line_not_the_file(tmp_path):
    with pytest.raises(ConfigError, match="^command line: learning_rate must be a finite number"):
        load_config(ScratchConfig, shipped_config("scratch.yaml"), {"learning_rate": float("nan")})


SECTIONS = ("data options", "model options", "fine-tuning options", "augmentation options", "optimisation options",
            "schedule options", "run options", "tracking options", "performance options", "arguments")


@pytest.mark.parametrize("command", ["scratch", "finetune", "evaluate", "predict", "explain", "export", "sweep", "study", "bench"])
def test_help_groups_options_by_section_and_shows_choices(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    shown = [title for title in SECTIONS if f"\n{title}:\n" in text]
    assert len(shown) >= 3, text
    if command in ("scratch", "finetune"):
        assert {"data options", "augmentation options", "optimisation options", "schedule options", "tracking options"} <= set(shown)
        assert "{auto,online,offline,disabled}" in text and "{float32,mixed_float16,mixed_bfloat16}" in text
    if command == "finetune":
        assert "{efficientnetv2_s,efficientnet_lite0}" in text and "fine-tuning options" in shown
