"""The training configurations: what `run.py scratch` and `run.py finetune` train, field by field.

Each field is one option (YAML key and flag, config.fields); `validate()` checks the declared choices and
ranges, then the checks that involve several fields, and changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from ..models.backbones import BACKBONES, UNIT_TYPES
from .fields import Range, check_fields, default_of, option

WANDB_MODES = ("auto", "online", "offline", "disabled")
ACTIVATIONS = ("relu", "leaky_relu", "parametric_relu", "gelu", "silu", "mish")
FILTER_PRESETS = {
    "equal16": [16] * 5,
    "equal32": [32] * 5,
    "equal64": [64] * 5,
    "doubling16": [16, 32, 64, 128, 256],
    "doubling32": [32, 64, 128, 256, 512],
    "halving256": [256, 128, 64, 32, 16],
}
KERNEL_PRESETS = {
    "constant3": [3] * 5,
    "constant5": [5] * 5,
    "constant7": [7] * 5,
    "decreasing": [5, 5, 3, 3, 1],
    "increasing": [1, 3, 3, 5, 5],
}
STRATEGIES = ("full", "head", "last_k", "gradual")
AUGMENTATIONS = ("inat-keras", "study", "randaugment")
INAT_KERAS_AUGMENTS = ("flip", "rotation", "zoom", "color_jitter")  # what the inat-keras preset tunes
OPTIMIZER_STATES = ("carry", "fresh")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "one_cycle")
SCHEDULE_UNITS = ("epoch", "step")
BATCH_NORM_MODES = ("frozen", "study")
CONV_DROPOUTS = ("channel", "element")
INPUT_NORMS = ("imagenet", "none")
CACHE_MODES = ("auto", "memory", "disk")
AUGMENT_PLACES = ("device", "host")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
DISTRIBUTE_MODES = ("auto", "none", "data-parallel")
JIT_MODES = ("auto", "on", "off")
# Where a run's images come from and where its results go: the command chooses them, a configuration does not
# (sweeps may not search them; a sweep's best configuration leaves them out).
PLACE_OPTIONS = ("data_dir", "demo", "tfds_dir", "output_dir", "wandb", "wandb_project")
# Options that change how a run is carried out, not what it computes: an interrupted run resumes under other values.
RESUME_NEUTRAL_OPTIONS = ("output_dir", "wandb", "epochs", "early_stopping", "steps_per_execution", "jit_compile", "cache", "tta",
                          "tensorboard", "pictures")  # fmt: skip

AT_LEAST_1 = Range(1)
FRACTION = Range(0.0, 1.0, high_open=True)  # [0, 1)
# Square input sizes: 4.6x the study's 224 at most; beyond, a model's activations and the decoded-image cache outgrow
# a machine's memory (an image size of 100000 sat for minutes filling a cache, then ran out of memory).
IMAGE_SIZE = Range(1, 1024, note="pixels")


def check_one_source(config) -> None:
    """A run reads its images from one place: the demo data, a folder or TFDS records."""
    sources = [name for name in ("demo", "data_dir", "tfds_dir") if getattr(config, name)]
    if len(sources) > 1:
        raise ConfigError(f"give one source of images, not {' and '.join('--' + n.replace('_', '-') for n in sources)}")


def resolve_blocks(value, presets: dict[str, list[int]], name: str) -> list[int]:
    """Turn a preset name, '3,3,5,5,7' or a list into 5 positive ints."""
    if isinstance(value, str):
        if value in presets:
            return list(presets[value])
        try:
            value = [int(v) for v in value.split(",")]
        except ValueError:
            raise ConfigError(
                f"{name} must be 5 comma-separated integers or one of {', '.join(presets)}, got {value!r}"
            ) from None
    values = list(value)
    if len(values) != 5 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ConfigError(f"{name} needs 5 positive integers (one per block), got {values!r}")
    return values


@dataclass
class TrainConfig:
    """Settings shared by every training command."""

    # data
    data_dir: str | None = option("folder holding train/ and val/ (or inaturalist_12K/); fetched when missing", section="data")
    demo: bool = option("use the embedded demo data (scikit-learn's handwritten digits)", False, section="data")
    tfds_dir: str | None = option("read iNaturalist-12K from the TFDS records prepared in this TFDS data folder "
                                  "(run.py tfds) instead of a folder of images", section="data")
    image_size: int = option("square input size in pixels (96 means 96x96)", 224, section="data", within=IMAGE_SIZE)
    val_fraction: float = option("fraction of train/ held out for validation, stratified (0: train on all, keep the last epoch)",
                                 0.2, section="data", within=Range(0.0, 1.0, high_open=True,
                                 note="(0 trains on all of train/ and keeps the last epoch)"))  # fmt: skip
    cache: str = option("decoded images: auto (memory when a split fits in a quarter of free memory), memory, disk", "auto",
                        section="data", choices=CACHE_MODES)
    shuffle_buffer: int = option("disk cache: training images held for shuffling (the split is also read in a new random "
                                 "order of shards every epoch); the memory cache shuffles the whole split", 1024,
                                 section="data", within=AT_LEAST_1)  # fmt: skip
    # augmentation
    augment: bool = option("augment the training split (never validation or test)", True, section="augmentation")
    augmentation: str = option("preset: inat-keras (flip, rotation, zoom, color_jitter), study (the study's transforms, "
                               "fixed) or randaugment", "inat-keras", section="augmentation", choices=AUGMENTATIONS)
    augment_on: str = option("where augmentation runs: device (batched inside the compiled training step) or host (in the "
                             "tf.data pipeline, on the CPU)", "device", section="augmentation", choices=AUGMENT_PLACES)
    flip: bool = option("inat-keras preset: random horizontal flips", True, section="augmentation")
    rotation: float = option("inat-keras preset: max rotation either way, as a fraction of a full turn (0 disables)", 0.05,
                             section="augmentation", within=FRACTION)
    zoom: float = option("inat-keras preset: max zoom in or out, as a fraction of the size (0 disables)", 0.1,
                         section="augmentation", within=FRACTION)
    color_jitter: float = option("inat-keras preset: brightness/contrast/saturation change up to this much either way "
                                 "(0 disables)", 0.1, section="augmentation", within=FRACTION)
    randaugment_ops: int = option("randaugment preset: operations applied to each image, each drawn from its 14 "
                                  "(RandAugment's N)", 2, section="augmentation", within=Range(1, 14,
                                  note="(operations per image)"))  # fmt: skip
    randaugment_magnitude: float = option("randaugment preset: strength of every operation, 0 (none) to 30 (its strongest; "
                                          "RandAugment's M, 9 as torchvision and timm)", 9.0, section="augmentation",
                                          within=Range(0.0, 30.0))  # fmt: skip
    crop_min_area: float = option("random-resized crops of the training images: smallest fraction of the image a crop "
                                  "covers (aspect 3/4-4/3), from a larger decode (crop_decode_scale); 0 disables", 0.0,
                                  section="augmentation")  # fmt: skip
    crop_decode_scale: float = option("with crops: training images are cached at this times image_size, and cropped from "
                                      "that", 1.5, section="augmentation", within=Range(1.0, 4.0, note="(times image_size)"))
    mixup: float = option("MixUp: Beta(a, a) parameter of the mixing weight, per image (0 disables)", 0.0,
                          section="augmentation", within=Range(0.0, 10.0, note="(a Beta(a, a) parameter; 0 disables)"))
    cutmix: float = option("CutMix: Beta(a, a) parameter of the kept area, per image (0 disables); with mixup too, each "
                           "batch uses one of them, drawn with equal chances", 0.0, section="augmentation",
                           within=Range(0.0, 10.0, note="(a Beta(a, a) parameter; 0 disables)"))  # fmt: skip
    # optimisation
    batch_size: int = option("images per training step on each device (the global batch is this times the devices)", 32,
                             section="optimisation", within=AT_LEAST_1)
    epochs: int = option("training epochs", 10, section="optimisation", within=AT_LEAST_1)
    learning_rate: float = option("peak learning rate (of the schedule; the head's with layer-wise rates)", 1e-4,
                                  section="optimisation")
    optimizer: str = option("adam (the study) or adamw (Adam with decoupled weight decay, as torch's AdamW)", "adam",
                            section="optimisation", choices=OPTIMIZERS)
    weight_decay: float = option("adamw: decoupled weight decay, rate x decay x weight per step; biases and normalisation "
                                 "scales/offsets are left alone (0 disables)", 0.0, section="optimisation",
                                 within=Range(0.0, note="(0: off)"))  # fmt: skip
    clip_norm: float = option("clip gradients to this global norm (0 disables)", 0.0, section="optimisation",
                              within=Range(0.0, note="(0: off)"))
    ema: bool = option("keep an exponential moving average of the weights; validation, the checkpoint and the test use it",
                       False, section="optimisation")
    ema_momentum: float = option("ema: the average's momentum per step (average = m x average + (1 - m) x weights)", 0.999,
                                 section="optimisation", within=Range(0.0, 1.0, low_open=True, high_open=True))
    optimizer_state: str = option("carry: one Adam for the whole run, its state carried across stages as torch.optim.Adam "
                                  "(the study); fresh: a new Keras Adam at every stage", "fresh", section="optimisation",
                                  choices=OPTIMIZER_STATES)  # fmt: skip
    label_smoothing: float = option("training targets: (1 - e) on the true class and e spread over all classes (0 disables)",
                                    0.0, section="optimisation", within=FRACTION)
    early_stopping: int = option("stop after this many epochs without val_accuracy gain (0 disables)", 0,
                                 section="optimisation", within=Range(0, note="(a patience in epochs; 0 disables)"))
    # schedule
    lr_schedule: str = option("constant (the study), cosine (linear warm-up, cosine decay to the floor) or one_cycle "
                              "(half-cosine rise from 1/25 of the rate over the warm-up, default 30%, then the cosine decay)",
                              "constant", section="schedule", choices=LR_SCHEDULES)  # fmt: skip
    warmup_epochs: float = option("epochs of warm-up, shorter than the run (0: none; one_cycle: 30% of the epochs); a whole "
                                  "number with schedule_unit epoch", 0.0, section="schedule")
    min_lr_fraction: float = option("cosine and one_cycle: the rate they decay to, as a fraction of the peak", 0.0,
                                    section="schedule", within=Range(0.0, 1.0, note="(a fraction of the peak rate)"))
    schedule_unit: str = option("the rate changes once per epoch or at every step", "epoch", section="schedule",
                                choices=SCHEDULE_UNITS)
    # run
    seed: int = option("seed for the split, initialisation and augmentation", 42, section="run")
    output_dir: str | None = option("the run's folder (new, or an interrupted run to resume)", section="run")
    tta: bool = option("final test: also with test-time augmentation (the mean softmax of each image and its horizontal "
                       "mirror), reported beside the plain figures as tta_test_accuracy and tta_test_loss", False, section="run")
    pictures: bool = option("draw the run's pictures: curves.png and the final test's five (confusion matrix, per-class "
                            "accuracy, predictions grid, top losses, reliability diagram); --no-pictures keeps the numbers, "
                            "history.csv and predictions.csv and saves a few seconds a run (sweeps, scripted runs)", True,
                            section="run")
    # tracking
    wandb: str = option("W&B mode: auto (online if logged in, else offline), online, offline, disabled", "auto",
                        section="tracking", choices=WANDB_MODES)
    wandb_project: str = option("W&B project name", "inat-keras", section="tracking")
    tensorboard: bool = option("also write TensorBoard logs to RUN/tensorboard/ (`tensorboard --logdir runs/`); needs the "
                               "tensorboard package (pip install tensorboard)", False, section="tracking")
    # performance
    precision: str = option("float32, mixed_float16 or mixed_bfloat16 (compute in 16 bits, weights and logits in 32)",
                            "float32", section="performance", choices=PRECISIONS)
    distribute: str = option("auto (data-parallel on several GPUs or processes), none, or data-parallel", "auto",
                             section="performance", choices=DISTRIBUTE_MODES)
    steps_per_execution: int = option("training steps per compiled call (more cuts per-step overhead on fast devices)", 1,
                                      section="performance", within=AT_LEAST_1)
    jit_compile: str = option("XLA-compile the TensorFlow step: auto (Keras decides; on for GPUs), on, off", "auto",
                              section="performance", choices=JIT_MODES)

    def validate(self) -> None:
        check_fields(self)
        for check in self.checks():
            check()

    def checks(self):
        """The checks that involve several fields or a message of their own, in order."""
        return [self.check_rate_and_seed, self.check_validation, lambda: check_one_source(self), self.check_preset,
                self.check_schedule, self.check_crops]  # fmt: skip

    def check_rate_and_seed(self) -> None:
        if not self.learning_rate > 0 or not math.isfinite(self.learning_rate):
            raise ConfigError(f"learning_rate must be a positive finite number, got {self.learning_rate}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer in [0, 2**32), got {self.seed}")

    def check_validation(self) -> None:
        if self.val_fraction == 0 and self.early_stopping:
            raise ConfigError("early_stopping watches val_accuracy: it needs val_fraction > 0")

    def check_preset(self, given: frozenset[str] | set[str] = frozenset()) -> None:
        """The options of a preset other than the chosen one are refused: those off their defaults, and those in
        `given` (typed as flags or passed as overrides: yaml_files.load_config) whatever their value."""

        def tuned(names) -> list[str]:
            return [name for name in names if name in given or getattr(self, name) != default_of(TrainConfig, name)]

        if self.augmentation != "inat-keras" and (names := tuned(INAT_KERAS_AUGMENTS)):
            raise ConfigError(
                f"{', '.join(names)} tune the inat-keras augmentation preset, not the {self.augmentation} preset "
                "(drop them, or use --augmentation inat-keras)"
            )
        if self.augmentation != "randaugment" and (names := tuned(("randaugment_ops", "randaugment_magnitude"))):
            raise ConfigError(f"{', '.join(names)} tune the randaugment preset; add --augmentation randaugment")

    def check_schedule(self) -> None:
        if not 0.0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(f"warmup_epochs must be in [0, epochs) = [0, {self.epochs}), got {self.warmup_epochs}")
        if self.schedule_unit == "epoch" and self.warmup_epochs != int(self.warmup_epochs):
            raise ConfigError(f"warmup_epochs must be a whole number with schedule_unit epoch (or use step), got {self.warmup_epochs}")
        if self.weight_decay and self.optimizer != "adamw":
            raise ConfigError(f"weight_decay {self.weight_decay} needs --optimizer adamw (Adam takes no weight decay here)")

    def check_crops(self) -> None:
        if not (self.crop_min_area == 0 or 0.01 <= self.crop_min_area <= 1.0):
            raise ConfigError(f"crop_min_area must be 0 (off) or in [0.01, 1] (a fraction of the image), got {self.crop_min_area}")

    def image_channels(self) -> int:
        """Channels of the model's input images (RGB unless the model says otherwise)."""
        return 3


