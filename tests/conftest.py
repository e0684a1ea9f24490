"""Shared fixtures and markers. No test module imports this file or another test module: what several modules
need is a fixture here, requested by name.

The environment first: a private cache, one JAX compilation cache, W&B off and pointed at a closed port.

Fixtures (a `make_...` fixture returns a function, for a test or a wider-scoped fixture that passes arguments):
- class_names: the classes of every image folder written here, ("cat", "dog", "owl").
- make_image_folder(root, per_class, size=(40, 30), seed=0) and image_folder (10 training and 4 test images
  a class, in the test's tmp_path).
- make_tiny_cnn_options() and tiny_cnn_options: a CNN that trains in a second, a fresh dict each time, without
  pictures (a test of them sets pictures=True); tiny_cnn_flags(**changes): the same options as command-line flags
  (a change to None leaves a flag out).
- tiny_run: the tiny CNN trained on a 10 + 4 image folder, once per session (once per xdist worker). Shared:
  read its folders, write elsewhere.
- interrupt(at_epoch): a callback that stands in for a kill as that epoch begins.
- head_then_all: stages as gradual unfreezing makes them (a `plan_stages` for the scratch kind).
- make_sweep_file(folder, parameters, constants=None, method="bayes", name="sweep.yaml", **extra) and
  tiny_sweep_constants (the tiny CNN as a sweep's fixed parameters, one epoch a trial).
- fake_wandb_run(config): what wandb.init (or a sweep agent) hands a trial, without a server.

Markers (registered in pyproject.toml):
- large: takes more than about 30 s; `python -m pytest -m "not large"` is the quick local run.
- backend_independent: what it checks does not depend on the backend (configs, data folders, run folders, sweeps,
  reports, W&B, other processes): run once, in the TensorFlow pass. Whatever computes through the backend
  (models, training steps, optimizers, augmentation, export, explain, predict) runs under both.

Every test starts from keras.utils.set_random_seed(0) (Python, NumPy, TensorFlow and Keras's own generators):
what a model draws does not depend on which tests ran before it in its worker. A module- or session-scoped
fixture that draws seeds itself, since it is built before the test's own seeding.
"""

import atexit
import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="inat-keras-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
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
# JAX: compile for compile time. A test runs each program on a few tiny batches, so LLVM's expensive passes
# cost more than they save: without them a Lite0 build and first fit take 12% less time (16.0 -> 13.9 s and
# 35.6 -> 31.6 s, measured). The programs compute the same values (histories bit for bit). Not
# --xla_backend_optimization_level=0: 30% faster again, but it changes results (a batch-norm CNN's loss became NaN).
_FAST_COMPILE = "--xla_llvm_disable_expensive_passes=true"
if _FAST_COMPILE.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["WANDB_BASE_URL"] = "http://127.0.0.1:9"  # a closed local port: no test ever reaches W&B's servers
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from inat_keras.perf.cpu_tuning import prepare_for  # noqa: E402

prepare_for("cnn")  # what the CLI does before JAX starts, for the commands these tests run in-process

import types  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

CLASSES = ("cat", "dog", "owl")
SEED = 0


# ---- markers ----------------------------------------------------------------------------------------------


def pytest_collection_modifyitems(config, items):
    """backend_independent: nothing the test checks depends on the backend, so CI runs it once, in its TensorFlow
    pass (the JAX pass covers what computes through the backend)."""
    if keras.backend.backend() != "tensorflow":
        once = [item for item in items if item.get_closest_marker("backend_independent")]
        if once:
            config.hook.pytest_deselected(items=once)
            items[:] = [item for item in items if not item.get_closest_marker("backend_independent")]
    # Modules with the most `large` tests first: xdist (--dist loadscope) hands each free worker the next module,
    # so a long module started last would leave the other worker idle at the end.
    large = Counter(item.module.__name__ for item in items if item.get_closest_marker("large"))
    items.sort(key=lambda item: -large[item.module.__name__])


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(SEED)


# ---- images and the tiny CNN --------------------------------------------------------------------------------


def _write_image_folder(root: Path, per_class: dict, size=(40, 30), seed=0) -> Path:
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


def _tiny_cnn_options() -> dict:
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
        "pictures": False,  # matplotlib takes half a tiny run's time; tests of the pictures turn them on
    }


@pytest.fixture(scope="session")
def class_names() -> tuple[str, ...]:
    return CLASSES


@pytest.fixture(scope="session")
def make_image_folder():
    """make_image_folder(root, {"train": n, "val": m}, size=(40, 30), seed=0) -> root."""
    return _write_image_folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return _write_image_folder(tmp_path / "data", {"train": 10, "val": 4})


