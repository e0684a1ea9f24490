"""Process settings that let the JAX backend train conv nets on a CPU at TensorFlow's pace.

Measured with `run.py bench` (BENCHMARKS.md), jax 0.10 on a 2-core AMD EPYC:
- XLA:CPU hands convolutions to the YNNPACK library by default; this CNN's convolutions, their weight
  gradients above all, run 3-5x slower there than through XLA's own Eigen path: the CNN gets no
  YNNPACK. EfficientNetV2-S's many batch-norm reductions over batch and spatial axes run about 10x
  faster in YNNPACK: it gets YNNPACK for reductions only (training 2.6x faster). For the CNN that
  setting made runs erratic (pinned steps at 0.5-1.1x of the setting without YNNPACK).
- XLA:CPU takes each step's scratch memory (1-4 GB at 224x224, batch 32) from a fresh mmap, so every
  step page-faults on every 4 KiB page of it. glibc's `hugetlb` tunable backs such allocations with
  2 MiB transparent huge pages: 512 times fewer faults.
Both must be in place before they are read: XLA_FLAGS when JAX starts its CPU client (first use),
GLIBC_TUNABLES when the process starts. Flags and tunables the user sets win. Nothing here runs on
import: the CLI entry point applies them (inat_keras.__main__, cli.main); a program that imports the
package keeps its own settings.
"""

from __future__ import annotations

import os
import platform
import sys

from ..keras_compat import jax_started

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_FUSIONS = {"cnn": "", "efficientnet": "reduce"}  # empty: no YNNPACK library calls
MALLOC_TUNABLES = ("glibc.malloc.hugetlb=1",)
USER_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")  # as the process started, before our defaults


def _merge(current: str, defaults: tuple[str, ...], separator: str) -> str:
    """`current` plus each default whose name (the part before '=') it does not set yet."""
    items = [item for item in current.split(separator) if item]
    names = {item.split("=", 1)[0] for item in items}
    return separator.join(items + [d for d in defaults if d.split("=", 1)[0] not in names])


def configure_xla_flags(environ=os.environ, model: str = "cnn", base: str | None = None) -> None:
    """XLA_FLAGS = `base` (default: the current value) plus the model family's XLA:CPU defaults."""
    current = environ.get("XLA_FLAGS", "") if base is None else base
    environ["XLA_FLAGS"] = _merge(current, (f"{YNN_FLAG}={YNN_FUSIONS[model]}",), " ")


def prepare_for(model: str, environ=os.environ) -> None:
    """Pick the model family's flags while JAX has not started its CPU client (XLA reads them once);
    after that, and for a flag the user set, nothing changes."""
    if jax_started():
        return
    configure_xla_flags(environ, model, base=USER_XLA_FLAGS)


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
