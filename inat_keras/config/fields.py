"""How an option is declared: a dataclass field whose metadata holds its help, its section of `--help`, and the
checks that are data (choices, a range). One declaration gives the YAML key, the flag, the help text, the check
and the line in docs/options.md."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field

from ..errors import ConfigError

# The sections of `--help` and docs/options.md, in their order.
SECTIONS = ("data", "model", "fine-tuning", "augmentation", "optimisation", "schedule", "run", "tracking", "performance",
            "command")  # fmt: skip


@dataclass(frozen=True)
class Range:
    """low <= value <= high, each end open or closed; `note` explains the range in the message."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def holds(self, value) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return low_ok and high_ok

    def describe(self) -> str:
        if self.high is None and not self.low_open:
            text = f"at least {self.low:g}"
        else:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        return f"{text} {self.note}".rstrip()


def option(help: str, default=None, *, section: str, choices: tuple | None = None, within: Range | None = None,
           positional: bool = False, required: bool = False, metavar: str | None = None, flag: str | None = None,
           **kwargs):  # fmt: skip
    """A config field. `choices` and `within` are checked by `check_fields`; `positional`, `required`, `metavar` and
    `flag` (default: --the-field-name) shape the command-line flag."""
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}")
    metadata = {"help": help, "section": section, "choices": choices, "within": within, "positional": positional,
                "required": required, "metavar": metavar, "flag": flag}  # fmt: skip
    if "default_factory" in kwargs:
        return field(metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


@functools.cache
def field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_fields(config) -> None:
    """Every field's declared choices and range; the first that fails is the error."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        choices, within = f.metadata.get("choices"), f.metadata.get("within")
        if choices is not None and value not in choices:
            raise ConfigError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        if within is not None and value is not None and not within.holds(value):
            raise ConfigError(f"{f.name} must be {within.describe()}, got {value}")


def default_of(cls, name: str):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def changed_fields(cls, saved: dict, current: dict) -> list[str]:
    """The fields whose values differ; one missing on a side is its default there (a folder written before the
    option existed ran with what its default does)."""
    names = {f.name for f in dataclasses.fields(cls)}
    missing = object()

    def value(values, name):
        found = values.get(name, missing)
        return default_of(cls, name) if found is missing and name in names else found

    return sorted(k for k in set(saved) | set(current) if value(saved, k) != value(current, k))


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
