"""A run folder belongs to one process at a time, and a run stopped at any point can be run again."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from inat_keras.cli import main
from inat_keras.config import ScratchConfig, build_config
from inat_keras.errors import ConfigError, DataError
from inat_keras.inference import evaluation
from inat_keras.locks import LOCK, folder_lock
from inat_keras.sweeps.launch import run_sweep
from inat_keras.outputs import tracking
from inat_keras.training import loop
from inat_keras.training.kinds import KINDS
from inat_keras.outputs.run_folder import read_history

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config_for(tiny_cnn_options):
    """config_for(folder, out, **changes): the tiny CNN's run on `folder` into `out`."""

    def make(folder, out, **extra) -> ScratchConfig:
        return build_config(ScratchConfig, {**tiny_cnn_options, "data_dir": str(folder), "output_dir": str(out), **extra})

    return make


# `python -m inat_keras` itself, held at the start of its second epoch until the test releases it: the first
# process is surely still training, and holds the lock, while the second one tries the folder.
HELD_AT_EPOCH_2 = """
import os, runpy, sys, time
from inat_keras.perf.cpu_tuning import restart_with_malloc_tunables
restart_with_malloc_tunables()  # as `python -m inat_keras` starts (then it finds nothing to restart for)
from inat_keras.training import callbacks
release, begin = sys.argv.pop(1), callbacks.EpochTimer.on_epoch_begin
def held(self, epoch, logs=None):
    deadline = time.time() + 300
    while epoch == 1 and not os.path.exists(release) and time.time() < deadline:
        time.sleep(0.1)
    begin(self, epoch, logs)
callbacks.EpochTimer.on_epoch_begin = held
runpy.run_module("inat_keras", run_name="__main__", alter_sys=True)
"""
# The second `python -m inat_keras`, started at the same time: it restarts and imports the frameworks as the CLI
# would (the slow part, alongside the first's), then waits for the first's epoch 1 row before the CLI runs.
AFTER_EPOCH_1 = r"""
import os, runpy, sys, time
from inat_keras.perf.cpu_tuning import restart_with_malloc_tunables
restart_with_malloc_tunables()
import inat_keras.training.kinds, inat_keras.training.loop
history, deadline = sys.argv.pop(1), time.time() + 120
while not (os.path.exists(history) and open(history).read().count("\n") >= 2) and time.time() < deadline:
    time.sleep(0.1)
runpy.run_module("inat_keras", run_name="__main__", alter_sys=True)
"""


@pytest.mark.backend_independent
@pytest.mark.large
def test_two_processes_on_one_folder_one_trains_the_other_is_refused(image_folder, tmp_path, tiny_cnn_flags):
    out, release = tmp_path / "run", tmp_path / "release"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    arguments = ["scratch", "--data-dir", str(image_folder), "--output-dir", str(out),
                 *tiny_cnn_flags(batch_size=2, epochs=3, learning_rate=None)]  # after `python -m inat_keras`
    first = subprocess.Popen([sys.executable, "-c", HELD_AT_EPOCH_2, str(release), *arguments], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        second = subprocess.run([sys.executable, "-c", AFTER_EPOCH_1, str(out / "history.csv"), *arguments], env=env,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert first.poll() is None, first.communicate()[1][-3000:]  # the first one is still training
        assert [int(r["epoch"]) for r in read_history(out / "history.csv")] == [1]
    finally:
        release.touch()
    first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    error = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"is in use by another run (process {first.pid} on {socket.gethostname()}" in error[0]
    rows = read_history(out / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert (out / "history.csv").read_text().count("epoch,") == 1  # one header
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 3 and not (out / LOCK).exists()


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_stale_lock_is_taken_over_and_a_foreign_one_refused(image_folder, tmp_path, caplog, config_for):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "since": "earlier"}))
    run_dir, metrics = KINDS["scratch"].train(config_for(image_folder, out, epochs=1))
    assert metrics["epochs_run"] == 1 and "which no longer runs" in caplog.text
    other = tmp_path / "other"
    other.mkdir()
    (other / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "now"}))
    with pytest.raises(ConfigError, match="in use by another run .process 1 on elsewhere"):
        KINDS["scratch"].train(config_for(image_folder, other, epochs=1))
    assert not (other / "split.json").exists()


def test_a_sweep_folder_is_locked_too(image_folder, tmp_path, make_sweep_file):
    sweep = make_sweep_file(tmp_path, {"dense_units": {"values": [8, 16]}}, constants={}, method="random")
    with folder_lock(tmp_path / "out", "sweep"):
        with pytest.raises(ConfigError, match="in use by another sweep"):
            run_sweep(sweep, 1, {"data_dir": str(image_folder)}, tmp_path / "out")


def test_a_run_killed_before_its_first_epoch_ended_runs_again(image_folder, tmp_path, config_for, interrupt):
    out = tmp_path / "run"
    config = config_for(image_folder, out, epochs=2)
    interrupted = dataclasses.replace(KINDS["scratch"], callbacks=lambda model: [interrupt(at_epoch=0)])
    with pytest.raises(KeyboardInterrupt):
        interrupted.train(config)
    assert (out / "split.json").exists() and (out / "config.yaml").exists() and not (out / "backup").exists()
    run_dir, metrics = KINDS["scratch"].train(config)
    assert metrics["epochs_run"] == 2 and [int(r["epoch"]) for r in read_history(out / "history.csv")] == [1, 2]


