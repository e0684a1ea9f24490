import csv
import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
import yaml
from PIL import Image

from inat_keras.sweeps import launch, local
from inat_keras.sweeps.spec import load_plan
from inat_keras.outputs import run_folder, tracking
from inat_keras.outputs.run_folder import read_history
from inat_keras.cli import main
from inat_keras.config import PLACE_OPTIONS, ConfigError, ScratchConfig, load_config, shipped_config
from inat_keras.errors import DataError
from inat_keras.training.kinds import KINDS, Kind
from inat_keras.sweeps.report import from_folder, importance
from inat_keras.training.loop import TrainingDiverged

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent

STUDY_SPACE = {
    "augment": [True, False],
    "batch_norm": [True, False],
    "dropout": [0.0, 0.2, 0.3, 0.4],
    "learning_rate": [0.01, 0.001, 0.0005, 0.0001],
    "activation": ["relu", "leaky_relu", "parametric_relu", "gelu", "silu", "mish"],
    "filters": ["equal16", "equal32", "equal64", "doubling16", "doubling32", "halving256"],
    "kernel_sizes": ["constant3", "constant5", "constant7", "decreasing", "increasing"],
    "dense_units": [2048, 1024, 512],
    "batch_size": [8, 16, 32],
}
def with_training(kind: Kind, train) -> Kind:
    """The kind with its training replaced by a test double."""

    class Replaced(type(kind)):
        def train(self, config, final=True, callbacks=None):
            assert not final, "a sweep trial is never a final run"
            return train(config)

    return Replaced(**{f.name: getattr(kind, f.name) for f in dataclasses.fields(kind)})


class TrainingSpy:
    """The scratch kind's real training, recorded by trial name, with hooks a test can set between runs."""

    real = KINDS["scratch"]

    def __init__(self, monkeypatch):
        self.calls, self.before, self.after = [], None, None
        monkeypatch.setitem(KINDS, "scratch", with_training(self.real, self.train))

    def train(self, config):
        name = Path(config.output_dir).name
        self.calls.append(name)
        if self.before:
            self.before(name, config)
        result = self.real.train(config, final=False)
        if self.after:
            self.after(name, config)
        return result


def capture_runs(monkeypatch) -> list:
    """The W&B runs that training starts."""
    runs, start_run = [], tracking.start_run
    monkeypatch.setattr(tracking, "start_run", lambda *a, **k: runs.append(start_run(*a, **k)) or runs[-1])
    return runs


def test_shipped_sweep_files_are_valid_and_cover_the_study_space(caplog):
    small = load_plan(shipped_config("sweep_scratch.yaml"), {"demo": True, "image_size": 96})
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [m.split("'")[1] for m in warned] == ["constant5", "constant7", "increasing"]
    assert all("dropped from the search" in m for m in warned)
    assert small.sweep["parameters"]["kernel_sizes"]["values"] == ["constant3", "decreasing"]  # no trial spent on them
    assert all("parameters.kernel_sizes" in m and "smallest image size" in m for m in warned)
    caplog.clear()
    plan = load_plan(shipped_config("sweep_scratch.yaml"), {"demo": True})
    assert plan.base["image_size"] == 218  # the demo's 96 pixels raised so that constant7 fits
    assert [r.getMessage() for r in caplog.records] == [
        "demo sweep: image size 96 -> 218 so that every kernel option fits (pass --image-size to choose)"
    ]
    assert plan.kind.name == "scratch" and plan.sweep["method"] == "bayes"
    assert plan.sweep["metric"] == {"name": "val_accuracy", "goal": "maximize"}
    assert {k: v["values"] for k, v in plan.sweep["parameters"].items()} == STUDY_SPACE
    finetune = load_plan(shipped_config("sweep_finetune.yaml"))
    assert finetune.kind.name == "finetune"
    assert {"strategy", "learning_rate", "batch_size"} <= set(finetune.sweep["parameters"])


