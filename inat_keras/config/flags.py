"""Command-line flags from config dataclasses: one flag per field, grouped in `--help` by section, choices shown.

Flags default to None, so that only what the user typed overrides the YAML file and the dataclass defaults.
Values are checked by the config's `validate()`, which reports a bad one as a single `error:` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from .fields import SECTIONS, field_types


def comma_ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 0,5,12, not {text!r}") from None


def _kind(cls, name: str):
    """The field's type, without the `| None` of an optional one."""
    kind = field_types(cls)[name]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else kind
    return kind


def add_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag (or positional argument) per field of `cls`, in argument groups by section."""
    groups = {}
    ordered = sorted(dataclasses.fields(cls), key=lambda f: SECTIONS.index(f.metadata["section"]))
    for f in ordered:
        if f.name in skip:
            continue
        meta = f.metadata
        section = meta["section"]
        if section not in groups:
            groups[section] = parser.add_argument_group(f"{section} options" if section != "command" else "arguments")
        group, kind = groups[section], _kind(cls, f.name)
        help_text = meta["help"].replace("%", "%%")  # argparse formats help with %
        metavar = meta["metavar"] or (("{" + ",".join(map(str, meta["choices"])) + "}") if meta["choices"] else None)
        if meta["positional"]:
            nargs = "+" if typing.get_origin(kind) is list else None
            group.add_argument(f.name, nargs=nargs, metavar=metavar or f.name.upper(), help=help_text)
            continue
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        common = {"dest": f.name, "default": None, "help": help_text}
        if meta["required"]:
            common["required"] = True
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind in (int, float):
            group.add_argument(flag, type=kind, metavar=metavar or f.name.upper(), **common)
        elif kind == list[int]:
            group.add_argument(flag, type=comma_ints, metavar=metavar or "LIST", **common)
        else:
            group.add_argument(flag, type=str, metavar=metavar or f.name.upper(), **common)


def overrides_from_args(args: argparse.Namespace, cls) -> dict:
    """The values the user typed for the fields of `cls`."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def options_from_args(args: argparse.Namespace, cls):
    """A validated options object of a command that reads no YAML: the dataclass defaults <- the flags typed."""
    options = cls(**overrides_from_args(args, cls))
    options.validate()
    return options