@dataclass
class ScratchConfig(TrainConfig):
    """The study's 5-block CNN trained from scratch (Part A)."""

    channels: int = option("input channels: 1 (grayscale) or 3 (RGB)", 3, section="model", choices=(1, 3))
    filters: str | list[int] = option(f"filters per block: 5 numbers or one of {', '.join(FILTER_PRESETS)}", "equal64",
                                      section="model")
    kernel_sizes: str | list[int] = option(f"kernel size per block: 5 numbers or one of {', '.join(KERNEL_PRESETS)}",
                                           "constant3", section="model")
    activation: str = option("the activation of every block and the dense layer", "relu", section="model", choices=ACTIVATIONS)
    dense_units: int = option("units of the hidden dense layer", 2048, section="model", within=AT_LEAST_1)
    batch_norm: bool = option("batch normalisation after each conv and the dense layer", False, section="model")
    dropout: float = option("dropout rate after each block and the dense layer (0 disables)", 0.0, section="model",
                            within=FRACTION)
    conv_dropout: str = option("dropout in the conv blocks: channel (whole feature maps, the study's Dropout2d) or element",
                               "channel", section="model", choices=CONV_DROPOUTS)
    input_norm: str = option("imagenet: the model normalises pixels with ImageNet mean/std (the study); none: raw 0..255",
                             "imagenet", section="model", choices=INPUT_NORMS)

    def checks(self):
        return [*super().checks(), self.filter_list, self.kernel_list]

    def filter_list(self) -> list[int]:
        """The filters of the 5 blocks, whether given as a preset, a text or a list."""
        return resolve_blocks(self.filters, FILTER_PRESETS, "filters")

    def kernel_list(self) -> list[int]:
        return resolve_blocks(self.kernel_sizes, KERNEL_PRESETS, "kernel_sizes")

    def image_channels(self) -> int:
        return self.channels


