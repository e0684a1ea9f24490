"""The options of the commands that do not train (and the study's), declared as the training options are: one
dataclass per command, one field per flag. `run.py COMMAND --help`, docs/options.md and the checks come from these."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..models.backbones import BACKBONES
from .fields import Range, check_fields, option
from .training import AUGMENT_PLACES, IMAGE_SIZE, JIT_MODES, PRECISIONS, WANDB_MODES, check_one_source

AT_LEAST_0 = Range(0, note="(0: the configs' own)")
PROJECT = "inat-keras"  # the default W&B project of every command
EXPORT_FORMATS = ("saved_model", "onnx", "litert")
BENCH_MODELS = ("cnn", "cnn-best", "efficientnet", "efficientnet-lite0")  # what `run.py bench --model` measures
BENCH_PARTS = ("train", "infer", "pipeline", "fit", "matmul")  # and `--parts`


class Options:
    """Checks the declared choices and ranges; subclasses add their own."""

    def validate(self) -> None:
        check_fields(self)


@dataclass
class CheckpointSource(Options):
    checkpoint: str | None = option("a .keras file written by a run", section="command", required=True)
    data_dir: str | None = option("take class names (and, for evaluate, the test set) from this dataset (default: the "
                                  "run's split.json)", section="data")
    demo: bool = option("take class names (and, for evaluate, the test set) from the demo data", False, section="data")

    def validate(self) -> None:
        super().validate()
        if self.data_dir and self.demo:
            raise ConfigError("give one source of class names, not --data-dir and --demo")


@dataclass
class EvaluateOptions(CheckpointSource):
    """`run.py evaluate`: a saved model on the test set again."""

    output_dir: str | None = option("where to write metrics and pictures (default: a new runs/ folder)", section="run")
    tta: bool = option("also test with test-time augmentation (mean softmax of each image and its horizontal mirror)",
                       False, section="run")
    wandb: str = option("log the metrics, pictures and predictions table to a W&B run of its own", "disabled",
                        section="tracking", choices=WANDB_MODES)
    wandb_project: str = option("W&B project name", PROJECT, section="tracking")


@dataclass
class PredictOptions(CheckpointSource):
    """`run.py predict`: the top classes of image files and folders."""

    images: list[str] = option("image files, or folders walked recursively", section="command", positional=True,
                               default_factory=list, metavar="FOLDER_OR_IMAGE")  # fmt: skip
    top: int = option("how many classes to show", 3, section="command", within=Range(1))
    csv: str | None = option("write path, class_1, prob_1, ..., error per file to this CSV (with a progress bar) instead of "
                             "printing", section="run")
    batch_size: int = option("images per predict step", 32, section="performance", within=Range(1))


@dataclass
class ExplainOptions(CheckpointSource):
    """`run.py explain`: Grad-CAM, guided backpropagation, filters and feature maps."""

    images: list[str] = option("image files", section="command", positional=True, default_factory=list)
    output_dir: str | None = option("an empty or new folder for the PNGs and explain.json (default: a new runs/ folder)",
                                    section="run")
    class_name: str | None = option("Grad-CAM of this class for every image (default: each one's predicted class)",
                                    section="command", metavar="NAME", flag="--class")
    gradcam_layer: str | None = option("feature-map layer for Grad-CAM (default: the last learned one of 7x7 or more, "
                                       "EfficientNet's backbone)", section="command", metavar="NAME")
    layer: str | None = option("the CNN layer whose neurons guided backpropagation explains (default: its last block, "
                               "block5_act)", section="command", metavar="NAME")
    neurons: int = option("how many of that layer's channels: the most active on these images", 10, section="command",
                          within=Range(1), metavar="N")
    channels: list[int] | None = option("these channels instead, e.g. 0,5,12", section="command", metavar="LIST")


@dataclass
class ExportOptions(CheckpointSource):
    """`run.py export`: a checkpoint as a SavedModel, ONNX or LiteRT model, with its class names."""

    format: str | None = option("what to export to", section="command", choices=EXPORT_FORMATS, required=True)
    output_dir: str | None = option("a new or empty folder (default: RUN/export-FORMAT)", section="run")


@dataclass
class CompareOptions(Options):
    """`run.py compare`: two runs on the same test list."""

    run_a: str | None = option("a final run's folder or an evaluate output folder (its predictions.csv)", section="command",
                               positional=True, metavar="RUN_A")
    run_b: str | None = option("the same for the other model", section="command", positional=True, metavar="RUN_B")
    output: str | None = option("also write the figures to this JSON file", section="run", metavar="FILE")


@dataclass
class SweepOptions(Options):
    """`run.py sweep`: a W&B sweep file searched by a W&B agent or locally."""

    config: str | None = option("W&B sweep file, e.g. configs/sweep_scratch.yaml", section="command", positional=True)
    count: int | None = option("trials: in all for a local sweep, by this agent online", section="command", required=True,
                               within=Range(1))
    data_dir: str | None = option("dataset folder (default: iNaturalist-12K, fetched when missing)", section="data")
    demo: bool = option("use the embedded demo data", False, section="data")
    tfds_dir: str | None = option("TFDS data folder with prepared inaturalist12k records (run.py tfds)", section="data")
    epochs: int | None = option("epochs per trial (default: the run's YAML)", section="optimisation", within=Range(1))
    image_size: int | None = option("input size of every trial (default: the run's YAML)", section="data", within=IMAGE_SIZE)
    output_dir: str | None = option("sweep folder: new, or a local sweep to resume (default runs/sweep-<time>)", section="run")
    offline: bool = option("local search even when logged in to W&B", False, section="tracking")
    sweep_id: str | None = option("join this W&B sweep (ID or ENTITY/PROJECT/ID) as one more agent", section="tracking")

    def validate(self) -> None:
        super().validate()
        check_one_source(self)


@dataclass
class SweepReportOptions(Options):
    """`run.py sweep-report`: ranked trials, best config, parameter importance, plots."""

    sweep: str | None = option("a local sweep folder or a W&B sweep id", section="command", positional=True,
                               metavar="SWEEP_DIR_OR_ID")
    project: str = option("W&B project of a bare sweep id", PROJECT, section="tracking")
    output_dir: str | None = option("where to write (default: the sweep folder, or runs/sweep-<id>)", section="run")


@dataclass
class TfdsOptions(Options):
    """`run.py tfds`: iNaturalist-12K as TFDS records."""

    tfds_dir: str | None = option("TFDS data folder (default: TFDS's own, ~/tensorflow_datasets)", section="data")
    manual_dir: str | None = option("an unzipped nature_12K.zip (holding inaturalist_12K/) to use instead of downloading",
                                    section="data")


@dataclass
class LrFindOptions(Options):
    """`run.py lr-find scratch|finetune`: the ramp, on top of the kind's training options."""

    start_lr: float = option("first rate of the ramp", 1e-7, section="schedule", within=Range(0.0, low_open=True, high=1e9))
    end_lr: float = option("last rate of the ramp", 10.0, section="schedule", within=Range(0.0, low_open=True, high=1e9))
    steps: int = option("training steps of the ramp (it stops early if the loss diverges)", 200, section="schedule",
                        within=Range(2))


