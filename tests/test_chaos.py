"""A small training run killed with SIGKILL at several points, rerun with the same command each time:
it finishes with one history row per epoch, a checkpoint of the best row, and valid metrics.json."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from inat_keras.data.pipeline import make_dataset
from inat_keras.data.split_record import splits_from_record
from inat_keras.config import ScratchConfig, load_config
from inat_keras.models import layers  # noqa: F401  (registers the CNN's layers for loading)
from inat_keras.outputs.run_folder import read_checkpoint_record, read_history

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "chaos_train.py"
POINTS = ("scan", "epoch", "checkpoint", "backup", "evaluation")


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.large
@pytest.mark.backend_independent
def test_kills_at_every_point_leave_a_run_that_finishes_whole(tmp_path, make_image_folder, tiny_cnn_flags):
    data = make_image_folder(tmp_path / "data", {"train": 8, "val": 3})
    out = tmp_path / "run"
    command = ["scratch", "--data-dir", str(data), "--output-dir", str(out), *tiny_cnn_flags(batch_size=4, epochs=3)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for point in (*POINTS, None):
        done = subprocess.run([sys.executable, str(DRIVER), *command], env={**env, "CHAOS_KILL_AT": point or ""},
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        if point:
            assert done.returncode == -signal.SIGKILL, (point, done.stderr[-3000:])
        else:
            assert done.returncode == 0, done.stderr[-3000:]
    rows = read_history(out / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    metrics = strict_json((out / "metrics.json").read_text())
    best = max(float(r["val_accuracy"]) for r in rows)
    first_best = next(int(r["epoch"]) for r in rows if float(r["val_accuracy"]) == best)
    assert read_checkpoint_record(out)["epoch"] == first_best and metrics["best_val_accuracy"] == best
    assert metrics["training_processes"] == 2 and metrics["seconds_per_epoch"] > 0  # epoch 1 in one process, 2-3 in another
    config = load_config(ScratchConfig, out / "config.yaml")
    split = splits_from_record(json.loads((out / "split.json").read_text()))
    model = keras.models.load_model(out / "model.keras", compile=False)
    logits = np.concatenate([keras.ops.convert_to_numpy(model(x, training=False))
                             for x, _ in make_dataset(split.val, config, training=False)])  # fmt: skip
    assert (logits.argmax(1) == np.array(split.val.labels)).mean() == pytest.approx(best)
    assert not (out / "backup").exists() and not (out / ".lock").exists()
