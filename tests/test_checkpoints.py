"""Saved models: a truncated checkpoint, files predict cannot read, and a full disk."""

import dataclasses
import errno
import os
import shutil

import keras
import numpy as np
import pytest
from matplotlib.figure import Figure

from inat_keras.cli import main
from inat_keras.config import ScratchConfig, build_config
from inat_keras.errors import DataError
from inat_keras.files import save_figure
from inat_keras.outputs.run_folder import read_checkpoint_record, read_history, write_history
from inat_keras.training import loop
from inat_keras.training.kinds import KINDS

pytestmark = pytest.mark.backend_independent  # files on disk: damage, full disks, backups


def test_a_truncated_checkpoint_is_named_as_such(tiny_run, tmp_path, capsys):
    run_dir = tiny_run.run_dir
    broken = tmp_path / "model.keras"
    broken.write_bytes((run_dir / "model.keras").read_bytes()[:5000])
    assert main(["evaluate", "--checkpoint", str(broken), "--demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a readable Keras model" in err[0] and "truncated or corrupt" in err[0]
    assert "not found" not in err[0]


def test_predict_reports_unreadable_files_and_goes_on(tiny_run, tmp_path, capsys):
    run_dir, data, _ = tiny_run
    good = sorted((data / "val" / "owl").iterdir())[0]
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: 200] if good.suffix == ".jpg" else b"\xff\xd8\xff")
    code = main(["predict", "--checkpoint", str(run_dir / "model.keras"), str(text), str(good), str(cut)])
    captured = capsys.readouterr()
    assert code == 1  # the readable files are still predicted; the exit code says that some were not
    assert str(good) in captured.out and "%" in captured.out
    assert str(text) not in captured.out and str(cut) not in captured.out
    errors = captured.err.strip().splitlines()
    assert errors[0].startswith(f"warning: cannot read {text}:") and errors[1].startswith(f"warning: cannot read {cut}:")
    assert "2 of 3 file(s) could not be read" in errors[2]


