"""`python run.py COMMAND ...`: a thin layer over functions that the tests call directly.

Each command imports what it runs when it runs, so that `--help` and a mistyped option answer without
loading TensorFlow, JAX or keras-cv.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from .config import (
    AUGMENT_PLACES,
    JIT_MODES,
    PRECISIONS,
    FinetuneConfig,
    ScratchConfig,
    add_config_arguments,
    load_config,
    overrides_from_args,
    read_yaml,
    to_dict,
)
from .errors import ConfigError, DataError
from .perf import MODELS as BENCH_MODELS
from .perf import PARTS as BENCH_PARTS


@contextlib.contextmanager
def native_stderr_silenced(silence: bool):
    """TensorFlow's C++ start-up lines (oneDNN, CUDA stubs, a failed cuInit on CPU-only machines) come
    from absl before TF_CPP_MIN_LOG_LEVEL is read: the file descriptor itself is muted meanwhile."""
    if not silence:
        yield
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def setup_backend() -> None:
    """Load TensorFlow quietly (unless TF_CPP_MIN_LOG_LEVEL is below 2); under JAX, TensorFlow only feeds
    data: keep it off the GPUs."""
    with native_stderr_silenced(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") >= "2"):
        import keras
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if keras.backend.backend() != "tensorflow" and gpus:
            tf.config.set_visible_devices([], "GPU")


def cmd_train(args) -> None:
    """scratch and finetune: the kind's shipped YAML (or --config) <- flags; trained, or only printed."""
    from .training.kinds import KINDS

    kind = KINDS[args.command]
    config = load_config(kind.config_class, args.config or kind.default_config_path(),
                         overrides_from_args(args, kind.config_class))  # fmt: skip
    if args.print_config:
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return
    if getattr(args, "print_schedule", False):
        from .models.strategies import schedule_table

        print(schedule_table(config))
        return
    print_summary(*kind.train(config))


def cmd_info(args) -> None:
    from .models.cnn import build_cnn, describe

    config = load_config(ScratchConfig, args.config, overrides_from_args(args, ScratchConfig))
    print(describe(build_cnn(config, args.num_classes), config, args.num_classes))


def cmd_evaluate(args) -> None:
    from .training.checkpoints import evaluate_checkpoint

    out_dir, metrics = evaluate_checkpoint(args.checkpoint, args.data_dir, args.demo, args.output_dir)
    print_summary(out_dir, metrics)


def cmd_predict(args) -> None:
    from .training.checkpoints import predict_images

    predicted, unreadable = predict_images(args.checkpoint, args.images, args.data_dir, args.demo, args.top)
    for path, ranked in predicted:
        print(path)
        for name, probability in ranked:
            print(f"  {name:<20} {probability:7.2%}")
    if unreadable:
        for path, reason in unreadable:
            print(f"error: cannot read {path}: {reason}", file=sys.stderr)
        raise DataError(f"{len(unreadable)} of {len(args.images)} file(s) could not be read (listed above)")


def cmd_tfds(args) -> None:
    from .data.tfds_dataset import prepare

    builder = prepare(args.tfds_dir, args.manual_dir)
    counts = ", ".join(f"{name} {split.num_examples}" for name, split in builder.info.splits.items())
    print(f"{builder.name} records: {builder.data_dir} ({counts}); train from them with --tfds-dir {args.tfds_dir or '~/tensorflow_datasets'}")


def cmd_sweep(args) -> None:
    from .sweeps.launch import run_sweep
    from .sweeps.report import from_folder

    overrides = {"data_dir": args.data_dir, "demo": args.demo or None, "tfds_dir": args.tfds_dir,
                 "epochs": args.epochs, "image_size": args.image_size}
    mode, sweep_dir = run_sweep(args.config, args.count, overrides, args.output_dir, args.offline, args.sweep_id)
    if mode == "local":
        report_sweep(from_folder(sweep_dir), sweep_dir)


def cmd_sweep_report(args) -> None:
    from .sweeps.report import load_sweep

    record, out_dir = load_sweep(args.sweep, args.project)
    report_sweep(record, Path(args.output_dir) if args.output_dir else out_dir)


def report_sweep(record, out_dir: Path) -> None:
    from .sweeps.report import BEST_CONFIG, write_report

    paths = write_report(record, out_dir)
    print(f"outputs: {out_dir} (best config: {paths.get(BEST_CONFIG, 'none, no trial finished')})")


def cmd_bench(args) -> None:
    from .perf.benchmark import BenchOptions, run_bench, summary, write_report

    options = BenchOptions(args.model, args.image_size, args.batch_size, args.data_dir, args.steps, args.repeats,
                           args.images, tuple(args.parts.split(",")), args.precision, args.jit_compile,
                           args.peak_tflops, overrides={"augment_on": args.augment_on})  # fmt: skip
    report = run_bench(options)
    print(summary(report))
    if args.json:
        write_report(report, args.json)
        print(f"outputs: {args.json}")


