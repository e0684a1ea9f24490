"""A run's folder: the name of every file in it, opening (new, resumed or refused), and its history.

    RUN/config.yaml    resolved configuration        RUN/history.csv   one row per finished epoch
    RUN/split.json     the exact train/val/test lists RUN/model.keras   the checkpoint that counts
    RUN/metrics.json   the final test report          RUN/backup/       Keras's backup while a run is unfinished
    RUN/wandb_id.txt   the W&B run to resume          RUN/wandb/        W&B's own files
    RUN/checkpoint.json  the epoch that model.keras holds

Every file is written whole or not at all (inat_keras.files); a folder holds one run, and is reused only to
resume that same run.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

from ..config import RESUME_NEUTRAL_OPTIONS, TrainConfig, read_yaml, to_dict
from ..errors import ConfigError, DataError
from ..files import write_text
from ..locks import LOCK

log = logging.getLogger(__name__)

RUNS_DIR = Path("runs")
CHECKPOINT, PARTIAL_CHECKPOINT = "model.keras", "model.partial.keras"
CHECKPOINT_RECORD = "checkpoint.json"  # which epoch model.keras holds
PREDICTIONS = "predictions.csv"  # one row per test image, from every final run and evaluate (inference.evaluation)
HISTORY, METRICS, SPLIT, CONFIG, BACKUP, WANDB_ID = (
    "history.csv", "metrics.json", "split.json", "config.yaml", "backup", "wandb_id.txt",
)  # fmt: skip
# What a run may have written before its settings (config.yaml): nothing worth keeping.
EARLY_FILES = {SPLIT, WANDB_ID, "wandb"}
# What a run writes before its first epoch ends: a folder holding only these never blocks a corrected command.
UNTRAINED_FILES = EARLY_FILES | {CONFIG, HISTORY}
# The validation metrics a run can be selected by, with the direction that is better.
METRIC_GOALS = {"val_accuracy": "maximize", "val_loss": "minimize"}


def new_run_dir(prefix: str) -> Path:
    """runs/<prefix>-<time>, with a suffix when that exists already."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, suffix = RUNS_DIR / f"{prefix}-{stamp}", 1
    while run_dir.exists():
        suffix += 1
        run_dir = RUNS_DIR / f"{prefix}-{stamp}-{suffix}"
    return run_dir


def empty_output_dir(output_dir: str | None, prefix: str) -> Path:
    """The folder a command writes its outputs into (`--output-dir`, else a new runs/<prefix>-<time>):
    new or empty, never one whose files it could overwrite."""
    out_dir = Path(output_dir) if output_dir else new_run_dir(prefix)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir} is not empty; choose a new --output-dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def open_run_dir(run_dir: Path, config: TrainConfig) -> bool:
    """Whether `run_dir` (locked by the caller) resumes an interrupted run; refuses what it cannot reuse.

    Empty: a new run. Holding only what a run writes before its settings are saved (killed during the
    image scan, a W&B error): started again. Holding the same settings (killed at any later point, even
    before the first epoch ended, or after a W&B error or missing weights): resumed, from its backup
    when there is one. Other settings in a run that trained no epoch (its start failed): started again
    with these. A finished run, other settings after an epoch, or files of something else: refused.
    """
    entries = {p.name for p in run_dir.iterdir()} - {LOCK} if run_dir.exists() else set()
    if not entries:
        return False
    if METRICS in entries:
        raise ConfigError(f"{run_dir} holds a finished run ({METRICS}); choose a new --output-dir")
    if CONFIG not in entries:
        if entries <= EARLY_FILES:
            log.info("%s holds a run stopped before its settings were saved: starting it again", run_dir)
            for name in entries:
                shutil.rmtree(run_dir / name) if (run_dir / name).is_dir() else (run_dir / name).unlink()
            return False
        raise ConfigError(
            f"{run_dir} is not empty and holds no interrupted run of inat-keras (found {', '.join(sorted(entries)[:5])}); "
            "choose a new --output-dir"
        )
    changed = changed_options(run_dir, config)
    if changed and entries <= UNTRAINED_FILES and not read_history(run_dir / HISTORY):
        log.info("%s holds a run that trained no epoch, with other settings (%s): starting it again", run_dir, ", ".join(changed))
        for name in entries:
            shutil.rmtree(run_dir / name) if (run_dir / name).is_dir() else (run_dir / name).unlink()
        return False
    if changed:
        raise ConfigError(
            f"{run_dir} holds an interrupted run with other settings ({', '.join(changed)}); "
            "resume it with the same options or choose a new --output-dir"
        )
    log.info("resuming the interrupted run in %s", run_dir)
    return True


def changed_options(run_dir: Path, config: TrainConfig) -> list[str]:
    """The options (those that change what a run computes) whose saved value in RUN/config.yaml differs."""
    saved = read_yaml(Path(run_dir) / CONFIG)
    current = to_dict(config)
    return sorted(k for k in current if k not in RESUME_NEUTRAL_OPTIONS and saved.get(k) != current[k])


def worker_run_dir(output_dir: str | None) -> tuple[Path, bool]:
    """A private folder for a process that is not the first: it writes nothing where others look.

    It starts from a copy of the shared run folder when that holds an interrupted run (a shared
    file system), so that every process resumes at the same epoch.
    """
    private = Path(tempfile.mkdtemp(prefix="inat-keras-worker-"))
    shared = Path(output_dir) if output_dir else None
    resuming = bool(shared and (shared / BACKUP).is_dir())
    if resuming:
        shutil.copytree(shared, private, dirs_exist_ok=True, ignore=shutil.ignore_patterns("wandb"))
    return private, resuming


def resumed_epoch(run_dir: Path) -> int:
    """The epoch BackupAndRestore will continue from (0 for a fresh run)."""
    meta = run_dir / BACKUP / "training_metadata.json"
    return json.loads(meta.read_text())["epoch"] if meta.exists() else 0


def read_split(run_dir: Path) -> dict | None:
    """The split a run saved, or None where the folder holds none."""
    path = Path(run_dir) / SPLIT
    return json.loads(path.read_text()) if path.is_file() else None


def write_split(run_dir: Path, record: dict) -> None:
    write_text(run_dir / SPLIT, json.dumps(record, indent=1))


def read_checkpoint_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / CHECKPOINT_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def write_checkpoint_record(run_dir: Path, epoch: int) -> None:
    write_text(Path(run_dir) / CHECKPOINT_RECORD, json.dumps({"epoch": epoch}))


def read_history(path) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_history(path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(Path(path), buffer.getvalue())


def best_value(name: str, values) -> float | None:
    """The best finite value of a validation metric, in that metric's direction (None: no such value)."""
    finite = [float(v) for v in values if v not in (None, "", "NA") and math.isfinite(float(v))]
    if not finite:
        return None
    return max(finite) if METRIC_GOALS[name] == "maximize" else min(finite)


def best_in_history(run_dir: Path, name: str = "val_accuracy") -> float | None:
    return best_value(name, [row.get(name) for row in read_history(Path(run_dir) / HISTORY)])
