"""The study's steps, each an ordinary run folder under the study folder:

    STUDY/a-sweep      Part A's local sweep (trials.json, trials/, its report and best_config.yaml)
    STUDY/a-final      the winner retrained on all of train/ (val_fraction 0), tested
    STUDY/b-<strategy> Part B's strategies (full, head, last_k, gradual) on the validation split, no test
    STUDY/b-final      Part B's final run as the study ran it (configs/finetune_final.yaml), tested

Run again on the same folder, the study reuses every finished step (one with metrics.json), resumes an
interrupted one through the run folder's own resume, and lets the sweep resume from trials.json.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras

from ..config import (
    STRATEGIES,
    FinetuneConfig,
    ScratchConfig,
    StudyConfig,
    TrainConfig,
    load_config,
    read_yaml,
    save_config,
    shipped_config,
)
from ..errors import ConfigError
from ..locks import LOCK, folder_lock
from ..sweeps.launch import run_sweep
from ..sweeps.report import BEST_CONFIG, SweepRecord, from_folder, write_report
from ..outputs import tracking
from ..training.kinds import KINDS, Kind
from ..outputs.run_folder import CONFIG, METRICS, changed_options, new_run_dir

log = logging.getLogger(__name__)

SETTINGS = "study.yaml"  # the study's resolved settings, in its folder
SWEEP_DIR, A_FINAL, B_FINAL = "a-sweep", "a-final", "b-final"
SWEEP_FILE = "sweep_scratch.yaml"  # the study's search space, in configs/
STRATEGY_CONFIG, FINAL_CONFIG = "finetune.yaml", "finetune_final.yaml"


def strategy_dir(strategy: str) -> str:
    return f"b-{strategy}"


@dataclass
class Step:
    """One run folder of the study and what it reported; `trained`: by this call (else reused or resumed)."""

    name: str
    run_dir: Path
    metrics: dict
    trained: bool
    config: TrainConfig


@dataclass
class StudyResult:
    study_dir: Path
    settings: StudyConfig
    mode: str  # the W&B mode every run used
    sweep: SweepRecord
    sweep_report: dict[str, Path]
    steps: dict[str, Step] = field(default_factory=dict)
    seconds: float = 0.0  # this call's wall time, steps reused included

    def trained(self) -> list[str]:
        return [name for name, step in self.steps.items() if step.trained]


def sources(settings: StudyConfig) -> dict:
    """Where every run of the study reads its images."""
    values = {"data_dir": settings.data_dir, "demo": settings.demo or None, "tfds_dir": settings.tfds_dir}
    return {k: v for k, v in values.items() if v is not None}


def given(**values) -> dict:
    """The study's numeric settings that override the run configs: 0 means the config's own."""
    return {k: v for k, v in values.items() if v}


def open_study_dir(settings: StudyConfig) -> Path:
    """A new folder, or one that holds a study (to resume); anything else is refused."""
    study_dir = Path(settings.output_dir) if settings.output_dir else new_run_dir("study")
    entries = {p.name for p in study_dir.iterdir()} - {LOCK} if study_dir.exists() else set()
    if entries and SETTINGS not in entries:
        raise ConfigError(f"{study_dir} is not empty and holds no study ({SETTINGS}); choose a new --output-dir")
    return study_dir


def run_step(name: str, kind: Kind, config: TrainConfig, final: bool, study_dir: Path) -> Step:
    """A finished run folder with these settings is reused; one with other settings is refused; else train
    (an interrupted run resumes: Kind.train opens the folder)."""
    run_dir = study_dir / name
    if (run_dir / METRICS).exists():
        changed = changed_options(run_dir, config)
        if read_yaml(run_dir / CONFIG).get("epochs") != config.epochs:
            changed.append("epochs")
        if changed:
            raise ConfigError(
                f"{run_dir} holds a finished run with other settings ({', '.join(changed)}); "
                "rerun the study with its settings, or remove that folder to train it again"
            )
        log.info("study step %s: finished before, reused", name)
        return Step(name, run_dir, json.loads((run_dir / METRICS).read_text()), False, config)
    log.info("study step %s: training in %s", name, run_dir)
    try:
        _, metrics = kind.train(config, final=final)
    finally:
        keras.backend.clear_session()
    return Step(name, run_dir, metrics, True, config)


def run_study(settings: StudyConfig) -> StudyResult:
    """Part A, then Part B; every step's folder under the study folder (see the module docstring)."""
    started = time.perf_counter()
    mode = tracking.resolve_mode(settings.wandb)  # once, before any folder exists
    study_dir = open_study_dir(settings)
    with folder_lock(study_dir, "study"):
        save_config(settings, study_dir / SETTINGS)
        with tracking.grouped(study_dir.name):
            result = part_a(settings, study_dir, mode)
            part_b(settings, study_dir, mode, result)
    result.seconds = time.perf_counter() - started
    return result


def part_a(settings: StudyConfig, study_dir: Path, mode: str) -> StudyResult:
    """The sweep (local, so that it resumes from its folder), its report, the winner retrained on all of
    train/ at the trials' image size (docs/sweeps.md: "Retrain the winner"), tested."""
    sweep_dir = study_dir / SWEEP_DIR
    overrides = {**sources(settings), **given(epochs=settings.trial_epochs, image_size=settings.scratch_image_size)}
    run_sweep(settings.sweep or shipped_config(SWEEP_FILE), settings.trials, overrides, sweep_dir, offline=True)
    record = from_folder(sweep_dir)
    paths = write_report(record, sweep_dir)
    winner = record.winner()
    retrain = {
        **sources(settings),
        "val_fraction": 0.0,
        "early_stopping": 0,  # no validation split to watch
        "image_size": settings.scratch_image_size or winner["config"]["image_size"],
        **given(epochs=settings.scratch_epochs),
        "output_dir": str(study_dir / A_FINAL),
        "wandb": mode,
        "wandb_project": settings.wandb_project,
    }
    config = load_config(ScratchConfig, paths[BEST_CONFIG], retrain)
    result = StudyResult(study_dir, settings, mode, record, paths)
    result.steps[A_FINAL] = run_step(A_FINAL, KINDS["scratch"], config, True, study_dir)
    return result


def part_b(settings: StudyConfig, study_dir: Path, mode: str, result: StudyResult) -> None:
    """The four strategies compared on the validation split (no test, as a selection step), then the
    study's final run on all of train/, tested."""
    common = {
        **sources(settings),
        **given(epochs=settings.finetune_epochs, image_size=settings.finetune_image_size),
        "backbone": settings.backbone,
        "weights": settings.weights,
        "wandb": mode,
        "wandb_project": settings.wandb_project,
    }
    kind = KINDS["finetune"]
    for strategy in STRATEGIES:
        name = strategy_dir(strategy)
        values = {**common, "strategy": strategy, "output_dir": str(study_dir / name)}
        config = load_config(FinetuneConfig, shipped_config(STRATEGY_CONFIG), values)
        result.steps[name] = run_step(name, kind, config, False, study_dir)
    config = load_config(FinetuneConfig, shipped_config(FINAL_CONFIG), {**common, "output_dir": str(study_dir / B_FINAL)})
    result.steps[B_FINAL] = run_step(B_FINAL, kind, config, True, study_dir)
