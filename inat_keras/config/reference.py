"""docs/options.md, generated from the option declarations (config.training, config.commands): every command's
options by section, with type, default, choices or range and help. `python -m inat_keras.config.reference` prints
it; tests/test_docs.py fails when the file in docs/ is not what this prints."""

from __future__ import annotations

import dataclasses

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
from .fields import SECTIONS
from .training import FinetuneConfig, ScratchConfig, TrainConfig

PAGES = {  # command -> (options class, what else it takes)
    "scratch": (ScratchConfig, "`--config FILE` (default configs/scratch.yaml), `--print-config`"),
    "finetune": (FinetuneConfig, "`--config FILE` (default configs/finetune.yaml), `--print-config`, `--print-schedule`"),
    "lr-find scratch | finetune": (LrFindOptions, "every option of scratch or finetune, and `--config FILE`"),
    "info": (InfoOptions, "every model option of scratch, and `--config FILE`"),
    "evaluate": (EvaluateOptions, ""),
    "predict": (PredictOptions, ""),
    "explain": (ExplainOptions, ""),
    "export": (ExportOptions, ""),
    "compare": (CompareOptions, ""),
    "sweep": (SweepOptions, ""),
    "sweep-report": (SweepReportOptions, ""),
    "study": (StudyConfig, ""),
    "tfds": (TfdsOptions, ""),
    "bench": (BenchOptions, ""),
}


def _flag(f: dataclasses.Field) -> str:
    if f.metadata["positional"]:
        return (f.metadata["metavar"] or f.name.upper()) + (" ..." if f.default_factory is not dataclasses.MISSING else "")
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _default(f: dataclasses.Field) -> str:
    if f.metadata["required"] or f.metadata["positional"]:
        return "required"
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return "–" if value is None else f"`{str(value).lower() if isinstance(value, bool) else value}`"


def _allowed(f: dataclasses.Field) -> str:
    if f.metadata["choices"]:
        return ", ".join(f"`{c}`" for c in f.metadata["choices"])
    return f.metadata["within"].describe() if f.metadata["within"] else ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(cls, own_only: bool = False) -> list[str]:
    """One Markdown table per section of `cls`'s fields (own_only: those not inherited from TrainConfig)."""
    inherited = {f.name for f in dataclasses.fields(TrainConfig)} if own_only else set()
    lines = []
    for section in SECTIONS:
        fields = [f for f in dataclasses.fields(cls) if f.metadata["section"] == section and f.name not in inherited]
        if not fields:
            continue
        lines += [f"*{section}*", "", "| option (YAML key) | flag | default | allowed | what it does |", "|---|---|---|---|---|"]
        for f in fields:
            key = "–" if f.metadata["positional"] else f"`{f.name}`"
            lines.append(f"| {key} | `{_flag(f)}` | {_default(f)} | {_cell(_allowed(f))} | {_cell(f.metadata['help'])} |")
        lines.append("")
    return lines


def markdown() -> str:
    lines = [
        "# Options of every command",
        "",
        "Generated from the option declarations in `inat_keras/config/` by `python -m inat_keras.config.reference`; "
        "a test fails when this page is stale. A training option is a YAML key in a config file and a flag on the "
        "command line (flags win); `run.py COMMAND --help` shows the same, grouped the same way.",
        "",
        "## Training options (scratch, finetune, lr-find)",
        "",
        *table(TrainConfig),
    ]
    for command, (cls, extra) in PAGES.items():
        own = cls in (ScratchConfig, FinetuneConfig)
        lines += [f"## {command}", ""]
        if own:
            lines += ["The training options above, and these:", ""]
        if extra:
            lines += [f"Also: {extra}.", ""]
        lines += table(cls, own_only=own)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
