"""The CPU a run or a benchmark ran on, for the records that say what produced a number."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform reports (may be empty)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.open() if line.startswith("model name")]
        if names:
            return names[0]
    return platform.processor()
