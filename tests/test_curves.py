"""Training curves (analysis.curves): drawn from history.csv rows at the end of every run, a resumed one from its
whole history, with the stages of gradual unfreezing marked; and the optional TensorBoard logs of a run."""

import dataclasses
import importlib.util

import keras
import pytest

from inat_keras.analysis import curves
from inat_keras.analysis.curves import CURVES, plot_curves, plot_overlay, stage_marks
from inat_keras.config import ConfigError, ScratchConfig, build_config
from inat_keras.outputs.run_folder import read_history
from inat_keras.training import loop
from inat_keras.training.kinds import KINDS

# metrics.json's unfreezing_schedule as the demo's gradual run writes it: two units a step after the first
SCHEDULE = [
    {"label": "head", "epochs": [1, 2], "trainable_groups": ["head"]},
    {"label": "last_1", "epochs": [3, 4], "trainable_groups": ["top", "head"]},
    {"label": "last_3", "epochs": [5, 6], "trainable_groups": ["stage5", "stage6", "top", "head"]},
]


def rows(epochs: int, validation: bool = True) -> list[dict]:
    """history.csv rows as csv.DictReader gives them (text; empty where a run wrote nothing)."""
    return [{"epoch": str(e), "loss": str(2 / e), "accuracy": str(0.1 * e), "learning_rate": str(10.0 ** -e),
             "val_loss": str(3 / e) if validation else "", "val_accuracy": str(0.05 * e) if validation else ""}
            for e in range(1, epochs + 1)]  # fmt: skip


def test_stage_marks_name_what_each_stage_unfroze():
    assert stage_marks(SCHEDULE) == [(1, "trains head"), (3, "+ top conv"), (5, "+ stage 6, stage 5")]  # top down
    everything = {"label": "full", "epochs": [1, 2], "trainable_groups": ["stem", "stage1", "stage2", "top", "head"]}
    assert stage_marks([everything]) == [(1, "trains all units")]  # too many units to spell out
    assert stage_marks(None) == [] and stage_marks([]) == []  # a one-stage scratch run: nothing to mark


def test_curves_show_loss_accuracy_and_rate_per_epoch_with_the_stages_marked(tmp_path):
    fig = plot_curves(rows(6), SCHEDULE, tmp_path / CURVES, "run b-gradual")
    assert (tmp_path / CURVES).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loss, accuracy, rate = fig.axes
    training, validation = (line for line in loss.lines if line.get_label() in ("training", "validation"))
    assert list(training.get_xdata()) == [1, 2, 3, 4, 5, 6] and validation.get_ydata()[0] == pytest.approx(3.0)
    assert max(next(line for line in accuracy.lines if line.get_label() == "training").get_ydata()) == pytest.approx(60)
    assert rate.get_yscale() == "log"  # 1e-1 .. 1e-6: a straight line on a log axis
    for ax in fig.axes:  # a dotted line before the first epoch of each stage, labelled with what it unfroze
        boundaries = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"]
        assert boundaries == [0.5, 2.5, 4.5]
        assert [t.get_text() for t in ax.texts] == ["trains head", "+ top conv", "+ stage 6, stage 5"]


def test_curves_leave_out_what_a_run_did_not_measure(tmp_path):
    """A final run has no validation split: its columns are empty, and only the training lines are drawn."""
    fig = plot_curves(rows(3, validation=False), None, tmp_path / CURVES)
    assert [line.get_label() for line in fig.axes[0].lines] == ["training"]
    assert not [t for ax in fig.axes for t in ax.texts]
    assert fig.axes[2].get_yscale() == "log"


def test_the_overlay_draws_one_line_per_run(tmp_path):
    fig = plot_overlay({"full": rows(4), "head only": rows(2)}, tmp_path / "overlay.png")
    accuracy, loss = fig.axes
    assert [line.get_label() for line in accuracy.lines] == ["full", "head only"]
    assert [len(line.get_xdata()) for line in loss.lines] == [4, 2]
    assert len({line.get_linestyle() for line in accuracy.lines}) == 2  # told apart without colour too
    assert (tmp_path / "overlay.png").is_file()


