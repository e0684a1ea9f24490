import http.server
import threading
import zipfile
from functools import partial

import numpy as np
import pytest
from PIL import Image

from inat_keras.data import sources as datasets
from inat_keras.data.splits import list_images
from inat_keras.errors import DataError

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent


def test_demo_data_are_the_real_digits_in_the_folder_layout(tmp_path):
    root = datasets.write_demo_data(tmp_path)
    train_names, train_paths, train_labels = list_images(root / "train")
    test_names, test_paths, test_labels = list_images(root / "val")
    assert train_names == test_names == [f"digit_{d}" for d in range(10)]
    assert len(train_paths) + len(test_paths) == 1797
    assert np.bincount(test_labels).min() >= 35  # stratified: every digit in the test set
    pixels = np.asarray(Image.open(train_paths[0]))
    assert pixels.shape == (8, 8) and pixels.max() > 200
    assert datasets.write_demo_data(tmp_path) == root  # written once, then reused


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with Range support, like the real download host."""

    def do_GET(self):
        # recorded before the first byte goes out: once the client has the file, the test sees its request
        self.server.requests.append(self.headers.get("Range"))
        body = (self.directory_path / self.path.lstrip("/")).read_bytes()
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = type("H", (RangeHandler,), {"directory_path": served})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(served)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests
    httpd.shutdown()


def test_download_resumes_a_partial_file(server, tmp_path):
    served, url, requests = server
    payload = np.random.default_rng(0).bytes(300_000)
    (served / "data.zip").write_bytes(payload)
    target = tmp_path / "data.zip"
    (tmp_path / "data.zip.part").write_bytes(payload[:120_000])
    datasets.download(f"{url}/data.zip", target, chunk_bytes=4096)
    assert target.read_bytes() == payload
    assert requests == ["bytes=120000-"]
    assert not (tmp_path / "data.zip.part").exists()


def test_a_short_download_never_looks_complete(server, tmp_path, monkeypatch):
    served, url, _ = server
    (served / "data.zip").write_bytes(b"x" * 50_000)
    original = RangeHandler.do_GET

    def truncated(self):
        self.send_response(200)
        self.send_header("Content-Length", "50000")
        self.end_headers()
        self.wfile.write(b"x" * 10_000)

    monkeypatch.setattr(RangeHandler, "do_GET", truncated)
    target = tmp_path / "data.zip"
    with pytest.raises(DataError):
        datasets.download(f"{url}/data.zip", target)
    assert not target.exists()
    monkeypatch.setattr(RangeHandler, "do_GET", original)
    datasets.download(f"{url}/data.zip", target)
    assert target.read_bytes() == b"x" * 50_000


def test_fetch_unpacks_atomically_and_checks_contents(server, tmp_path, monkeypatch):
    served, url, _ = server
    with zipfile.ZipFile(served / "nature_12K.zip", "w") as archive:
        archive.writestr("inaturalist_12K/train/Aves/a.jpg", b"x")
        archive.writestr("inaturalist_12K/val/Aves/b.jpg", b"x")
    monkeypatch.setattr(datasets, "INAT_URL", f"{url}/nature_12K.zip")
    with pytest.raises(DataError, match="looks incomplete"):
        datasets.fetch_inaturalist(tmp_path / "cache")
    assert not (tmp_path / "cache" / "inaturalist_12K").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["nature_12K.zip"]


def test_unreachable_host_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        datasets.download("http://127.0.0.1:9/nature_12K.zip", tmp_path / "x.zip", timeout=2)
