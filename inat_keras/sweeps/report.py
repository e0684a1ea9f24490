"""A sweep turned into a decision: trials ranked by the metric, the winning config as a runnable YAML,
which parameters mattered (like W&B's parameter-importance panel), and two plots.

Works on a local sweep folder (trials.json) and, when logged in, on a W&B sweep id.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from sklearn.ensemble import RandomForestRegressor  # noqa: E402
import numpy as np  # noqa: E402
import wandb  # noqa: E402
import yaml  # noqa: E402

from ..config import PLACE_OPTIONS  # noqa: E402
from ..errors import ConfigError  # noqa: E402
from ..outputs import tracking  # noqa: E402
from ..training.kinds import KINDS, Kind, kind_of_options  # noqa: E402
from ..outputs.run_folder import METRIC_GOALS, RUNS_DIR  # noqa: E402
from .local import TRIALS_FILE, read_trials  # noqa: E402
from .online import STOPPED_SUMMARY  # noqa: E402
from .spec import run_options  # noqa: E402

class _ConfigDumper(yaml.SafeDumper):
    """Block-style YAML with lists on one line, like the files in configs/."""

    def represent_list(self, data):
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_ConfigDumper.add_representer(list, _ConfigDumper.represent_list)

BEST_CONFIG, TABLE_CSV, REPORT_MD = "best_config.yaml", "trials.csv", "report.md"
RANKED = ("finished", "stopped")  # trial states that have a metric (stopped: by early termination)
IMPORTANCE_CSV, PARALLEL_PNG, PROGRESS_PNG = "importance.csv", "parallel_coordinates.png", "metric_over_trials.png"


@dataclass
class SweepRecord:
    """What any sweep comes down to: its trials, and which of their options were searched."""

    name: str
    kind: Kind
    metric: str
    parameters: dict  # the sweep file's parameters section
    trials: list[dict]  # name, number, state, params, config, metric, reason
    settings: dict | None = None  # the kind's YAML as the sweep started from it (local sweeps)

    @property
    def maximize(self) -> bool:
        return METRIC_GOALS[self.metric] == "maximize"

    @property
    def swept(self) -> list[str]:
        """Parameters that take more than one value (constants say nothing about what mattered)."""
        return [name for name, spec in self.parameters.items() if "value" not in spec]

    def finished(self) -> list[dict]:
        """Trials with a metric, best first: those that ran all their epochs and those that early
        termination stopped (their metric so far, as the search saw it)."""
        done = [t for t in self.trials if t["state"] in RANKED and _finite(t.get("metric"))]
        return sorted(done, key=lambda t: t["metric"], reverse=self.maximize)

    def winner(self) -> dict:
        """The best trial that ran all its epochs; a stopped one only when none did."""
        done = self.finished()
        if not done:
            raise ConfigError(f"sweep {self.name} has no finished trial with a {self.metric}")
        return next((t for t in done if t["state"] == "finished"), done[0])


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def from_folder(sweep_dir: Path) -> SweepRecord:
    state = read_trials(sweep_dir)
    parameters = state["sweep"]["parameters"]
    return SweepRecord(Path(sweep_dir).name, KINDS[state["kind"]], state["metric"], parameters, state["trials"],
                       state.get("settings"))  # fmt: skip


def from_wandb(sweep_id: str, project: str) -> SweepRecord:
    """A W&B sweep's runs as trials (needs a login); `sweep_id` may be ID or ENTITY/PROJECT/ID."""
    api = wandb.Api()
    path = sweep_id if "/" in sweep_id else f"{api.default_entity}/{project}/{sweep_id}"
    sweep = api.sweep(path)
    config = sweep.config
    metric = config.get("metric", {}).get("name")
    if metric not in METRIC_GOALS:
        raise ConfigError(f"W&B sweep {path} optimises {metric!r}, which inat-keras training does not log")
    kind = kind_of_options(config["parameters"], f"W&B sweep {path}")
    fields = {f.name for f in dataclasses.fields(kind.config_class)}
    states = {"finished": "finished", "running": "running", "pending": "running"}
    trials = []
    for number, run in enumerate(sorted(sweep.runs, key=lambda r: r.created_at), start=1):
        value = run.summary.get(metric)
        state = states.get(run.state, "failed")
        state = "stopped" if state == "finished" and run.summary.get(STOPPED_SUMMARY) else state
        trials.append(
            {
                "name": run.name,
                "number": number,
                "state": state if state != "finished" or _finite(value) else "failed",
                "params": {k: run.config.get(k) for k in config["parameters"]},
                "config": {k: v for k, v in run.config.items() if k in fields},
                "metric": value if _finite(value) else None,
                "reason": run.summary.get("failure") or (None if state != "failed" else f"W&B state {run.state}"),
                "epochs_run": run.summary.get("epoch/epoch"),
            }
        )
    return SweepRecord(sweep.id, kind, metric, config["parameters"], trials)


