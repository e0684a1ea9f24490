"""The shipped sweep files' spaces: ranges, parameters that matter for some strategies only, a named base config."""


import pytest
import yaml

from inat_keras.config import ConfigError, read_config_file, shipped_config
from inat_keras.sweeps import local
from inat_keras.sweeps.report import SweepRecord, best_config, encode
from inat_keras.sweeps.spec import load_plan
from inat_keras.training.kinds import KINDS

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent


def test_the_ranged_files_draw_rates_log_uniformly_and_dropout_uniformly():
    plan = load_plan(shipped_config("sweep_scratch_ranges.yaml"), {"demo": True, "image_size": 218})
    study = yaml.safe_load(shipped_config("sweep_scratch.yaml").read_text())["parameters"]
    ranged = plan.sweep["parameters"]
    assert ranged["learning_rate"] == {"distribution": "log_uniform_values", "min": 0.0001, "max": 0.01}
    assert ranged["dropout"] == {"distribution": "uniform", "min": 0.0, "max": 0.4}
    assert {k: v for k, v in ranged.items() if k not in ("learning_rate", "dropout")} == \
        {k: v for k, v in study.items() if k not in ("learning_rate", "dropout")}  # fmt: skip
    random = {**plan.sweep, "method": "random"}
    rates = [local.propose(random, [], seed)["learning_rate"] for seed in range(200)]
    assert all(1e-4 <= r <= 1e-2 for r in rates)
    below = sum(r < 1e-3 for r in rates) / len(rates)  # log-uniform: half of the draws below the geometric middle
    assert 0.35 < below < 0.65, below
    for name in ("sweep_finetune.yaml", "sweep_finetune_last_k.yaml", "sweep_finetune_gradual.yaml"):
        spec = load_plan(shipped_config(name), {"demo": True}).sweep["parameters"]["learning_rate"]
        assert spec["distribution"] == "log_uniform_values"


def test_a_range_outside_what_the_config_accepts_is_refused(tmp_path):
    spec = yaml.safe_load(shipped_config("sweep_scratch_ranges.yaml").read_text())
    spec["parameters"]["batch_size"] = {"distribution": "int_uniform", "min": 0, "max": 32}  # the bounds are checked
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="parameters.batch_size.*batch_size must be at least 1"):
        load_plan(tmp_path / "bad.yaml", {"demo": True})


def test_strategy_only_options_are_swept_only_where_every_trial_uses_them(tmp_path):
    last_k = load_plan(shipped_config("sweep_finetune_last_k.yaml"), {"demo": True}).sweep["parameters"]
    assert last_k["strategy"] == {"value": "last_k"} and len(last_k["k"]["values"]) > 1
    gradual = load_plan(shipped_config("sweep_finetune_gradual.yaml"), {"demo": True}).sweep["parameters"]
    assert gradual["strategy"] == {"value": "gradual"}
    assert all(len(gradual[n]["values"]) > 1 for n in ("unfreeze_start", "unfreeze_every", "unfreeze_step"))
    mixed = yaml.safe_load(shipped_config("sweep_finetune.yaml").read_text())
    assert not {"k", "unfreeze_every", "unfreeze_step", "unfreeze_start"} & set(mixed["parameters"])
    mixed["parameters"]["k"] = {"values": [3, 5]}
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(mixed))
    with pytest.raises(ConfigError, match=r"parameters\.k matters only when strategy is last_k.*full, head, gradual"):
        load_plan(tmp_path / "mixed.yaml", {"demo": True})
    mixed["parameters"]["k"] = {"value": 3}  # a constant spends no trial
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(mixed))
    load_plan(tmp_path / "mixed.yaml", {"demo": True})
    del mixed["parameters"]["strategy"]  # the base config's strategy decides: finetune.yaml's gradual
    mixed["parameters"].update({"k": {"values": [3, 5]}, "head_dropout": {"values": [0.1, 0.2]}})
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(mixed))
    with pytest.raises(ConfigError, match="strategy may be gradual"):
        load_plan(tmp_path / "mixed.yaml", {"demo": True})


def test_a_sweep_file_names_the_config_its_trials_start_from(tmp_path):
    (tmp_path / "my_base.yaml").write_text(yaml.safe_dump({"dense_units": 24, "activation": "gelu", "epochs": 7,
                                                           "demo_overrides": {"epochs": 2}}))  # fmt: skip
    spec = {"method": "random", "metric": {"name": "val_accuracy", "goal": "maximize"},
            "parameters": {"base_config": {"value": "my_base.yaml"}, "filters": {"value": "equal16"},
                           "learning_rate": {"values": [0.01, 0.001]}}}  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    plan = load_plan(tmp_path / "sweep.yaml", {"demo": True})
    assert (plan.base["dense_units"], plan.base["activation"], plan.base["epochs"]) == (24, "gelu", 2)
    assert plan.settings["epochs"] == 7 and "base_config" not in plan.base
    params = local.propose(plan.sweep, [], 1)
    assert params["base_config"] == "my_base.yaml"  # W&B passes a constant parameter to every run
    config = plan.trial_config(plan.trial_values(params), tmp_path / "trial", "disabled")
    assert (config.dense_units, config.activation, config.filter_list()) == (24, "gelu", [16] * 5)
    record = SweepRecord("s", KINDS["scratch"], "val_accuracy", spec["parameters"],
                         [{"name": "t", "number": 1, "state": "finished", "params": params, "metric": 0.5}], plan.settings)
    best = best_config(record)
    assert "base_config" not in best and best["dense_units"] == 24 and best["epochs"] == 7
    spec["parameters"]["base_config"] = {"value": "missing.yaml"}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="base_config: missing.yaml is neither next to the sweep file"):
        load_plan(tmp_path / "sweep.yaml", {"demo": True})
    spec["parameters"]["base_config"] = {"values": ["my_base.yaml", "other.yaml"]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="parameters.base_config names the config"):
        load_plan(tmp_path / "sweep.yaml", {"demo": True})


def test_continuous_values_are_one_numeric_column_in_the_importance_table():
    trials = [{"name": f"t{i}", "number": i, "state": "finished", "metric": 0.1 * i,
               "params": {"learning_rate": 10 ** (-4 + i / 3), "activation": "relu" if i % 2 else "gelu"}}
              for i in range(6)]  # fmt: skip
    parameters = {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                  "activation": {"values": ["relu", "gelu"]}}  # fmt: skip
    names, x = encode(SweepRecord("s", KINDS["scratch"], "val_accuracy", parameters, trials), trials)
    assert names == ["learning_rate", "activation=gelu", "activation=relu"]
    assert list(x[:, 0]) == [t["params"]["learning_rate"] for t in trials]


def test_the_plus_sweep_starts_its_trials_from_the_plus_recipe():
    plan = load_plan(shipped_config("sweep_scratch_plus.yaml"), {"demo": True, "epochs": 1})
    plus = read_config_file(shipped_config("scratch_plus.yaml"))  # its base: resolved
    own = {k: v for k, v in plus.items() if k not in ("demo_overrides", "filters", "kernel_sizes")}  # presets resolve
    assert {k: plan.settings[k] for k in own} == own
    assert (plan.base["activation"], plan.base["optimizer"]) == (plus["activation"], "adamw")
    assert plan.sweep["early_terminate"]["type"] == "hyperband"
    assert plan.sweep["parameters"]["weight_decay"]["distribution"] == "log_uniform_values"