@pytest.mark.large
def test_offline_sweep_of_three_trials_writes_trials_best_config_and_plots(tmp_path, monkeypatch, capsys, make_sweep_file):
    wandb.init(mode="disabled").finish()  # W&B set up before the sweep: the group must not depend on its env
    runs = capture_runs(monkeypatch)
    constants = {"filters": [8] * 5, "kernel_sizes": [3, 3, 3, 1, 1], "image_size": 48, "augment": False}
    path = make_sweep_file(tmp_path, {"dense_units": {"values": [16, 32]}, "learning_rate": {"values": [0.01, 0.003, 0.001]},
                                      "activation": {"values": ["relu", "gelu"]}}, constants)
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--count", "3", "--demo", "--epochs", "1", "--output-dir", str(out)]) == 0

    state = json.loads((out / "trials.json").read_text())
    trials = state["trials"]
    assert [t["name"] for t in trials] == ["trial-001", "trial-002", "trial-003"]
    assert all(t["state"] == "finished" for t in trials)
    assert [run.group for run in runs] == [out.name] * 3
    for trial in trials:
        history = read_history(out / "trials" / trial["name"] / "history.csv")
        assert trial["metric"] == pytest.approx(max(float(r["val_accuracy"]) for r in history))
        saved = yaml.safe_load((out / "trials" / trial["name"] / "config.yaml").read_text())
        assert {k: saved[k] for k in trial["params"]} == trial["params"]
        assert saved["epochs"] == 1 and saved["demo"] is True
    best = max(trials, key=lambda t: t["metric"])

    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    metrics = [float(r["val_accuracy"]) for r in rows]
    assert metrics == sorted(metrics, reverse=True) and rows[0]["trial"] == best["name"]
    assert metrics[0] == pytest.approx(best["metric"], abs=1e-4)

    best_yaml = yaml.safe_load((out / "best_config.yaml").read_text())
    settings = json.loads((out / "trials.json").read_text())["settings"]
    assert best_yaml == {**settings, **best["params"]} and not set(best_yaml) & set(PLACE_OPTIONS)
    assert best_yaml["epochs"] == 10 and "demo" not in best_yaml  # the YAML's settings, not the demo's or --epochs 1
    retrain = load_config(ScratchConfig, out / "best_config.yaml", {"demo": True})
    for name, value in best["params"].items():
        assert getattr(retrain, name) == value
    for png in ("parallel_coordinates.png", "metric_over_trials.png"):
        assert Image.open(out / png).size[0] > 100
    assert (out / "report.md").read_text().count("trial-00") == 3

    capsys.readouterr()
    assert main(["sweep-report", str(out), "--output-dir", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    assert printed.index(rows[0]["trial"]) < printed.index(rows[1]["trial"]) < printed.index(rows[2]["trial"])
    assert (tmp_path / "again" / "best_config.yaml").read_text().splitlines()[2:] == \
        (out / "best_config.yaml").read_text().splitlines()[2:]


def test_a_killed_sweep_resumes_without_losing_or_repeating_trials(image_folder, tmp_path, monkeypatch, make_sweep_file):
    space = {"learning_rate": {"values": [0.03, 0.01, 0.003]}, "activation": {"values": ["relu", "gelu"]}}
    path = make_sweep_file(tmp_path, space)
    out = tmp_path / "sweep"
    options = {"data_dir": str(image_folder)}

    def killed_after_training(name, config):  # its folder is complete, its record still says running
        if name == "trial-001":
            raise KeyboardInterrupt

    def killed_mid_trial(name, config):  # dies leaving a half-written folder
        if name == "trial-002":
            Path(config.output_dir).mkdir(parents=True)
            (Path(config.output_dir) / "config.yaml").write_text("half")
            raise KeyboardInterrupt

    spy = TrainingSpy(monkeypatch)
    spy.after = killed_after_training
    with pytest.raises(KeyboardInterrupt):
        launch.run_sweep(path, 2, options, out)
    assert [t["state"] for t in json.loads((out / "trials.json").read_text())["trials"]] == ["running"]

    seen, propose = [], local.propose
    def listening(spec, trials, seed):
        seen.append(json.loads(json.dumps(trials)))
        return propose(spec, trials, seed)

    monkeypatch.setattr(local, "propose", listening)
    spy.after, spy.before = None, killed_mid_trial
    with pytest.raises(KeyboardInterrupt):
        launch.run_sweep(path, 2, options, out)
    second = json.loads((out / "trials.json").read_text())["trials"]
    assert [t["state"] for t in second] == ["finished", "running"]
    spy.before = None
    launch.run_sweep(path, 2, options, out)

    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert spy.calls == ["trial-001", "trial-002", "trial-002"]
    assert [t["state"] for t in trials] == ["finished", "finished"]
    assert trials[0] == second[0] and trials[1]["params"] == second[1]["params"]
    for trial in trials:
        history = read_history(out / "trials" / trial["name"] / "history.csv")
        assert trial["metric"] == pytest.approx(max(float(r["val_accuracy"]) for r in history))
    assert len(seen) == 1 and seen[0] == [trials[0]]


def test_failing_trials_are_recorded_and_the_sweep_goes_on(image_folder, tmp_path, monkeypatch, caplog, make_sweep_file):
    space = {"dense_units": {"values": [8, 16, 24]}, "kernel_sizes": {"values": [[1] * 5, "constant3"]}}
    path = make_sweep_file(tmp_path, space, method="grid")

    def diverge(name, config):
        if name == "trial-001":
            raise TrainingDiverged("the loss became NaN")
        if name == "trial-002":
            raise ConfigError("a combination the model refuses")

    TrainingSpy(monkeypatch).before = diverge
    _, out = launch.run_sweep(path, 5, {"data_dir": str(image_folder)}, tmp_path / "sweep")
    trials = json.loads((out / "trials.json").read_text())["trials"]
    # constant3 never fits 32 pixels: dropped from the search with a warning, no trial spent on it
    assert "'constant3' dropped from the search" in caplog.text
    assert [(t["params"]["dense_units"], t["params"]["kernel_sizes"]) for t in trials] == [
        (8, [1] * 5), (16, [1] * 5), (24, [1] * 5)
    ]
    assert [t["state"] for t in trials] == ["failed", "failed", "finished"]
    assert trials[0]["reason"] == "TrainingDiverged: the loss became NaN"
    assert trials[1]["reason"] == "ConfigError: a combination the model refuses"
    assert from_folder(out).finished() == [trials[2]]


def test_bayes_proposes_from_the_metrics_it_is_given():
    spec = {"method": "bayes", "metric": {"name": "val_accuracy", "goal": "maximize"},
            "parameters": {"dropout": {"min": 0.0, "max": 0.9}}}

    def trials(slope):
        points = [0.05, 0.25, 0.45, 0.65, 0.85]
        return [{"name": f"t{i}", "state": "finished", "params": {"dropout": x},
                 "summary": {"val_accuracy": 0.5 + slope * x}} for i, x in enumerate(points)]

    rising = local.propose(spec, trials(+0.5), seed=7)["dropout"]
    falling = local.propose(spec, trials(-0.5), seed=7)["dropout"]
    assert local.propose(spec, trials(+0.5), seed=7)["dropout"] == rising
    assert type(rising) is float
    assert rising > 0.6 and falling < 0.3


def test_training_logs_the_sweep_metric_under_its_exact_name(image_folder, tmp_path, monkeypatch, tiny_cnn_options):
    logged, runs, start_run = set(), [], tracking.start_run

    def start_and_listen(*args, **kwargs):  # wandb.init rebinds wandb.log, so listen after it
        runs.append(start_run(*args, **kwargs))
        log = wandb.log
        monkeypatch.setattr(wandb, "log", lambda data, *a, **k: logged.update(data) or log(data, *a, **k))
        return runs[-1]

    monkeypatch.setattr(tracking, "start_run", start_and_listen)
    config = load_config(ScratchConfig, None, {**tiny_cnn_options, "epochs": 3, "data_dir": str(image_folder),
                                               "output_dir": str(tmp_path / "run")})
    run_dir, _ = KINDS["scratch"].train(config)

    history = read_history(run_dir / "history.csv")
    for path in sorted(shipped_config("scratch.yaml").parent.glob("sweep_*.yaml")):
        metric = yaml.safe_load(path.read_text())["metric"]
        assert metric["name"] in logged, path
        assert metric["name"].startswith("val_")
        best = run_folder.best_value(metric["name"], [r[metric["name"]] for r in history])
        assert runs[0].summary[metric["name"]] == pytest.approx(best)
    assert all(name in logged for name in run_folder.METRIC_GOALS)


def test_the_run_summary_holds_the_best_epoch_not_the_last(tmp_path):
    import keras

    run = tracking.start_run({}, tmp_path, "disabled", "p")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    logger = tracking.MetricsLogger()
    logger.set_model(model)
    for epoch, (accuracy, loss) in enumerate([(0.5, 1.0), (0.7, 0.9), (0.6, 0.95)]):
        logger.on_epoch_end(epoch, {"val_accuracy": accuracy, "val_loss": loss, "accuracy": 0.9})
    assert (run.summary["val_accuracy"], run.summary["val_loss"]) == (0.7, 0.9)
    assert "accuracy" not in run.summary and run.summary["epoch/accuracy"] == 0.9
    run.finish()


@pytest.mark.parametrize(
    "change, key",
    [
        ({"parameters": {"filterz": {"values": ["equal16"]}}}, "parameters.filterz"),
        ({"parameters": {"activation": {"values": ["relu", "swish"]}}}, "parameters.activation"),
        ({"parameters": {"filters": {"values": ["equal16", "equal8"]}}}, "parameters.filters"),
        ({"parameters": {"dropout": {"min": 0.0, "max": 1.0}}}, "parameters.dropout"),
        ({"parameters": {"dense_units": {"values": [512, 8.5]}}}, "parameters.dense_units"),
        ({"parameters": {"dropout": {"distribution": "normal", "mu": 0.2, "sigma": 0.1}}}, "parameters.dropout"),
        ({"parameters": {"demo": {"values": [True, False]}}}, "parameters.demo"),
        ({"parameters": {"strategy": {"values": ["full"]}}}, "mixes options"),
        ({"method": "bayesian"}, "method"),
        ({"metric": None}, "metric is missing"),
        ({"metric": {"name": "accuracy", "goal": "maximize"}}, "metric.name 'accuracy'"),
        ({"metric": {"name": "epoch/val_accuracy", "goal": "maximize"}}, "metric.name 'epoch/val_accuracy'"),
        ({"metric": {"name": "test_accuracy", "goal": "maximize"}}, "metric.name 'test_accuracy'"),
        ({"metric": {"name": "val_accuracy"}}, "metric.goal"),
        ({"metric": {"name": "val_loss", "goal": "maximize"}}, "metric.goal"),
        ({"early_stop": {"type": "hyperband"}}, "early_stop"),
    ],
)
def test_invalid_sweep_files_are_refused_naming_the_key(tmp_path, change, key):
    spec = yaml.safe_load((shipped_config("sweep_scratch.yaml")).read_text())
    for section, value in change.items():
        if section == "parameters":
            spec["parameters"].update(value)
        elif value is None:
            del spec[section]
        else:
            spec[section] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("(", r"\(")):
        load_plan(path, {"demo": True})


def test_a_refused_file_starts_nothing(tmp_path, capsys, make_sweep_file):
    path = make_sweep_file(tmp_path, {"activation": {"values": ["relu", "swish"]}})
    assert main(["sweep", str(path), "--count", "2", "--demo", "--output-dir", str(tmp_path / "out")]) == 2
    assert "parameters.activation" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_space_where_no_model_fits_is_refused(tmp_path, make_sweep_file):
    path = make_sweep_file(tmp_path, {"kernel_sizes": {"values": ["constant3", "decreasing"]}})  # 32-pixel images
    with pytest.raises(ConfigError, match="no combination.*image size 32 is too small"):
        load_plan(path, {"demo": True})
    assert load_plan(path, {"demo": True, "image_size": 94}).base["image_size"] == 94


def test_command_line_options_may_not_override_a_swept_parameter(tmp_path, make_sweep_file, tiny_sweep_constants):
    path = make_sweep_file(tmp_path, {"epochs": {"values": [1, 2]}}, {k: v for k, v in tiny_sweep_constants.items() if k != "epochs"})
    with pytest.raises(ConfigError, match="parameters.epochs is swept"):
        load_plan(path, {"demo": True, "epochs": 1})


def test_a_folder_of_another_sweep_is_not_resumed(image_folder, tmp_path, monkeypatch, make_sweep_file):
    def refuse(config):
        raise ConfigError("not trained here")

    monkeypatch.setitem(KINDS, "scratch", with_training(KINDS["scratch"], refuse))
    out = tmp_path / "sweep"
    first = make_sweep_file(tmp_path, {"learning_rate": {"values": [0.01, 0.003]}}, method="grid")
    launch.run_sweep(first, 1, {"data_dir": str(image_folder)}, out)
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert [t["reason"] for t in trials] == ["ConfigError: not trained here"]
    with pytest.raises(ConfigError, match="other settings.*epochs"):
        launch.run_sweep(first, 2, {"data_dir": str(image_folder), "epochs": 2}, out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no sweep"):
        launch.run_sweep(first, 1, {"data_dir": str(image_folder)}, tmp_path / "other")


def test_online_only_when_logged_in_and_not_offline(tmp_path, monkeypatch, make_sweep_file):
    path = make_sweep_file(tmp_path, {"learning_rate": {"values": [0.01, 0.003]}})
    chosen = []
    monkeypatch.setattr(launch, "run_local", lambda *a: chosen.append("local"))
    monkeypatch.setattr(launch, "run_online", lambda *a: chosen.append("online"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(tracking, "logged_in", lambda: False)
    launch.run_sweep(path, 1, {"demo": True}, tmp_path / "a")
    with pytest.raises(ConfigError, match="--sweep-id"):
        launch.run_sweep(path, 1, {"demo": True}, tmp_path / "b", sweep_id="abc")
    monkeypatch.setattr(tracking, "logged_in", lambda: True)
    with pytest.raises(ConfigError, match="run it locally with --offline"):  # conftest: the server is unreachable
        launch.run_sweep(path, 1, {"demo": True}, tmp_path / "unreachable")
    monkeypatch.setattr(tracking, "unreachable", lambda: None)
    launch.run_sweep(path, 1, {"demo": True}, tmp_path / "c")
    launch.run_sweep(path, 1, {"demo": True}, tmp_path / "d", offline=True)
    monkeypatch.setenv("WANDB_MODE", "offline")
    launch.run_sweep(path, 1, {"demo": True}, tmp_path / "e")
    assert chosen == ["local", "online", "local", "local"]


def test_the_agent_trains_the_config_that_wandb_proposes(tmp_path, monkeypatch, capsys, make_sweep_file,
                                                        tiny_sweep_constants, fake_wandb_run):  # fmt: skip
    space = {"learning_rate": {"values": [0.01, 0.003]}, "activation": {"values": ["relu", "gelu"]}}
    path = make_sweep_file(tmp_path, space, entity="team", project="inat-sweeps")
    trained, created = [], []
    proposal = {**tiny_sweep_constants, "learning_rate": 0.003, "activation": "gelu"}
    run = fake_wandb_run(proposal, "run42")

    def agent(sweep_id, function, entity, project, count):
        assert (sweep_id, entity, project, count) == ("abc", "team", "inat-sweeps", 2)
        function()

    monkeypatch.setattr(wandb, "sweep", lambda sweep, project, entity: created.append(sweep) or "abc")
    monkeypatch.setattr(wandb, "agent", agent)
    monkeypatch.setattr(wandb, "init", lambda **kwargs: run)
    monkeypatch.setattr(wandb, "run", run)
    monkeypatch.setitem(KINDS, "scratch", with_training(KINDS["scratch"], trained.append))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(tracking, "logged_in", lambda: True)
    monkeypatch.setattr(tracking, "unreachable", lambda: None)

    mode, out = launch.run_sweep(path, 2, {"demo": True}, tmp_path / "sweep")
    assert mode == "online" and created[0]["parameters"]["activation"] == {"values": ["relu", "gelu"]}
    printed = capsys.readouterr().out
    assert "sweep id: abc" in printed and "https://wandb.ai/team/inat-sweeps/sweeps/abc" in printed
    config = trained[0]
    assert (config.learning_rate, config.activation, config.filter_list(), config.image_size) == (0.003, "gelu", [4] * 5, 32)
    assert config.demo and config.wandb == "online" and config.wandb_project == "inat-sweeps"
    assert Path(config.output_dir) == out / "trials" / "run42"
    assert run.exit_code is None

    def refuse(config):
        raise ConfigError("image size 32 is too small")

    monkeypatch.setitem(KINDS, "scratch", with_training(KINDS["scratch"], refuse))
    launch.run_sweep(path, 2, {"demo": True}, tmp_path / "sweep2", sweep_id="abc")
    assert run.exit_code == 1 and "too small" in run.summary["failure"]
    assert len(created) == 1


def test_a_sweep_run_started_by_the_agent_is_reused(tmp_path, monkeypatch, fake_wandb_run):
    run = fake_wandb_run({"learning_rate": 0.003})
    monkeypatch.setattr(wandb, "run", run)
    monkeypatch.setattr(wandb, "init", lambda **kwargs: pytest.fail("a second init would end the agent's run"))
    assert tracking.start_run({"epochs": 1, "learning_rate": 0.1}, tmp_path, "online", "p") is run
    assert run.config == {"learning_rate": 0.003, "epochs": 1}  # the sweep's value stays


def test_importance_finds_the_parameter_that_decides_the_metric():
    trials = [
        {"name": f"t{i}", "number": i, "state": "finished", "metric": 0.2 + 0.5 * (lr == 0.001) + 0.01 * (i % 2),
         "params": {"learning_rate": lr, "activation": act}}
        for i, (lr, act) in enumerate([(0.01, "relu"), (0.001, "relu"), (0.01, "gelu"), (0.001, "gelu"),
                                       (0.01, "relu"), (0.001, "gelu"), (0.01, "gelu"), (0.001, "relu"),
                                       (0.01, "gelu"), (0.001, "relu"), (0.01, "relu"), (0.001, "gelu")])  # 10 at least
    ]
    record = sweep_report_record(trials)
    rows = {r["parameter"]: r for r in importance(record)}
    assert max(rows, key=lambda k: rows[k]["importance"]) == "learning_rate"
    assert rows["learning_rate"]["pearson"] < -0.9 and rows["learning_rate"]["spearman"] < -0.9
    assert abs(rows["activation=relu"]["pearson"]) < 0.2 and not math.isnan(rows["activation=gelu"]["importance"])


def sweep_report_record(trials):
    from inat_keras.sweeps.report import SweepRecord

    parameters = {"learning_rate": {"values": [0.01, 0.001]}, "activation": {"values": ["relu", "gelu"]}}
    return SweepRecord("s", KINDS["scratch"], "val_accuracy", parameters, trials)


def test_a_wandb_sweep_is_reported_like_a_local_one(tmp_path, monkeypatch, tiny_sweep_constants):
    from inat_keras.sweeps.report import load_sweep, write_report

    def run(name, created, state, accuracy, lr, failure=None):
        config = {**tiny_sweep_constants, "learning_rate": lr, "activation": "relu", "kind": "scratch", "classes": ["a", "b"]}
        summary = {"val_accuracy": accuracy, "failure": failure} if accuracy is not None else {"failure": failure}
        return type("Run", (), {"name": name, "created_at": created, "state": state, "config": config,
                                "summary": summary})()

    spec = yaml.safe_load((shipped_config("sweep_scratch.yaml")).read_text())
    runs = [run("b", "2026-01-02", "finished", 0.4, 0.001), run("a", "2026-01-01", "finished", 0.6, 0.01),
            run("c", "2026-01-03", "failed", None, 0.0005, "ConfigError: too small"),
            run("d", "2026-01-04", "running", None, 0.01)]
    paths = []

    class Api:
        default_entity = "me"

        def sweep(self, path):
            paths.append(path)
            return type("Sweep", (), {"id": "abc", "config": spec, "runs": runs})()

    monkeypatch.setattr(wandb, "Api", Api)
    monkeypatch.setattr(tracking, "logged_in", lambda: True)
    record, out = load_sweep("abc", "inat-keras")
    assert paths == ["me/inat-keras/abc"] and out.name == "sweep-abc"
    assert [(t["name"], t["number"], t["state"]) for t in record.trials] == [
        ("a", 1, "finished"), ("b", 2, "finished"), ("c", 3, "failed"), ("d", 4, "running")]
    assert record.trials[2]["reason"] == "ConfigError: too small"
    written = write_report(record, tmp_path / "report")
    best = yaml.safe_load(written["best_config.yaml"].read_text())
    assert best["learning_rate"] == 0.01 and "kind" not in best and "classes" not in best
    load_config(ScratchConfig, written["best_config.yaml"], {"demo": True})


def failing_sweep(tmp_path, image_folder, monkeypatch, make_sweep_file):
    """A sweep of one trial that fails at once (no training): (sweep file, options, folder)."""
    def refuse(config):
        raise ConfigError("not trained here")

    monkeypatch.setitem(KINDS, "scratch", with_training(KINDS["scratch"], refuse))
    path = make_sweep_file(tmp_path, {"learning_rate": {"values": [0.01, 0.003]}}, method="grid")
    options, out = {"data_dir": str(image_folder)}, tmp_path / "sweep"
    launch.run_sweep(path, 1, options, out)
    return path, options, out


def test_a_damaged_trials_file_is_one_error_for_the_resume_and_the_report(image_folder, tmp_path, monkeypatch, capsys,
                                                                         make_sweep_file):  # fmt: skip
    path, options, out = failing_sweep(tmp_path, image_folder, monkeypatch, make_sweep_file)
    trials = out / "trials.json"
    whole = json.loads(trials.read_text())
    for damaged in (trials.read_text()[:40], json.dumps({**whole, "trials": {}}), json.dumps({**whole, "kind": 3}),
                    json.dumps({**whole, "trials": [{"name": "trial-001"}]}), "[]"):  # fmt: skip
        trials.write_text(damaged)
        with pytest.raises(DataError, match=f"^{re.escape(str(trials))} is damaged .*rerun it in a new --output-dir"):
            launch.run_sweep(path, 2, options, out)
        capsys.readouterr()
        assert main(["sweep-report", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {trials} is damaged (")


def test_a_trials_file_that_a_killed_sweep_was_writing_is_cleaned_up(image_folder, tmp_path, monkeypatch, make_sweep_file):
    path, options, out = failing_sweep(tmp_path, image_folder, monkeypatch, make_sweep_file)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    abandoned, live = out / f".trials.json.{child.pid}.tmp", out / ".trials.json.1.tmp"  # pid 1 always runs
    abandoned.write_text('{"kind": "scr')
    live.write_text('{"kind": "scr')
    launch.run_sweep(path, 1, options, out)  # nothing left to run: the folder is only opened
    assert len(json.loads((out / "trials.json").read_text())["trials"]) == 1
    assert not abandoned.exists() and live.exists()