@dataclass
class FinetuneConfig(TrainConfig):
    """An ImageNet-pretrained backbone (the study's EfficientNetV2-S by default) fine-tuned with one strategy (Part B)."""

    backbone: str = option("efficientnetv2_s (the study's; keras-cv, ImageNet weights downloaded) or efficientnet_lite0 "
                           "(ImageNet weights installed with the package: works offline)", "efficientnetv2_s",
                           section="model", choices=tuple(BACKBONES))  # fmt: skip
    weights: str = option("imagenet, keras-cv (V2-S only), none, or a local weights file / preset folder", "imagenet",
                          section="model")
    head_dropout: float = option("dropout before the classifier", 0.2, section="model", within=FRACTION)
    image_size: int = option("square input size in pixels", 384, section="data", within=IMAGE_SIZE)
    batch_size: int = option("images per training step", 16, section="optimisation", within=AT_LEAST_1)
    strategy: str = option("which units train: full, head (the classifier alone), last_k, gradual (unfrozen from the top, "
                           "step by step)", "gradual", section="fine-tuning", choices=STRATEGIES)
    unfreeze_unit: str = option("what freezes together: stage (the stem, each stage, the top conv: V2-S's 8 units as the "
                                "study froze them, Lite0's 9) or block (V2-S's 40, Lite0's 16; the top conv trains with the "
                                "first)", "block", section="fine-tuning", choices=UNIT_TYPES)  # fmt: skip
    k: int = option("last_k: units to train", 5, section="fine-tuning", within=AT_LEAST_1)
    unfreeze_every: int = option("gradual: epochs between unfreezing steps", 2, section="fine-tuning", within=AT_LEAST_1)
    unfreeze_step: int = option("gradual: units unfrozen at each step", 1, section="fine-tuning", within=AT_LEAST_1)
    unfreeze_start: int = option("gradual: units already unfrozen at the first epoch (0: the head alone)", 0,
                                 section="fine-tuning")
    batch_norm_mode: str = option("frozen: pretrained batch norm in inference mode everywhere (the Keras guide); study: "
                                  "batch statistics everywhere, scale/offset fixed in frozen units", "frozen",
                                  section="fine-tuning", choices=("frozen", "study"))  # fmt: skip
    backbone_lr: float = option("the backbone's learning rate as a fraction of the head's (1: the same)", 1.0,
                                section="fine-tuning", within=Range(0.0, 1.0, low_open=True,
                                note="(a fraction of the rate above)"))  # fmt: skip
    layer_decay: float = option("each backbone unit (unfreeze_unit), from the top down, trains at this times the rate of "
                                "the unit above it (1: off)", 1.0, section="fine-tuning", within=Range(0.0, 1.0,
                                low_open=True, note="(a fraction of the rate above)"))  # fmt: skip

    def checks(self):
        return [*super().checks(), self.check_units]

    def check_units(self) -> None:
        layout = BACKBONES[self.backbone]
        most = layout.max_k(self.unfreeze_unit)
        if not 0 <= self.unfreeze_start <= most:
            raise ConfigError(f"unfreeze_start must be in [0, {most}], got {self.unfreeze_start}")
        if self.k > most:
            raise ConfigError(f"k must be at most {most} ({layout.title} has {layout.describe_units(self.unfreeze_unit)}), got {self.k}")
        if self.image_size < layout.min_image_size:
            raise ConfigError(
                f"image_size {self.image_size} is too small for {layout.title}: the smallest image size that "
                f"works is {layout.min_image_size} (the network downsamples by 32, and keras.applications, "
                "whose ImageNet weights V2-S uses, refuses smaller inputs)"
            )
