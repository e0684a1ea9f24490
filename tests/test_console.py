"""What a newcomer reads on the console and what W&B login means: no TensorFlow error line in the middle of a run,
epoch lines that show metrics only, and a login to a self-hosted W&B server recognised as one."""

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from inat_keras.cli import main
from inat_keras.outputs import tracking
from inat_keras.outputs.run_folder import read_history
import pytest

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parents[1]


def test_decoding_turned_photos_leaves_onednn_silent(tmp_path):
    """TensorFlow's oneDNN (on by default on AVX-512 machines, forced here) refuses a uint8 transpose with an
    `E0000 ... DT_UINT8` line; EXIF-turned photos are transposed, inside the tf.data graph."""
    photo = Image.new("RGB", (80, 60), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # turned: needs a transpose to stand upright
    photo.save(tmp_path / "turned.jpg", exif=exif)
    code = (
        "import tensorflow as tf; from inat_keras.data.decode import decode_resize; "
        f"ds = tf.data.Dataset.from_tensor_slices([{str(tmp_path / 'turned.jpg')!r}]).map(lambda p: decode_resize(p, 24, 3, 6)); "
        "print([x.shape for x in ds])"
    )
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "0"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "TensorShape([24, 24, 3])" in done.stdout
    assert "oneDNN custom operations are on" in done.stderr  # the check has teeth: oneDNN did run
    assert "DT_UINT8" not in done.stderr


def test_epoch_lines_show_metrics_and_history_keeps_the_bookkeeping(image_folder, tmp_path, tiny_cnn_flags, capsys):
    flags = tiny_cnn_flags(epochs=1)
    assert main(["scratch", "--data-dir", str(image_folder), "--output-dir", str(tmp_path / "run"), *flags]) == 0
    out = capsys.readouterr().out
    epoch_lines = [line for line in out.splitlines() if "val_accuracy: " in line]
    assert epoch_lines and all("process_start" not in line and "epoch_seconds" in line for line in epoch_lines)
    assert read_history(tmp_path / "run" / "history.csv")[0]["process_start"] in ("1", "1.0")


def test_a_key_for_a_self_hosted_server_is_a_login_and_a_cloud_key_is_not(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setattr(tracking, "base_url", lambda: "http://127.0.0.1:9")  # conftest's closed local port
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {'a' * 40}\n")
    netrc.chmod(0o600)
    assert not tracking.logged_in()
    netrc.write_text(f"machine 127.0.0.1:9\n  login user\n  password {'a' * 40}\n")
    assert tracking.logged_in()
    monkeypatch.setattr(tracking, "base_url", lambda: "https://api.wandb.ai")
    assert not tracking.logged_in()
