"""The study's config against the project's plus config: same data, epochs, image size and seeds.

Runs `python run.py KIND --config FILE` for every config and seed, one run at a time (seed by seed, each
config in turn, so that a machine's load drifts over both alike), and writes a Markdown table: test
accuracy as mean ± sample standard deviation over the seeds, each seed's figure, the TTA accuracy when the
config has `tta`, and seconds per epoch (each run's `seconds_per_epoch` from metrics.json, the median of
the epochs that were not a process's first; the table gives the median over the seeds) with its ratio to
the first config. A run whose metrics.json exists is read, not rerun, so an interrupted evidence run
continues where it stopped.

Sized for a 2-core CPU: Fashion-MNIST (bench/recipe_data.py; 2,500 training images of which 20% are
held out for validation, 1,000 test images) at 72x72 (the smallest size above the study CNN's limit of 68
for its 5,5,3,3,1 kernels), 10 epochs, seeds 2-4 (seed 1 chose the recipe in pilot runs; seed 0 trips a TensorFlow
seed check in the input pipeline), about 3-5 minutes per run.

    python bench/recipe_evidence.py --seeds 2 3 4 --table bench/recipe_evidence_scratch.md
    python bench/recipe_evidence.py --kind finetune --configs study=configs/finetune.yaml \\
        plus=configs/finetune_plus.yaml --data ~/.cache/inat_keras/fashion_mnist_100_50 --seeds 2 \\
        --epochs 10 --image-size 32 --table bench/recipe_evidence_finetune.md -- --weights none

The second compares only the cost: random weights (--weights none) say nothing about transfer.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.recipe_data import write_folder, SOURCE  # noqa: E402
from inat_keras.files import write_json, write_text  # noqa: E402

DEFAULT_CONFIGS = ("study=configs/scratch_best.yaml", "plus=configs/scratch_plus.yaml")


def run_command(kind: str, config: str, data: Path, seed: int, epochs: int, size: int, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "run.py", kind, "--config", config, "--data-dir", str(data), "--seed", str(seed),
            "--epochs", str(epochs), "--image-size", str(size), "--output-dir", str(out), "--wandb", "disabled",
            "--cache", "memory", *extra]  # fmt: skip


def train(command: list[str], out: Path) -> dict:
    metrics = out / "metrics.json"
    if not metrics.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        print("$", shlex.join(command), flush=True)
        with open(out.parent / f"{out.name}.log", "a") as log:
            done = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode:
            raise SystemExit(f"error: {shlex.join(command)} failed (exit {done.returncode}); see {out.parent / (out.name + '.log')}")
    return json.loads(metrics.read_text())


def summary(results: list[dict]) -> dict:
    accuracies = [r["test_accuracy"] for r in results]
    tta = [r["tta_test_accuracy"] for r in results if r.get("tta_test_accuracy") is not None]
    return {
        "test_accuracy": accuracies,
        "mean": statistics.fmean(accuracies),
        "sd": statistics.stdev(accuracies) if len(accuracies) > 1 else float("nan"),
        "tta_mean": statistics.fmean(tta) if tta else None,
        "seconds_per_epoch": statistics.median(r["seconds_per_epoch"] for r in results),
    }


def table(rows: dict[str, dict], files: dict[str, str], command: str) -> str:
    first = next(iter(rows.values()))["seconds_per_epoch"]
    lines = ["| config | file | test accuracy, mean ± sd | per seed | with TTA | s/epoch (median) | ratio |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in rows.items():
        seeds = ", ".join(f"{100 * a:.1f}" for a in s["test_accuracy"])
        tta = f"{100 * s['tta_mean']:.1f}%" if s["tta_mean"] is not None else "–"
        spread = f" ± {100 * s['sd']:.1f}" if len(s["test_accuracy"]) > 1 else ""
        lines.append(f"| {name} | `{files[name]}` | {100 * s['mean']:.1f}%{spread} (n={len(s['test_accuracy'])}) "
                     f"| {seeds} | {tta} | {s['seconds_per_epoch']:.1f} | {s['seconds_per_epoch'] / first:.2f}x |")  # fmt: skip
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default="scratch", choices=("scratch", "finetune"))
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), metavar="NAME=FILE",
                        help="configs to compare; the first is the reference of the time ratio")
    parser.add_argument("--data", type=Path, help="a train/ + val/ folder (default: Fashion-MNIST from bench/recipe_data.py)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=72)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "recipe-evidence", help="folder of the runs")
    parser.add_argument("--table", type=Path, help="write the Markdown table here (it is printed either way)")
    parser.add_argument("extra", nargs="*", help="after --: more options for every run")
    args = parser.parse_args(argv)
    configs = dict(item.split("=", 1) for item in args.configs)
    if args.data is None:
        from inat_keras.data.sources import CACHE_HOME  # imports TensorFlow: only when needed

        args.data = write_folder(CACHE_HOME / "fashion_mnist_250_100", SOURCE, {"train": 250, "val": 100}, seed=0)
    data = args.data
    results: dict[str, list[dict]] = {name: [] for name in configs}
    for seed in args.seeds:
        for name, config in configs.items():
            out = args.runs / f"{args.kind}-{name}-seed{seed}"
            command = run_command(args.kind, config, data, seed, args.epochs, args.image_size, out, args.extra)
            results[name].append(train(command, out))
    rows = {name: summary(r) for name, r in results.items()}
    text = table(rows, configs, shlex.join(["python", "bench/recipe_evidence.py", *(argv if argv is not None else sys.argv[1:])]))
    print(text)
    write_json(args.runs / f"{args.kind}-summary.json", {"data": str(data), "epochs": args.epochs, "image_size": args.image_size,
                                                          "seeds": args.seeds, "configs": configs, "results": rows})  # fmt: skip
    if args.table:
        write_text(args.table, text)


if __name__ == "__main__":
    main()
