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

import numpy as np
import wandb
import yaml
from matplotlib.cm import ScalarMappable
from matplotlib.ticker import MaxNLocator
from scipy.stats import spearmanr
from sklearn.ensemble import RandomForestRegressor

from ..analysis.figures import TEXT, caption, distinct_labels, new_figure, rank_colours, save, spread_ticks, titled
from ..config import PLACE_OPTIONS
from ..errors import ConfigError
from ..outputs import tracking
from ..outputs.run_folder import METRIC_GOALS, RUNS_DIR
from ..training.kinds import KINDS, Kind, kind_of_options
from .local import TRIALS_FILE, read_trials
from .online import STOPPED_SUMMARY
from .spec import run_options


class _ConfigDumper(yaml.SafeDumper):
    """Block-style YAML with lists on one line, like the files in configs/."""

    def represent_list(self, data):
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_ConfigDumper.add_representer(list, _ConfigDumper.represent_list)

BEST_CONFIG, TABLE_CSV, REPORT_MD = "best_config.yaml", "trials.csv", "report.md"
RANKED = ("finished", "stopped")  # trial states that have a metric (stopped: by early termination)
IMPORTANCE_CSV, PARALLEL_PNG, PROGRESS_PNG = "importance.csv", "parallel_coordinates.png", "metric_over_trials.png"
MIN_IMPORTANCE_TRIALS = 10  # finished trials below which no parameter is ranked (importance_withheld says why)
LOG_SPAN = 100  # a positive parameter spanning this factor or more gets a logarithmic axis


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


def importance_withheld(record: SweepRecord) -> str | None:
    """Why the parameters are not ranked, or None where they may be: below MIN_IMPORTANCE_TRIALS finished trials,
    or below 2 per swept parameter, rankings and correlations are noise. At 3 trials a correlation of +-1 arises
    by chance one time in three; at 10, a Spearman correlation must pass 0.65 to stand out from chance at the 5%
    level; and with fewer trials than two per parameter, a random forest can fit the metric whatever it is."""
    done, swept = len(record.finished()), len(record.swept)
    need = max(MIN_IMPORTANCE_TRIALS, 2 * swept)
    if done >= need:
        return None
    return (f"Too few finished trials to rank the parameters: {done}, where this needs at least {need} "
            f"({MIN_IMPORTANCE_TRIALS}, and 2 per swept parameter: {swept} parameter(s)). With fewer, correlations "
            "near +-1 and large random-forest importances arise by chance, so none are shown.")


def importance(record: SweepRecord) -> list[dict]:
    """Random-forest importance and Pearson/Spearman correlation of each encoded parameter with the metric,
    most important first; none where importance_withheld says why."""
    if importance_withheld(record):
        return []
    trials = record.finished()
    names, x = encode(record, trials)
    y = np.array([t["metric"] for t in trials], dtype=float)
    if np.ptp(y) == 0 or not names:
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


@dataclass
class Axis:
    """One parameter's axis of the parallel-coordinates plot."""

    positions: np.ndarray  # each trial's value, placed on 0..1
    ticks: list[tuple[float, str]]  # (position, label), no two closer than figures.TICK_GAP
    log: bool