@pytest.fixture(scope="session")
def make_tiny_cnn_options():
    return _tiny_cnn_options


@pytest.fixture
def tiny_cnn_options() -> dict:
    return _tiny_cnn_options()


@pytest.fixture(scope="session")
def tiny_cnn_flags():
    """tiny_cnn_flags(epochs=3, learning_rate=None) -> ["--image-size=32", "--filters=4,4,4,4,4", ...]."""

    def flags(**changes) -> list[str]:
        typed = []
        for key, value in {**_tiny_cnn_options(), **changes}.items():
            name = key.replace("_", "-")
            if isinstance(value, bool):
                typed.append(f"--{name}" if value else f"--no-{name}")
            elif value is not None:
                typed.append(f"--{name}={','.join(map(str, value)) if isinstance(value, list) else value}")
        return typed

    return flags


class TinyRun(NamedTuple):
    run_dir: Path
    data: Path
    metrics: Mapping


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """The tiny CNN's whole run (2 epochs, its checkpoint, metrics and pictures) on a 10 + 4 image folder."""
    from inat_keras.config import ScratchConfig, build_config
    from inat_keras.training.kinds import KINDS

    root = tmp_path_factory.mktemp("tiny-run")
    data = _write_image_folder(root / "data", {"train": 10, "val": 4})
    config = build_config(ScratchConfig, {**_tiny_cnn_options(), "pictures": True, "data_dir": str(data),
                                          "output_dir": str(root / "run")})  # fmt: skip
    run_dir, metrics = KINDS["scratch"].train(config)  # seeded by config.seed
    return TinyRun(run_dir, data, types.MappingProxyType(metrics))


# ---- training: kills and stages -----------------------------------------------------------------------------


class Interrupt(keras.callbacks.Callback):
    """Stands in for a kill: stops training as the given epoch begins."""

    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt


@pytest.fixture(scope="session")
def interrupt():
    """interrupt(at_epoch) -> a callback that raises KeyboardInterrupt as that epoch (0-based) begins."""
    return Interrupt


@pytest.fixture(scope="session")
def head_then_all():
    """A `plan_stages`: two stages as gradual unfreezing makes them (a recompile between), the dense layers for
    epochs 1-2, then all."""
    from inat_keras.models.strategies import Stage

    def head_then_all(model, config):
        def head_only(model):
            for layer in model.layers:
                layer.trainable = isinstance(layer, keras.layers.Dense)

        def everything(model):
            for layer in model.layers:
                layer.trainable = True

        return [Stage(0, 2, head_only, "head"), Stage(2, config.epochs, everything, "full")]

    return head_then_all


# ---- sweeps -------------------------------------------------------------------------------------------------


def _tiny_sweep_constants() -> dict:
    constants = {k: v for k, v in _tiny_cnn_options().items() if k not in ("wandb", "learning_rate")}
    return {**constants, "epochs": 1}


@pytest.fixture
def tiny_sweep_constants() -> dict:
    """The tiny CNN as a sweep's fixed parameters: one epoch a trial, the learning rate left to the sweep."""
    return _tiny_sweep_constants()


@pytest.fixture(scope="session")
def make_sweep_file():
    """make_sweep_file(folder, parameters, constants=None, method="bayes", name="sweep.yaml", **extra) -> path:
    a sweep of `parameters` maximising val_accuracy, each of `constants` (default: tiny_sweep_constants) a
    fixed value; `extra` keys (early_terminate, entity, project, ...) go into the file as they are."""

    def write(folder: Path, parameters: dict, constants: dict | None = None, method="bayes", name="sweep.yaml", **extra) -> Path:
        constants = _tiny_sweep_constants() if constants is None else constants
        spec = {
            "method": method,
            "metric": {"name": "val_accuracy", "goal": "maximize"},
            "parameters": {**{k: {"value": v} for k, v in constants.items()}, **parameters},
            **extra,
        }
        path = folder / name
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


class FakeWandbRun:
    """What wandb.init (or a sweep agent) hands a trial: its config and summary, and the exit code it finished with."""

    def __init__(self, config, run_id="run42"):
        self.id, self.config, self.summary, self.sweep_id, self.exit_code = run_id, config, {}, "abc", None

    def finish(self, exit_code=0):
        self.exit_code = exit_code


@pytest.fixture(scope="session")
def fake_wandb_run():
    """fake_wandb_run(config, run_id="run42"): its sweep_id is "abc"; exit_code stays None until finish()."""
    return FakeWandbRun
