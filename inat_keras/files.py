"""Writes that a crash never leaves half done: everything is written beside its target, then renamed."""

from __future__ import annotations

import contextlib
import glob
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
def replacing(path: Path, newline: str | None = None, binary: bool = False):
    """A file to fill bit by bit (a CSV as its rows come, a picture) that replaces `path` in one rename when the
    block ends; an error or a crash before then leaves the old file, or none. An error names `path`, not the
    temporary file. The temporary files that killed writers left beside `path` go first."""
    path = Path(path)
    remove_abandoned_temps(path.parent, glob.escape(path.name))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": newline})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.filename not in (None, str(tmp)):  # another file's error, from the block
            raise
        raise type(err)(err.errno, err.strerror, str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)


def remove_abandoned_temps(folder: Path, name: str = "*") -> None:
    """`replacing`'s temporary files in `folder` (of the files matching `name`, a glob pattern) whose writers no longer
    run: killed while writing, they left `.NAME.PID.tmp` behind."""
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        if process_gone(tmp.name.rsplit(".", 2)[1]):
            tmp.unlink(missing_ok=True)


def process_gone(pid: str) -> bool:
    """Whether no process of this id runs on this machine (False where that cannot be told)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError, OverflowError):
        pass
    return False


def save_figure(fig, path: Path, **kwargs) -> None:
    """A matplotlib figure as a picture file, published whole (a full disk leaves the old picture, or none);
    `kwargs` go to savefig (dpi, ...). Every picture of the project is saved through this."""
    path = Path(path)
    with replacing(path, binary=True) as f:
        fig.savefig(f, format=path.suffix.lstrip(".") or None, **kwargs)


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


def remove_abandoned(final: Path, name: str | None = None) -> None:
    """Staging folders of processes that no longer run: they stopped before publishing. `name` (default: final's),
    a glob pattern, covers folders of other names too (every `evaluate-*` under runs/)."""
    for partial in final.parent.glob(f"{name or glob.escape(final.name)}.partial-*"):
        if process_gone(partial.name.rsplit("-", 1)[1]):
            shutil.rmtree(partial, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final: Path):
    """A private folder to fill, renamed to `final` (absent or empty) when the block ends: a reader sees the
    whole folder or none, an error removes it, and a kill leaves a staging folder that the next call for
    `final` removes. A folder that filled `final` meanwhile is not replaced (OSError)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(final)
    partial = staging_dir(final)
    try:
        yield partial
        os.rename(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
