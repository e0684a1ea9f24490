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
    BenchOptions,
    CompareOptions,
    EvaluateOptions,
    ExplainOptions,
    ExportOptions,
    FinetuneConfig,
    InfoOptions,
    LrFindOptions,
    PredictOptions,
    ScratchConfig,
    StudyConfig,
    SweepOptions,
    SweepReportOptions,
    TfdsOptions,
    add_options,
    load_config,
    options_from_args,
    overrides_from_args,
    read_yaml,
    shipped_config,
    to_dict,
)
from .errors import ConfigError, DataError
from .models.backbones import demo_note


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
    ramp = options_from_args(args, LrFindOptions)
    run_dir, result = find_learning_rate(config, kind, ramp.start_lr, ramp.end_lr, ramp.steps)
    print(summary(result))
    print(f"outputs: {run_dir} (plot: {run_dir / PLOT_PNG})")


def cmd_info(args) -> None:
    from .models.cnn import CnnArchitecture, build_cnn, describe

    config = load_config(ScratchConfig, args.config, overrides_from_args(args, ScratchConfig))
    classes = options_from_args(args, InfoOptions).num_classes
    architecture = CnnArchitecture.of(config)
    print(describe(build_cnn(architecture, classes), architecture, classes))


def cmd_evaluate(args) -> None:
    from .serving.evaluate import evaluate_checkpoint

    print_summary(*evaluate_checkpoint(options_from_args(args, EvaluateOptions)))


def cmd_compare(args) -> None:
    from .files import write_json
    from .serving.compare import compare_runs, summary_table

    options = options_from_args(args, CompareOptions)
    result = compare_runs(options.run_a, options.run_b)
    print(summary_table(result))
    if options.output:
        write_json(Path(options.output), result)
        print(f"outputs: {options.output}")


