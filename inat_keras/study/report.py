"""The study's report, laid out like the study's own (Part A: the sweep, the best configuration, the test with
its prediction grid; Part B: the strategy comparison, the final test), with the study's published numbers
beside ours and the conditions of both (study.conditions), each run's training curves and the fidelity table.
`report.md` points at the pictures in the step folders; `report.html` is the same page with the pictures inside
it (study.page); with W&B on, the page and pictures go to a run of the study's group.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import wandb

from ..analysis.curves import CURVES, plot_curves, plot_overlay
from ..analysis.figures import caption
from ..config import STRATEGIES, read_yaml, shipped_config, to_dict
from ..files import write_text
from ..models.backbones import BACKBONES, demo_note
from ..outputs import tracking
from ..outputs.run_folder import HISTORY, read_history
from ..sweeps.report import PARALLEL_PNG, PROGRESS_PNG, SweepRecord, importance, importance_withheld, markdown, shown, table
from .conditions import (
    condition_rows,
    data_name,
    fidelity_facts,
    fidelity_rows,
    header_rows,
    our_data,
    shipped_facts,
    study_data,
    sweep_facts,
)
from .page import contents, to_html
from .pipeline import A_FINAL, B_FINAL, SWEEP_DIR, SWEEP_FILE, Step, StudyResult, strategy_dir
from .reference import (
    FIDELITY_HEADER,
    PART_A_SETTINGS,
    PART_A_TEST,
    PART_B_SETTINGS,
    PART_B_TEST,
    PART_B_VALIDATION,
    STUDY_IMAGES,
)

REPORT_MD, REPORT_HTML = "report.md", "report.html"
STRATEGIES_PNG = "part_b_strategies.png"  # Part B's validation curves, one line per strategy, in the study folder
STUDY_BEST = "scratch_best.yaml"  # the study's winning configuration, in configs/
STRATEGY_NAMES = {"full": "full", "head": "head only", "last_k": "last k units", "gradual": "gradual unfreezing"}
# Pictures of a final run (inference.evaluation), shown when the run wrote them.
FINAL_PICTURES = (
    ("predictions_grid.png", "10x3 grid of test images with their files: true and predicted class (WRONG in red)"),
    ("confusion_matrix.png", "confusion matrix on the test set: counts, and each row's shares"),
    ("class_accuracy.png", "accuracy of each class on the test set"),
    ("top_losses.png", "the test images with the least probability on their true class (largest loss first)"),
    ("reliability_diagram.png", "calibration: confidence against accuracy"),
)
# The study's images behind each of its numbers (reference.STUDY_IMAGES).
STUDY_TESTED = {"train": STUDY_IMAGES["train"], "test": STUDY_IMAGES["test"]}
STUDY_VALIDATED = {"train": STUDY_IMAGES["train_with_validation"], "validation": STUDY_IMAGES["validation"]}


def percent(value) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "–"


def decimal(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def sweep_source(result: StudyResult) -> Path:
    return Path(result.settings.sweep or shipped_config(SWEEP_FILE))


def run_facts(result: StudyResult) -> dict:
    """What this study's runs used, for the fidelity table's "here" column."""
    steps = result.steps
    b = {s: steps[strategy_dir(s)].config for s in STRATEGIES} | {"final": steps[B_FINAL].config}
    classes = len(steps[B_FINAL].metrics.get("class_names") or []) or 10
    sweep = sweep_facts(sweep_source(result), len(result.sweep.trials))
    return fidelity_facts(result.sweep.winner()["config"], steps[A_FINAL].config, sweep, b, classes)


def fidelity_table(result: StudyResult | None = None) -> str:
    """The "Fidelity to the study" table: "here" as this study ran (docs/study.md: as the shipped configs run)."""
    shipped = shipped_facts()
    return markdown(list(FIDELITY_HEADER), fidelity_rows(run_facts(result) if result else shipped, shipped))


def picture(study_dir: Path, path: Path, caption_text: str) -> str:
    return f"![{caption_text}]({path.relative_to(study_dir).as_posix()})"


def results_table(metrics: dict, published: dict, conditions: list[list[str]] = ()) -> str:
    """Ours beside the study's; the error analysis's figures when the run has them; then what both were measured on."""
    rows = [
        ["test accuracy", percent(metrics.get("test_accuracy")), percent(published["test_accuracy"])],
        ["test loss", decimal(metrics.get("test_loss")), decimal(published["test_loss"])],
    ]
    interval = metrics.get("test_accuracy_ci95")
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        rows.append(["95% bootstrap interval of the accuracy", f"{percent(interval[0])} – {percent(interval[1])}", "–"])
    if "expected_calibration_error" in metrics:
        rows.append(["expected calibration error", decimal(metrics["expected_calibration_error"]), "–"])
    rows.append(["test images", str(metrics.get("test_images", "–")), str(STUDY_IMAGES["test"])])
    return markdown(["", "ours", "the study"], rows + list(conditions))


def run_label(step: Step, part: str) -> str:
    return f"{part}, `{step.name}`"


def curves(result: StudyResult, step: Step, part: str) -> str:
    """The run's training curves (curves.png; drawn here from its history.csv for a run trained before runs drew them)."""
    path = step.run_dir / CURVES
    if not path.is_file():
        plot_curves(read_history(step.run_dir / HISTORY), step.metrics.get("unfreezing_schedule"), path,
                    caption(f"run {step.run_dir.name}", our_data(result.settings, step.metrics)))  # fmt: skip
    return picture(result.study_dir, path, f"{run_label(step, part)}: training curves (loss, accuracy, learning rate per epoch)")


