"""The study's report.html as a reader sees it: rendered by headless Chromium (Debian's `chromium`, installed by
.ci/run), every picture loads and nothing runs off the page. The report is written from small fake results (a
study's folders with their metrics, histories and pictures, as the steps leave them), not from a study run."""

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from inat_keras.config import STRATEGIES, FinetuneConfig, ScratchConfig, StudyConfig, load_config, shipped_config
from inat_keras.outputs.run_folder import write_history
from inat_keras.study.pipeline import A_FINAL, B_FINAL, Step, StudyResult, strategy_dir
from inat_keras.study.report import write_study_report
from inat_keras.sweeps.report import PARALLEL_PNG, PROGRESS_PNG, SweepRecord
from inat_keras.training.kinds import KINDS

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent

CHROMIUM = shutil.which("chromium")
WIDTHS = (1280, 760)  # a desktop window and half of one
# Injected into a copy of the page: once everything has loaded, what a reader would see, written into the DOM.
PROBE = """<script>window.addEventListener('load', function () {
  var box = function (e) { var r = e.getBoundingClientRect(); return {left: r.left, right: r.right, width: r.width, height: r.height}; };
  var found = {viewport: document.documentElement.clientWidth, scrollWidth: document.documentElement.scrollWidth,
               body: box(document.body), images: [], tables: []};
  document.querySelectorAll('img').forEach(function (i) {
    found.images.push(Object.assign({alt: i.alt, naturalWidth: i.naturalWidth}, box(i))); });
  document.querySelectorAll('table').forEach(function (t) {
    found.tables.push({head: t.rows[0].textContent.slice(0, 50), table: box(t), frame: box(t.parentElement)}); });
  var out = document.createElement('pre'); out.id = 'probe'; out.style.display = 'none';
  out.textContent = JSON.stringify(found); document.body.appendChild(out);
});</script>"""


def picture(path, width, height):
    """A PNG of this size that compresses as a plot does (a gradient, not noise)."""
    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    Image.fromarray(np.broadcast_to(ramp[None, :, None], (height, width, 3)).copy()).save(path)


def history(path, epochs):
    rows = [{"epoch": e, "loss": 2 / e, "accuracy": 0.5 + e / 20, "val_loss": 2.2 / e, "val_accuracy": 0.4 + e / 20,
             "learning_rate": 1e-3} for e in range(1, epochs + 1)]  # fmt: skip
    write_history(path, rows)