def cmd_explain(args) -> None:
    from .serving.explain import explain_checkpoint

    out_dir, index = explain_checkpoint(options_from_args(args, ExplainOptions))
    for skipped in index["skipped"]:
        print(f"skipped {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    print(f"outputs: {out_dir} ({len(index['images'])} image(s); index: {out_dir / 'explain.json'})")


def cmd_predict(args) -> int:
    """A file that cannot be read does not stop the rest: each is named, every row is written, and the exit code is 1
    (0 when every file was predicted)."""
    from .serving.predict import predictor, write_csv

    options = options_from_args(args, PredictOptions)
    job = predictor(options)
    if options.csv:
        predicted, unreadable = write_csv(options.csv, job.rows(progress=True), options.top)
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
    if job.ignored:
        print(f"left out {job.ignored} hidden or non-image file(s) in the folders", file=sys.stderr)
    if options.csv:
        print(f"outputs: {options.csv} ({predicted} image(s) predicted)")
    if unreadable:
        where = f"; their rows in {options.csv} hold the reason" if options.csv else ""
        print(f"{len(unreadable)} of {len(job.paths)} file(s) could not be read{where} (exit code 1)", file=sys.stderr)
        return 1
    return 0


def cmd_export(args) -> None:
    from .serving.export import export_checkpoint

    out_dir, info = export_checkpoint(options_from_args(args, ExportOptions))
    print(f"outputs: {out_dir} ({info['model']}, labels.txt, export.json; load it with {info['runtime']}; "
          f"checked against Keras: max logit difference {info['check']['max_abs_logit_difference']:.2g})")  # fmt: skip


def cmd_tfds(args) -> None:
    from .data.tfds_dataset import prepare

    options = options_from_args(args, TfdsOptions)
    builder = prepare(options.tfds_dir, options.manual_dir)
    counts = ", ".join(f"{name} {split.num_examples}" for name, split in builder.info.splits.items())
    print(f"{builder.name} records: {builder.data_dir} ({counts}); train from them with --tfds-dir {options.tfds_dir or '~/tensorflow_datasets'}")


def cmd_sweep(args) -> None:
    from .sweeps.launch import run_sweep
    from .sweeps.report import from_folder

    options = options_from_args(args, SweepOptions)
    overrides = {"data_dir": options.data_dir, "demo": options.demo or None, "tfds_dir": options.tfds_dir,
                 "epochs": options.epochs, "image_size": options.image_size}  # fmt: skip
    mode, sweep_dir = run_sweep(options.config, options.count, overrides, options.output_dir, options.offline, options.sweep_id)
    if mode == "local":
        report_sweep(from_folder(sweep_dir), sweep_dir)


def cmd_sweep_report(args) -> None:
    from .sweeps.report import load_sweep

    options = options_from_args(args, SweepReportOptions)
    record, out_dir = load_sweep(options.sweep, options.project)
    report_sweep(record, Path(options.output_dir) if options.output_dir else out_dir)


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
    from .perf.benchmark import BenchOptions as Bench
    from .perf.benchmark import run_bench, summary, write_report

    options = options_from_args(args, Bench)
    report = run_bench(options)
    print(summary(report))
    if options.json:
        write_report(report, options.json)
        print(f"outputs: {options.json}")


def print_summary(run_dir: Path, metrics: dict) -> None:
    if not metrics:
        print(f"this process trained as one of several; the first process writes the outputs: {run_dir}")
        return
    keys = ("test_accuracy", "test_accuracy_ci95", "tta_test_accuracy", "test_loss", "best_val_accuracy", "params",
            "train_images_per_second", "seconds_per_epoch")  # fmt: skip
    shown = {k: metrics[k] for k in keys if k in metrics}
    print(json.dumps(shown, indent=2))
    print(f"outputs: {run_dir}")


# The training commands: name -> (help, config class, shipped YAML). Their options come from the config class.
TRAINING = {
    "scratch": ("train the 5-block CNN from scratch (Part A)", ScratchConfig, "scratch.yaml"),
    "finetune": ("fine-tune EfficientNetV2-S, or EfficientNet-Lite0 (Part B)", FinetuneConfig, "finetune.yaml"),
}
COMMANDS = {  # the others: name -> (help, options class, function)
    "info": ("layer table, parameter count and FLOPs of a CNN configuration", InfoOptions, cmd_info),
    "evaluate": ("re-evaluate a saved model on the test set", EvaluateOptions, cmd_evaluate),
    "compare": ("two runs on the same test list: accuracies, paired bootstrap, McNemar", CompareOptions, cmd_compare),
    "explain": ("Grad-CAM, guided backpropagation, filters and feature maps of a checkpoint", ExplainOptions, cmd_explain),
    "predict": ("top classes for image files and folders", PredictOptions, cmd_predict),
    "export": ("a checkpoint as a SavedModel, ONNX or LiteRT model, with its class names", ExportOptions, cmd_export),
    "sweep": ("hyperparameter sweep from a W&B sweep file (W&B agent or local search)", SweepOptions, cmd_sweep),
    "tfds": ("build iNaturalist-12K as TFDS records (tfds.load('inaturalist12k'))", TfdsOptions, cmd_tfds),
    "sweep-report": ("ranked trials, best config, parameter importance, plots", SweepReportOptions, cmd_sweep_report),
    "study": ("the whole study: Part A sweep, retrain, test; Part B strategies, final run; report", StudyConfig, cmd_study),
    "bench": ("training, inference, input-pipeline and epoch speed on the active backend", BenchOptions, cmd_bench),
}


def build_parser() -> argparse.ArgumentParser:
    """Every command's flags come from its options dataclass (config.training, config.commands), grouped by section."""
    parser = argparse.ArgumentParser(prog="run.py", description="inat-keras: train, fine-tune and evaluate image classifiers")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (what, cls, config_file) in TRAINING.items():
        train = commands.add_parser(name, help=what)
        train.add_argument("--config", help=f"YAML config (default configs/{config_file})")
        train.add_argument("--print-config", action="store_true", help="print the resolved config and stop")
        if name == "finetune":
            train.add_argument("--print-schedule", action="store_true",
                               help="print each stage's epochs, units and trainable parameters, and stop (no training)")
        add_options(train, cls)
        train.set_defaults(func=cmd_train)

    lr_find = commands.add_parser("lr-find", help="learning-rate finder: loss over an exponential ramp, plot, suggestion")
    lr_kinds = lr_find.add_subparsers(dest="kind", required=True)
    for name, (what, cls, config_file) in TRAINING.items():
        finder = lr_kinds.add_parser(name, help=f"{what}, built as `run.py {name}` builds it")
        finder.add_argument("--config", help=f"YAML config (default configs/{config_file})")
        add_options(finder, LrFindOptions)
        add_options(finder, cls)
        finder.set_defaults(func=cmd_lr_find)

    for name, (what, cls, func) in COMMANDS.items():
        command = commands.add_parser(name, help=what)
        if name == "info":
            command.add_argument("--config", help="YAML config")
            add_options(command, ScratchConfig)
        add_options(command, cls)
        command.set_defaults(func=func)
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
        code = args.func(args)  # None, or the exit code of a command that finished with some inputs failed
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only folder, a full disk: what was written before stays whole
        where = err.filename or getattr(args, "output_dir", None) or getattr(args, "csv", None)
        print(f"error: {f'{where}: ' if where else ''}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C: where it stopped, in one line
        print(f"stopped: {interrupted(stop)}", file=sys.stderr)
        return 130
    return code or 0


def interrupted(stop: KeyboardInterrupt) -> str:
    """What an interrupted command left: a training run resumes from its folder; other commands write nothing half."""
    run_dir = getattr(stop, "run_dir", None)
    if run_dir is None:
        return "interrupted; nothing half-written was left (outputs appear whole or not at all)"
    from .outputs.run_folder import HISTORY, read_history

    try:
        epochs = len(read_history(run_dir / HISTORY))
    except DataError:  # a history damaged by the kill itself: the resume says what to do with it
        return f"{run_dir} was interrupted; the same command (with --output-dir {run_dir}) resumes it"
    return f"{run_dir} holds {epochs} finished epoch(s); the same command (with --output-dir {run_dir}) resumes it"
