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

from ..config import RESUME_NEUTRAL_OPTIONS, TrainConfig, changed_fields, read_yaml, to_dict
from ..errors import ConfigError, DataError
from ..files import remove_abandoned_temps, write_text
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
    out_dir = unused_output_dir(output_dir, prefix)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def unused_output_dir(output_dir: str | None, prefix: str) -> Path:
    """empty_output_dir, not made yet: for a command that publishes its folder whole (files.staged_dir)."""
    out_dir = Path(output_dir) if output_dir else new_run_dir(prefix)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir} is not empty; choose a new --output-dir")
    return out_dir


def open_run_dir(run_dir: Path, config: TrainConfig) -> bool:
    """Whether `run_dir` (locked by the caller) resumes an interrupted run; refuses what it cannot reuse.

    Empty: a new run. Holding only what a run writes before its settings are saved (killed during the
    image scan, a W&B error): started again. Holding the same settings (killed at any later point, even
    before the first epoch ended, or after a W&B error or missing weights): resumed, from its backup
    when there is one. Other settings in a run that trained no epoch (its start failed): started again
    with these. A finished run, other settings after an epoch, or files of something else: refused.
    """
    if run_dir.exists():
        remove_abandoned_temps(run_dir)  # files a killed process was writing: the old one, if any, is whole
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
    check_resumable(run_dir)
    log.info("resuming the interrupted run in %s", run_dir)
    return True


def check_resumable(run_dir: Path) -> None:
    """The files a resume reads, read now: a damaged or missing one is an error before any work is done."""
    if read_split(run_dir) is None:
        raise DataError(f"{Path(run_dir) / SPLIT} is missing; {SPLIT_REMEDY}")
    read_history(Path(run_dir) / HISTORY)
    read_checkpoint_record(run_dir)


def changed_options(run_dir: Path, config: TrainConfig) -> list[str]:
    """The options (those that change what a run computes) whose saved value in RUN/config.yaml differs."""
    saved = read_yaml(Path(run_dir) / CONFIG)
    changed = changed_fields(type(config), saved, to_dict(config))
    return [k for k in changed if k not in RESUME_NEUTRAL_OPTIONS]


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


def damaged(path: Path, problem: str, remedy: str) -> DataError:
    """The one error for a run file that cannot be read back (cut short by a full disk, edited, a disk fault)."""
    return DataError(f"{path} is damaged ({problem}); {remedy}")


def read_json(path: Path, remedy: str, problem=lambda value: None):
    """A run file's JSON; `problem(value)` says what keeps its structure from being used (None: nothing)."""
    try:
        value = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise damaged(path, f"not valid JSON: {err}", remedy) from None
    found = problem(value)
    if found:
        raise damaged(path, found, remedy)
    return value


SPLIT_REMEDY = ("the run's exact split is lost: rerun it in a new --output-dir (evaluate, predict, explain and export "
                "of its model take --data-dir instead)")  # fmt: skip


def read_split(run_dir: Path) -> dict | None:
    """The split a run saved, or None where the folder holds none; a damaged one is an error naming it."""
    path = Path(run_dir) / SPLIT
    if not path.is_file():
        return None
    return read_json(path, SPLIT_REMEDY, split_problem)


def split_problem(record) -> str | None:
    """What keeps a split record (data.splits.Splits.describe) from being used; None: nothing."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if not isinstance(record.get("root"), str):
        return f"its root is {record.get('root')!r}, not a folder"
    parts = ("class_names", "train", "val", "test")
    for key in parts:
        if not (isinstance(record.get(key), list) and all(isinstance(v, str) for v in record[key])):
            return f"its {key} is not a list of names"
    names = set(record["class_names"])
    for key in parts[1:]:
        for rel in record[key]:
            if len(Path(rel).parts) < 3 or Path(rel).parts[1] not in names:
                return f"its {key} lists {rel!r}, which is no <split>/<class>/<file> of its class_names"
    skipped, turned = record.get("skipped", []), record.get("orientation", {})
    if not (isinstance(skipped, list) and all(isinstance(s, dict) and isinstance(s.get("path"), str)
                                              and isinstance(s.get("reason"), str) for s in skipped)):  # fmt: skip
        return "its skipped is not a list of {path, reason}"
    if not (isinstance(turned, dict) and all(isinstance(v, int) for v in turned.values())):
        return "its orientation is not a mapping of file to EXIF orientation"
    if "source" in record and not (isinstance(record["source"], dict) and isinstance(record["source"].get("tfds"), str)):
        return "its source names no TFDS data folder"
    return None


def write_split(run_dir: Path, record: dict) -> None:
    write_text(run_dir / SPLIT, json.dumps(record, indent=1))


def read_checkpoint_record(run_dir: Path) -> dict | None:
    """{"epoch": N}, the epoch model.keras holds; None where the folder holds no record."""
    path = Path(run_dir) / CHECKPOINT_RECORD
    if not path.is_file():
        return None
    remedy = f"delete it and resume (it only records which epoch {CHECKPOINT} holds)"
    return read_json(path, remedy, checkpoint_record_problem)


def checkpoint_record_problem(record) -> str | None:
    epoch = record.get("epoch") if isinstance(record, dict) else None
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1):
        return f"expected {{\"epoch\": N}} with N >= 1, got {json.dumps(record)[:80]}"
    return None


def write_checkpoint_record(run_dir: Path, epoch: int) -> None:
    write_text(Path(run_dir) / CHECKPOINT_RECORD, json.dumps({"epoch": epoch}))


def read_history(path) -> list[dict]:
    """history.csv's rows (epoch numbers from 1, numbers or blanks); a damaged row is an error naming its line."""
    if not os.path.exists(path):
        return []
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as err:
        raise damaged(Path(path), str(err), HISTORY_REMEDY) from None
    for line, row in enumerate(rows, start=2):
        problem = row_problem(row)
        if problem:
            raise damaged(Path(path), f"line {line} {problem}", HISTORY_REMEDY)
    return rows


HISTORY_REMEDY = ("fix that line (or delete it if it is the last one, cut short by a kill: its epoch runs again), or "
                  "rerun in a new --output-dir")  # fmt: skip


def row_problem(row: dict) -> str | None:
    """What is wrong with one history row: fields missing or extra, an epoch or a value that is no number."""
    if None in row or None in row.values():
        return "has another number of fields than the header"
    try:
        if int(row["epoch"]) < 1:
            raise ValueError
    except (KeyError, ValueError):
        return f"has the epoch {row.get('epoch')!r}, not a whole number from 1"
    for name, value in row.items():
        if value not in ("", "NA"):
            try:
                float(value)
            except ValueError:
                return f"has {name} {value[:40]!r}, not a number"
    return None


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
