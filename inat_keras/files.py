"""Writes that a crash never leaves half done: everything is written beside its target, then renamed."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path

# The project's cache: demo data, decoded images, converted weights (INAT_KERAS_CACHE moves it).
CACHE_HOME = Path(os.environ.get("INAT_KERAS_CACHE", Path.home() / ".cache" / "inat_keras"))


def write_text(path: Path, text: str) -> None:
    """Replace `path` by `text` in one rename; a crash leaves the old file or the new one, never a mix."""
    with replacing(path) as f:
        f.write(text)


@contextlib.contextmanager
def replacing(path: Path, newline: str | None = None):
    """A text file to fill bit by bit (a CSV as its rows come) that replaces `path` in one rename when the block
    ends; an error or a crash before then leaves the old file, or none."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def finite_or_none(value):
    """JSON has no NaN or infinity: unknown numbers are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(finite_or_none(data), indent=2, allow_nan=False))


def staging_dir(final: Path) -> Path:
    """An empty private folder beside `final`, named for this process, to fill and then publish."""
    partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def publish_dir(partial: Path, final: Path) -> Path:
    """Rename a filled staging folder to `final`; if another process published it first, keep theirs."""
    try:
        os.rename(partial, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return final


def remove_abandoned(final: Path) -> None:
    """Staging folders of processes that no longer run: they stopped before publishing."""
    for partial in final.parent.glob(f"{final.name}.partial-*"):
        try:
            os.kill(int(partial.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError):
            pass