@pytest.fixture
def scratch_config(image_folder, tmp_path, tiny_cnn_options):
    def make(**extra):
        values = {**tiny_cnn_options, "data_dir": str(image_folder), "output_dir": str(tmp_path / "run"), **extra}
        return build_config(ScratchConfig, values)

    return make


def test_a_resumed_run_draws_its_curves_from_the_whole_history(scratch_config, interrupt, monkeypatch):
    """The stages come from the kind's metrics (fine-tuning: its unfreezing_schedule), the rows from history.csv."""
    drawn = []

    def recording(history, schedule, path, caption=""):
        drawn.append(([int(r["epoch"]) for r in history], schedule, path, caption))
        return plot_curves(history, schedule, path, caption)

    monkeypatch.setattr(loop, "plot_curves", recording)
    schedule = [{"label": "head", "epochs": [1], "trainable_groups": ["head"]},
                {"label": "last_1", "epochs": [2], "trainable_groups": ["top", "head"]}]  # fmt: skip
    kind = dataclasses.replace(KINDS["scratch"], metrics=lambda model, stages: {"unfreezing_schedule": schedule})
    config = scratch_config(epochs=2, pictures=True)
    with pytest.raises(KeyboardInterrupt):
        dataclasses.replace(kind, callbacks=lambda model: [interrupt(1)]).train(config, final=False)
    run_dir = config.output_dir
    assert drawn == [] and [r["epoch"] for r in read_history(f"{run_dir}/history.csv")] == ["1"]
    kind.train(config, final=False)  # no test: a sweep trial's run, which draws its curves as any run does
    ((epochs, seen, path, caption),) = drawn
    assert epochs == [1, 2] and seen == schedule and str(path) == f"{run_dir}/{CURVES}" and path.is_file()
    assert caption.startswith("run run") and "train" in caption  # the run's folder and its images


class Board(keras.callbacks.Callback):
    """Stands in for keras.callbacks.TensorBoard (which needs the tensorboard package): what it was given."""

    made = []

    def __init__(self, log_dir, **options):
        super().__init__()
        self.log_dir, self.options, self.logged = log_dir, options, {}
        Board.made.append(self)

    def on_epoch_end(self, epoch, logs=None):
        self.logged[epoch] = dict(logs or {})


def test_tensorboard_logs_are_an_option_that_needs_its_package(scratch_config, monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    installed = {"tensorboard": False}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if installed[name] else None) if name in installed else find_spec(name, *a))  # fmt: skip
    monkeypatch.setattr(keras.callbacks, "TensorBoard", Board)
    with pytest.raises(ConfigError, match="tensorboard package, which is not installed: pip install tensorboard"):
        KINDS["scratch"].train(scratch_config(tensorboard=True), final=False)
    assert not (tmp_path / "run").exists() and Board.made == []  # refused before the run folder is made
    installed["tensorboard"] = True
    run_dir, _ = KINDS["scratch"].train(scratch_config(epochs=2, tensorboard=True), final=False)
    (board,) = Board.made
    assert board.log_dir == str(run_dir / "tensorboard") and board.options == {"write_graph": False}
    assert sorted(board.logged) == [0, 1] and {"loss", "learning_rate", "epoch_seconds"} <= set(board.logged[1])
    assert ScratchConfig().tensorboard is False  # off unless asked for


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="the tensorboard package is not installed (pip install tensorboard): --tensorboard needs it")  # fmt: skip
def test_tensorboard_logs_every_epoch(scratch_config):
    import tensorflow as tf

    run_dir, _ = KINDS["scratch"].train(scratch_config(epochs=2, tensorboard=True, pictures=True))
    tags = {}
    for events in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                tags.setdefault(f"{events.parent.name}/{value.tag}", set()).add(event.step)
    for tag in ("train/epoch_loss", "train/epoch_accuracy", "train/epoch_learning_rate", "validation/epoch_loss"):
        assert tags.get(tag) == {0, 1}, tags
    assert curves.CURVES in {p.name for p in run_dir.iterdir()}