def test_a_wandb_error_or_missing_weights_leaves_a_folder_the_same_command_reuses(image_folder, tmp_path, monkeypatch, config_for):
    out = tmp_path / "run"
    config = config_for(image_folder, out, epochs=1)
    real_start = tracking.start_run
    monkeypatch.setattr(tracking, "start_run", lambda *a, **k: (_ for _ in ()).throw(ConfigError("W&B said no")))
    with pytest.raises(ConfigError, match="W&B said no"):
        KINDS["scratch"].train(config)
    monkeypatch.setattr(tracking, "start_run", real_start)
    failing = dataclasses.replace(KINDS["scratch"], build_model=lambda c, n: (_ for _ in ()).throw(ConfigError("no weights")))
    with pytest.raises(ConfigError, match="no weights"):
        failing.train(config)
    _, metrics = KINDS["scratch"].train(config)
    assert metrics["epochs_run"] == 1


def test_a_run_resumed_after_its_last_epoch_writes_valid_json_with_every_processes_timings(image_folder, tmp_path, monkeypatch,
                                                                                           config_for):
    out = tmp_path / "run"
    config = config_for(image_folder, out, epochs=2)
    real = loop.evaluate_model
    calls = []

    def killed_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_model", killed_once)
    with pytest.raises(KeyboardInterrupt):
        KINDS["scratch"].train(config)
    KINDS["scratch"].train(config)  # trains nothing: every epoch is done

    def refuse(constant):
        raise ValueError(constant)

    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=refuse)
    rows = read_history(out / "history.csv")
    assert metrics["seconds_per_epoch"] == pytest.approx(float(rows[1]["epoch_seconds"]))
    assert metrics["first_epoch_seconds"] == pytest.approx(float(rows[0]["epoch_seconds"]))
    assert metrics["training_processes"] == 1 and metrics["train_seconds"] > 0


@pytest.fixture
def interrupted_run(image_folder, tmp_path, config_for, interrupt):
    """A run of 2 epochs killed as its second began: split.json, config.yaml, one history row, model.keras and its
    backup of epoch 1. Returns (config, folder)."""
    out = tmp_path / "run"
    config = config_for(image_folder, out, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        dataclasses.replace(KINDS["scratch"], callbacks=lambda model: [interrupt(at_epoch=1)]).train(config)
    return config, out


def test_damaged_run_files_are_one_error_naming_the_file(interrupted_run):
    config, out = interrupted_run
    split, history = (out / "split.json").read_text(), (out / "history.csv").read_text()
    damages = {
        "split.json": [split[: len(split) // 2], '{"root": 5}', json.dumps({**json.loads(split), "train": "all"}),
                       json.dumps({**json.loads(split), "class_names": ["x"]}), "[]"],
        "history.csv": [history + "2,0.5,oops\n", history + "garbage\n", history.replace(",", ";")],
        "checkpoint.json": ['{"epo', '{"epoch": "one"}', "3"],
    }  # fmt: skip
    for name, contents in damages.items():
        whole = (out / name).read_text()
        for content in contents:
            (out / name).write_text(content)
            with pytest.raises(DataError) as caught:
                KINDS["scratch"].train(config)
            message = str(caught.value)
            assert "\n" not in message and message.startswith(f"{out / name} is damaged"), message
            assert "--output-dir" in message or "delete it and resume" in message
        (out / name).write_text(whole)
    (out / "checkpoint.json").unlink()  # what the message about it says to do: the run resumes
    _, metrics = KINDS["scratch"].train(config)
    assert metrics["epochs_run"] == 2 and [int(r["epoch"]) for r in read_history(out / "history.csv")] == [1, 2]


def test_a_killed_writer_leaves_no_temporary_file_that_blocks_the_folder(image_folder, tmp_path, config_for):
    out = tmp_path / "run"
    out.mkdir()
    abandoned = out / f".split.json.{dead_pid()}.tmp"  # killed while writing the first file of the run
    abandoned.write_text('{"root": "/da')
    _, metrics = KINDS["scratch"].train(config_for(image_folder, out, epochs=1))
    assert metrics["epochs_run"] == 1 and not abandoned.exists()


def test_evaluate_publishes_its_folder_whole_and_a_killed_one_runs_again(tiny_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "evaluation"
    argv = ["evaluate", "--checkpoint", str(tiny_run.run_dir / "model.keras"), "--output-dir", str(out)]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "plot_confusion", killed)  # predictions.csv is written by then
    assert main(argv) == 130
    assert not out.exists() and not list(tmp_path.iterdir())
    monkeypatch.undo()
    abandoned = tmp_path / f"evaluation.partial-{dead_pid()}"  # what a SIGKILL leaves
    (abandoned / "wandb").mkdir(parents=True)
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation"]
    assert {"metrics.json", "predictions.csv", "confusion_matrix.png"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "metrics.json").read_text())["test_images"] == tiny_run.metrics["test_images"]


def test_a_folder_saved_before_an_option_existed_resumes_when_the_option_is_at_its_default(tmp_path):
    """A new option must not make every older run and sweep folder refuse to resume."""
    import yaml

    from inat_keras.config import changed_fields, save_config
    from inat_keras.outputs.run_folder import CONFIG, changed_options

    config = build_config(ScratchConfig, {"demo": True, "output_dir": str(tmp_path)})
    save_config(config, tmp_path / CONFIG)
    older = yaml.safe_load((tmp_path / CONFIG).read_text())
    del older["tensorboard"], older["clip_norm"], older["pictures"]  # options added after this folder was written
    (tmp_path / CONFIG).write_text(yaml.safe_dump(older))
    assert changed_options(tmp_path, config) == []
    assert changed_options(tmp_path, dataclasses.replace(config, pictures=False)) == []  # what it draws, not computes
    assert changed_options(tmp_path, dataclasses.replace(config, clip_norm=1.0)) == ["clip_norm"]
    assert changed_options(tmp_path, dataclasses.replace(config, learning_rate=0.5)) == ["learning_rate"]
    assert changed_fields(ScratchConfig, {"unknown": 1}, {}) == ["unknown"]  # a key no option knows still differs