@dataclass
class InfoOptions(Options):
    """`run.py info`: layer table, parameters and FLOPs of a CNN configuration."""

    num_classes: int = option("classes of the output layer", 10, section="model", within=Range(1))


@dataclass
class BenchOptions(Options):
    """`run.py bench`: training, inference, input-pipeline and epoch speed on the active backend."""

    model: str = option("cnn: 64x5 3x3 ReLU; cnn-best: configs/scratch_best.yaml; efficientnet: V2-S, efficientnet-lite0: "
                        "Lite0 (both random weights, every layer training)", "cnn", section="model", choices=BENCH_MODELS)
    image_size: int = option("square input size in pixels", 224, section="data", within=IMAGE_SIZE)
    batch_size: int = option("images per step", 32, section="optimisation", within=Range(1))
    data_dir: str | None = option("dataset folder of JPEGs (default: photo-like JPEGs made once in the cache)", section="data")
    steps: int = option("steps per timed repeat", 5, section="command", within=Range(1))
    repeats: int = option("timed repeats; the median is reported", 3, section="command", within=Range(1))
    images: int = option("size of the generated folder (without --data-dir)", 320, section="data", within=Range(1))
    parts: str = option("comma-separated subset to measure: " + ", ".join(BENCH_PARTS), ",".join(BENCH_PARTS),
                        section="command")
    precision: str = option("compute dtype policy", "float32", section="performance", choices=PRECISIONS)
    jit_compile: str = option("XLA for the TensorFlow step", "auto", section="performance", choices=JIT_MODES)
    peak_tflops: float = option("the device's dense peak TFLOP/s at this precision: adds model FLOP utilisation (MFU)", 0.0,
                                section="performance", within=Range(0.0))
    augment_on: str = option("device: augmentation inside the timed training step and fit; host: in the tf.data pipeline",
                             "device", section="augmentation", choices=AUGMENT_PLACES)
    json: str | None = option("also write every figure to this JSON file", section="run")

    def part_list(self) -> tuple[str, ...]:
        return tuple(self.parts.split(","))

    def validate(self) -> None:
        super().validate()
        unknown = [p for p in self.part_list() if p not in BENCH_PARTS]
        if unknown:
            raise ConfigError(f"parts must be a comma-separated subset of {', '.join(BENCH_PARTS)}, got {', '.join(unknown)}")