def axis_positions(record: SweepRecord, name: str, values: list) -> Axis:
    """Values of one parameter on a 0..1 axis (logarithmic for positive values spanning LOG_SPAN x or more),
    with ticks: the ends, then the values the trials took where few, else round numbers (powers of 10 on a
    log axis)."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        data = np.array(values, dtype=float)
        log = bool(data.min() > 0 and data.max() / data.min() >= LOG_SPAN)
        scale = np.log10 if log else np.asarray
        low, span = scale(data).min(), np.ptp(scale(data)) or 1.0
        levels = np.unique(data)
        if len(levels) <= 6:
            inner = levels
        elif log:
            inner = 10.0 ** np.arange(math.ceil(np.log10(data.min())), math.floor(np.log10(data.max())) + 1)
        else:
            inner = [v for v in MaxNLocator(5).tick_values(data.min(), data.max()) if data.min() <= v <= data.max()]
        wanted = [data.min(), data.max(), *inner]
        ticks = spread_ticks([(float((scale(v) - low) / span), shown(float(v))) for v in wanted])
        return Axis((scale(data) - low) / span, ticks, log)
    levels = [shown(v) for v in record.parameters[name].get("values", [])]
    levels += sorted({shown(v) for v in values} - set(levels))
    place = {level: i / max(len(levels) - 1, 1) for i, level in enumerate(levels)}
    ticks = spread_ticks([(place[level], level) for level in [levels[0], levels[-1], *levels]])
    return Axis(np.array([place[shown(v)] for v in values]), ticks, False)


def data_of(record: SweepRecord) -> str:
    """Where the trials' images came from, for the pictures' captions."""
    config = next((t["config"] for t in record.trials if t.get("config")), {})
    if config.get("demo"):
        return "demo digits"
    source = config.get("data_dir") or config.get("tfds_dir")
    return Path(source).name if source else "(source not recorded)"


def sweep_caption(record: SweepRecord) -> str:
    return caption(f"sweep {record.name}", f"{data_of(record)}, validation split")


def plot_parallel(record: SweepRecord, path: Path, caption_line: str = ""):
    """One vertical axis per swept parameter and one for the metric; one line per finished trial, coloured by
    its metric (analysis.figures.rank_colours), the best drawn last and thickest."""
    trials = record.finished()
    names = record.swept + [record.metric]
    fig = new_figure(max(7.0, 2.0 * len(names) + 2), 5.5)
    ax = fig.subplots()
    if trials:
        metric = np.array([t["metric"] for t in trials], dtype=float)
        axes = [axis_positions(record, name, [t["metric"] if name == record.metric else t["params"].get(name)
                                              for t in trials]) for name in names]  # fmt: skip
        for i, axis in enumerate(axes):
            ax.axvline(i, color="black", linewidth=1)
            for position, label in axis.ticks:
                ax.plot([i - 0.03, i], [position, position], color="black", linewidth=1)
                ax.text(i + 0.04, position, label, fontsize=TEXT, va="center", zorder=5,
                        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})  # fmt: skip
        cmap, norm, levels = rank_colours(metric)
        order = np.argsort(metric if record.maximize else -metric, kind="stable")  # the best last: on top
        for rank, j in enumerate(order):
            best = rank == len(order) - 1
            ax.plot(range(len(names)), [axis.positions[j] for axis in axes], color=cmap(norm(metric[j])),
                    linewidth=3 if best else 1.8, alpha=0.9, gid=trials[j]["name"])  # fmt: skip
        shown_levels = np.unique(np.linspace(0, len(levels) - 1, min(len(levels), 10)).round().astype(int))
        centres = (norm.boundaries[:-1] + norm.boundaries[1:]) / 2  # the middle of each value's equal segment
        bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, ticks=centres[shown_levels], shrink=0.9, spacing="uniform")
        bar.ax.set_yticklabels([distinct_labels(levels)[i] for i in shown_levels], fontsize=TEXT)
        bar.set_label(f"{record.metric}: one colour per value, in rank order", fontsize=TEXT)
        ax.set_xticks(range(len(names)), [f"{n} (log)" if a.log else n for n, a in zip(names, axes)], fontsize=TEXT)
        ax.set(yticks=[], ylim=(-0.05, 1.05), xlim=(-0.3, len(names) - 0.45))
        for spine in ax.spines.values():
            spine.set_visible(False)
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no finished trial yet", ha="center", fontsize=TEXT)
    titled(fig, f"Parallel coordinates: {len(trials)} finished trial(s), coloured by {record.metric}", caption_line)
    return save(fig, path)


def plot_progress(record: SweepRecord, path: Path, caption_line: str = ""):
    fig = new_figure(8, 4.5)
    ax = fig.subplots()
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
    failed = [t["number"] for t in record.trials if t not in done]
    if failed:
        low = min(values) if values else 0.0
        ax.scatter(failed, [low] * len(failed), marker="x", color="tab:red", label="failed / interrupted")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{record.metric} (validation)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=TEXT)
    titled(fig, f"{record.metric} of each trial, in the order they ran", caption_line)
    return save(fig, path)


def write_report(record: SweepRecord, out_dir: Path) -> dict[str, Path]:
    """Write every report file into out_dir and print the table; returns the paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in (TABLE_CSV, REPORT_MD, IMPORTANCE_CSV, PARALLEL_PNG, PROGRESS_PNG)}
    header, rows = table(record)
    with open(paths[TABLE_CSV], "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    withheld = importance_withheld(record)
    if withheld:  # no ranking to write: the report says why, and an older one does not stay behind
        paths.pop(IMPORTANCE_CSV).unlink(missing_ok=True)
        factor_text = withheld
    else:
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
    plot_parallel(record, paths[PARALLEL_PNG], sweep_caption(record))
    plot_progress(record, paths[PROGRESS_PNG], sweep_caption(record))
    paths[REPORT_MD].write_text("\n\n".join(sections) + "\n")
    print(markdown(header, rows))
    print()
    print(factor_text)
    return paths
