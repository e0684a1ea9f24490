"""The study's report, laid out like the study's own (Part A: the sweep, the best configuration, the test with
its prediction grid; Part B: the strategy comparison, the final test), with the study's published numbers
beside ours and the fidelity table. `report.md` points at the pictures in the step folders; `report.html` is
the same page with the pictures inside it; with W&B on, the page and pictures go to a run of the study's group.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import wandb

from ..config import STRATEGIES, read_yaml, shipped_config, to_dict
from ..files import write_text
from ..models.backbones import BACKBONES, demo_note
from ..sweeps.report import PARALLEL_PNG, PROGRESS_PNG, SweepRecord, importance, markdown, shown, table
from ..outputs import tracking
from .pipeline import A_FINAL, B_FINAL, SWEEP_DIR, SWEEP_FILE, Step, StudyResult, strategy_dir
from .reference import FIDELITY_HEADER, FIDELITY_ROWS, PART_A_TEST, PART_B_TEST, PART_B_VALIDATION

REPORT_MD, REPORT_HTML = "report.md", "report.html"
STUDY_BEST = "scratch_best.yaml"  # the study's winning configuration, in configs/
STRATEGY_NAMES = {"full": "full", "head": "head only", "last_k": "last k units", "gradual": "gradual unfreezing"}
# Pictures of a final run (inference.evaluation), shown when the run wrote them.
FINAL_PICTURES = (
    ("predictions_grid.png", "10x3 grid of test images: true and predicted class (green right, red wrong)"),
    ("confusion_matrix.png", "confusion matrix on the test set"),
    ("top_losses.png", "the most confidently wrong test images"),
    ("reliability_diagram.png", "calibration: confidence against accuracy"),
)


def percent(value) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "–"


def decimal(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def fidelity_table() -> str:
    """docs/study.md's "Fidelity to the study" table, from the rows in study.reference."""
    return markdown(list(FIDELITY_HEADER), [list(row) for row in FIDELITY_ROWS])


def picture(study_dir: Path, path: Path, caption: str) -> str:
    return f"![{caption}]({path.relative_to(study_dir).as_posix()})"


def results_table(metrics: dict, published: dict) -> str:
    """Ours beside the study's; the error analysis's figures when the run has them."""
    rows = [
        ["test accuracy", percent(metrics.get("test_accuracy")), percent(published["test_accuracy"])],
        ["test loss", decimal(metrics.get("test_loss")), decimal(published["test_loss"])],
    ]
    interval = metrics.get("test_accuracy_ci95")
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        rows.append(["95% bootstrap interval of the accuracy", f"{percent(interval[0])} – {percent(interval[1])}", "–"])
    if "expected_calibration_error" in metrics:
        rows.append(["expected calibration error", decimal(metrics["expected_calibration_error"]), "–"])
    rows.append(["test images", str(metrics.get("test_images", "–")), "2000"])
    return markdown(["", "ours", "the study"], rows)


