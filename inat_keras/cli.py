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
    WANDB_MODES,
    FinetuneConfig,
    ScratchConfig,
    StudyConfig,
    add_config_arguments,
    load_config,
    overrides_from_args,
    read_yaml,
    shipped_config,
    to_dict,
)
from .errors import ConfigError, DataError
from .models.backbones import demo_note
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


def kind_config(kind, args):
    """The kind's shipped YAML (or --config) <- its demo section (with --demo) <- the flags typed."""
    return load_config(kind.config_class, args.config or kind.default_config_path(), overrides_from_args(args, kind.config_class))


def cmd_train(args) -> None:
    """scratch and finetune: the kind's shipped YAML (or --config) <- flags; trained, or only printed."""
    from .training.kinds import KINDS

    kind = KINDS[args.command]
    config = kind_config(kind, args)
    if args.print_config:
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return
    if getattr(args, "print_schedule", False):
        from .models.strategies import schedule_table

        print(schedule_table(config))
        return
    note = demo_note(config.demo, getattr(config, "backbone", None))
    if note:
        print(f"note: {note}")
    print_summary(*kind.train(config))


def cmd_lr_find(args) -> None:
    """lr-find scratch|finetune: the kind's YAML (or --config) <- flags, then the exponential ramp."""
    from .training.kinds import KINDS
    from .training.lr_find import PLOT_PNG, find_learning_rate, summary

    kind = KINDS[args.kind]
    config = kind_config(kind, args)
    run_dir, result = find_learning_rate(config, kind, args.start_lr, args.end_lr, args.steps)
    print(summary(result))
    print(f"outputs: {run_dir} (plot: {run_dir / PLOT_PNG})")


def cmd_info(args) -> None:
    from .models.cnn import build_cnn, describe

    config = load_config(ScratchConfig, args.config, overrides_from_args(args, ScratchConfig))
    print(describe(build_cnn(config, args.num_classes), config, args.num_classes))


def cmd_evaluate(args) -> None:
    from .training.checkpoints import evaluate_checkpoint

    out_dir, metrics = evaluate_checkpoint(args.checkpoint, args.data_dir, args.demo, args.output_dir, args.tta,
                                           args.wandb, args.wandb_project)  # fmt: skip
    print_summary(out_dir, metrics)


def cmd_compare(args) -> None:
    from .files import write_json
    from .serving.compare import compare_runs, summary_table

    result = compare_runs(args.run_a, args.run_b)
    print(summary_table(result))
    if args.output:
        write_json(Path(args.output), result)
        print(f"outputs: {args.output}")


