"""Typed run configurations: YAML files in configs/ are data, flags override them.

Resolution order, later wins: dataclass defaults, the YAML file, the file's
`demo_overrides` section (only with --demo), then explicit command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import re
import importlib.resources as resources
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError
from .files import write_text
from .models.backbones import BACKBONES, UNIT_TYPES

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
DEMO_SECTION = "demo_overrides"
# Where a run's images come from and where its results go: the command chooses them, a configuration does not
# (sweeps may not search them; a sweep's best configuration leaves them out).
PLACE_OPTIONS = ("data_dir", "demo", "tfds_dir", "output_dir", "wandb", "wandb_project")
# Options that change how a run is carried out, not what it computes: an interrupted run resumes under other values.
RESUME_NEUTRAL_OPTIONS = ("output_dir", "wandb", "epochs", "early_stopping", "steps_per_execution", "jit_compile", "cache", "tta")


def check_one_source(config) -> None:
    """A run reads its images from one place: the demo data, a folder or TFDS records."""
    sources = [name for name in ("demo", "data_dir", "tfds_dir") if getattr(config, name)]
    if len(sources) > 1:
        raise ConfigError(f"give one source of images, not {' and '.join('--' + n.replace('_', '-') for n in sources)}")


def _doc(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    """Settings shared by every training command."""

    data_dir: str | None = _doc("folder holding train/ and val/ (or inaturalist_12K/); fetched when missing", default=None)
    demo: bool = _doc("use the embedded demo data (scikit-learn's handwritten digits)", default=False)
    tfds_dir: str | None = _doc("read iNaturalist-12K from the TFDS records prepared in this TFDS data folder "
                                "(run.py tfds) instead of a folder of images", default=None)
    image_size: int = _doc("square input size in pixels (96 means 96x96)", default=224)
    augment: bool = _doc("augment the training split (never validation or test)", default=True)
    augmentation: str = _doc("preset: inat-keras (the four options below) or study (the study's transforms, fixed)", default="inat-keras")
    augment_on: str = _doc("where augmentation runs: device (batched inside the compiled training step) or host "
                           "(in the tf.data pipeline, on the CPU)", default="device")
    flip: bool = _doc("inat-keras preset: random horizontal flips", default=True)
    rotation: float = _doc("inat-keras preset: max rotation either way, as a fraction of a full turn (0 disables)", default=0.05)
    zoom: float = _doc("inat-keras preset: max zoom in or out, as a fraction of the size (0 disables)", default=0.1)
    color_jitter: float = _doc("inat-keras preset: brightness/contrast/saturation change up to this much either way (0 disables)", default=0.1)
    randaugment_ops: int = _doc("randaugment preset: operations applied to each image, each drawn from its 14 (RandAugment's N)", default=2)
    randaugment_magnitude: float = _doc("randaugment preset: strength of every operation, 0 (none) to 30 (its strongest; "
                                        "RandAugment's M, 9 as torchvision and timm)", default=9.0)
    crop_min_area: float = _doc("random-resized crops of the training images: smallest fraction of the image a crop covers "
                                "(aspect 3/4-4/3), from a larger decode (crop_decode_scale); 0 disables", default=0.0)
    crop_decode_scale: float = _doc("with crops: training images are cached at this times image_size, and cropped from that", default=1.5)
    label_smoothing: float = _doc("training targets: (1 - e) on the true class and e spread over all classes (0 disables)", default=0.0)
    mixup: float = _doc("MixUp: Beta(a, a) parameter of the mixing weight, per image (0 disables)", default=0.0)
    cutmix: float = _doc("CutMix: Beta(a, a) parameter of the kept area, per image (0 disables); with mixup too, "
                         "each batch uses one of them, drawn with equal chances", default=0.0)
    val_fraction: float = _doc("fraction of train/ held out for validation, stratified (0: train on all, keep the last epoch)", default=0.2)
    batch_size: int = _doc("images per training step on each device (the global batch is this times the devices)", default=32)
    epochs: int = _doc("training epochs", default=10)
    learning_rate: float = _doc("peak learning rate (of the schedule; the head's with layer-wise rates)", default=1e-4)
    lr_schedule: str = _doc("constant (the study), cosine (linear warm-up, cosine decay to the floor) or one_cycle "
                            "(half-cosine rise from 1/25 of the rate over the warm-up, default 30%, then the cosine decay)", default="constant")
    warmup_epochs: float = _doc("epochs of warm-up, shorter than the run (0: none; one_cycle: 30% of the epochs); "
                                "a whole number with schedule_unit epoch", default=0.0)
    min_lr_fraction: float = _doc("cosine and one_cycle: the rate they decay to, as a fraction of the peak", default=0.0)
    schedule_unit: str = _doc("the rate changes once per epoch or at every step", default="epoch")
    optimizer: str = _doc("adam (the study) or adamw (Adam with decoupled weight decay, as torch's AdamW)", default="adam")
    weight_decay: float = _doc("adamw: decoupled weight decay, rate x decay x weight per step; biases and "
                               "normalisation scales/offsets are left alone (0 disables)", default=0.0)
    clip_norm: float = _doc("clip gradients to this global norm (0 disables)", default=0.0)
    ema: bool = _doc("keep an exponential moving average of the weights; validation, the checkpoint and the test use it", default=False)
    ema_momentum: float = _doc("ema: the average's momentum per step (average = m x average + (1 - m) x weights)", default=0.999)
    optimizer_state: str = _doc("carry: one Adam for the whole run, its state carried across stages as torch.optim.Adam "
                                "(the study); fresh: a new Keras Adam at every stage", default="fresh")
    seed: int = _doc("seed for the split, initialisation and augmentation", default=42)
    cache: str = _doc("decoded images: auto (memory when a split fits in a quarter of free memory), memory, disk", default="auto")
    shuffle_buffer: int = _doc("disk cache: training images held for shuffling (the split is also read in a new "
                               "random order of shards every epoch); the memory cache shuffles the whole split", default=1024)
    early_stopping: int = _doc("stop after this many epochs without val_accuracy gain (0 disables)", default=0)
    output_dir: str | None = _doc("the run's folder (new, or an interrupted run to resume)", default=None)
    wandb: str = _doc("W&B mode: auto (online if logged in, else offline), online, offline, disabled", default="auto")
    wandb_project: str = _doc("W&B project name", default="inat-keras")
    precision: str = _doc("float32, mixed_float16 or mixed_bfloat16 (compute in 16 bits, weights and logits in 32)", default="float32")
    distribute: str = _doc("auto (data-parallel on several GPUs or processes), none, or data-parallel", default="auto")
    steps_per_execution: int = _doc("training steps per compiled call (more cuts per-step overhead on fast devices)", default=1)
    jit_compile: str = _doc("XLA-compile the TensorFlow step: auto (Keras decides; on for GPUs), on, off", default="auto")
    tta: bool = _doc("final test: also with test-time augmentation (the mean softmax of each image and its horizontal "
                     "mirror), reported beside the plain figures as tta_test_accuracy and tta_test_loss", default=False)

    def validate(self) -> None:
        positive = ("image_size", "batch_size", "epochs", "steps_per_execution", "shuffle_buffer")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(
                f"val_fraction must be in [0, 1) (0 trains on all of train/ and keeps the last epoch), got {self.val_fraction}"
            )
        if self.val_fraction == 0 and self.early_stopping:
            raise ConfigError("early_stopping watches val_accuracy: it needs val_fraction > 0")
        if not self.learning_rate > 0 or not math.isfinite(self.learning_rate):
            raise ConfigError(f"learning_rate must be a positive finite number, got {self.learning_rate}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer in [0, 2**32), got {self.seed}")
        for name in ("rotation", "zoom", "color_jitter"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.early_stopping < 0:
            raise ConfigError(f"early_stopping is a patience in epochs (0 disables), got {self.early_stopping}")
        choices = {"wandb": WANDB_MODES, "precision": PRECISIONS, "distribute": DISTRIBUTE_MODES, "jit_compile": JIT_MODES,
                   "augmentation": AUGMENTATIONS, "augment_on": AUGMENT_PLACES, "optimizer_state": OPTIMIZER_STATES, "cache": CACHE_MODES}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        check_one_source(self)
        if self.augmentation != "inat-keras":
            tuned = [name for name in ("flip", "rotation", "zoom", "color_jitter") if getattr(self, name) != _default(TrainConfig, name)]
            if tuned:
                raise ConfigError(
                    f"{', '.join(tuned)} tune the inat-keras augmentation preset, not the {self.augmentation} preset "
                    "(drop them, or use --augmentation inat-keras)"
                )
        self.validate_regularisation()
        self.validate_optimizer()

    def validate_optimizer(self) -> None:
        """The learning-rate schedule, AdamW, clipping and the weight average."""
        for name, allowed in (("lr_schedule", LR_SCHEDULES), ("schedule_unit", SCHEDULE_UNITS), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(f"warmup_epochs must be in [0, epochs) = [0, {self.epochs}), got {self.warmup_epochs}")
        if self.schedule_unit == "epoch" and self.warmup_epochs != int(self.warmup_epochs):
            raise ConfigError(f"warmup_epochs must be a whole number with schedule_unit epoch (or use step), got {self.warmup_epochs}")
        if not 0.0 <= self.min_lr_fraction <= 1.0:
            raise ConfigError(f"min_lr_fraction must be in [0, 1] (a fraction of the peak rate), got {self.min_lr_fraction}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be 0 (off) or positive, got {self.weight_decay}")
        if self.weight_decay and self.optimizer != "adamw":
            raise ConfigError(f"weight_decay {self.weight_decay} needs --optimizer adamw (Adam takes no weight decay here)")
        if self.clip_norm < 0:
            raise ConfigError(f"clip_norm must be 0 (off) or a positive global norm, got {self.clip_norm}")
        if not 0.0 < self.ema_momentum < 1.0:
            raise ConfigError(f"ema_momentum must be in (0, 1), got {self.ema_momentum}")

    def validate_regularisation(self) -> None:
        """The label and data-side options (label smoothing, MixUp, CutMix, RandAugment, crops)."""
        if self.augmentation != "randaugment":
            tuned = [n for n in ("randaugment_ops", "randaugment_magnitude") if getattr(self, n) != _default(TrainConfig, n)]
            if tuned:
                raise ConfigError(f"{', '.join(tuned)} tune the randaugment preset; add --augmentation randaugment")
        if not 1 <= self.randaugment_ops <= 14:
            raise ConfigError(f"randaugment_ops must be in [1, 14] (operations per image), got {self.randaugment_ops}")
        if not 0.0 <= self.randaugment_magnitude <= 30.0:
            raise ConfigError(f"randaugment_magnitude must be in [0, 30], got {self.randaugment_magnitude}")
        if not (self.crop_min_area == 0 or 0.01 <= self.crop_min_area <= 1.0):
            raise ConfigError(f"crop_min_area must be 0 (off) or in [0.01, 1] (a fraction of the image), got {self.crop_min_area}")
        if not 1.0 <= self.crop_decode_scale <= 4.0:
            raise ConfigError(f"crop_decode_scale must be in [1, 4] (times image_size), got {self.crop_decode_scale}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("mixup", "cutmix"):
            if not 0.0 <= getattr(self, name) <= 10.0:
                raise ConfigError(f"{name} is a Beta(a, a) parameter: 0 (off) or in (0, 10], got {getattr(self, name)}")

    def image_channels(self) -> int:
        """Channels of the model's input images (RGB unless the model says otherwise)."""
        return 3


