"""Where a run computes: one device, or data parallelism through the active backend's own engine.

JAX: `keras.distribution.DataParallel` over every device of every process (several processes join
through `keras.distribution.initialize` and its KERAS_DISTRIBUTION_* variables). TensorFlow:
`MirroredStrategy` over the local GPUs (or logical CPUs); a TF_CONFIG for several machines is refused,
because Keras 3's TensorFlow fit cannot run MultiWorkerMirroredStrategy. Either way the global batch is
the per-device batch times the devices, and only the first process writes anything.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, ContextManager

import keras

from ..errors import ConfigError

log = logging.getLogger(__name__)

JAX_PROCESS_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES")


@dataclass(frozen=True)
class Placement:
    mode: str  # "none" or "data-parallel"
    devices: int  # replicas over all processes
    process: int = 0  # 0 is the one process that writes
    processes: int = 1
    scope: Callable[[], ContextManager] = contextlib.nullcontext

    @property
    def is_chief(self) -> bool:
        return self.process == 0

    def global_batch(self, per_device: int) -> int:
        return per_device * self.devices

    @property
    def needs_even_batches(self) -> bool:
        """JAX can only shard a batch evenly; TensorFlow splits an uneven one, but then averages the
        replicas' losses as if they were even. Full batches everywhere keep the numbers one device's."""
        return self.mode == "data-parallel"

    def describe(self) -> dict:
        return {"distribute": self.mode, "devices": self.devices, "processes": self.processes}


SINGLE = Placement("none", 1)


@functools.cache
def place(mode: str) -> Placement:
    """Once per process: the strategies and the multi-process start-up cannot be made twice."""
    backend = keras.backend.backend()
    if backend == "jax":
        placement = _place_jax(mode)
    elif backend == "tensorflow":
        placement = _place_tensorflow(mode)
    elif mode == "data-parallel":
        raise ConfigError(f"--distribute data-parallel needs the jax or tensorflow backend, not {backend}")
    else:
        placement = SINGLE
    if placement.mode != "none":
        log.info("data-parallel on %d devices in %d process(es); this is process %d",
                 placement.devices, placement.processes, placement.process)  # fmt: skip
    return placement


def _place_jax(mode: str) -> Placement:
    import jax

    if any(os.environ.get(name) for name in JAX_PROCESS_VARIABLES):
        if mode == "none":
            raise ConfigError(
                f"{' / '.join(JAX_PROCESS_VARIABLES)} ask for several processes, but --distribute is none; "
                "use auto or data-parallel"
            )
        if not jax.distributed.is_initialized():
            keras.distribution.initialize()
    devices = jax.devices()
    accelerators = devices[0].platform != "cpu"
    if mode == "none" or (mode == "auto" and jax.process_count() == 1 and not (accelerators and len(devices) > 1)):
        return SINGLE
    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    return Placement("data-parallel", len(devices), jax.process_index(), jax.process_count(), distribution.scope)


def _place_tensorflow(mode: str) -> Placement:
    import tensorflow as tf

    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    tasks = sum(len(cluster.get(role, [])) for role in ("chief", "worker"))
    if tasks > 1:
        raise ConfigError(
            f"TF_CONFIG names {tasks} tasks, but several machines cannot train under the TensorFlow backend: "
            "Keras 3's TensorFlow fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585; "
            "measured with keras 3.15). Use KERAS_BACKEND=jax with KERAS_DISTRIBUTION_* for several "
            "machines (docs/performance.md: Several machines), or one machine's GPUs under TensorFlow"
        )
    gpus = tf.config.list_logical_devices("GPU")
    if mode == "none" or (mode == "auto" and len(gpus) < 2):
        return SINGLE
    devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    return Placement("data-parallel", strategy.num_replicas_in_sync, scope=strategy.scope)

