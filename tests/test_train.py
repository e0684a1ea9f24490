import dataclasses
import json

import keras
import numpy as np
import pytest

from inat_keras.outputs.run_folder import read_history
from inat_keras.cli import main
from inat_keras.config import ConfigError, ScratchConfig, build_config
from inat_keras.serving.predict import predict_images
from inat_keras.config import EvaluateOptions
from inat_keras.inference.evaluation import PICTURES
from inat_keras.serving.evaluate import evaluate_checkpoint
from inat_keras.training.kinds import KINDS


@pytest.fixture
def config_for(tiny_cnn_options):
    """config_for(folder, out, **changes): the tiny CNN's run on `folder` into `out`."""

    def make(folder, out, **extra):
        return build_config(ScratchConfig, {**tiny_cnn_options, "data_dir": str(folder), "output_dir": str(out), **extra})

    return make


def train(config, extra_callbacks=None):
    kind = KINDS["scratch"]
    if extra_callbacks:
        kind = dataclasses.replace(kind, callbacks=extra_callbacks)
    return kind.train(config)


def test_a_run_writes_every_output(image_folder, tmp_path, config_for):
    run_dir, metrics = train(config_for(image_folder, tmp_path / "run", pictures=True))
    for name in ("config.yaml", "split.json", "model.keras", "history.csv", "metrics.json", "predictions.csv",
                 "curves.png", *(f"{picture}.png" for picture in PICTURES)):  # fmt: skip
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ("test_accuracy", "test_loss", "best_val_accuracy", "params", "train_images_per_second",
                "seconds_per_epoch", "backend", "per_class_test_accuracy"):
        assert key in saved, key
    assert saved["backend"] == keras.backend.backend()
    assert set(saved["per_class_test_accuracy"]) == {"cat", "dog", "owl"}
    assert saved["params"] == keras.models.load_model(run_dir / "model.keras").count_params()
    history = read_history(run_dir / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert saved["best_val_accuracy"] == pytest.approx(max(float(r["val_accuracy"]) for r in history))
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 30 and len(split["test"]) == 12
    assert not (run_dir / "backup").exists()


def test_a_run_without_pictures_draws_none_and_reports_the_same(tiny_run, tmp_path, config_for):
    """tiny_run: the same options, data and seed with pictures."""
    run_dir, metrics = train(config_for(tiny_run.data, tmp_path / "run"))
    assert not list(run_dir.glob("*.png")) and list(tiny_run.run_dir.glob("*.png"))
    for key in ("test_accuracy", "test_loss", "best_val_accuracy", "per_class_test_accuracy", "expected_calibration_error"):
        assert metrics[key] == tiny_run.metrics[key], key
    assert (run_dir / "predictions.csv").read_text() == (tiny_run.run_dir / "predictions.csv").read_text()


def test_a_finished_run_is_never_overwritten(image_folder, tmp_path, config_for):
    config = config_for(image_folder, tmp_path / "run", epochs=1)
    train(config)
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    with pytest.raises(ConfigError, match="finished run"):
        train(config)
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="no interrupted run"):
        train(config_for(image_folder, tmp_path / "other"))


class Seen(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_an_interrupted_run_resumes_where_it_stopped(image_folder, tmp_path, config_for, interrupt):
    config = config_for(image_folder, tmp_path / "run", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train(config, extra_callbacks=lambda model: [interrupt(2)])
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert [int(r["epoch"]) for r in read_history(tmp_path / "run" / "history.csv")] == [1, 2]
    backup_weights = keras.models.load_model(tmp_path / "run" / "model.keras").get_weights()

    changed = config_for(image_folder, tmp_path / "run", epochs=3, learning_rate=0.5)
    with pytest.raises(ConfigError, match="learning_rate"):
        train(changed)

    seen = Seen()
    run_dir, metrics = train(config, extra_callbacks=lambda model: [seen])
    assert seen.epochs == [2]
    assert [int(r["epoch"]) for r in read_history(run_dir / "history.csv")] == [1, 2, 3]
    assert metrics["epochs_run"] == 3
    assert len(backup_weights) == len(keras.models.load_model(run_dir / "model.keras").get_weights())


def test_evaluate_and_predict_a_checkpoint(tiny_run, tmp_path, capsys):
    run_dir, data, metrics = tiny_run  # shared with other modules: written once per session
    out, again = evaluate_checkpoint(EvaluateOptions(checkpoint=str(run_dir / "model.keras"), output_dir=str(tmp_path / "eval")))
    assert again["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert again["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    assert (out / "confusion_matrix.png").is_file() and (out / "predictions_grid.png").is_file()
    image = str(data / "val" / "owl" / "owl_000.jpg")
    [(path, ranked)], unreadable = predict_images(str(run_dir / "model.keras"), [image], None, False)
    assert unreadable == []
    assert path == image and len(ranked) == 3
    assert {name for name, _ in ranked} == {"cat", "dog", "owl"}
    assert sum(p for _, p in ranked) == pytest.approx(1.0, abs=1e-5)
    assert ranked[0][1] >= ranked[1][1] >= ranked[2][1]

    assert main(["predict", "--checkpoint", str(run_dir / "model.keras"), image]) == 0
    assert "owl" in capsys.readouterr().out
    assert main(["predict", "--checkpoint", str(tmp_path / "none.keras"), image]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_cli_refuses_bad_input_clearly(image_folder, tmp_path, capsys):
    assert main(["scratch", "--data-dir", str(tmp_path / "missing"), "--wandb", "disabled"]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main(["scratch", "--data-dir", str(image_folder), "--image-size", "50", "--wandb", "disabled",
                 "--output-dir", str(tmp_path / "r")]) == 2
    assert "smallest image size that works is 94" in capsys.readouterr().err


def test_the_model_learns_the_tiny_dataset(image_folder, tmp_path, config_for):
    config = config_for(image_folder, tmp_path / "run", epochs=12, batch_size=4, augment=False, filters="8,8,8,8,8")
    _, metrics = train(config)
    assert metrics["test_accuracy"] >= 0.9
    assert np.isfinite(metrics["test_loss"])


def test_val_fraction_zero_trains_on_all_of_train_and_keeps_the_last_epoch(image_folder, tmp_path, config_for):
    run_dir, metrics = train(config_for(image_folder, tmp_path / "run", val_fraction=0.0, batch_size=10))
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["train"]) == 30 and split["val"] == []
    assert metrics["best_val_accuracy"] is None and metrics["train_images"] == 30
    assert (run_dir / "model.keras").is_file() and 0.0 <= metrics["test_accuracy"] <= 1.0
    with pytest.raises(ConfigError, match="needs val_fraction > 0"):
        config_for(image_folder, tmp_path / "other", val_fraction=0.0, early_stopping=2)


@pytest.mark.parametrize("precision, compute", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")])
def test_mixed_precision_computes_in_16_bits_with_float32_weights_and_logits(image_folder, tmp_path, config_for, precision, compute):
    run_dir, metrics = train(config_for(image_folder, tmp_path / "run", epochs=1, precision=precision))
    assert metrics["precision"] == precision and np.isfinite(metrics["test_loss"])
    assert keras.config.dtype_policy().name == "float32", "the global policy is put back"
    model = keras.models.load_model(run_dir / "model.keras")
    conv = model.get_layer("block1_conv")
    assert (conv.compute_dtype, conv.kernel.dtype) == (compute, "float32")
    logits = model(np.zeros((1, 32, 32, 3), "float32"))
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