def error_analysis(study_dir: Path, step: Step, part: str = "") -> list[str]:
    """A final run's pictures, most-confused pairs and per-class scores: those that it wrote."""
    label = f"{run_label(step, part)}: " if part else ""
    sections = [picture(study_dir, step.run_dir / name, label + text) for name, text in FINAL_PICTURES
                if (step.run_dir / name).is_file()]  # fmt: skip
    pairs = step.metrics.get("most_confused") or []
    if pairs:
        rows = [[pair["true"], pair["predicted"], str(pair["count"])] for pair in pairs]
        sections += ["Most confused pairs of classes:", markdown(["true", "predicted", "images"], rows)]
    scores = step.metrics.get("per_class") or {}
    if scores:
        rows = [[name, decimal(s["precision"]), decimal(s["recall"]), decimal(s["f1"]), str(s["support"])]
                for name, s in scores.items()]  # fmt: skip
        sections += ["Per class:", markdown(["class", "precision", "recall", "F1", "images"], rows)]
    return sections


def dropped_values(result: StudyResult) -> list[str]:
    """Values of the sweep file that the search left out because no model could be built with them."""
    notes = []
    for name, spec in read_yaml(sweep_source(result))["parameters"].items():
        kept = result.sweep.parameters.get(name, {}).get("values")
        left = [v for v in spec.get("values", []) if kept is not None and v not in kept]
        if left:
            notes.append(f"{name}: {', '.join(map(shown, left))}")
    return notes


def importance_table(record: SweepRecord) -> str:
    """The parameters ranked, or the sentence that says why there are too few trials to rank them."""
    withheld = importance_withheld(record)
    if withheld:
        return withheld
    rows = [[r["parameter"], decimal(r["importance"]), decimal(r["pearson"]), decimal(r["spearman"])]
            for r in importance(record)]  # fmt: skip
    return markdown(["parameter", "importance", "Pearson", "Spearman"], rows)


def best_config_table(result: StudyResult) -> str:
    winner = result.sweep.winner()
    study = read_yaml(shipped_config(STUDY_BEST))
    final = result.steps[A_FINAL]
    rows = [[name, shown(winner["params"].get(name)), shown(study.get(name))] for name in result.sweep.swept]
    rows += [[name, shown(getattr(final.config, name)), shown(study[name])] for name in ("image_size", "epochs")]
    rows.append(["data (retrained winner)", our_data(result.settings, final.metrics), study_data(STUDY_TESTED)])
    return markdown(["option", "ours", "the study"], rows)


