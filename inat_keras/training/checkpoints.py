"""A saved checkpoint, outside any training run: loaded, with its class names, and re-evaluated on a test set
(serving.predict asks it for predictions)."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import keras
import keras_cv  # noqa: F401  (registers the backbone classes that fine-tuned models use)

from ..config import TrainConfig
from ..data.pipeline import make_dataset
from ..data.sources import resolve_data_dir
from ..data.splits import Split, find_unreadable, list_images, splits_from_record
from ..errors import DataError
from ..files import write_json
from ..models import layers  # noqa: F401  (registers the layer classes that the CNN uses)
from . import tracking
from .evaluation import evaluate_model, image_shape
from .loop import log_to_wandb
from .run_folder import METRICS, SPLIT, empty_output_dir, read_split

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path) -> keras.Model:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    if path.suffix != ".keras":
        raise DataError(f"{path} is not a .keras model file (runs write model.keras)")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a readable Keras model: the .keras archive is truncated or corrupt")
    try:
        return keras.models.load_model(path, compile=False)  # inference only; skips the training optimizer
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as err:
        raise DataError(f"{path} is not a readable Keras model ({' '.join(str(err).split())[:200]})") from err


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


def test_split(checkpoint: Path, data_dir: str | None, demo: bool, class_names: list[str]) -> Split:
    """The run's own test list from split.json (its skipped files stay skipped), or with --data-dir / --demo
    the val/ folder as it is now. A file of the saved list that no longer decodes is an error, not a drift."""
    saved = read_split(checkpoint.parent)
    if saved is not None and not (data_dir or demo):
        test = splits_from_record(saved).test
        bad = [] if test.source else find_unreadable(test.paths)  # TFDS records are checked as they are read
        if bad:
            path, reason = bad[0]
            raise DataError(
                f"{len(bad)} image(s) of the run's test list ({checkpoint.parent / SPLIT}) can no longer be read, "
                f"e.g. {path}: {reason}; restore them, or pass --data-dir to evaluate on a folder as it is now"
            )
        return test
    names, paths, labels = list_images(_data_root(checkpoint, data_dir, demo) / "val")
    if names != class_names:
        raise DataError(f"the test set's classes {names} differ from the model's {class_names}")
    kept = dict(zip(paths, labels))
    for path, reason in find_unreadable(paths):
        log.warning("skipped unreadable test image %s: %s", path, reason)
        kept.pop(path)
    return Split(list(kept), list(kept.values()))


def evaluate_checkpoint(checkpoint: str, data_dir: str | None, demo: bool, output_dir: str | None, tta: bool = False,
                        wandb_mode: str = "disabled", wandb_project: str = "inat-keras"):  # fmt: skip
    """metrics.json, predictions.csv and the pictures in a new folder; with `wandb_mode` not disabled, the same
    in a W&B run of its own (the metrics, the pictures, the predictions table)."""
    checkpoint = Path(checkpoint)
    wandb_mode = tracking.resolve_mode(wandb_mode)  # before any folder exists
    model = load_checkpoint(checkpoint)
    class_names = class_names_for(checkpoint, model, data_dir, demo)
    test = test_split(checkpoint, data_dir, demo, class_names)
    size, channels = image_shape(model)
    out_dir = empty_output_dir(output_dir, "evaluate")
    config = TrainConfig(image_size=size, batch_size=32, augment=False)
    dataset = make_dataset(test, config, training=False, channels=channels)
    run = tracking.start_run({"checkpoint": str(checkpoint), "tta": tta, "backend": keras.backend.backend()}, out_dir,
                             wandb_mode, wandb_project)  # fmt: skip
    metrics, pictures = evaluate_model(model, test, dataset, class_names, out_dir, tta=tta, wandb_run=run)
    metrics.update({"checkpoint": str(checkpoint), "params": int(model.count_params()), "backend": keras.backend.backend()})
    write_json(out_dir / METRICS, metrics)
    log_to_wandb(run, metrics, pictures)
    run.finish()
    return out_dir, metrics