def test_a_full_disk_keeps_the_last_good_checkpoint_and_backup(image_folder, tmp_path, monkeypatch, capsys, tiny_cnn_flags):
    out = tmp_path / "run"
    argv = ["scratch", "--data-dir", str(image_folder), "--output-dir", str(out), *tiny_cnn_flags(epochs=3)]
    save_weights, written = keras.Model.save_weights, []

    def disk_full_at_the_third_backup(self, filepath, *args, **kwargs):
        written.append(filepath)
        if len(written) == 3:
            with open(filepath, "wb") as f:
                f.write(b"\x89HDF")  # what fitted before the disk filled up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filepath)
        return save_weights(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", disk_full_at_the_third_backup)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "No space left on device" in err[-1]
    model = keras.models.load_model(out / "model.keras", compile=False)  # the last good checkpoint is whole
    assert model.output_shape[-1] == 3 and read_checkpoint_record(out)["epoch"] in (1, 2)
    monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    assert main(argv) == 0  # room again: the same command resumes from the last whole backup
    assert [int(r["epoch"]) for r in read_history(out / "history.csv")] == [1, 2, 3]


def killed_at_the_test(image_folder, out, tiny_cnn_options, monkeypatch, epochs):
    """A run whose every epoch is done, killed during its final test: model.keras, checkpoint.json and the backup
    of the last epoch stay. Returns its config."""
    config = build_config(ScratchConfig, {**tiny_cnn_options, "data_dir": str(image_folder), "output_dir": str(out),
                                          "epochs": epochs})  # fmt: skip
    with monkeypatch.context() as patch:
        patch.setattr(loop, "evaluate_model", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            KINDS["scratch"].train(config)
    return config


def weights_of(path):
    return [keras.ops.convert_to_numpy(w) for w in keras.models.load_model(path, compile=False).weights]


def test_a_damaged_checkpoint_is_written_again_from_the_backup_of_its_epoch(image_folder, tmp_path, monkeypatch,
                                                                           tiny_cnn_options, caplog):  # fmt: skip
    out = tmp_path / "run"
    config = killed_at_the_test(image_folder, out, tiny_cnn_options, monkeypatch, epochs=1)
    shutil.copy(out / "model.keras", tmp_path / "whole.keras")
    (out / "model.keras").write_bytes((tmp_path / "whole.keras").read_bytes()[:3000])  # a disk fault
    _, metrics = KINDS["scratch"].train(config)
    assert "model.keras was damaged" in caplog.text and "test_accuracy" in metrics
    assert read_checkpoint_record(out)["epoch"] == 1
    for rebuilt, whole in zip(weights_of(out / "model.keras"), weights_of(tmp_path / "whole.keras")):
        np.testing.assert_array_equal(rebuilt, whole)


def test_a_damaged_checkpoint_of_an_epoch_the_backup_lost_says_what_was_lost(image_folder, tmp_path, monkeypatch,
                                                                             tiny_cnn_options, caplog):  # fmt: skip
    out = tmp_path / "run"
    config = killed_at_the_test(image_folder, out, tiny_cnn_options, monkeypatch, epochs=2)
    rows = read_history(out / "history.csv")
    rows[0]["val_accuracy"] = "1.0"  # epoch 1 the best: its checkpoint, while the backup holds epoch 2
    write_history(out / "history.csv", rows)
    (out / "checkpoint.json").write_text('{"epoch": 1}')
    (out / "model.keras").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(DataError) as caught:
        KINDS["scratch"].train(config)
    assert str(caught.value) == (
        f"{out / 'model.keras'} of epoch 1 is damaged (not a whole .keras archive: File is not a zip file) and the "
        "backup holds only epoch 2: the best checkpoint is lost; delete model.keras and checkpoint.json to keep "
        "training from the backup (its epoch 2 becomes the checkpoint), or rerun in a new --output-dir"
    )
    (out / "model.keras").unlink()
    (out / "checkpoint.json").unlink()
    _, metrics = KINDS["scratch"].train(config)
    assert "epoch 1, the best, is lost; the checkpoint is now epoch 2" in caplog.text
    assert read_checkpoint_record(out)["epoch"] == 2 and "test_accuracy" in metrics


def test_a_damaged_backup_falls_back_to_the_one_before_or_is_one_error(image_folder, tmp_path, tiny_cnn_options, interrupt,
                                                                      caplog):  # fmt: skip
    out = tmp_path / "run"
    config = build_config(ScratchConfig, {**tiny_cnn_options, "data_dir": str(image_folder), "output_dir": str(out),
                                          "epochs": 3})  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        dataclasses.replace(KINDS["scratch"], callbacks=lambda model: [interrupt(at_epoch=2)]).train(config)
    backup = out / "backup"
    assert {"latest.weights.h5", "latest.weights.h5.bkp", "training_metadata.json.bkp"} < {p.name for p in backup.iterdir()}
    lost = tmp_path / "lost"
    shutil.copytree(out, lost)
    for name in ("latest.weights.h5", "latest.weights.h5.bkp"):
        (lost / "backup" / name).write_bytes(b"\x89HDF\r\n\x1a\n")  # both cut short
    with pytest.raises(DataError) as caught:
        KINDS["scratch"].train(dataclasses.replace(config, output_dir=str(lost)))
    message = str(caught.value)
    assert message.startswith(f"{lost / 'backup' / 'latest.weights.h5'} is damaged (") and "\n" not in message
    assert "the training state is lost; rerun in a new --output-dir" in message

    (backup / "training_metadata.json").write_text('{"epoch": 2, "ba')  # killed while Keras wrote it
    _, metrics = KINDS["scratch"].train(config)
    assert "resuming from the backup before it" in caplog.text
    assert metrics["epochs_run"] == 3 and [int(r["epoch"]) for r in read_history(out / "history.csv")] == [1, 2, 3]


def test_a_full_disk_while_a_picture_is_saved_keeps_the_old_picture(tmp_path, monkeypatch):
    picture = tmp_path / "confusion_matrix.png"
    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([0, 1], [1, 0])
    save_figure(figure, picture, dpi=50)
    whole = picture.read_bytes()
    assert whole.startswith(b"\x89PNG")
    savefig = Figure.savefig

    def disk_full(self, target, **kwargs):
        target.write(b"\x89PNG\r\n")  # what fitted before the disk filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", disk_full)
    with pytest.raises(OSError) as caught:
        save_figure(figure, picture, dpi=50)
    assert caught.value.filename == str(picture) and caught.value.errno == errno.ENOSPC
    assert picture.read_bytes() == whole and [p.name for p in tmp_path.iterdir()] == [picture.name]
    monkeypatch.setattr(Figure, "savefig", savefig)
