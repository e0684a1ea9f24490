"""W&B's hyperband early termination for local sweeps: the `sweeps` package's own stopping rule, asked at
every epoch's end with the per-epoch metric of every trial in the folder, as W&B's server asks it.
The lowest module of this folder that imports `sweeps`, so the one that silences its import-time warnings."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import jsonschema
import keras

with warnings.catch_warnings():  # sweeps 0.2.0 uses pydantic-1 style settings that pydantic 2 warns about
    warnings.simplefilter("ignore")
    import sweeps

from ..errors import ConfigError
from ..files import write_json
from ..outputs.run_folder import HISTORY, read_history

log = logging.getLogger(__name__)

STOPPED_FILE = "early_terminated.json"  # in a trial's folder: the epoch after which the rule stopped it
SHAPES = "{type: hyperband, min_iter: N, eta: E} or {type: hyperband, max_iter: N, s: S, eta: E}"


def judge(sweep: dict, history: list[float], others: list[list[float]]) -> tuple[bool, dict]:
    """Whether the rule stops a running trial with this metric history, given the other trials' histories;
    with the rule's own account (its bands, thresholds and, last of its lines, this trial's verdict)."""
    metric = sweep["metric"]["name"]
    runs = [sweeps.SweepRun(name=f"other-{i}", state=sweeps.RunState.finished, sampledHistory=[{metric: v} for v in values])
            for i, values in enumerate(others)]  # fmt: skip
    # sampledHistory: the alias the model reads (a `history=` keyword is silently dropped)
    this = sweeps.SweepRun(name="this", state=sweeps.RunState.running, sampledHistory=[{metric: v} for v in history])
    stopped = sweeps.stop_runs(sweep, [*runs, this])
    return bool(stopped), this.early_terminate_info or {}


def bands(sweep: dict, source: str) -> list[int]:
    """The rule's bands: a trial is judged once it has logged more than `band` epochs. Refuses what the
    rule cannot apply, as W&B's server would."""
    section = sweep["early_terminate"]
    shaped = isinstance(section, dict) and section.get("type") == "hyperband"
    if not shaped or not ("min_iter" in section or {"max_iter", "s"} <= set(section)):
        raise ConfigError(f"{source}: early_terminate must be {SHAPES}, got {section!r}")
    try:
        return judge(sweep, [], [])[1]["bands"]
    except jsonschema.ValidationError as err:
        raise ConfigError(f"{source}: early_terminate: {err.message}; use {SHAPES}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{source}: early_terminate: {err}; use {SHAPES}") from None


def metric_values(run_dir: Path, metric: str, before: int | None = None) -> list[float]:
    """A trial's per-epoch metric from its history.csv (epochs numbered from 1; `before`: only epochs <= it)."""
    rows = read_history(Path(run_dir) / HISTORY)
    return [float(r[metric]) for r in rows
            if r.get(metric) not in (None, "", "NA") and (before is None or int(r["epoch"]) <= before)]  # fmt: skip


class HyperbandStop(keras.callbacks.Callback):
    """At each epoch's end, asks the stopping rule whether this trial lies below the top 1/eta at its band,
    given every other trial's per-epoch metric (their history.csv); if so, training ends after this epoch.

    The epochs before the current stage's fit and before a resume come from the trial's own history.csv, so
    the rule sees one history across stages and resumes. The decision is written into the trial's folder
    (STOPPED_FILE): it survives a kill between the last epoch and the sweep's record.
    """

    def __init__(self, sweep: dict, run_dir: Path, others: list[Path]):
        super().__init__()
        self.sweep, self.run_dir = sweep, Path(run_dir)
        # Trials run one at a time under the sweep folder's lock: the others' histories are read once.
        self.others = [metric_values(path, sweep["metric"]["name"]) for path in others]
        self.metric = sweep["metric"]["name"]

    def on_epoch_end(self, epoch, logs=None):
        if not logs or self.metric not in logs:
            return
        history = metric_values(self.run_dir, self.metric, before=epoch) + [float(logs[self.metric])]
        stop, info = judge(self.sweep, history, self.others)
        if stop:
            self.model.stop_training = True
            verdict = info.get("lines", [""])[-1]
            log.info("%s: stopped by hyperband after epoch %d (%s)", self.run_dir.name, epoch + 1, verdict)
            write_json(self.run_dir / STOPPED_FILE, {"epoch": epoch + 1, "rule": verdict})


def stopped_at(run_dir: Path) -> int | None:
    """The epoch after which the rule stopped this trial (None: it was not stopped)."""
    path = Path(run_dir) / STOPPED_FILE
    return json.loads(path.read_text())["epoch"] if path.is_file() else None
