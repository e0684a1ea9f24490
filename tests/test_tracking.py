"""W&B without a network: auto falls back to offline after a short wait, online fails fast, no login
leaves nothing behind."""

import time

import pytest

from inat_keras.cli import main
from inat_keras.outputs import tracking

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent


@pytest.fixture
def tiny(tiny_cnn_flags):
    """tiny(folder, out, *flags): `scratch` of the tiny CNN for one epoch, W&B as the flags say."""

    def argv(folder, out, *flags) -> list[str]:
        return ["scratch", "--data-dir", str(folder), "--output-dir", str(out),
                *tiny_cnn_flags(epochs=1, learning_rate=None, wandb=None), *flags]  # fmt: skip

    return argv


def test_auto_with_a_key_but_no_server_logs_offline_and_says_so(monkeypatch, caplog):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    start = time.perf_counter()
    assert tracking.resolve_mode("auto") == "offline"  # conftest points W&B at a closed local port
    assert time.perf_counter() - start < tracking.REACH_TIMEOUT + 1
    assert "logging OFFLINE instead" in caplog.text


def test_online_without_a_server_fails_fast_in_one_line(image_folder, tmp_path, monkeypatch, capsys, tiny):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    start = time.perf_counter()
    assert main(tiny(image_folder, tmp_path / "run", "--wandb", "online")) == 2
    assert time.perf_counter() - start < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--wandb online: W&B http://127.0.0.1:9 did not accept the login" in err[0] and "--wandb offline" in err[0]
    assert not (tmp_path / "run").exists()


def test_online_without_a_login_leaves_no_folder_to_refuse(image_folder, tmp_path, monkeypatch, capsys, tiny):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(tracking, "logged_in", lambda: False)
    assert main(tiny(image_folder, tmp_path / "run", "--wandb", "online")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--wandb online needs a W&B login" in err[0]
    assert main(tiny(image_folder, tmp_path / "run", "--wandb", "disabled")) == 0  # the same folder
