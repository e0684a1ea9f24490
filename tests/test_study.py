"""`run.py study`: every step an ordinary run folder, finished steps reused on a rerun, and a report with the
study's published numbers beside ours. Part B's EfficientNetV2-S is replaced by a tiny model of the same kind
(its training is tested in test_strategies.py; here the orchestration is under test)."""

import dataclasses
import importlib.metadata
import json
import os
import re
import subprocess
from pathlib import Path

import keras
import pytest

from inat_keras.cli import main
from inat_keras.errors import ConfigError
from inat_keras.config import STRATEGIES, StudyConfig, load_config, read_yaml, shipped_config
from inat_keras.study import pipeline
from inat_keras.study.pipeline import A_FINAL, B_FINAL, SWEEP_DIR, run_study, strategy_dir
from inat_keras.study.reference import PART_A_TEST, PART_B_TEST, PART_B_VALIDATION
from inat_keras.study.report import (
    FINAL_PICTURES,
    STRATEGIES_PNG,
    error_analysis,
    fidelity_table,
    log_report,
    results_table,
    study_markdown,
    write_study_report,
)
from inat_keras.training.kinds import KINDS, one_stage

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parents[1]
STUDY_PAGE = ROOT / "docs" / "study.md"
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
    constants = {k: v for k, v in make_tiny_cnn_options().items() if k not in ("wandb", "learning_rate", "epochs", "pictures")}
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


@pytest.mark.large
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
    assert fidelity_table(first) in text and "random initialisation" in text
    assert "![Part A, the sweep: parallel coordinates of the trials](a-sweep/parallel_coordinates.png)" in text
    page = paths["report.html"].read_text()
    assert page.count("<img src=\"data:image/png;base64,") == text.count("![") and "![" not in page
    assert page.count("<table") == text.count("\n|---") + text.startswith("|---")


def cell(text: str, row: str) -> list[str]:
    """The cells of the first table row that starts with `row`."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {row} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]


def test_every_comparison_states_what_both_numbers_were_measured_on(study):
    first, paths, _, _ = study
    text, data = paths["report.md"].read_text(), first.settings.data_dir
    tested = section(text, "### Part A: the best model on the test set")
    assert cell(tested, "data") == [f"images (`{data}`): 30 train / 12 test images", "iNaturalist-12K: 9,999 train / 2,000 test images"]
    assert cell(tested, "image size") == ["32x32", "224x224"] and cell(tested, "epochs") == ["1", "10"]
    assert cell(tested, "weights") == ["none (from scratch)"] * 2
    strategies = section(text, "### Part B: the strategies (validation accuracy)")
    assert "| strategy | ours | the study | epochs (ours / the study) |" in strategies
    assert all(cell(strategies, name)[2] == "1 / 10" for name in ("full", "head only", "last k units", "gradual unfreezing"))
    assert cell(strategies, "data") == [f"images (`{data}`): 24 train / 6 validation images",
                                        "iNaturalist-12K: 7,999 train / 2,000 validation images"]  # fmt: skip
    assert cell(strategies, "weights") == ["none (random initialisation)", "ImageNet (torchvision IMAGENET1K_V1)"]
    assert cell(strategies, "model") == ["EfficientNetV2-S", "EfficientNetV2-S"]
    final = section(text, "### Part B: the final run on the test set")
    assert cell(final, "image size") == ["32x32", "384x384"] and cell(final, "epochs") == ["1", "10"]
    assert cell(final, "data")[0] == f"images (`{data}`): 30 train / 12 test images"


def test_the_report_says_when_where_and_with_what_it_ran(study):
    first, paths, _, _ = study
    text = paths["report.md"].read_text()
    assert text.startswith("# The study, reproduced\n")  # no folder name, and no demo
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d \(this report\)", cell(text, "date")[0])
    packages = cell(text, "packages")[0]
    for name in ("inat-keras", "keras", "tensorflow", "jax", "keras-cv"):
        assert f"{name} {importlib.metadata.version(name)}" in packages
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
        assert cell(text, "git commit")[0].startswith(head.strip())
    assert re.fullmatch(rf"CPU: .+, {os.cpu_count()} cores; accelerator: .+", cell(text, "device")[0])
    assert cell(text, "backend") == [keras.backend.backend()] and cell(text, "seeds") == ["42"]
    assert re.fullmatch(r"[\d.]+ min of training in 2 trial\(s\) and 6 runs; this call [\d.]+ min", cell(text, "run time")[0])
    demo = dataclasses.replace(first, settings=dataclasses.replace(first.settings, demo=True, data_dir=None))
    shown = study_markdown(demo)
    assert shown.startswith("# The study, reproduced (demo)\n") and "**Demo data**" in shown
    assert "demo: scikit-learn digits, 8x8 upscaled: 30 train / 12 test images" in shown


def test_the_fidelity_table_describes_what_this_study_ran(study):
    first, paths, _, _ = study
    ran, shipped = fidelity_table(first), fidelity_table()
    assert "| B | input | Resize((384,384)), ImageNet mean/std (finetune_model.py:26-28) | 32, the weights' own scaling | " \
           "**this run differs from the study's setting**; besides: see above |" in ran  # fmt: skip
    assert "| B | batch, epochs | 16, 10 | 16, 1 | **this run differs from the study's setting** |" in ran
    assert "| 384, the weights' own scaling | see above |" in shipped and "| 16, 10 | 16, 10 | none |" in shipped
    assert "`sweep.yaml`: bayes on `val_accuracy`, 1 parameter(s), 2 trial(s)" in ran
    assert "| A | split | `train_test_split` 20%, stratified, seed 42 (data_utils.py:47-53) | 20% stratified, seed 42 " \
           "(scikit-learn) | none |" in ran  # what did not change says none  # fmt: skip


def test_the_report_shows_every_runs_curves_and_the_strategies_on_one_picture(study):
    first, paths, _, _ = study
    text, study_dir = paths["report.md"].read_text(), first.study_dir
    for name, step in first.steps.items():
        drawn, finished = ((step.run_dir / name).stat().st_mtime_ns for name in ("curves.png", "metrics.json"))
        assert drawn <= finished  # drawn by the run itself when its training ended, not by the report
        assert re.search(rf"!\[Part [AB], [^\]]*`{name}`: training curves[^\]]*\]\({name}/curves.png\)", text), name
    assert f"![Part B, the strategies: validation accuracy and loss per epoch, one line per strategy]({STRATEGIES_PNG})" in text
    assert (study_dir / STRATEGIES_PNG).is_file()
    captions = re.findall(r"!\[([^\]]+)\]", text)
    assert len(captions) == len(set(captions))  # Part A's and Part B's pictures told apart


def test_the_contents_link_to_every_heading(study):
    _, paths, _, _ = study
    text, page = paths["report.md"].read_text(), paths["report.html"].read_text()
    contents = section(text, "## Contents")
    headings = re.findall(r"^#{2,3} (.+)$", text.split("## Contents", 1)[1], re.M)
    links = re.findall(r"\[([^\]]+)\]\(#([^)]+)\)", contents)
    assert [title for title, _ in links] == headings and len(headings) >= 9
    for title, anchor in links:
        assert re.search(rf'<h[23] id="{anchor}">', page), anchor
        assert f'<a href="#{anchor}">' in page


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
