"""Bad configuration ends in one `error:` line naming the value or file and what is accepted, exit code 2."""

import errno
import os
from pathlib import Path

import pytest

from inat_keras.cli import main
from inat_keras.config import ScratchConfig, build_config, load_config
from inat_keras.errors import ConfigError

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent


def one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--learning-rate", "nan"], "learning_rate must be a finite number, got nan"),
        (["--learning-rate", "inf"], "learning_rate must be a finite number, got inf"),
        (["--learning-rate", "-1"], "learning_rate must be a positive finite number"),
        (["--seed", "-1"], "seed must be an integer in [0, 2**32), got -1"),
        (["--rotation", "nan"], "rotation must be a finite number"),
        (["--augmentation", "study", "--rotation", "0.2"], "rotation tune the inat-keras augmentation preset"),
        (["--cache", "ram"], "cache must be one of auto, memory, disk"),
    ],
)
def test_bad_values_are_one_line(capsys, tmp_path, flags, expected):
    line = one_error_line(capsys, ["scratch", "--demo", "--output-dir", str(tmp_path / "run"), *flags])
    assert expected in line
    assert not (tmp_path / "run").exists()


def test_a_yaml_syntax_error_names_its_line_and_column(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("image_size: 96\nfilters: [4, 4\nepochs: 2\n")
    line = one_error_line(capsys, ["scratch", "--config", str(bad)])
    assert f"{bad}:3:" in line and "not valid YAML" in line


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-3\ndropout: 2E-1\n")
    config = load_config(ScratchConfig, path)
    assert config.learning_rate == 0.001 and config.dropout == 0.2


def test_a_read_only_output_folder_is_one_line(capsys, tmp_path, monkeypatch):
    """Root writes anywhere (CI runs as root), so the file system's refusal is injected where it would come."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    mkdir = Path.mkdir

    def refusing(self, *args, **kwargs):
        if locked in self.parents:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return mkdir(self, *args, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(Path, "mkdir", refusing)
    line = one_error_line(capsys, ["scratch", "--demo", "--output-dir", str(locked / "run")])
    assert str(locked / "run") in line and "Permission denied" in line


def test_unknown_and_mistyped_options_are_refused_by_name(tiny_cnn_options):
    with pytest.raises(ValueError, match="unknown option"):
        build_config(ScratchConfig, {**tiny_cnn_options, "learning_rat": 0.1})


@pytest.mark.parametrize(
    "flags, refused",
    [
        (["--augmentation", "study", "--flip"], "flip tune the inat-keras augmentation preset, not the study preset"),
        (["--augmentation", "study", "--no-flip"], "flip tune the inat-keras augmentation preset, not the study preset"),
        (["--augmentation", "randaugment", "--zoom", "0.1"], "zoom tune the inat-keras augmentation preset"),
        (["--augmentation", "inat-keras", "--randaugment-ops", "2"], "randaugment_ops tune the randaugment preset"),
    ],
)
def test_a_flag_that_the_preset_fixes_is_refused_even_at_its_default(capsys, tmp_path, flags, refused):
    argv = ["scratch", "--demo", "--output-dir", str(tmp_path / "run"), "--print-config", *flags]  # accepted: no training
    line = one_error_line(capsys, argv)
    assert refused in line and not (tmp_path / "run").exists()


def test_a_preset_option_at_its_default_in_a_yaml_file_is_accepted(tmp_path):
    """A written config (a sweep's best_config.yaml) lists every option, those of other presets at their defaults."""
    path = tmp_path / "best.yaml"
    path.write_text("augmentation: study\nflip: true\nrotation: 0.05\nrandaugment_ops: 2\n")
    assert load_config(ScratchConfig, path).augmentation == "study"
    with pytest.raises(ConfigError, match="flip tune the inat-keras augmentation preset"):
        load_config(ScratchConfig, path, {"flip": True})