@dataclass
class ScratchConfig(TrainConfig):
    """The study's 5-block CNN trained from scratch (Part A)."""

    channels: int = _doc("input channels", default=3)
    filters: str | list[int] = _doc(f"filters per block: 5 numbers or one of {', '.join(FILTER_PRESETS)}", default="equal64")
    kernel_sizes: str | list[int] = _doc(f"kernel size per block: 5 numbers or one of {', '.join(KERNEL_PRESETS)}", default="constant3")
    activation: str = _doc(f"one of {', '.join(ACTIVATIONS)}", default="relu")
    dense_units: int = _doc("units of the hidden dense layer", default=2048)
    batch_norm: bool = _doc("batch normalisation after each conv and the dense layer", default=False)
    dropout: float = _doc("dropout rate after each block and the dense layer (0 disables)", default=0.0)
    conv_dropout: str = _doc("dropout in the conv blocks: channel (whole feature maps, the study's Dropout2d) or element", default="channel")
    input_norm: str = _doc("imagenet: the model normalises pixels with ImageNet mean/std (the study); none: raw 0..255", default="imagenet")

    def validate(self) -> None:
        super().validate()
        self.filters = resolve_blocks(self.filters, FILTER_PRESETS, "filters")
        self.kernel_sizes = resolve_blocks(self.kernel_sizes, KERNEL_PRESETS, "kernel_sizes")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if self.dense_units < 1:
            raise ConfigError(f"dense_units must be at least 1, got {self.dense_units}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (("conv_dropout", CONV_DROPOUTS), ("input_norm", INPUT_NORMS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def image_channels(self) -> int:
        return self.channels


@dataclass
class FinetuneConfig(TrainConfig):
    """An ImageNet-pretrained backbone (the study's EfficientNetV2-S by default) fine-tuned with one strategy (Part B)."""

    backbone: str = _doc("efficientnetv2_s (the study's; keras-cv, ImageNet weights downloaded) or efficientnet_lite0 "
                         "(ImageNet weights installed with the package: works offline)", default="efficientnetv2_s")
    image_size: int = _doc("square input size in pixels", default=384)
    batch_size: int = _doc("images per training step", default=16)
    strategy: str = _doc(f"one of {', '.join(STRATEGIES)}", default="gradual")
    unfreeze_unit: str = _doc("what freezes together: stage (the stem, each stage, the top conv: V2-S's 8 units as the study "
                              "froze them, Lite0's 9) or block (V2-S's 40, Lite0's 16; the top conv trains with the first)",
                              default="block")
    k: int = _doc("last_k: units to train", default=5)
    unfreeze_every: int = _doc("gradual: epochs between unfreezing steps", default=2)
    unfreeze_step: int = _doc("gradual: units unfrozen at each step", default=1)
    unfreeze_start: int = _doc("gradual: units already unfrozen at the first epoch (0: the head alone)", default=0)
    batch_norm_mode: str = _doc("frozen: pretrained batch norm in inference mode everywhere (the Keras guide); study: "
                                "batch statistics everywhere, scale/offset fixed in frozen units", default="frozen")
    weights: str = _doc("imagenet, keras-cv (V2-S only), none, or a local weights file / preset folder", default="imagenet")
    head_dropout: float = _doc("dropout before the classifier", default=0.2)
    backbone_lr: float = _doc("the backbone's learning rate as a fraction of the head's (1: the same)", default=1.0)
    layer_decay: float = _doc("each backbone unit (unfreeze_unit), from the top down, trains at this times the rate of "
                              "the unit above it (1: off)", default=1.0)

    def validate(self) -> None:
        super().validate()
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        for name, allowed in (("unfreeze_unit", UNIT_TYPES), ("batch_norm_mode", BATCH_NORM_MODES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("k", "unfreeze_every", "unfreeze_step"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        layout = BACKBONES[self.backbone]
        most = layout.max_k(self.unfreeze_unit)
        if not 0 <= self.unfreeze_start <= most:
            raise ConfigError(f"unfreeze_start must be in [0, {most}], got {self.unfreeze_start}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ConfigError(f"head_dropout must be in [0, 1), got {self.head_dropout}")
        for name in ("backbone_lr", "layer_decay"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1] (a fraction of the rate above), got {getattr(self, name)}")
        if self.k > most:
            raise ConfigError(f"k must be at most {most} ({layout.title} has {layout.describe_units(self.unfreeze_unit)}), got {self.k}")
        if self.image_size < layout.min_image_size:
            raise ConfigError(
                f"image_size {self.image_size} is too small for {layout.title}: the smallest image size that "
                f"works is {layout.min_image_size} (the network downsamples by 32, and keras.applications, "
                "whose ImageNet weights V2-S uses, refuses smaller inputs)"
            )


@dataclass
class StudyConfig:
    """The whole study in one command (`run.py study`): Part A's sweep, retrained winner and test; Part B's four
    strategies on the validation split and its final run. 0 for an epoch count or size: the run configs' own."""

    data_dir: str | None = _doc("folder holding train/ and val/ (or inaturalist_12K/); fetched when missing", default=None)
    demo: bool = _doc("the embedded demo data, with the demo settings of configs/study.yaml", default=False)
    tfds_dir: str | None = _doc("read iNaturalist-12K from the TFDS records in this TFDS data folder (run.py tfds)", default=None)
    output_dir: str | None = _doc("the study's folder: new, or a stopped study to resume (default runs/study-<time>)", default=None)
    trials: int = _doc("Part A: trials of the sweep", default=30)
    sweep: str | None = _doc("Part A: the sweep file (default configs/sweep_scratch.yaml, the study's search space)", default=None)
    trial_epochs: int = _doc("Part A: epochs of each sweep trial (0: configs/scratch.yaml's)", default=0)
    scratch_epochs: int = _doc("Part A: epochs of the retrained winner (0: its configuration's)", default=0)
    scratch_image_size: int = _doc("Part A: input size of the trials and the retrained winner (0: configs/scratch.yaml's)", default=0)
    finetune_epochs: int = _doc("Part B: epochs of every fine-tuning run (0: the configs' own)", default=0)
    finetune_image_size: int = _doc("Part B: input size of every fine-tuning run (0: the configs' own)", default=0)
    backbone: str = _doc("Part B: efficientnetv2_s (the study's) or efficientnet_lite0 (ImageNet weights that work offline)",
                         default="efficientnetv2_s")
    weights: str = _doc("Part B: imagenet, keras-cv, none (random: says nothing about transfer) or a local file or folder",
                        default="imagenet")
    wandb: str = _doc("W&B mode of every run and of the report: auto, online, offline, disabled", default="auto")
    wandb_project: str = _doc("W&B project name", default="inat-keras")

    def validate(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"trials must be at least 1, got {self.trials}")
        for name in ("trial_epochs", "scratch_epochs", "scratch_image_size", "finetune_epochs", "finetune_image_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 (the configs' own) or a positive number, got {getattr(self, name)}")
        if self.wandb not in WANDB_MODES:
            raise ConfigError(f"wandb must be one of {', '.join(WANDB_MODES)}, got {self.wandb!r}")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        check_one_source(self)


def shipped_config(name: str) -> Path:
    """A YAML file of the top-level configs/ folder, which the package ships as `inat_keras.configs`."""
    folder = Path(str(resources.files("inat_keras.configs")))
    path = folder / name
    if not path.is_file():
        raise ConfigError(f"the shipped config {name} is missing from {folder}; reinstall inat-keras")
    return path


def _default(cls, name: str):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


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


@functools.cache
def field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(cls, name: str, value, source: str):
    """Check a YAML/sweep value against the field's type; ints are accepted where floats are."""
    kind = field_types(cls)[name]
    if value is None:
        if type(None) in typing.get_args(kind):
            return None
        raise ConfigError(f"{source}: {name} may not be empty")
    if kind is bool or kind is int:
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):
            raise ConfigError(f"{source}: {name} must be a finite number, got {value}")
    elif kind in (str, str | None):
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        value = str(value) if ok else value
    else:
        ok = isinstance(value, (str, list))
    if not ok:
        raise ConfigError(f"{source}: {name} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-3 (no dot) as a string; here it is the number everybody means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=_Loader) or {}
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        raise ConfigError(f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {err.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


def build_config(cls, values: dict, source: str = "config"):
    """Make a validated config from a plain mapping, refusing unknown keys by name."""
    known = field_types(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    config = cls(**{k: _coerce(cls, k, v, source) for k, v in values.items()})
    config.validate()
    return config


def load_config(cls, path: str | Path | None = None, overrides: dict | None = None):
    """Defaults <- YAML file <- its demo_overrides (when demo) <- explicit overrides."""
    values = read_yaml(path) if path else {}
    demo_values = values.pop(DEMO_SECTION, {}) or {}
    overrides = dict(overrides or {})
    if overrides.get("demo", values.get("demo", False)):
        values.update(demo_values)
    values.update(overrides)
    return build_config(cls, values, source=str(path or "options"))


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def save_config(config, path: Path) -> None:
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per config field; defaults stay None so only flags typed by the user override."""
    for f in dataclasses.fields(cls):
        kind = field_types(cls)[f.name]
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind in (int, float):
            parser.add_argument(flag, type=kind, default=None, metavar=f.name.upper(), help=help_text)
        else:
            parser.add_argument(flag, type=str, default=None, metavar=f.name.upper(), help=help_text)


def overrides_from_args(args: argparse.Namespace, cls) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