def caveats(result: StudyResult) -> list[str]:
    settings, notes = result.settings, []
    if settings.demo:
        notes.append(
            "**Demo data**: scikit-learn's 8x8 handwritten digits, upscaled, with few trials, tiny images and few "
            "epochs. This run checks the whole pipeline; its numbers are not comparable with the study's."
        )
    note = demo_note(settings.demo, settings.backbone)
    if note:
        notes.append(f"**Part B uses EfficientNet-Lite0**: {note}.")
    if settings.weights == "none":
        notes.append(
            "**Part B started from random weights** (`--weights none`, random initialisation): its numbers say "
            "nothing about transfer from ImageNet."
        )
    elif settings.weights != "imagenet":
        notes.append(f"**Part B used the weights `{settings.weights}`**, not the official ImageNet weights.")
    return notes


def overview(result: StudyResult) -> list[str]:
    settings, steps = result.settings, result.steps
    data = data_name(settings, steps[A_FINAL].metrics.get("class_names"))
    held_out = f"{100 * steps[strategy_dir(STRATEGIES[0])].config.val_fraction:g}%"
    text = (
        f"Data: {data}. Part A: {len(result.sweep.trials)} sweep trial(s), then the winner retrained on all of train/ "
        f"and tested. Part B: {BACKBONES[settings.backbone].title}, weights `{settings.weights}`, four strategies on the "
        f"validation split ({held_out} of train/), then the study's final run tested. Every step is a run folder in "
        "this study's folder. Every comparison with the study's published numbers states what both were measured on."
    )
    title = "# The study, reproduced (demo)" if settings.demo else "# The study, reproduced"
    return [title, text, *caveats(result), markdown(["run conditions", ""], header_rows(result))]


def part_a(result: StudyResult) -> list[str]:
    record, study_dir, final = result.sweep, result.study_dir, result.steps[A_FINAL]
    held_out = f"{100 * record.winner()['config']['val_fraction']:g}%"
    method = read_yaml(sweep_source(result)).get("method")
    out = ["## Part A: training from scratch", "### Part A: the sweep (validation accuracy)"]
    out.append(f"`{sweep_source(result).name}`: {method} search over {len(record.swept)} parameter(s), ranked by "
               f"`{record.metric}` on the validation split ({held_out} of train/):")  # fmt: skip
    out.append(markdown(*table(record)))
    dropped = dropped_values(result)
    if dropped:
        out.append(f"Left out of the search at this image size (no model fits): {'; '.join(dropped)}.")
    out.append(picture(study_dir, result.sweep_report[PARALLEL_PNG], "Part A, the sweep: parallel coordinates of the trials"))
    out.append(picture(study_dir, result.sweep_report[PROGRESS_PNG], "Part A, the sweep: validation accuracy over the trials"))
    out += ["Parameter importance (random forest) and correlation with the validation accuracy:", importance_table(record)]
    out += ["### Part A: the best configuration", best_config_table(result)]
    conditions = condition_rows(result.settings, final.config, final.metrics, PART_A_SETTINGS, STUDY_TESTED)
    out += ["### Part A: the best model on the test set", results_table(final.metrics, PART_A_TEST, conditions)]
    return out + [curves(result, final, "Part A")] + error_analysis(study_dir, final, "Part A")


def strategies_picture(result: StudyResult) -> str:
    """Part B's strategies on one picture, drawn from their history.csv."""
    steps = {s: result.steps[strategy_dir(s)] for s in STRATEGIES}
    path = result.study_dir / STRATEGIES_PNG
    data = our_data(result.settings, steps[STRATEGIES[0]].metrics)
    plot_overlay({STRATEGY_NAMES[s]: read_history(step.run_dir / HISTORY) for s, step in steps.items()}, path,
                 caption(f"study {result.study_dir.name}", data), "Part B, the strategies: validation curves")  # fmt: skip
    return picture(result.study_dir, path, "Part B, the strategies: validation accuracy and loss per epoch, one line per strategy")


