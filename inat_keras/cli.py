"""`python run.py COMMAND ...`: a thin layer over functions that the tests call directly."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import ConfigError, FinetuneConfig, ScratchConfig, add_config_arguments, load_config, overrides_from_args
from .data import DataError
from .kinds import KINDS


def setup_backend() -> None:
    """Under JAX, TensorFlow only feeds data: keep it off the GPUs."""
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        tf.config.set_visible_devices([], "GPU")


def resolve(cls, args) -> object:
    path = args.config or KINDS[args.command].default_config_path()
    return load_config(cls, path, overrides_from_args(args, cls))


def cmd_scratch(args) -> None:
    print_summary(*KINDS["scratch"].train(resolve(ScratchConfig, args)))


def cmd_finetune(args) -> None:
    print_summary(*KINDS["finetune"].train(resolve(FinetuneConfig, args)))


def cmd_info(args) -> None:
    from .cnn import build_cnn, describe

    config = load_config(ScratchConfig, args.config, overrides_from_args(args, ScratchConfig))
    print(describe(build_cnn(config, args.num_classes), config, args.num_classes))


def cmd_evaluate(args) -> None:
    from .report import evaluate_checkpoint

    out_dir, metrics = evaluate_checkpoint(args.checkpoint, args.data_dir, args.demo, args.output_dir)
    print_summary(out_dir, metrics)


def cmd_predict(args) -> None:
    from .report import predict_images

    for path, ranked in predict_images(args.checkpoint, args.images, args.data_dir, args.demo, args.top):
        print(path)
        for name, probability in ranked:
            print(f"  {name:<20} {probability:7.2%}")


def print_summary(run_dir: Path, metrics: dict) -> None:
    keys = ("test_accuracy", "test_loss", "best_val_accuracy", "params", "train_images_per_second", "seconds_per_epoch")
    shown = {k: metrics[k] for k in keys if k in metrics}
    print(json.dumps(shown, indent=2))
    print(f"outputs: {run_dir}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description="inat-keras: train, fine-tune and evaluate image classifiers")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    scratch = commands.add_parser("scratch", help="train the 5-block CNN from scratch (Part A)")
    scratch.add_argument("--config", help="YAML config (default configs/scratch.yaml)")
    add_config_arguments(scratch, ScratchConfig)
    scratch.set_defaults(func=cmd_scratch)

    finetune = commands.add_parser("finetune", help="fine-tune EfficientNetV2-S (Part B)")
    finetune.add_argument("--config", help="YAML config (default configs/finetune.yaml)")
    add_config_arguments(finetune, FinetuneConfig)
    finetune.set_defaults(func=cmd_finetune)

    info = commands.add_parser("info", help="layer table, parameter count and FLOPs of a CNN configuration")
    info.add_argument("--config", help="YAML config")
    info.add_argument("--num-classes", type=int, default=10)
    add_config_arguments(info, ScratchConfig)
    info.set_defaults(func=cmd_info)

    evaluate = commands.add_parser("evaluate", help="re-evaluate a saved model on the test set")
    evaluate.add_argument("--checkpoint", required=True, help="a .keras file written by a run")
    evaluate.add_argument("--data-dir", help="dataset folder (default: the one the run used)")
    evaluate.add_argument("--demo", action="store_true", help="evaluate on the demo data")
    evaluate.add_argument("--output-dir", help="where to write metrics and pictures (default: a new runs/ folder)")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser("predict", help="top classes for image files")
    predict.add_argument("--checkpoint", required=True, help="a .keras file written by a run")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--data-dir", help="take class names from this dataset (default: the run's split.json)")
    predict.add_argument("--demo", action="store_true", help="take class names from the demo data")
    predict.add_argument("--top", type=int, default=3, help="how many classes to show")
    predict.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    setup_backend()
    try:
        args.func(args)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