@dataclass
class StudyConfig(Options):
    """The whole study in one command (`run.py study`): Part A's sweep, retrained winner and test; Part B's four
    strategies on the validation split and its final run. 0 for an epoch count or size: the run configs' own."""

    data_dir: str | None = option("folder holding train/ and val/ (or inaturalist_12K/); fetched when missing", section="data")
    demo: bool = option("the embedded demo data, with the demo settings of configs/study.yaml", False, section="data")
    tfds_dir: str | None = option("read iNaturalist-12K from the TFDS records in this TFDS data folder (run.py tfds)",
                                  section="data")
    output_dir: str | None = option("the study's folder: new, or a stopped study to resume (default runs/study-<time>)",
                                    section="run")
    trials: int = option("Part A: trials of the sweep", 30, section="command", within=Range(1))
    sweep: str | None = option("Part A: the sweep file (default configs/sweep_scratch.yaml, the study's search space)",
                               section="command")
    trial_epochs: int = option("Part A: epochs of each sweep trial (0: configs/scratch.yaml's)", 0, section="optimisation",
                               within=AT_LEAST_0)
    scratch_epochs: int = option("Part A: epochs of the retrained winner (0: its configuration's)", 0, section="optimisation",
                                 within=AT_LEAST_0)
    scratch_image_size: int = option("Part A: input size of the trials and the retrained winner (0: configs/scratch.yaml's)",
                                     0, section="data", within=Range(0, 1024, note="pixels; 0: the configs' own"))
    finetune_epochs: int = option("Part B: epochs of every fine-tuning run (0: the configs' own)", 0, section="optimisation",
                                  within=AT_LEAST_0)
    finetune_image_size: int = option("Part B: input size of every fine-tuning run (0: the configs' own)", 0, section="data",
                                      within=Range(0, 1024, note="pixels; 0: the configs' own"))
    backbone: str = option("Part B: efficientnetv2_s (the study's) or efficientnet_lite0 (ImageNet weights that work "
                           "offline)", "efficientnetv2_s", section="model", choices=tuple(BACKBONES))
    weights: str = option("Part B: imagenet, keras-cv, none (random: says nothing about transfer) or a local file or folder",
                          "imagenet", section="model")
    wandb: str = option("W&B mode of every run and of the report: auto, online, offline, disabled", "auto",
                        section="tracking", choices=WANDB_MODES)
    wandb_project: str = option("W&B project name", PROJECT, section="tracking")

    def validate(self) -> None:
        super().validate()
        check_one_source(self)