def part_b(result: StudyResult) -> list[str]:
    steps, settings = result.steps, result.settings
    rows = []
    for strategy in STRATEGIES:
        step = steps[strategy_dir(strategy)]
        rows.append([STRATEGY_NAMES[strategy], percent(step.metrics.get("best_val_accuracy")),
                     percent(PART_B_VALIDATION[strategy]), f"{step.metrics.get('epochs_run', '–')} / {PART_B_SETTINGS['epochs']}"])  # fmt: skip
    gradual = steps[strategy_dir("gradual")]
    out = [f"## Part B: fine-tuning {BACKBONES[settings.backbone].title}", "### Part B: the strategies (validation accuracy)"]
    out.append(markdown(["strategy", "ours", "the study", "epochs (ours / the study)"], rows))
    out.append("Every strategy above was measured on:")
    out.append(markdown(["", "ours", "the study"], condition_rows(settings, gradual.config, gradual.metrics, PART_B_SETTINGS, STUDY_VALIDATED)))
    out.append(strategies_picture(result))
    out += [curves(result, steps[strategy_dir(s)], f"Part B, {STRATEGY_NAMES[s]}") for s in STRATEGIES]
    final = steps[B_FINAL]
    conditions = condition_rows(settings, final.config, final.metrics, PART_B_SETTINGS, STUDY_TESTED)
    out += ["### Part B: the final run on the test set (configs/finetune_final.yaml)", results_table(final.metrics, PART_B_TEST, conditions)]
    return out + [curves(result, final, "Part B")] + error_analysis(result.study_dir, final, "Part B")


def steps_table(result: StudyResult) -> str:
    rows = [[SWEEP_DIR, f"`{SWEEP_DIR}/`", f"{len(result.sweep.trials)} trial(s) recorded"]]
    rows += [[name, f"`{step.run_dir.relative_to(result.study_dir).as_posix()}/`", "trained now" if step.trained else "reused"]
             for name, step in result.steps.items()]  # fmt: skip
    return markdown(["step", "folder", "this call"], rows)


def fidelity_section(result: StudyResult) -> list[str]:
    return [
        "## Fidelity to the study",
        "The study's code beside what this study's runs used (\"here\"); a row marked **this run differs** is one "
        "where these runs did not use the study's setting (the demo's, or options given on the command line).",
        fidelity_table(result),
    ]


def study_markdown(result: StudyResult) -> str:
    head, body = overview(result), [*part_a(result), *part_b(result), *fidelity_section(result), "## Steps", steps_table(result)]
    text = "\n\n".join(body)
    return "\n\n".join([*head, "## Contents", contents(text), text]) + "\n"


def write_study_report(result: StudyResult) -> dict[str, Path]:
    paths = {name: result.study_dir / name for name in (REPORT_MD, REPORT_HTML)}
    text = study_markdown(result)
    write_text(paths[REPORT_MD], text)
    write_text(paths[REPORT_HTML], to_html(text, result.study_dir))
    return paths


def headline(result: StudyResult) -> dict:
    """The numbers of the report, flat, for a W&B summary."""
    steps = result.steps
    figures = {f"part_a/{k}": steps[A_FINAL].metrics.get(k) for k in PART_A_TEST}
    figures |= {f"part_b/{k}": steps[B_FINAL].metrics.get(k) for k in PART_B_TEST}
    figures |= {f"part_b/val_accuracy/{s}": steps[strategy_dir(s)].metrics.get("best_val_accuracy") for s in STRATEGIES}
    return {k: v for k, v in figures.items() if isinstance(v, (int, float))}


def log_report(result: StudyResult, paths: dict[str, Path]):
    """The page and its pictures as a W&B run of the study's group (offline: in STUDY/wandb/ for `wandb sync`);
    nothing when W&B is disabled. Returns the run, or None."""
    if result.mode == "disabled":
        return None
    study_dir = result.study_dir
    run = tracking.start_run({**to_dict(result.settings), "kind": "study-report"}, study_dir, result.mode,
                             result.settings.wandb_project, group=study_dir.name)  # fmt: skip
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", paths[REPORT_MD].read_text())
    run.log({"report": wandb.Html(paths[REPORT_HTML].read_text()),
             **{path.removesuffix(".png"): wandb.Image(str(study_dir / path)) for path in pictures}})  # fmt: skip
    run.summary.update(headline(result))
    run.finish()
    return run