def cmd_explain(args) -> None:
    from .serving.explain import explain_checkpoint

    out_dir, index = explain_checkpoint(args.checkpoint, args.images, args.output_dir, args.class_name, args.gradcam_layer,
                                        args.layer, args.neurons, args.channels, args.data_dir, args.demo)  # fmt: skip
    for skipped in index["skipped"]:
        print(f"skipped {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    print(f"outputs: {out_dir} ({len(index['images'])} image(s); index: {out_dir / 'explain.json'})")


def comma_ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated channel numbers such as 0,5,12, not {text!r}") from None


def cmd_predict(args) -> None:
    """Unreadable files are warnings, not failures: each is named, the rest is predicted, the exit code is 0."""
    from .serving.predict import predictor, write_csv

    job = predictor(args.checkpoint, args.images, args.data_dir, args.demo, args.top, args.batch_size)
    if args.csv:
        predicted, unreadable = write_csv(args.csv, job.rows(progress=True), args.top)
    else:
        unreadable = []
        for row in job.rows():
            if row.error is not None:
                unreadable.append((row.path, row.error))
                continue
            print(row.path)
            for name, probability in row.ranked:
                print(f"  {name:<20} {probability:7.2%}")
    for path, reason in unreadable:
        print(f"warning: cannot read {path}: {reason}", file=sys.stderr)
    if unreadable:
        where = f" (rows with an error in {args.csv})" if args.csv else ""
        print(f"warning: {len(unreadable)} of {len(job.paths)} file(s) could not be read{where}", file=sys.stderr)
    if job.ignored:
        print(f"left out {job.ignored} hidden or non-image file(s) in the folders", file=sys.stderr)
    if args.csv:
        print(f"outputs: {args.csv} ({predicted} image(s) predicted)")


def cmd_export(args) -> None:
    from .serving.export import export_checkpoint

    out_dir, info = export_checkpoint(args.checkpoint, args.format, args.output_dir, args.data_dir, args.demo)
    print(f"outputs: {out_dir} ({info['model']}, labels.txt, export.json; load it with {info['runtime']}; "
          f"checked against Keras: max logit difference {info['check']['max_abs_logit_difference']:.2g})")  # fmt: skip


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


def cmd_study(args) -> None:
    """The whole study: configs/study.yaml (its demo section with --demo) <- flags; every step, then the report."""
    from .study.pipeline import run_study
    from .study.report import log_report, write_study_report

    settings = load_config(StudyConfig, shipped_config("study.yaml"), overrides_from_args(args, StudyConfig))
    note = demo_note(settings.demo, settings.backbone)
    if note:
        print(f"note: {note}")
    result = run_study(settings)
    paths = write_study_report(result)
    log_report(result, paths)
    reused = [name for name in result.steps if name not in result.trained()]
    print(f"trained now: {', '.join(result.trained()) or 'none'}; reused: {', '.join(reused) or 'none'}")
    print(f"outputs: {result.study_dir} (report: {paths['report.md']}, {paths['report.html']})")


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
    keys = ("test_accuracy", "test_accuracy_ci95", "tta_test_accuracy", "test_loss", "best_val_accuracy", "params",
            "train_images_per_second", "seconds_per_epoch")  # fmt: skip
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
    finetune = commands.add_parser("finetune", help="fine-tune EfficientNetV2-S, or EfficientNet-Lite0 (Part B)")
    finetune.add_argument("--config", help="YAML config (default configs/finetune.yaml)")
    add_config_arguments(finetune, FinetuneConfig)
    finetune.add_argument("--print-schedule", action="store_true",
                          help="print each stage's epochs, units and trainable parameters, and stop (no training, no download)")
    for train in (scratch, finetune):
        train.add_argument("--print-config", action="store_true", help="print the resolved config and stop")
        train.set_defaults(func=cmd_train)

    lr_find = commands.add_parser("lr-find", help="learning-rate finder: loss over an exponential ramp, plot, suggestion")
    lr_kinds = lr_find.add_subparsers(dest="kind", required=True)
    for name, cls, what in (("scratch", ScratchConfig, "the 5-block CNN"), ("finetune", FinetuneConfig, "the fine-tuning backbone")):
        finder = lr_kinds.add_parser(name, help=f"{what}, built as `run.py {name}` builds it")
        finder.add_argument("--config", help=f"YAML config (default configs/{name}.yaml)")
        add_config_arguments(finder, cls)
        finder.add_argument("--start-lr", type=float, default=1e-7, help="first rate of the ramp")
        finder.add_argument("--end-lr", type=float, default=10.0, help="last rate of the ramp")
        finder.add_argument("--steps", type=int, default=200, help="training steps of the ramp (it stops early if the loss diverges)")
        finder.set_defaults(func=cmd_lr_find)

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
    evaluate.add_argument("--tta", action="store_true",
                          help="also test with test-time augmentation (mean softmax of each image and its horizontal mirror)")
    evaluate.add_argument("--wandb", choices=WANDB_MODES, default="disabled",
                          help="log the metrics, pictures and predictions table to a W&B run of its own (default: disabled)")
    evaluate.add_argument("--wandb-project", default="inat-keras", help="W&B project name")
    evaluate.set_defaults(func=cmd_evaluate)

    compare = commands.add_parser("compare", help="two runs on the same test list: accuracies, paired bootstrap, McNemar")
    compare.add_argument("run_a", metavar="RUN_A", help="a final run's folder or an evaluate output folder (its predictions.csv)")
    compare.add_argument("run_b", metavar="RUN_B", help="the same for the other model")
    compare.add_argument("--output", metavar="FILE", help="also write the figures to this JSON file")
    compare.set_defaults(func=cmd_compare)

    explain = commands.add_parser("explain", help="Grad-CAM, guided backpropagation, filters and feature maps of a checkpoint")
    explain.add_argument("--checkpoint", required=True, help="a .keras file written by a run")
    explain.add_argument("images", nargs="+", help="image files")
    explain.add_argument("--output-dir", metavar="DIR", help="an empty or new folder for the PNGs and explain.json (default: a new runs/ folder)")
    explain.add_argument("--class", dest="class_name", metavar="NAME", help="Grad-CAM of this class for every image (default: each one's predicted class)")
    explain.add_argument("--gradcam-layer", metavar="NAME", help="feature-map layer for Grad-CAM (default: the last, the CNN's block5_act, EfficientNet's backbone)")
    explain.add_argument("--layer", metavar="NAME", help="the CNN layer whose neurons guided backpropagation explains (default: its last block, block5_act)")
    explain.add_argument("--neurons", type=int, default=10, metavar="N", help="how many of that layer's channels: the most active on these images")
    explain.add_argument("--channels", type=comma_ints, metavar="LIST", help="these channels instead, e.g. 0,5,12")
    explain.add_argument("--data-dir", help="take class names from this dataset (default: the run's split.json)")
    explain.add_argument("--demo", action="store_true", help="take class names from the demo data")
    explain.set_defaults(func=cmd_explain)

    predict = commands.add_parser("predict", help="top classes for image files and folders")
    predict.add_argument("--checkpoint", required=True, help="a .keras file written by a run")
    predict.add_argument("images", nargs="+", metavar="FOLDER_OR_IMAGE", help="image files, or folders walked recursively")
    predict.add_argument("--data-dir", help="take class names from this dataset (default: the run's split.json)")
    predict.add_argument("--demo", action="store_true", help="take class names from the demo data")
    predict.add_argument("--top", type=int, default=3, help="how many classes to show")
    predict.add_argument("--csv", help="write path, class_1, prob_1, ..., error per file to this CSV (with a progress bar) instead of printing")
    predict.add_argument("--batch-size", type=int, default=32, help="images per predict step")
    predict.set_defaults(func=cmd_predict)

    export = commands.add_parser("export", help="a checkpoint as a SavedModel, ONNX or LiteRT model, with its class names")
    export.add_argument("--checkpoint", required=True, help="a .keras file written by a run")
    export.add_argument("--format", required=True, choices=("saved_model", "onnx", "litert"), help="what to export to")
    export.add_argument("--output-dir", help="a new or empty folder (default: RUN/export-FORMAT)")
    export.add_argument("--data-dir", help="take class names from this dataset (default: the run's split.json)")
    export.add_argument("--demo", action="store_true", help="take class names from the demo data")
    export.set_defaults(func=cmd_export)

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

    study = commands.add_parser("study", help="the whole study: Part A sweep, retrain, test; Part B strategies, final run; report")
    add_config_arguments(study, StudyConfig)
    study.set_defaults(func=cmd_study)

    bench = commands.add_parser("bench", help="training, inference, input-pipeline and epoch speed on the active backend")
    bench.add_argument("--model", choices=BENCH_MODELS, default="cnn",
                       help="cnn: 64x5 3x3 ReLU; cnn-best: configs/scratch_best.yaml; efficientnet: V2-S, "
                            "efficientnet-lite0: Lite0 (both random weights, every layer training)")
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
    if "finetune" in (args.command, getattr(args, "kind", None)) or str(getattr(args, "model", "")).startswith("efficientnet"):
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
