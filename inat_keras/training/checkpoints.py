"""A saved checkpoint, outside any training run: loaded, re-evaluated on a test set, or asked for predictions."""

from __future__ import annotations

from pathlib import Path

import keras
import keras_cv  # noqa: F401  (registers the backbone classes that fine-tuned models use)

from ..config import TrainConfig
from ..data.pipeline import make_dataset
from ..data.sources import resolve_data_dir
from ..data.splits import Split, list_images
from ..errors import DataError
from ..files import write_json
from ..models import layers  # noqa: F401  (registers the layer classes that the CNN uses)
from .evaluation import evaluate_model, image_shape, top_k
from .run_folder import METRICS, SPLIT, new_run_dir, read_split


def load_checkpoint(path: str | Path) -> keras.Model:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    if path.suffix != ".keras":
        raise DataError(f"{path} is not a .keras model file (runs write model.keras)")
    return keras.models.load_model(path, compile=False)  # inference only; skips the training optimizer


def _data_root(checkpoint: Path, data_dir: str | None, demo: bool) -> Path:
    if data_dir or demo:
        return resolve_data_dir(data_dir, demo)
    saved = read_split(checkpoint.parent)
    if saved is None:
        raise DataError(f"no {SPLIT} beside {checkpoint}: pass --data-dir or --demo")
    return Path(saved["root"])


def class_names_for(checkpoint: Path, model: keras.Model, data_dir: str | None, demo: bool) -> list[str]:
    saved = read_split(checkpoint.parent)
    if data_dir or demo or saved is None:
        names = list_images(_data_root(checkpoint, data_dir, demo) / "train")[0]
    else:
        names = saved["class_names"]
    outputs = model.output_shape[-1]
    if len(names) != outputs:
        raise DataError(f"the model predicts {outputs} classes but the dataset has {len(names)}: {', '.join(names)}")
    return names


def evaluate_checkpoint(checkpoint: str, data_dir: str | None, demo: bool, output_dir: str | None):
    checkpoint = Path(checkpoint)
    model = load_checkpoint(checkpoint)
    class_names = class_names_for(checkpoint, model, data_dir, demo)
    names, paths, labels = list_images(_data_root(checkpoint, data_dir, demo) / "val")
    if names != class_names:
        raise DataError(f"the test set's classes {names} differ from the model's {class_names}")
    size, channels = image_shape(model)
    out_dir = Path(output_dir) if output_dir else new_run_dir("evaluate")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir} is not empty; choose a new --output-dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(image_size=size, batch_size=32, augment=False)
    test = Split(paths, labels)
    dataset = make_dataset(test, config, training=False, channels=channels)
    metrics, _ = evaluate_model(model, test, dataset, class_names, out_dir)
    metrics.update({"checkpoint": str(checkpoint), "params": int(model.count_params()), "backend": keras.backend.backend()})
    write_json(out_dir / METRICS, metrics)
    return out_dir, metrics


def predict_images(checkpoint: str, images: list[str], data_dir: str | None, demo: bool, k: int = 3):
    checkpoint = Path(checkpoint)
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise DataError(f"image file(s) not found: {', '.join(missing)}")
    model = load_checkpoint(checkpoint)
    class_names = class_names_for(checkpoint, model, data_dir, demo)
    return list(zip(images, top_k(model, images, class_names, k)))
