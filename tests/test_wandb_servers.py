"""W&B that never stalls, against fake servers on this machine (never an outside address): one that accepts
connections and never answers, one that answers something that is not W&B. `auto` falls back to offline with a
warning, `online` and sweeps stop in one line, each within seconds."""

import socket
import threading
import time

import pytest

from inat_keras.cli import main
from inat_keras.errors import ConfigError
from inat_keras.outputs import tracking

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent

BOUND = tracking.REACH_TIMEOUT + 3  # seconds: the check's own limit and some slack for a loaded machine


def serve(answer: bytes | None):
    """A local TCP server on a free port that never answers (answer None) or answers `answer` to every request."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def loop():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if answer is not None:
                try:
                    conn.recv(65536)
                    conn.sendall(answer)
                    conn.close()
                except OSError:
                    pass

    threading.Thread(target=loop, daemon=True).start()
    return server, f"http://127.0.0.1:{server.getsockname()[1]}", held


SERVERS = {
    "silent": None,
    "not W&B": b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 21\r\n\r\n<html>a router</html>",
}


@pytest.fixture(params=list(SERVERS))
def fake_server(request, monkeypatch):
    server, url, held = serve(SERVERS[request.param])
    monkeypatch.setattr(tracking, "base_url", lambda: url)
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    yield request.param
    server.close()
    for conn in held:
        conn.close()


def test_auto_falls_back_to_offline_with_a_warning(fake_server, caplog):
    start = time.perf_counter()
    assert tracking.resolve_mode("auto") == "offline"
    assert time.perf_counter() - start < BOUND
    assert "logging OFFLINE instead" in caplog.text


def test_online_stops_in_one_line(fake_server, image_folder, tmp_path, tiny_cnn_flags, capsys):
    flags = tiny_cnn_flags(wandb="online")
    start = time.perf_counter()
    code = main(["scratch", "--data-dir", str(image_folder), "--output-dir", str(tmp_path / "run"), *flags])
    assert code == 2 and time.perf_counter() - start < 30  # the stall this replaces sat about 100 s
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --wandb online: W&B http://127.0.0.1:") and "--wandb offline" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_shared_sweep_stops_in_one_line(fake_server, tmp_path):
    from inat_keras.config import shipped_config
    from inat_keras.sweeps.launch import run_sweep

    start = time.perf_counter()
    with pytest.raises(ConfigError, match="a sweep shared through W&B needs its server; run it locally with --offline"):
        run_sweep(shipped_config("sweep_scratch.yaml"), 1, {"demo": True}, tmp_path / "sweep")
    assert time.perf_counter() - start < BOUND
    assert not (tmp_path / "sweep").exists()
