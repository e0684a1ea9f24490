"""`run.py evaluate`: a saved checkpoint re-evaluated on a test set, outside any training run."""

from __future__ import annotations

import logging
from pathlib import Path

import keras

from ..analysis.figures import caption
from ..config import EvaluateOptions, TrainConfig
from ..data.pipeline import make_dataset
from ..data.split_record import splits_from_record
from ..data.splits import Split, find_unreadable, list_images
from ..errors import DataError
from ..files import remove_abandoned, staged_dir, write_json
from ..inference.checkpoint import class_names_for, data_root, image_shape, load_checkpoint
from ..inference.evaluation import evaluate_model
from ..outputs import tracking
from ..outputs.run_folder import METRICS, SPLIT, read_split, unused_output_dir

log = logging.getLogger(__name__)

PREFIX = "evaluate"  # runs/evaluate-<time> without --output-dir


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
    names, paths, labels = list_images(data_root(checkpoint, data_dir, demo) / "val")
    if names != class_names:
        raise DataError(f"the test set's classes {names} differ from the model's {class_names}")
    kept = dict(zip(paths, labels))
    for path, reason in find_unreadable(paths):
        log.warning("skipped unreadable test image %s: %s", path, reason)
        kept.pop(path)
    return Split(list(kept), list(kept.values()))


def evaluate_checkpoint(options: EvaluateOptions):
    """metrics.json, predictions.csv and the pictures in a new folder; with a W&B mode other than disabled, the same
    in a W&B run of its own (the metrics, the pictures, the predictions table). The folder appears whole when
    everything is written (files.staged_dir): a kill or an error leaves none, and the same command runs again."""
    checkpoint, data_dir, demo, tta = Path(options.checkpoint), options.data_dir, options.demo, options.tta
    wandb_mode = tracking.resolve_mode(options.wandb)  # before any folder exists
    model = load_checkpoint(checkpoint)
    class_names = class_names_for(checkpoint, model, data_dir, demo)
    test = test_split(checkpoint, data_dir, demo, class_names)
    size, channels = image_shape(model)
    out_dir = unused_output_dir(options.output_dir, PREFIX)
    if not options.output_dir:
        remove_abandoned(out_dir, f"{PREFIX}-*")  # killed evaluations of earlier times
    config = TrainConfig(image_size=size, batch_size=32, augment=False)
    dataset = make_dataset(test, config, training=False, channels=channels)
    with staged_dir(out_dir) as staging:
        run = tracking.start_run({"checkpoint": str(checkpoint), "tta": tta, "backend": keras.backend.backend()},
                                 staging, wandb_mode, options.wandb_project, final_dir=out_dir)  # fmt: skip
        seen = caption(f"run {checkpoint.parent.name} (re-evaluated: {out_dir.name})",
                       f"{data_root(checkpoint, data_dir, demo).name} test ({len(test)} images)")  # fmt: skip
        metrics, pictures = evaluate_model(model, test, dataset, class_names, staging, tta=tta, wandb_run=run, caption=seen)
        metrics.update({"checkpoint": str(checkpoint), "params": int(model.count_params()),
                        "backend": keras.backend.backend()})  # fmt: skip
        write_json(staging / METRICS, metrics)
        tracking.log_results(run, metrics, pictures)
        run.finish()
    return out_dir, metrics
