"""A checkpoint as a model that runs without this project or Keras: a TensorFlow SavedModel, an ONNX file or a
LiteRT (TFLite) flatbuffer, written by Keras's own `model.export`, with the class names and the input
convention beside it. Each export is loaded with its own runtime and compared with Keras on colour images in
a staging folder beside the target, and renamed into place only when it matches: a failed or interrupted
export leaves nothing that looks like one."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from ..data.decode import BACKGROUND
from ..errors import ConfigError, DataError
from ..files import remove_abandoned, staging_dir, write_json, write_text
from ..config import ExportOptions
from ..inference.checkpoint import class_names_for, forward, image_shape, load_checkpoint, runs_eagerly
from ..models.layers import exporting

log = logging.getLogger(__name__)

# ours: (Keras's format name, the file or folder it writes in the export, the runtime that loads it)
FORMATS = {
    "saved_model": ("tf_saved_model", "saved_model", "tensorflow"),
    "onnx": ("onnx", "model.onnx", "onnxruntime"),
    "litert": ("litert", "model.tflite", "ai_edge_litert"),
}
BACKENDS = {"saved_model": ("tensorflow", "jax"), "onnx": ("tensorflow", "jax"), "litert": ("tensorflow",)}
CONVERTERS = {("onnx", "tensorflow"): "tf2onnx", ("onnx", "jax"): "jax2onnx"}  # what Keras converts with
# Under JAX, Keras lowers the SavedModel through jax2tf for the current platform only: also lowering it for CUDA
# lets TensorFlow serve it on a CPU or an NVIDIA GPU wherever it was exported.
EXPORT_OPTIONS = {("saved_model", "jax"): {"jax2tf_kwargs": {"native_serialization_platforms": ("cpu", "cuda")}}}
LABELS, METADATA = "labels.txt", "export.json"
CHECK_IMAGES = 4
RTOL, ATOL = 1e-3, 1e-4  # on logits: float32 kernels of another runtime sum in another order


def check_supported(fmt: str, backend: str) -> None:
    """Refuse, before any model is loaded, a format that this backend cannot export or lacks the packages for."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if backend not in BACKENDS[fmt]:
        raise ConfigError(
            f"{fmt} export needs the {' or '.join(BACKENDS[fmt])} backend (Keras converts through TensorFlow's TFLite "
            f"converter), not {backend}; the checkpoint loads under either: KERAS_BACKEND=tensorflow python run.py export ..."
        )
    needed = [name for name in (CONVERTERS.get((fmt, backend)), FORMATS[fmt][2]) if name]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"{fmt} export under {backend} needs {', '.join(missing)}: pip install -e '.[export]'")


def check_images(size: int, channels: int, count: int = CHECK_IMAGES) -> np.ndarray:
    """Colour images in 0..255 (noise over per-image colour gradients), the models' raw input."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.0, 1.0, size)[None, :, None, None] * rng.uniform(0, 255, (count, 1, 1, channels))
    return np.clip(ramp + rng.normal(0, 40, (count, size, size, channels)), 0, 255).astype("float32")


def runtime(fmt: str, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The export loaded with its own runtime, as a user would load it: a function from images to logits."""
    if fmt == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        return lambda x: loaded.serve(x).numpy()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))

    def run(x):
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return run


def metadata(fmt: str, model: keras.Model, class_names: list[str], checkpoint: Path, difference: float) -> dict:
    size, channels = image_shape(model)
    return {
        "format": fmt,
        "model": FORMATS[fmt][1],
        "runtime": FORMATS[fmt][2],
        "class_names": class_names,
        "input": {
            "shape": [None, size, size, channels],
            "dtype": "float32",
            "pixels": f"{'RGB' if channels == 3 else 'gray'} values 0..255, not normalised (normalisation is inside the model)",
            "preparation": f"turned upright by EXIF orientation, transparent pixels composited over RGB {list(BACKGROUND)}, "
                           f"squashed to {size}x{size} with an antialiased resize",
        },
        "output": {"shape": [None, len(class_names)], "values": "logits, in the order of class_names; softmax gives probabilities"},
        "exported_from": {"checkpoint": str(checkpoint), "backend": keras.backend.backend(), "keras": keras.__version__},
        "check": {"images": CHECK_IMAGES, "max_abs_logit_difference": difference, "rtol": RTOL, "atol": ATOL},
    }


def input_signature(model: keras.Model) -> list:
    """The checkpoint's one input, given to the exporters: Keras's ONNX export infers it only from a model that was
    called (`__call__`), and the check's logits come from the compiled predict step, which does not call it that
    way; under JAX an eager call would compile every operation on its own (Lite0: ~360 programs)."""
    [x] = model.inputs
    return [keras.layers.InputSpec(shape=(None, *x.shape[1:]), dtype=x.dtype, name=x.name)]


def export_checkpoint(options: ExportOptions) -> tuple[Path, dict]:
    """The export folder (default RUN/export-FORMAT, new or empty) and its metadata."""
    backend, fmt = keras.backend.backend(), options.format
    check_supported(fmt, backend)
    checkpoint = Path(options.checkpoint)
    final = Path(options.output_dir) if options.output_dir else checkpoint.parent / f"export-{fmt}"
    if final.exists() and not (final.is_dir() and not any(final.iterdir())):
        raise DataError(f"{final} already exists and is not an empty folder; choose a new --output-dir")
    model = load_checkpoint(checkpoint)
    class_names = class_names_for(checkpoint, model, options.data_dir, options.demo)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(final)
    partial = staging_dir(final)
    try:
        keras_format, name, _ = FORMATS[fmt]
        images = check_images(*image_shape(model))
        expected = forward(model, images, eager=runs_eagerly(len(images))).astype("float32")
        logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # its INFO lines narrate every graph rewrite
        try:
            with exporting():
                model.export(str(partial / name), format=keras_format, verbose=False, input_signature=input_signature(model),
                             **EXPORT_OPTIONS.get((fmt, backend), {}))  # fmt: skip
        except Exception as err:  # a converter's failure, whatever its type: one line, nothing published
            raise DataError(f"{fmt} export of {checkpoint} failed under {backend}: {type(err).__name__}: "
                            f"{' '.join(str(err).split())[:300]}") from err  # fmt: skip
        got = np.asarray(runtime(fmt, partial / name)(images), "float32")
        difference = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=RTOL, atol=ATOL):
            raise DataError(f"the {fmt} export's logits differ from Keras's by up to {difference:.3g} on {CHECK_IMAGES} "
                            f"images (tolerance rtol {RTOL}, atol {ATOL}); nothing was written")  # fmt: skip
        info = metadata(fmt, model, class_names, checkpoint, difference)
        write_text(partial / LABELS, "".join(f"{n}\n" for n in class_names))
        write_json(partial / METADATA, info)
        os.rename(partial, final)  # replaces an empty folder; fails if one with contents appeared meanwhile
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("%s export checked against Keras: max logit difference %.3g", fmt, difference)
    return final, info