def load_sweep(source: str, project: str = "inat-keras") -> tuple[SweepRecord, Path]:
    """A local sweep folder, or else a W&B sweep id; returns the record and the default report folder."""
    folder = Path(source)
    if (folder / TRIALS_FILE).is_file():
        return from_folder(folder), folder
    if folder.exists():
        raise ConfigError(f"{folder} holds no sweep ({TRIALS_FILE} is missing)")
    if not tracking.logged_in():
        raise ConfigError(f"{source} is neither a sweep folder nor, without a W&B login, a W&B sweep id to fetch")
    return from_wandb(source, project), RUNS_DIR / f"sweep-{source.replace('/', '-')}"


def best_config(record: SweepRecord) -> dict:
    """The winning trial's parameters over the real settings the sweep started from: not the demo-only
    options, not short-trial flags, not where the data and outputs went (the retraining command chooses).
    A W&B sweep records no such settings: its winner's whole config, less those places."""
    winner = record.winner()
    if record.settings is None:
        return {k: v for k, v in winner["config"].items() if k not in PLACE_OPTIONS}
    return {**record.settings, **run_options(winner["params"])}


def shown(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


def table(record: SweepRecord) -> tuple[list[str], list[list[str]]]:
    """Finished and early-stopped trials best first (a stopped one's metric is its best before it was
    stopped, and its epochs say how far it ran), then failed and interrupted ones."""
    others = [t for t in record.trials if t not in record.finished()]
    header = ["rank", "trial", "state", record.metric, "epochs", *record.swept, "reason"]
    rows = []
    for rank, trial in enumerate(record.finished() + others, start=1):
        metric = f"{trial['metric']:.4f}" if _finite(trial.get("metric")) else ""
        params = [shown(trial["params"].get(name)) for name in record.swept]
        rank_text = str(rank) if trial["state"] in RANKED else ""
        rows.append([rank_text, trial["name"], trial["state"], metric, shown(trial.get("epochs_run")), *params,
                     trial.get("reason") or ""])  # fmt: skip
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def encode(record: SweepRecord, trials: list[dict]) -> tuple[list[str], np.ndarray]:
    """One column per numeric or boolean parameter, one 0/1 column per value of any other (W&B's panel does so)."""
    names, columns = [], []
    for name in record.swept:
        values = [t["params"].get(name) for t in trials]
        if all(isinstance(v, (int, float)) for v in values):
            names.append(name)
            columns.append([float(v) for v in values])
            continue
        for level in sorted({shown(v) for v in values}):
            names.append(f"{name}={level}")
            columns.append([float(shown(v) == level) for v in values])
    return names, np.array(columns, dtype=float).T.reshape(len(trials), len(names))


def importance(record: SweepRecord) -> list[dict]:
    """Random-forest importance and Pearson/Spearman correlation of each encoded parameter with the metric."""
    trials = record.finished()
    names, x = encode(record, trials)
    y = np.array([t["metric"] for t in trials], dtype=float)
    if len(trials) < 2 or np.ptp(y) == 0 or not names:
        return [{"parameter": n, "importance": math.nan, "pearson": math.nan, "spearman": math.nan} for n in names]
    forest = RandomForestRegressor(n_estimators=200, random_state=0).fit(x, y)
    rows = []
    for i, name in enumerate(names):
        column = x[:, i]
        varies = np.ptp(column) > 0
        rows.append(
            {
                "parameter": name,
                "importance": float(forest.feature_importances_[i]),
                "pearson": float(np.corrcoef(column, y)[0, 1]) if varies else math.nan,
                "spearman": float(spearmanr(column, y).statistic) if varies else math.nan,
            }
        )
    return sorted(rows, key=lambda r: -r["importance"])


def axis_positions(record: SweepRecord, name: str, values: list) -> tuple[np.ndarray, list[float], list[str]]:
    """Values of one parameter on a 0..1 axis, with tick positions and labels (log scale for wide ranges)."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        data = np.array(values, dtype=float)
        wide = data.min() > 0 and data.max() / data.min() >= 100
        scale = np.log10 if wide else np.asarray
        low, span = scale(data).min(), np.ptp(scale(data)) or 1.0
        levels = np.unique(data)
        if len(levels) > 6:
            levels = levels[[0, -1]]
        return (scale(data) - low) / span, list((scale(levels) - low) / span), [shown(float(v)) for v in levels]
    levels = [shown(v) for v in record.parameters[name].get("values", [])]
    levels += sorted({shown(v) for v in values} - set(levels))
    place = {level: i / max(len(levels) - 1, 1) for i, level in enumerate(levels)}
    return np.array([place[shown(v)] for v in values]), list(place.values()), levels


def plot_parallel(record: SweepRecord, path: Path) -> None:
    trials = record.finished()
    axes_names = record.swept + [record.metric]
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(axes_names)), 5))
    if not trials:
        ax.text(0.5, 0.5, "no finished trial yet", ha="center")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    metric = np.array([t["metric"] for t in trials], dtype=float)
    columns = []
    for i, name in enumerate(axes_names):
        values = [t["metric"] if name == record.metric else t["params"].get(name) for t in trials]
        positions, ticks, labels = axis_positions(record, name, values)
        columns.append(positions)
        ax.axvline(i, color="black", linewidth=1)
        for tick, label in zip(ticks, labels):
            ax.text(i + 0.03, tick, label, fontsize=7, va="center")
    colours = plt.cm.viridis((metric - metric.min()) / (np.ptp(metric) or 1.0))
    for row, colour in zip(np.array(columns).T, colours):
        ax.plot(range(len(axes_names)), row, color=colour, alpha=0.8, linewidth=1.5)
    ax.set_xticks(range(len(axes_names)), axes_names, rotation=20)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes_names) - 0.5)
    ax.set_title(f"Sweep {record.name}: {len(trials)} finished trial(s), colour = {record.metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_progress(record: SweepRecord, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    done = sorted((t for t in record.finished()), key=lambda t: t["number"])
    numbers = [t["number"] for t in done]
    values = [t["metric"] for t in done]
    ax.scatter(numbers, values, label="trial", zorder=3)
    if values:
        best = np.maximum.accumulate(values) if record.maximize else np.minimum.accumulate(values)
        ax.step(numbers, best, where="post", color="tab:orange", label="best so far")
    stopped = [t for t in done if t["state"] == "stopped"]
    if stopped:
        ax.scatter([t["number"] for t in stopped], [t["metric"] for t in stopped], marker="v", color="tab:grey",
                   zorder=4, label="stopped early (metric so far)")  # fmt: skip
    failed = [t["number"] for t in record.trials if t["state"] not in RANKED]
    if failed:
        low = min(values) if values else 0.0
        ax.scatter(failed, [low] * len(failed), marker="x", color="tab:red", label="failed / interrupted")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{record.metric} (validation)")
    ax.set_title(f"Sweep {record.name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(record: SweepRecord, out_dir: Path) -> dict[str, Path]:
    """Write every report file into out_dir and print the table; returns the paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in (TABLE_CSV, REPORT_MD, IMPORTANCE_CSV, PARALLEL_PNG, PROGRESS_PNG)}
    header, rows = table(record)
    with open(paths[TABLE_CSV], "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    factors = importance(record)
    with open(paths[IMPORTANCE_CSV], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["parameter", "importance", "pearson", "spearman"])
        writer.writeheader()
        writer.writerows(factors)
    columns = ["importance", "pearson", "spearman"]
    factor_rows = [[r["parameter"], *(shown(r[k]) if _finite(r[k]) else "n/a" for k in columns)] for r in factors]
    factor_text = markdown(["parameter", *columns], factor_rows)
    title = f"# Sweep {record.name} ({record.kind.name}): {record.metric} on the validation split"
    sections = [title, markdown(header, rows)]
    sections += [f"## Parameter importance and correlation with {record.metric}", factor_text]
    if len(record.finished()) <= len(factors):
        done = len(record.finished())
        sections.append(f"Only {done} finished trial(s) for {len(factors)} columns: a hint, not a finding.")
    if record.finished():
        paths[BEST_CONFIG] = out_dir / BEST_CONFIG
        best = record.winner()
        comment = (
            f"# Best of sweep {record.name}: {best['name']}, {record.metric} {best['metric']:.4f} (validation split).\n"
            f"# Retrain: python run.py {record.kind.name} --config {paths[BEST_CONFIG]} --data-dir DIR\n"
        )
        options = yaml.dump(best_config(record), Dumper=_ConfigDumper, sort_keys=False)
        paths[BEST_CONFIG].write_text(comment + options)
        sections += ["## Best configuration", f"`{paths[BEST_CONFIG]}`"]
    plot_parallel(record, paths[PARALLEL_PNG])
    plot_progress(record, paths[PROGRESS_PNG])
    paths[REPORT_MD].write_text("\n\n".join(sections) + "\n")
    print(markdown(header, rows))
    print()
    print(factor_text)
    return paths
