"""Typed, validated configurations: YAML files in configs/ are data, flags override them (config.yaml_files).

fields: how an option is declared (help, section, choices, range); training: the training configs; commands: the
options of every other command; yaml_files: reading, merging and saving; flags: the command line from the fields.
"""

from ..errors import ConfigError
from . import commands
from .commands import (
    BenchOptions,
    CompareOptions,
    EvaluateOptions,
    ExplainOptions,
    ExportOptions,
    InfoOptions,
    LrFindOptions,
    PredictOptions,
    StudyConfig,
    SweepOptions,
    SweepReportOptions,
    TfdsOptions,
)
from .fields import changed_fields, field_types, to_dict
from .flags import add_options, options_from_args, overrides_from_args
from .training import (
    ACTIVATIONS,
    AUGMENT_PLACES,
    AUGMENTATIONS,
    BATCH_NORM_MODES,
    CACHE_MODES,
    FILTER_PRESETS,
    JIT_MODES,
    KERNEL_PRESETS,
    LR_SCHEDULES,
    PLACE_OPTIONS,
    PRECISIONS,
    RESUME_NEUTRAL_OPTIONS,
    SCHEDULE_UNITS,
    STRATEGIES,
    WANDB_MODES,
    FinetuneConfig,
    ScratchConfig,
    TrainConfig,
    check_one_source,
    resolve_blocks,
)
from .yaml_files import DEMO_SECTION, build_config, load_config, read_config_file, read_yaml, save_config, shipped_config

__all__ = [
    "ACTIVATIONS", "AUGMENTATIONS", "AUGMENT_PLACES", "BATCH_NORM_MODES", "BenchOptions", "CACHE_MODES",
    "CompareOptions", "ConfigError", "DEMO_SECTION", "EvaluateOptions", "ExplainOptions", "ExportOptions",
    "FILTER_PRESETS", "FinetuneConfig", "InfoOptions", "JIT_MODES", "KERNEL_PRESETS", "LR_SCHEDULES",
    "LrFindOptions", "PLACE_OPTIONS", "PRECISIONS", "PredictOptions", "RESUME_NEUTRAL_OPTIONS", "SCHEDULE_UNITS",
    "STRATEGIES", "ScratchConfig", "StudyConfig", "SweepOptions", "SweepReportOptions", "TfdsOptions", "TrainConfig",
    "WANDB_MODES", "add_options", "build_config", "changed_fields", "check_one_source", "commands", "field_types", "load_config",
    "options_from_args", "overrides_from_args", "read_config_file", "read_yaml", "resolve_blocks", "save_config",
    "shipped_config", "to_dict",
]
