"""Shared fixtures: tiny image folders, a private cache, W&B switched off, and a fast CNN config."""

import atexit
import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="inat-keras-test-cache-")
os.environ["INAT_KERAS_CACHE"] = _CACHE  # before inat_keras.data.cache reads it
# JAX: one compilation cache for this session and the processes its tests start (they inherit the environment).
# The same programs come back again and again: every EfficientNetV2-S build compiles its initialisers, a resumed
# run recompiles the stage it left, each subprocess the CNN. A hit returns the executable XLA built for that exact
# program (jax keys it by the program, the XLA flags, the devices and the jax version); it changes no result.
_JAX_CACHE = tempfile.mkdtemp(prefix="inat-keras-test-jax-cache-")
atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _JAX_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # each initialiser compiles in milliseconds
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["WANDB_BASE_URL"] = "http://127.0.0.1:9"  # a closed local port: no test ever reaches W&B's servers
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from inat_keras.perf.cpu_tuning import prepare_for  # noqa: E402

prepare_for("cnn")  # what the CLI does before JAX starts, for the commands these tests run in-process

from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

CLASSES = ("cat", "dog", "owl")

# For tests that check other processes (a CLI run, a lock, an installed wheel) through files and exit codes:
# nothing they check depends on the backend, so CI runs them once, in its TensorFlow pass.
tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="backend-independent subprocess test: runs once, under TensorFlow"
)


def write_image_folder(root: Path, per_class: dict, size=(40, 30), seed=0) -> Path:
    """root/<split>/<class>/*.{jpg,png}: each class a distinct colour plus noise, so a model can learn it."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = np.zeros((size[1], size[0], 3))
                base[..., label] = 200
                pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "data", {"train": 10, "val": 4})


def tiny_cnn_values() -> dict:
    """Options for a CNN that trains in a second: 1x1 kernels allow 32x32 inputs."""
    return {
        "image_size": 32,
        "filters": [4, 4, 4, 4, 4],
        "kernel_sizes": [1, 1, 1, 1, 1],
        "dense_units": 8,
        "batch_size": 8,
        "epochs": 2,
        "learning_rate": 0.01,
        "wandb": "disabled",
    }


@pytest.fixture
def tiny_cnn_options() -> dict:
    return tiny_cnn_values()


class Interrupt(keras.callbacks.Callback):
    """Stands in for a kill: stops training as the given epoch begins."""

    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt
