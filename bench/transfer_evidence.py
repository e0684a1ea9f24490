"""Real transfer, measured: EfficientNet-Lite0 from its ImageNet weights on real photos, every Part B question in one table.

Rows (each for every seed, one run at a time, seed by seed so that a machine's load drifts over all rows alike):
- ImageNet weights against random weights, head only and full, under configs/finetune.yaml (the study's regime);
- the study's four strategies under configs/finetune.yaml (stage units, batch statistics everywhere, one carried
  Adam) and under configs/finetune_keras_guide.yaml (block units, frozen batch norm, a fresh Adam per stage);
- configs/finetune_plus.yaml, the project's recipe.
Every run: `--backbone efficientnet_lite0`, the same data, image size, epochs (with the study's schedule compressed:
one unit per epoch, `--unfreeze-every 1`) and seeds; otherwise each config's own settings, except that every config's
learning rate is multiplied by --lr-scale (default 10): these runs take about 380 steps where the study took 5,000,
and at the study's 1e-4 a head barely moves in that budget (measured: head only 27.6% at 1e-4, seed 2). A run whose
metrics.json exists is read, not rerun (bench/recipe_evidence.py), so an interrupted evidence run continues, and
rows that ask for the same run (head, ImageNet and study: head) share it: 11 runs per seed.

Data: Fashion-MNIST (Debian's dataset-fashion-mnist, bench/recipe_data.py), real grayscale product photos,
125 training images per class (20% of them held out for validation) and 100 test images per class, upscaled.

    apt-get install dataset-fashion-mnist
    python bench/transfer_evidence.py --table docs/transfer_evidence.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.recipe_data import SOURCE, write_folder  # noqa: E402
from bench.recipe_evidence import run_command, summary, train  # noqa: E402
from inat_keras.config import read_config_file  # noqa: E402
from inat_keras.files import CACHE_HOME, write_json, write_text  # noqa: E402

STUDY, GUIDE, PLUS = "configs/finetune.yaml", "configs/finetune_keras_guide.yaml", "configs/finetune_plus.yaml"
# name -> (question, config, flags); the order is the table's
ROWS = {
    "head, ImageNet": ("weights", STUDY, ["--strategy", "head"]),
    "head, random": ("weights", STUDY, ["--strategy", "head", "--weights", "none"]),
    "full, ImageNet": ("weights", STUDY, ["--strategy", "full"]),
    "full, random": ("weights", STUDY, ["--strategy", "full", "--weights", "none"]),
    "study: gradual": ("study regime", STUDY, ["--strategy", "gradual"]),
    "study: last 5": ("study regime", STUDY, ["--strategy", "last_k", "--k", "5"]),
    "study: full": ("study regime", STUDY, ["--strategy", "full"]),
    "study: head": ("study regime", STUDY, ["--strategy", "head"]),
    "guide: gradual": ("Keras-guide regime", GUIDE, ["--strategy", "gradual"]),
    "guide: last 5": ("Keras-guide regime", GUIDE, ["--strategy", "last_k", "--k", "5"]),
    "guide: full": ("Keras-guide regime", GUIDE, ["--strategy", "full"]),
    "guide: head": ("Keras-guide regime", GUIDE, ["--strategy", "head"]),
    "plus (recipe)": ("recipe", PLUS, ["--strategy", "gradual"]),
    "plus: last 5": ("recipe", PLUS, ["--strategy", "last_k", "--k", "5"]),  # is it the recipe, or gradual?
}
COMMON = ["--backbone", "efficientnet_lite0", "--unfreeze-every", "1"]


def run_name(config: str, flags: list[str], seed: int) -> str:
    """Named by what it runs, so that two rows asking the same (head, ImageNet and study: head) share one run."""
    words = [Path(config).stem, *(flag.lstrip("-") for flag in flags)]
    return "-".join(words + [f"seed{seed}"])


def table(rows: dict[str, dict], command: str, settings: str) -> str:
    reference = rows["study: gradual"]["seconds_per_epoch"]
    lines = ["| question | run | config, flags | test accuracy, mean ± sd | per seed | s/epoch | ratio |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in rows.items():
        question, config, flags = ROWS[name]
        seeds = ", ".join(f"{100 * a:.1f}" for a in s["test_accuracy"])
        spread = f" ± {100 * s['sd']:.1f}" if len(s["test_accuracy"]) > 1 else ""
        lines.append(f"| {question} | {name} | `{Path(config).name} {shlex.join(flags)}` | {100 * s['mean']:.1f}%{spread} "
                     f"| {seeds} | {s['seconds_per_epoch']:.1f} | {s['seconds_per_epoch'] / reference:.2f}x |")  # fmt: skip
    return "\n".join(lines) + f"\n\n{settings}\n\nCommand: `{command}`\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a train/ + val/ folder (default: Fashion-MNIST, 125 + 100 per class)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--lr-scale", type=float, default=10.0, help="every config's learning rate times this")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), metavar="ROW", help="a subset of the rows")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "transfer-evidence", help="folder of the runs")
    parser.add_argument("--table", type=Path, help="write the Markdown table here (it is printed either way)")
    args = parser.parse_args(argv)
    data = args.data or write_folder(CACHE_HOME / "fashion_mnist_125_100", SOURCE, {"train": 125, "val": 100}, seed=0)
    results: dict[str, list[dict]] = {name: [] for name in args.rows}
    for seed in args.seeds:
        for name in args.rows:
            _, config, flags = ROWS[name]
            out = args.runs / run_name(config, flags, seed)
            rate = ["--learning-rate", f"{read_config_file(ROOT / config)['learning_rate'] * args.lr_scale:g}"]
            command = run_command("finetune", config, data, seed, args.epochs, args.image_size, out, COMMON + flags + rate)
            results[name].append(train(command, out))
    rows = {name: summary(r) for name, r in results.items()}
    settings = (f"EfficientNet-Lite0, {args.image_size}x{args.image_size}, {args.epochs} epochs (one unit unfrozen per "
                f"epoch), every config's learning rate x{args.lr_scale:g}, seeds {', '.join(map(str, args.seeds))}; data "
                f"`{data}`; ratio: s/epoch against study: gradual.")  # fmt: skip
    text = table(rows, shlex.join(["python", "bench/transfer_evidence.py", *(argv if argv is not None else sys.argv[1:])]), settings)
    print(text)
    write_json(args.runs / "summary.json", {"data": str(data), "epochs": args.epochs, "image_size": args.image_size,
                                            "lr_scale": args.lr_scale,
                                            "seeds": args.seeds, "rows": {n: {"question": ROWS[n][0], "config": ROWS[n][1],
                                            "flags": ROWS[n][2], **rows[n]} for n in rows}})  # fmt: skip
    if args.table:
        write_text(args.table, text)


if __name__ == "__main__":
    main()