def error_analysis(study_dir: Path, step: Step) -> list[str]:
    """A final run's pictures, most-confused pairs and per-class scores: those that it wrote."""
    sections = [picture(study_dir, step.run_dir / name, caption) for name, caption in FINAL_PICTURES
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


def sweep_source(result: StudyResult) -> Path:
    return Path(result.settings.sweep or shipped_config(SWEEP_FILE))


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
    rows = [[r["parameter"], decimal(r["importance"]), decimal(r["pearson"]), decimal(r["spearman"])]
            for r in importance(record)]  # fmt: skip
    return markdown(["parameter", "importance", "Pearson", "Spearman"], rows)


def best_config_table(result: StudyResult) -> str:
    winner = result.sweep.winner()
    study = read_yaml(shipped_config(STUDY_BEST))
    final = to_dict(result.steps[A_FINAL].config)
    rows = [[name, shown(winner["params"].get(name)), shown(study.get(name))] for name in result.sweep.swept]
    rows += [[name, shown(final[name]), shown(study[name])] for name in ("image_size", "epochs")]
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
    data = "the demo data" if settings.demo else f"`{settings.data_dir or settings.tfds_dir or 'iNaturalist-12K'}`"
    held_out = f"{100 * steps[strategy_dir(STRATEGIES[0])].config.val_fraction:g}%"
    text = (
        f"Data: {data}. Backend: {steps[A_FINAL].metrics.get('backend', '–')}. Part A: {len(result.sweep.trials)} "
        f"sweep trial(s), then the winner retrained on all of train/ and tested. Part B: {BACKBONES[settings.backbone].title}, weights "
        f"`{settings.weights}`, four strategies on the validation split ({held_out} of train/), then the study's "
        "final run tested. Every step is a run folder in this study's folder."
    )
    return [f"# The study, reproduced: {result.study_dir.name}", text, *caveats(result)]


def part_a(result: StudyResult) -> list[str]:
    record, study_dir = result.sweep, result.study_dir
    held_out = f"{100 * record.winner()['config']['val_fraction']:g}%"
    method = read_yaml(sweep_source(result)).get("method")
    out = ["## Part A: training from scratch", "### The sweep (validation accuracy)"]
    out.append(f"`{sweep_source(result).name}`: {method} search over {len(record.swept)} parameter(s), ranked by "
               f"`{record.metric}` on the validation split ({held_out} of train/):")  # fmt: skip
    out.append(markdown(*table(record)))
    dropped = dropped_values(result)
    if dropped:
        out.append(f"Left out of the search at this image size (no model fits): {'; '.join(dropped)}.")
    out.append(picture(study_dir, result.sweep_report[PARALLEL_PNG], "parallel coordinates of the trials"))
    out.append(picture(study_dir, result.sweep_report[PROGRESS_PNG], "validation accuracy over the trials"))
    out += ["Parameter importance (random forest) and correlation with the validation accuracy:", importance_table(record)]
    out += ["### The best configuration", best_config_table(result)]
    out += ["### The best model on the test set", results_table(result.steps[A_FINAL].metrics, PART_A_TEST)]
    return out + error_analysis(study_dir, result.steps[A_FINAL])


def part_b(result: StudyResult) -> list[str]:
    steps = result.steps
    rows = []
    for strategy in STRATEGIES:
        metrics = steps[strategy_dir(strategy)].metrics
        rows.append([STRATEGY_NAMES[strategy], percent(metrics.get("best_val_accuracy")),
                     percent(PART_B_VALIDATION[strategy]), str(metrics.get("epochs_run", "–"))])  # fmt: skip
    out = [f"## Part B: fine-tuning {BACKBONES[result.settings.backbone].title}", "### The strategies (validation accuracy)"]
    out.append(markdown(["strategy", "ours", "the study", "epochs"], rows))
    out += ["### The final run on the test set (configs/finetune_final.yaml)", results_table(steps[B_FINAL].metrics, PART_B_TEST)]
    return out + error_analysis(result.study_dir, steps[B_FINAL])


def steps_table(result: StudyResult) -> str:
    rows = [[SWEEP_DIR, f"`{SWEEP_DIR}/`", f"{len(result.sweep.trials)} trial(s) recorded"]]
    rows += [[name, f"`{step.run_dir.relative_to(result.study_dir).as_posix()}/`", "trained now" if step.trained else "reused"]
             for name, step in result.steps.items()]  # fmt: skip
    return markdown(["step", "folder", "this call"], rows)


def study_markdown(result: StudyResult) -> str:
    sections = [*overview(result), *part_a(result), *part_b(result)]
    sections += ["## Fidelity to the study", fidelity_table(), "## Steps", steps_table(result)]
    return "\n\n".join(sections) + "\n"


def inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def html_table(lines: list[str]) -> str:
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    head = "".join(f"<th>{inline(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in cells[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def embedded(study_dir: Path, block: str) -> str:
    caption, path = re.fullmatch(r"!\[(.*)\]\((.*)\)", block).groups()
    data = base64.b64encode((study_dir / path).read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}"><figcaption>{inline(caption)}</figcaption></figure>'


def to_html(text: str, study_dir: Path) -> str:
    """The report's own Markdown (headings, paragraphs, tables, pictures) as one page, pictures inside."""
    parts = []
    for block in text.strip().split("\n\n"):
        if block.startswith("#"):
            level = len(block) - len(block.lstrip("#"))
            parts.append(f"<h{level}>{inline(block[level:].strip())}</h{level}>")
        elif block.startswith("|"):
            parts.append(html_table(block.splitlines()))
        elif block.startswith("!["):
            parts.append(embedded(study_dir, block))
        else:
            parts.append(f"<p>{inline(block)}</p>")
    style = ("body{font-family:sans-serif;max-width:75em;margin:auto;padding:1em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:.25em .5em;text-align:left;vertical-align:top}img{max-width:100%}")  # fmt: skip
    title = html.escape(text.splitlines()[0].lstrip("# "))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title><style>{style}</style></head>"
            f"<body>\n{chr(10).join(parts)}\n</body></html>\n")  # fmt: skip


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
