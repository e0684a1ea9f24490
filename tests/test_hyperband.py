"""Hyperband early termination in local sweeps, and W&B's own stop of an online trial."""

import csv
import json

import keras
import pytest
import wandb
import yaml

from inat_keras.config import ConfigError
from inat_keras.files import write_json
from inat_keras.sweeps import launch, local, online
from inat_keras.sweeps.hyperband import STOPPED_FILE, HyperbandStop, judge
from inat_keras.sweeps.report import from_folder, write_report
from inat_keras.sweeps.spec import load_plan
from inat_keras.training.kinds import KINDS
from inat_keras.outputs.run_folder import read_history, write_history

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent

RULE = {"type": "hyperband", "min_iter": 1, "eta": 3}  # judged once a trial has logged 2 epochs: the top third go on


@pytest.fixture
def constants(tiny_sweep_constants) -> dict:
    """The tiny CNN, three epochs a trial: a trial the rule stops ends before its last epoch."""
    return {**tiny_sweep_constants, "epochs": 3, "augment": False}


@pytest.fixture
def sweep_file(tmp_path, make_sweep_file, constants):
    """sweep_file(parameters, early_terminate=RULE): a grid over `parameters` in tmp_path/sweep.yaml."""

    def write(parameters, early_terminate=RULE):
        return make_sweep_file(tmp_path, parameters, constants, method="grid", early_terminate=early_terminate)

    return write


def test_trials_that_cannot_learn_are_stopped_and_the_sweep_goes_on(tmp_path, make_image_folder, sweep_file):
    data = make_image_folder(tmp_path / "data", {"train": 16, "val": 2})  # 48 images, 12 of them validation
    path = sweep_file({"learning_rate": {"values": [0.03, 1e-9]}, "seed": {"values": [1, 2]}})
    _, out = launch.run_sweep(path, 3, {"data_dir": str(data)}, tmp_path / "sweep")

    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 3  # the sweep ran to its count
    by_rate = {t["name"]: t["params"]["learning_rate"] for t in trials}
    assert sorted(by_rate.values()) == [1e-9, 0.03, 0.03] or sorted(by_rate.values()) == [1e-9, 1e-9, 0.03]
    for trial in trials:
        rows = read_history(out / "trials" / trial["name"] / "history.csv")
        assert trial["metric"] == pytest.approx(max(float(r["val_accuracy"]) for r in rows))
        assert trial["epochs_run"] == len(rows)
        if trial["params"]["learning_rate"] == 1e-9 and trial["number"] > 1:
            assert trial["state"] == "stopped" and len(rows) == 2, trial  # stopped after its band, not at 3
            assert trial["reason"] == "stopped by hyperband after epoch 2 of 3"
            assert json.loads((out / "trials" / trial["name"] / STOPPED_FILE).read_text())["epoch"] == 2
            assert (out / "trials" / trial["name"] / "metrics.json").exists()  # its report is written
        if trial["params"]["learning_rate"] == 0.03:
            assert trial["state"] == "finished" and len(rows) == 3
    assert any(t["state"] == "stopped" for t in trials)
    # a stopped trial feeds the search as finished, with its metric so far
    runs = {run.name: run for run in local.sweep_runs(trials)}
    for trial in trials:
        assert runs[trial["name"]].state == "finished"
        assert runs[trial["name"]].summary_metrics["val_accuracy"] == trial["metric"]

    write_report(from_folder(out), out)
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    stopped = [r for r in rows if r["state"] == "stopped"]
    assert stopped and all(r["rank"] and r["epochs"] == "2" and "hyperband" in r["reason"] for r in stopped)
    record = from_folder(out)
    assert record.winner()["state"] == "finished"
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["learning_rate"] == 0.03


def history_file(run_dir, values):
    run_dir.mkdir(parents=True)
    write_history(run_dir / "history.csv", [{"epoch": i + 1, "val_accuracy": v} for i, v in enumerate(values)])


