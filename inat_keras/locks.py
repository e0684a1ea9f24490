"""One process per folder: a lock file naming its owner, taken before anything else is written.

A second process gets a clear error naming the owner. A lock left by a process that died on this same
host is taken over, with a message; a lock of another host is never taken (its process may be alive).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)

LOCK = ".lock"


def owner_alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # cannot tell from here: assume it runs
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, KeyError):
        return True
    return True


def read_owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "run"):
    """Hold `folder`/.lock while the block runs; the folder is created if needed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    text = json.dumps(me)
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = read_owner(path)
            if not owner and time.time() - path.stat().st_mtime < 5:
                time.sleep(0.2)  # its owner is still writing it
                continue
            if owner and owner_alive(owner):
                raise ConfigError(
                    f"{folder} is in use by another {what} (process {owner.get('pid')} on {owner.get('host')} since "
                    f"{owner.get('since')}); wait for it to end or choose another --output-dir"
                ) from None
            log.warning("taking over %s: its lock belongs to process %s on %s, which no longer runs",
                        folder, owner.get("pid"), owner.get("host"))  # fmt: skip
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(text)
        break
    try:
        yield
    finally:
        if read_owner(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
