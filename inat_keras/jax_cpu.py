"""Process settings that let the JAX backend train conv nets on a CPU at TensorFlow's pace.

Measured with `run.py bench` (BENCHMARKS.md), jax 0.10 on a 2-core AMD EPYC:
- XLA:CPU hands convolutions to the YNNPACK library by default; this CNN's convolutions, their weight
  gradients above all, run 3-5x slower there than through XLA's own Eigen path. Its reductions over
  batch and spatial axes (batch-norm and bias gradients), though, run about 10x faster in YNNPACK:
  so YNNPACK gets the reductions only (EfficientNetV2-S training 2.6x faster, best CNN 1.25x).
- XLA:CPU takes each step's scratch memory (1-4 GB at 224x224, batch 32) from a fresh mmap, so every
  step page-faults on every 4 KiB page of it. glibc's `hugetlb` tunable backs such allocations with
  2 MiB transparent huge pages: 512 times fewer faults.
Both must be in place before they are read: XLA_FLAGS when JAX starts its CPU client (first use),
GLIBC_TUNABLES when the process starts. Flags and tunables the user sets win.
"""

from __future__ import annotations

import os
import platform
import sys

XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=reduce",)  # YNNPACK for reductions, not convolutions or dots
MALLOC_TUNABLES = ("glibc.malloc.hugetlb=1",)


def _merge(current: str, defaults: tuple[str, ...], separator: str) -> str:
    """`current` plus each default whose name (the part before '=') it does not set yet."""
    items = [item for item in current.split(separator) if item]
    names = {item.split("=", 1)[0] for item in items}
    return separator.join(items + [d for d in defaults if d.split("=", 1)[0] not in names])


def configure_xla_flags(environ=os.environ) -> None:
    """Add the XLA:CPU defaults to XLA_FLAGS (they only affect compilation for the CPU)."""
    environ["XLA_FLAGS"] = _merge(environ.get("XLA_FLAGS", ""), XLA_CPU_FLAGS, " ")


def malloc_environment(environ=os.environ) -> dict | None:
    """The environment to restart with, or None when the tunables are set already or glibc is absent."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    merged = _merge(current, MALLOC_TUNABLES, ":")
    return None if merged == current else {**environ, "GLIBC_TUNABLES": merged}


def restart_with_malloc_tunables() -> None:
    """Replace this process by the same command with the malloc tunables; call before heavy imports."""
    environ = malloc_environment()
    if environ is not None:
        sys.stdout.flush()
        os.execve(sys.executable, sys.orig_argv, environ)