def test_the_rule_sees_the_epochs_of_earlier_stages_and_of_a_resume(tmp_path):
    spec = {"method": "random", "metric": {"name": "val_accuracy", "goal": "maximize"}, "early_terminate": RULE,
            "parameters": {"learning_rate": {"values": [0.1]}}}  # fmt: skip
    for name, values in (("good", [0.5, 0.9, 0.9]), ("fair", [0.4, 0.8, 0.8])):
        history_file(tmp_path / name, values)
    this = tmp_path / "this"
    history_file(this, [0.3])  # epoch 1 ran in an earlier stage's fit, or before a kill
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    callback = HyperbandStop(spec, this, [tmp_path / "good", tmp_path / "fair"])
    callback.set_model(model)
    model.stop_training = False
    callback.on_epoch_end(1, {"val_accuracy": 0.35})  # the second epoch: its band, 0.35 below the top third
    assert model.stop_training and json.loads((this / STOPPED_FILE).read_text())["epoch"] == 2
    # without the earlier epoch the trial has logged one epoch only: no band applies yet
    assert judge(spec, [0.35], [[0.5, 0.9, 0.9], [0.4, 0.8, 0.8]])[0] is False
    assert judge(spec, [0.3, 0.35], [[0.5, 0.9, 0.9], [0.4, 0.8, 0.8]])[0] is True
    assert judge(spec, [0.3, 0.95], [[0.5, 0.9, 0.9], [0.4, 0.8, 0.8]])[0] is False  # among the top third


def test_a_stopped_trial_killed_before_its_report_ends_at_its_stopped_epoch(tmp_path, make_image_folder, sweep_file, interrupt):
    data = make_image_folder(tmp_path / "data", {"train": 6, "val": 2})
    plan = load_plan(sweep_file({"learning_rate": {"values": [0.01, 0.001]}}), {"data_dir": str(data)})
    trial = {"name": "trial-001", "number": 1, "state": "running", "params": {"learning_rate": 0.01},
             "config": plan.trial_values({"learning_rate": 0.01})}  # fmt: skip
    run_dir = tmp_path / "sweep" / "trials" / "trial-001"
    with pytest.raises(KeyboardInterrupt):  # the rule stopped it after epoch 1, and the process died before its report
        KINDS["scratch"].train(plan.trial_config(trial["config"], run_dir, "disabled"), final=False,
                               callbacks=[interrupt(1)])  # fmt: skip
    write_json(run_dir / STOPPED_FILE, {"epoch": 1, "rule": ""})
    assert len(read_history(run_dir / "history.csv")) == 1 and not (run_dir / "metrics.json").exists()
    local.run_trial(plan, tmp_path / "sweep", trial, "disabled")
    assert len(read_history(run_dir / "history.csv")) == 1  # no epoch trained past the one it was stopped after
    assert trial["state"] == "stopped" and trial["epochs_run"] == 1 and (run_dir / "metrics.json").exists()


@pytest.mark.parametrize(
    "rule, message",
    [
        ({"type": "hyperband"}, "min_iter"),
        ({"type": "hyperband", "min_iter": 1, "eta": 1}, "early_terminate"),
        ({"type": "median", "min_iter": 1}, "early_terminate"),
    ],
)
def test_an_early_terminate_the_rule_cannot_apply_is_refused(sweep_file, rule, message):
    with pytest.raises(ConfigError, match=message):
        load_plan(sweep_file({"learning_rate": {"values": [0.01, 0.001]}}, early_terminate=rule), {"demo": True})


@pytest.mark.parametrize("raised, state", [(Exception(), "stopped"), (RuntimeError("disk full"), "failed")])
def test_a_trial_that_wandb_stops_finishes_as_stopped_not_failed(tmp_path, monkeypatch, sweep_file, constants, fake_wandb_run,
                                                                raised, state):  # fmt: skip
    path = sweep_file({"learning_rate": {"values": [0.01, 0.001]}})
    plan = load_plan(path, {"demo": True})
    run = fake_wandb_run({**constants, "learning_rate": 0.01}, "run7")
    monkeypatch.setattr(wandb, "init", lambda **kwargs: run)
    monkeypatch.setattr(wandb, "run", run)

    def stopped_mid_epoch(self, config, final=True, callbacks=None):  # what W&B's agent raises in the thread
        raise raised

    monkeypatch.setattr(type(KINDS["scratch"]), "train", stopped_mid_epoch)
    online.agent_trial(plan, tmp_path / "sweep")
    assert run.exit_code == (0 if state == "stopped" else 1)
    assert bool(run.summary.get(online.STOPPED_SUMMARY)) is (state == "stopped")
    assert ("failure" in run.summary) is (state == "failed")
