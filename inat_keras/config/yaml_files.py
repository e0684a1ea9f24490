"""Configs as YAML files: read strictly, built on a `base:` file, merged with flags, saved with every run.

Resolution order, later wins: dataclass defaults, the base file(s), the YAML file, the files' `demo_overrides`
sections (only with --demo), then explicit command-line flags.
"""

from __future__ import annotations

import importlib.resources as resources
import math
import re
import typing
from pathlib import Path

import yaml

from ..errors import ConfigError
from ..files import write_text
from .fields import field_types, to_dict
from .training import TrainConfig

DEMO_SECTION = "demo_overrides"
BASE_KEY = "base"  # a file this one builds on, relative to it (or a shipped config's name)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-3 (no dot) as a string; here it is the number everybody means. A key given twice in one
    mapping is an error (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{self.name}: {key} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def shipped_config(name: str) -> Path:
    """A YAML file of the top-level configs/ folder, which the package ships as `inat_keras.configs`."""
    folder = Path(str(resources.files("inat_keras.configs")))
    path = folder / name
    if not path.is_file():
        raise ConfigError(f"the shipped config {name} is missing from {folder}; reinstall inat-keras")
    return path


def read_yaml(path: str | Path) -> dict:
    """One YAML file as a mapping, as written (its `base:` not followed)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a YAML config file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            loader = _Loader(f)
            loader.name = str(path)
            try:
                data = loader.get_single_data() or {}
            finally:
                loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        raise ConfigError(f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {err.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file with its `base:` files merged under it (their demo sections too)."""
    path = Path(path)
    data = read_yaml(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: {BASE_KEY} must name one YAML file, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file() and not Path(base).is_absolute():
        try:
            base_path = shipped_config(base)
        except ConfigError:
            raise ConfigError(f"{path}: its {BASE_KEY} {base} is not found beside it nor among the shipped configs") from None
    if base_path.resolve() in _seen or base_path.resolve() == path.resolve():
        raise ConfigError(f"{path}: {BASE_KEY} files build on each other in a circle ({base})")
    merged = read_config_file(base_path, (*_seen, path.resolve()))
    demo = {**(merged.get(DEMO_SECTION) or {}), **(data.pop(DEMO_SECTION, None) or {})}
    merged.update(data)
    if demo:
        merged[DEMO_SECTION] = demo
    return merged


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


def build_config(cls, values: dict, source: str = "config", sources: dict | None = None):
    """Make a validated config from a plain mapping, refusing unknown keys by name. `sources`: where each value came
    from, for the messages (default: `source` for all)."""
    known = field_types(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    sources = sources or {}
    config = cls(**{k: _coerce(cls, k, v, sources.get(k, source)) for k, v in values.items()})
    config.validate()
    return config


def load_config(cls, path: str | Path | None = None, overrides: dict | None = None):
    """Defaults <- YAML file (on its base) <- its demo_overrides (when demo) <- explicit overrides."""
    values = read_config_file(path) if path else {}
    demo_values = values.pop(DEMO_SECTION, {}) or {}
    overrides = dict(overrides or {})
    if overrides.get("demo", values.get("demo", False)):
        values.update(demo_values)
    file_source = str(path or "options")
    sources = {name: file_source for name in values} | {name: "command line" for name in overrides}
    values.update(overrides)
    config = build_config(cls, values, source=file_source, sources=sources)
    if isinstance(config, TrainConfig):
        config.check_preset(set(overrides))  # a flag that the chosen preset ignores is refused, even at its default
    return config


def save_config(config, path: Path) -> None:
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
