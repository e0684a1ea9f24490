"""Data parallelism: the same training on two devices as on one, and only the first process writes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from inat_keras.models import layers  # noqa: F401  (registers the CNN layers for loading)
from inat_keras.outputs import run_folder
from inat_keras.training import distribute, loop
from inat_keras.outputs.run_folder import read_history
from inat_keras.config import ConfigError, ScratchConfig, build_config
from inat_keras.training.distribute import Placement, place
from inat_keras.training.kinds import KINDS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "distributed_train.py"


def run_script(*configs: dict, env: dict | None = None) -> list[dict]:
    """Train each config in one fresh process that sees two CPU devices."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "TEST_CPU_DEVICES": "2", **(env or {})}
    environ["XLA_FLAGS"] = (environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    done = subprocess.run([sys.executable, str(SCRIPT), *map(json.dumps, configs)], env=environ,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]


@pytest.fixture(scope="module")
def two_device_runs(tmp_path_factory, make_image_folder, make_tiny_cnn_options) -> dict:
    """Every run the tests below check, trained in one fresh process that sees two CPU devices: {key: result}.
    One process, not one per test: each start imports TensorFlow and Keras again (about 15 s on 2 cores)."""
    root = tmp_path_factory.mktemp("two-devices")
    # 18 training images: three global batches of 6 (3 per device); 9 validation images: the last batch
    # is padded on two devices. No augmentation or dropout, whose random streams differ per device.
    data = make_image_folder(root / "data", {"train": 9, "val": 3})
    tiny = make_tiny_cnn_options()
    runs = {}
    base = {**tiny, "data_dir": str(data), "augment": False, "val_fraction": 1 / 3, "epochs": 2}
    for norm in (False, True):  # batch norm: statistics of the global batch on both devices
        runs["parallel", norm, 1] = {**base, "batch_norm": norm, "batch_size": 6, "distribute": "none"}
        runs["parallel", norm, 2] = {**base, "batch_norm": norm, "batch_size": 3, "distribute": "data-parallel"}
    augmented = {**tiny, "data_dir": str(data), "val_fraction": 1 / 3, "epochs": 2, "rotation": 0.1, "color_jitter": 0.2,
                 "augment_on": "device"}  # fmt: skip
    if keras.backend.backend() == "jax":  # the one-device run to compare with (below); tf.distribute draws per replica
        runs["augment", 0] = {**augmented, "batch_size": 6, "distribute": "none"}
    runs["augment", 1] = {**augmented, "batch_size": 3, "distribute": "data-parallel"}
    runs["augment", 2] = {**augmented, "batch_size": 3, "distribute": "data-parallel", "precision": "mixed_bfloat16"}
    small = make_image_folder(root / "small", {"train": 4, "val": 2})
    runs["gradual"] = {"kind": "finetune", "data_dir": str(small), "image_size": 32, "backbone": "efficientnet_lite0",
                       "weights": "none", "strategy": "gradual", "epochs": 2, "unfreeze_every": 1, "unfreeze_step": 1,
                       "batch_size": 2, "distribute": "data-parallel", "augment": False, "wandb": "disabled",
                       "pictures": False}  # fmt: skip
    for number, values in enumerate(runs.values()):
        values["output_dir"] = str(root / f"run{number}")
    return dict(zip(runs, run_script(*runs.values()), strict=True))


@pytest.mark.large
def test_data_parallel_on_two_devices_matches_one_device(two_device_runs):
    for norm in (False, True):
        single, parallel = two_device_runs["parallel", norm, 1], two_device_runs["parallel", norm, 2]
        assert (single["metrics"]["devices"], parallel["metrics"]["devices"]) == (1, 2)
        assert single["metrics"]["global_batch_size"] == parallel["metrics"]["global_batch_size"] == 6
        rows = [read_history(Path(r["run_dir"]) / "history.csv") for r in (single, parallel)]
        assert len(rows[0]) == len(rows[1]) == 2
        # Without batch norm the steps are the same sums in another order. With it, TensorFlow's
        # synchronised statistics use E[x^2] - E[x]^2, which loses digits on these unscaled pixels; the
        # moving variances, hence the validation loss, drift most (0.5% here).
        for a, b in zip(*rows):
            # (that drift can flip a borderline validation image, so with batch norm val_accuracy is not compared)
            for key in ("loss", "accuracy", "val_loss") + (() if norm else ("val_accuracy",)):
                tolerance = (2e-2 if key == "val_loss" else 1e-3) if norm else 1e-5
                assert float(b[key]) == pytest.approx(float(a[key]), rel=tolerance, abs=1e-6), (norm, key, a, b)
        assert parallel["metrics"]["test_accuracy"] == pytest.approx(single["metrics"]["test_accuracy"])
    models = [keras.models.load_model(Path(two_device_runs["parallel", False, n]["run_dir"]) / "model.keras") for n in (1, 2)]
    for w1, w2 in zip(*(m.get_weights() for m in models)):
        np.testing.assert_allclose(w2, w1, rtol=1e-4, atol=1e-6)


@pytest.mark.large
def test_gradual_unfreezing_recompiles_inside_the_distribution(two_device_runs):
    result = two_device_runs["gradual"]
    metrics = result["metrics"]
    assert metrics["devices"] == 2 and metrics["global_batch_size"] == 4
    schedule = metrics["unfreezing_schedule"]
    assert [stage["epochs"] for stage in schedule] == [[1], [2]]
    assert schedule[0]["trainable_groups"] == ["head"] and "block7a" in schedule[1]["trainable_groups"]
    rows = read_history(Path(result["run_dir"]) / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(np.isfinite(float(r["loss"])) for r in rows)
    assert [int(float(r["trainable_params"])) for r in rows] == [s["trainable_params"] for s in schedule]


@pytest.mark.large
def test_device_augmentation_on_two_devices_and_in_mixed_precision(two_device_runs):
    """Under JAX one compiled step augments the whole global batch: two devices draw what one does. Under
    tf.distribute each replica draws its own transforms; both must train, in float32 and bfloat16."""
    results = [two_device_runs[key] for key in (("augment", 0), ("augment", 1), ("augment", 2)) if key in two_device_runs]
    rows = [read_history(Path(r["run_dir"]) / "history.csv") for r in results]
    assert [r["metrics"]["devices"] for r in results] == ([1] if keras.backend.backend() == "jax" else []) + [2, 2]
    assert all(np.isfinite(float(row["loss"])) for history in rows for row in history)
    for result in results:
        saved = keras.models.load_model(Path(result["run_dir"]) / "model.keras")
        assert int(keras.ops.convert_to_numpy(saved.get_layer("augment").steps)) in (3, 6)  # 3 steps an epoch
    if keras.backend.backend() == "jax":
        for a, b in zip(rows[0], rows[1]):
            assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-5)


def test_a_process_that_is_not_the_first_writes_nothing(image_folder, tmp_path, monkeypatch, tiny_cnn_options):
    monkeypatch.setattr(loop, "place", lambda mode: Placement("data-parallel", 1, process=1, processes=2))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    modes = []
    real_start = loop.tracking.start_run
    monkeypatch.setattr(loop.tracking, "start_run", lambda *a, **k: modes.append(a[2]) or real_start(*a, **k))
    out = tmp_path / "run"
    config = build_config(ScratchConfig, {**tiny_cnn_options, "data_dir": str(image_folder),
                                          "output_dir": str(out), "wandb": "offline", "epochs": 1})  # fmt: skip
    run_dir, metrics = KINDS["scratch"].train(config)
    assert (run_dir, metrics) == (out, {})
    assert not out.exists()
    assert modes == ["disabled"]
    assert not list(tmp_path.glob("inat-keras-worker-*")), "the private folder is removed"


def test_a_later_process_resumes_from_the_shared_folder(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    shared = tmp_path / "run"
    (shared / run_folder.BACKUP).mkdir(parents=True)
    (shared / run_folder.BACKUP / "training_metadata.json").write_text('{"epoch": 3}')
    (shared / run_folder.SPLIT).write_text("{}")
    private, resuming = run_folder.worker_run_dir(str(shared))
    assert resuming and private != shared
    assert run_folder.resumed_epoch(private) == 3 and (private / run_folder.SPLIT).exists()
    fresh, resuming = run_folder.worker_run_dir(str(tmp_path / "new"))
    assert not resuming and not any(fresh.iterdir())


def test_placement_on_one_device_and_refusals(monkeypatch):
    assert place("none") == distribute.SINGLE
    assert Placement("data-parallel", 4).global_batch(32) == 128
    if keras.backend.backend() == "tensorflow":
        two_machines = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}
        monkeypatch.setenv("TF_CONFIG", json.dumps(two_machines))
        for mode in ("auto", "data-parallel"):
            with pytest.raises(ConfigError, match=r"TF_CONFIG names 2 tasks.*keras-team/keras#20585.*KERAS_BACKEND=jax"):
                distribute._place_tensorflow(mode)
    else:
        monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
        with pytest.raises(ConfigError, match="KERAS_DISTRIBUTION.*--distribute is none"):
            distribute._place_jax("none")


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="several processes train under JAX only (see training/distribute.py)")
@pytest.mark.large
def test_two_processes_train_one_model_and_only_the_first_writes(tmp_path, make_image_folder, tiny_cnn_options):
    data = make_image_folder(tmp_path / "data", {"train": 9, "val": 3})
    out = tmp_path / "run"
    values = {**tiny_cnn_options, "data_dir": str(data), "augment": False, "val_fraction": 1 / 3,
              "batch_size": 3, "output_dir": str(out)}  # fmt: skip
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    processes = []
    for index in range(2):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{port}",
               "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": str(index)}  # fmt: skip
        processes.append(subprocess.Popen([sys.executable, str(SCRIPT), json.dumps(values)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    results = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=300)
        finally:
            for other in processes:
                other.kill() if process.returncode is None else None
        assert process.returncode == 0, stderr[-4000:]
        results += [json.loads(line[len("RESULT "):]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    first, second = (r["metrics"] for r in results)
    assert (first["devices"], first["processes"], first["global_batch_size"]) == (2, 2, 6)
    assert second == {}, "the second process reports nothing"
    written = sorted(p.name for p in out.iterdir())
    assert "metrics.json" in written and "model.keras" in written
    assert [int(r["epoch"]) for r in read_history(out / "history.csv")] == [1, 2], "one writer: one row per epoch"


def test_options_are_checked_by_name():
    for name, value in (("distribute", "mirrored"), ("precision", "float16"), ("jit_compile", "yes")):
        with pytest.raises(ConfigError, match=f"{name} must be one of"):
            build_config(ScratchConfig, {name: value})
    with pytest.raises(ConfigError, match="steps_per_execution must be at least 1"):
        build_config(ScratchConfig, {"steps_per_execution": 0})