def print_summary(run_dir: Path, metrics: dict) -> None:
    if not metrics:
        print(f"this process trained as one of several; the first process writes the outputs: {run_dir}")
        return
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
    finetune = commands.add_parser("finetune", help="fine-tune EfficientNetV2-S (Part B)")
    finetune.add_argument("--config", help="YAML config (default configs/finetune.yaml)")
    add_config_arguments(finetune, FinetuneConfig)
    finetune.add_argument("--print-schedule", action="store_true",
                          help="print each stage's epochs, units and trainable parameters, and stop (no training, no download)")
    for train in (scratch, finetune):
        train.add_argument("--print-config", action="store_true", help="print the resolved config and stop")
        train.set_defaults(func=cmd_train)

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

    sweep = commands.add_parser("sweep", help="hyperparameter sweep from a W&B sweep file (W&B agent or local search)")
    sweep.add_argument("config", help="W&B sweep file, e.g. configs/sweep_scratch.yaml")
    sweep.add_argument("--count", type=int, required=True, help="trials: in all for a local sweep, by this agent online")
    data = sweep.add_mutually_exclusive_group()
    data.add_argument("--data-dir", help="dataset folder (default: iNaturalist-12K, fetched when missing)")
    data.add_argument("--demo", action="store_true", help="use the embedded demo data")
    data.add_argument("--tfds-dir", help="TFDS data folder with prepared inaturalist12k records (run.py tfds)")
    sweep.add_argument("--epochs", type=int, help="epochs per trial (default: the run's YAML)")
    sweep.add_argument("--image-size", type=int, help="input size of every trial (default: the run's YAML)")
    sweep.add_argument("--output-dir", help="sweep folder: new, or a local sweep to resume (default runs/sweep-<time>)")
    sweep.add_argument("--offline", action="store_true", help="local search even when logged in to W&B")
    sweep.add_argument("--sweep-id", help="join this W&B sweep (ID or ENTITY/PROJECT/ID) as one more agent")
    sweep.set_defaults(func=cmd_sweep)

    tfds_cmd = commands.add_parser("tfds", help="build iNaturalist-12K as TFDS records (tfds.load('inaturalist12k'))")
    tfds_cmd.add_argument("--tfds-dir", help="TFDS data folder (default: TFDS's own, ~/tensorflow_datasets)")
    tfds_cmd.add_argument("--manual-dir", help="an unzipped nature_12K.zip (holding inaturalist_12K/) to use instead of downloading")
    tfds_cmd.set_defaults(func=cmd_tfds)

    sweep_report = commands.add_parser("sweep-report", help="ranked trials, best config, parameter importance, plots")
    sweep_report.add_argument("sweep", metavar="SWEEP_DIR_OR_ID", help="a local sweep folder or a W&B sweep id")
    sweep_report.add_argument("--project", default="inat-keras", help="W&B project of a bare sweep id")
    sweep_report.add_argument("--output-dir", help="where to write (default: the sweep folder, or runs/sweep-<id>)")
    sweep_report.set_defaults(func=cmd_sweep_report)

    bench = commands.add_parser("bench", help="training, inference, input-pipeline and epoch speed on the active backend")
    bench.add_argument("--model", choices=BENCH_MODELS, default="cnn",
                       help="cnn: 64x5 3x3 ReLU; cnn-best: configs/scratch_best.yaml; efficientnet: V2-S, random weights")
    bench.add_argument("--image-size", type=int, default=224, help="square input size in pixels")
    bench.add_argument("--batch-size", type=int, default=32, help="images per step")
    bench.add_argument("--data-dir", help="dataset folder of JPEGs (default: photo-like JPEGs made once in the cache)")
    bench.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    bench.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    bench.add_argument("--images", type=int, default=320, help="size of the generated folder (without --data-dir)")
    bench.add_argument("--parts", default=",".join(BENCH_PARTS), help="comma-separated subset to measure")
    bench.add_argument("--precision", choices=PRECISIONS, default="float32", help="compute dtype policy")
    bench.add_argument("--jit-compile", choices=JIT_MODES, default="auto", help="XLA for the TensorFlow step")
    bench.add_argument("--peak-tflops", type=float, default=0.0,
                       help="the device's dense peak TFLOP/s at this precision: adds model FLOP utilisation (MFU)")
    bench.add_argument("--augment-on", choices=AUGMENT_PLACES, default="device",
                       help="device: augmentation inside the timed training step and fit; host: in the tf.data pipeline")
    bench.add_argument("--json", help="also write every figure to this JSON file")
    bench.set_defaults(func=cmd_bench)
    return parser


def model_family(args) -> str:
    """The model family a command trains or measures, for the XLA:CPU flags that suit it."""
    if args.command == "finetune" or getattr(args, "model", None) == "efficientnet":
        return "efficientnet"
    if args.command == "sweep":
        from .sweeps.spec import check_sweep_file

        return check_sweep_file(read_yaml(args.config), args.config).family
    return "cnn"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        from .perf.cpu_tuning import prepare_for

        prepare_for(model_family(args))  # before JAX starts its CPU client; flags the user set win
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    setup_backend()
    try:
        args.func(args)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only folder, a full disk: what was written before stays whole
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    return 0
