"""Saved models: a truncated checkpoint, files predict cannot read, and a full disk."""

import errno
import os

import keras

from inat_keras.cli import main
from inat_keras.outputs.run_folder import read_checkpoint_record, read_history


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
    assert code == 0  # unreadable files are warnings: the readable ones are still predicted
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