def fake_study(root) -> StudyResult:
    """A finished demo study's results, small: its settings, sweep record, run folders and the pictures that the
    steps write (a grid as tall as the real 10x3 one, a confusion matrix as wide as the real one)."""
    settings = load_config(StudyConfig, shipped_config("study.yaml"), {"demo": True, "output_dir": str(root)})
    trial_config = {"val_fraction": 0.2, "seed": 42, "epochs": 2}
    values = [0.01, 0.001, 0.0005]
    trials = [{"name": f"trial-00{i}", "number": i, "state": "finished", "params": {"learning_rate": lr},
               "config": trial_config, "metric": 0.5 + i / 10, "epochs_run": 2,
               "started": "2026-01-01T10:00:00", "ended": "2026-01-01T10:01:00"} for i, lr in enumerate(values, 1)]  # fmt: skip
    record = SweepRecord("a-sweep", KINDS["scratch"], "val_accuracy", {"learning_rate": {"values": values}}, trials)
    (root / "a-sweep").mkdir(parents=True)
    report = {PARALLEL_PNG: root / "a-sweep" / PARALLEL_PNG, PROGRESS_PNG: root / "a-sweep" / PROGRESS_PNG}
    picture(report[PARALLEL_PNG], 1400, 500)
    picture(report[PROGRESS_PNG], 800, 450)
    result = StudyResult(root, settings, "disabled", record, report, seconds=600.0)
    counts = {"train_images": 1437, "val_images": 0, "test_images": 360, "class_names": [f"digit_{i}" for i in range(10)],
              "backend": "tensorflow", "train_seconds": 100.0, "epochs_run": 4}  # fmt: skip
    tested = {**counts, "test_accuracy": 0.9, "test_loss": 0.3, "test_accuracy_ci95": [0.87, 0.93],
              "most_confused": [{"true": "digit_8", "predicted": "digit_1", "count": 5}]}  # fmt: skip
    a_config = load_config(ScratchConfig, shipped_config("scratch_best.yaml"), {"demo": True, "val_fraction": 0.0, "epochs": 4})
    b_values = {"demo": True, "epochs": 3, "image_size": 64, "backbone": "efficientnet_lite0"}
    configs = {strategy_dir(s): load_config(FinetuneConfig, shipped_config("finetune.yaml"), {**b_values, "strategy": s})
               for s in STRATEGIES}  # fmt: skip
    configs[B_FINAL] = load_config(FinetuneConfig, shipped_config("finetune_final.yaml"), b_values)
    schedule = [{"label": "head", "epochs": [1], "trainable_groups": ["head"]},
                {"label": "last_2", "epochs": [2, 3], "trainable_groups": ["stage7", "top", "head"]}]  # fmt: skip
    steps = {A_FINAL: (a_config, tested)} | {name: (c, {**counts, "val_images": 288, "epochs_run": 3,
                                                        "best_val_accuracy": 0.8, "unfreezing_schedule": schedule})
                                               for name, c in configs.items() if name != B_FINAL}  # fmt: skip
    steps[B_FINAL] = (configs[B_FINAL], {**tested, "epochs_run": 3, "unfreezing_schedule": schedule})
    for name, (config, metrics) in steps.items():
        run_dir = root / name
        run_dir.mkdir()
        history(run_dir / "history.csv", metrics["epochs_run"])
        if name != A_FINAL:  # a run of today draws its curves; for an older one (a-final here) the report does
            picture(run_dir / "curves.png", 1200, 380)
        if "test_accuracy" in metrics:
            picture(run_dir / "predictions_grid.png", 900, 1070)
            picture(run_dir / "confusion_matrix.png", 1500, 700)
        result.steps[name] = Step(name, run_dir, metrics, True, config)
    return result


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return write_study_report(fake_study(tmp_path_factory.mktemp("study") / "study"))


def render(page, tmp_path, width: int) -> dict:
    """What Chromium laid out at this window width, from the probe's findings in the dumped DOM."""
    probed = tmp_path / f"probed-{width}.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / f'profile-{width}'}", f"--window-size={width},900",
               "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe"[^>]*>(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium wrote no findings (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
@pytest.mark.parametrize("width", WIDTHS)
def test_every_picture_loads_and_nothing_runs_off_the_page(report, tmp_path, width):
    found = render(report["report.html"], tmp_path, width)
    expected = report["report.md"].read_text().count("![")
    assert len(found["images"]) == expected >= 12  # sweep, curves of six runs, the overlay, grids, matrices
    assert not [i["alt"] for i in found["images"] if i["naturalWidth"] <= 0]
    assert found["scrollWidth"] <= found["viewport"], "the page scrolls sideways"
    body = found["body"]

    def inside(box):
        return body["left"] - 0.5 <= box["left"] and box["right"] <= body["right"] + 0.5

    assert not [i for i in found["images"] if not inside(i)]
    for image in found["images"]:  # a grid does not fill the screen
        assert image["width"] <= 900.5 and image["height"] <= 600.5, image
    assert len(found["tables"]) == report["report.md"].read_text().count("\n|---")
    # At a desktop width every table fits the page (cells wrap between words); in a narrower window a wide one
    # scrolls inside its own frame, which stays within the page.
    assert not [t["head"] for t in found["tables"] if not inside(t["table" if width >= 1280 else "frame"])]
