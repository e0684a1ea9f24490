"""`run.py study`: every step an ordinary run folder, finished steps reused on a rerun, and a report with the
study's published numbers beside ours. Part B's EfficientNetV2-S is replaced by a tiny model of the same kind
(its training is tested in test_strategies.py; here the orchestration is under test)."""

import dataclasses
import json
import re
from pathlib import Path

import keras
import pytest

from inat_keras.cli import main
from inat_keras.errors import ConfigError
from inat_keras.config import STRATEGIES, StudyConfig, load_config, read_yaml, shipped_config
from inat_keras.study import pipeline
from inat_keras.study.pipeline import A_FINAL, B_FINAL, SWEEP_DIR, run_study, strategy_dir
from inat_keras.study.reference import PART_A_TEST, PART_B_TEST, PART_B_VALIDATION
from inat_keras.study.report import FINAL_PICTURES, error_analysis, fidelity_table, log_report, results_table, write_study_report
from inat_keras.training.kinds import KINDS, one_stage

STUDY_PAGE = Path(__file__).resolve().parents[1] / "docs" / "study.md"
STEPS = [A_FINAL, *(strategy_dir(s) for s in STRATEGIES), B_FINAL]


def tiny_finetune_model(config, num_classes: int) -> keras.Model:
    inputs = keras.Input((config.image_size, config.image_size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def metrics_times(study_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(study_dir)): p.stat().st_mtime_ns for p in study_dir.rglob("metrics.json")}


@pytest.fixture(scope="module")
def study(tmp_path_factory, make_image_folder, make_tiny_cnn_options, make_sweep_file):
    """One smallest study (2 trials, 32x32, 1 epoch each), then the same command again."""
    root = tmp_path_factory.mktemp("study")
    data = make_image_folder(root / "data", {"train": 10, "val": 4})
    # two trials' worth of the study's sweep format, with the tiny CNN that trains in a second
    constants = {k: v for k, v in make_tiny_cnn_options().items() if k not in ("wandb", "learning_rate", "epochs")}
    sweep = make_sweep_file(root, {"learning_rate": {"values": [0.01, 0.003]}}, constants)
    settings = StudyConfig(data_dir=str(data), output_dir=str(root / "study"), trials=2, sweep=str(sweep),
                           trial_epochs=1, scratch_epochs=1, finetune_epochs=1, finetune_image_size=32, weights="none",
                           wandb="disabled")  # fmt: skip
    tiny = dataclasses.replace(KINDS["finetune"], build_model=tiny_finetune_model, plan_stages=one_stage,
                               callbacks=lambda model: [], metrics=lambda model, stages: {})  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(KINDS, "finetune", tiny)
        first = run_study(settings)
        paths = write_study_report(first)
        times = metrics_times(first.study_dir)
        again = run_study(settings)
    return first, paths, times, again


def test_every_step_is_a_run_folder_with_its_metrics(study):
    first, _, _, _ = study
    study_dir = first.study_dir
    trials = json.loads((study_dir / SWEEP_DIR / "trials.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["finished", "finished"]
    assert (study_dir / SWEEP_DIR / "best_config.yaml").is_file() and (study_dir / SWEEP_DIR / "parallel_coordinates.png").is_file()
    assert first.trained() == STEPS
    for name in STEPS:
        assert (study_dir / name / "metrics.json").is_file() and (study_dir / name / "model.keras").is_file()
    a_final = read_yaml(study_dir / A_FINAL / "config.yaml")
    winner = first.sweep.winner()
    assert a_final["val_fraction"] == 0.0 and a_final["learning_rate"] == winner["params"]["learning_rate"]
    assert a_final["filters"] == [4] * 5 and a_final["image_size"] == 32  # the trials' size, not scratch.yaml's 224
    for name in (A_FINAL, B_FINAL):  # the final runs are tested, with their pictures
        assert "test_accuracy" in first.steps[name].metrics
        assert (study_dir / name / "predictions_grid.png").is_file() and (study_dir / name / "confusion_matrix.png").is_file()
    for strategy in STRATEGIES:  # the comparison is made on the validation split; the test set stays unseen
        config = read_yaml(study_dir / strategy_dir(strategy) / "config.yaml")
        assert config["strategy"] == strategy and config["val_fraction"] == 0.2 and config["weights"] == "none"
        assert "test_accuracy" not in first.steps[strategy_dir(strategy)].metrics
        assert first.steps[strategy_dir(strategy)].metrics["best_val_accuracy"] is not None
    b_final = read_yaml(study_dir / B_FINAL / "config.yaml")
    assert b_final["unfreeze_start"] == 1 and b_final["val_fraction"] == 0.0  # configs/finetune_final.yaml


def test_a_rerun_reuses_every_finished_step(study):
    first, _, times, again = study
    assert again.trained() == [] and list(again.steps) == STEPS
    assert metrics_times(first.study_dir) == times  # nothing trained again, sweep trials included
    assert again.steps[B_FINAL].metrics == first.steps[B_FINAL].metrics


def test_a_finished_step_with_other_settings_is_refused(study):
    first, _, _, _ = study
    config = dataclasses.replace(first.steps[B_FINAL].config, learning_rate=0.5)
    with pytest.raises(ConfigError, match="b-final holds a finished run with other settings \\(learning_rate\\)"):
        pipeline.run_step(B_FINAL, KINDS["finetune"], config, True, first.study_dir)


def test_the_report_puts_the_published_numbers_beside_ours(study):
    first, paths, _, _ = study
    text = paths["report.md"].read_text()
    a, b = first.steps[A_FINAL].metrics, first.steps[B_FINAL].metrics
    assert f"| test accuracy | {100 * a['test_accuracy']:.2f}% | 40.50% |" in text
    assert f"| test loss | {a['test_loss']:.3f} | 1.756 |" in text
    assert f"| test accuracy | {100 * b['test_accuracy']:.2f}% | 89.55% |" in text and "| 0.401 |" in text
    for strategy, published in PART_B_VALIDATION.items():
        ours = first.steps[strategy_dir(strategy)].metrics["best_val_accuracy"]
        assert re.search(rf"\| {100 * ours:.2f}% \| {100 * published:.2f}% \|", text), strategy
    assert PART_A_TEST["test_accuracy"] == 0.405 and PART_B_TEST["test_loss"] == 0.401
    assert fidelity_table() in text and "random initialisation" in text
    assert "![parallel coordinates of the trials](a-sweep/parallel_coordinates.png)" in text
    page = paths["report.html"].read_text()
    assert page.count("<img src=\"data:image/png;base64,") == text.count("![") and "![" not in page
    assert page.count("<table>") == text.count("\n|---") + text.startswith("|---")


def test_the_error_analysis_is_shown_when_present_and_skipped_when_absent(study, tmp_path):
    first, _, _, _ = study
    a_final = first.steps[A_FINAL]
    text = "\n\n".join(error_analysis(first.study_dir, a_final))
    for name, caption in FINAL_PICTURES:
        assert (f"![{caption}](a-final/{name})" in text) == (a_final.run_dir / name).is_file()
    assert (a_final.run_dir / "top_losses.png").is_file() and "Most confused pairs" in text and "Per class:" in text
    assert "95% bootstrap interval" in results_table(a_final.metrics, PART_A_TEST)
    # A run from before the error analysis: only its grid, and no tables
    older = tmp_path / A_FINAL
    older.mkdir()
    (older / "predictions_grid.png").write_bytes((a_final.run_dir / "predictions_grid.png").read_bytes())
    bare = {k: v for k, v in a_final.metrics.items()
            if k not in ("most_confused", "per_class", "test_accuracy_ci95", "expected_calibration_error")}  # fmt: skip
    shown = error_analysis(tmp_path, dataclasses.replace(a_final, run_dir=older, metrics=bare))
    assert shown == [f"![{FINAL_PICTURES[0][1]}](a-final/predictions_grid.png)"]
    assert "bootstrap" not in results_table(bare, PART_A_TEST)


def test_the_report_goes_to_an_offline_wandb_run_and_nowhere_when_disabled(study):
    first, paths, _, _ = study
    assert log_report(first, paths) is None and not (first.study_dir / "wandb").exists()
    run = log_report(dataclasses.replace(first, mode="offline"), paths)
    assert run is not None
    offline = list((first.study_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].rglob("*.html"))


def test_the_documented_fidelity_table_is_the_rendered_one():
    text = STUDY_PAGE.read_text()
    section = text.split("## Fidelity to the study", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    assert table == fidelity_table()


def test_demo_settings_are_small_and_fine_tune_from_weights_that_work_offline(capsys):
    demo = load_config(StudyConfig, shipped_config("study.yaml"), {"demo": True})
    real = load_config(StudyConfig, shipped_config("study.yaml"))
    assert demo.trials < real.trials and demo.weights == real.weights == "imagenet"
    assert (demo.backbone, real.backbone) == ("efficientnet_lite0", "efficientnetv2_s")
    assert 0 < demo.finetune_epochs < 10 and 0 < demo.scratch_image_size < 224
    assert main(["study", "--demo", "--data-dir", "x"]) == 2
    assert "give one source of images" in capsys.readouterr().err
