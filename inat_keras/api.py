"""The Python API: a config trained or evaluated, a run's model loaded, images predicted, from a notebook or a script.

Each function is a thin call into what the commands run, so that Python and the command line give the same results.

    import inat_keras
    config = inat_keras.load_config("scratch", demo=True, epochs=2)
    run_dir, metrics = inat_keras.train(config)
    model = inat_keras.load_model(run_dir / "model.keras")
    for row in inat_keras.predict(run_dir / "model.keras", "photos/"):
        print(row.path, row.ranked)
"""

from __future__ import annotations

from pathlib import Path


def load_config(kind: str, path: str | Path | None = None, **overrides):
    """The config that `run.py KIND` (scratch or finetune) would use: `path` or the kind's shipped YAML, its demo
    section when demo=True, then `overrides` (any option, by its YAML name). Validated."""
    from .config import load_config as load
    from .errors import ConfigError
    from .training.kinds import KINDS

    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return load(KINDS[kind].config_class, path or KINDS[kind].default_config_path(), overrides)


def train(config, final: bool = True) -> tuple[Path, dict]:
    """Train a ScratchConfig or FinetuneConfig as the command would, into config.output_dir (default a new folder
    under runs/): returns (run folder, metrics). `final=False` never touches the test set (a sweep trial's way)."""
    from .training.kinds import kind_of_config

    config.validate()
    return kind_of_config(config).train(config, final=final)


def load_model(path: str | Path):
    """A run's model.keras (or any checkpoint it wrote) as a Keras model for inference, its layers registered."""
    from .inference.checkpoint import load_checkpoint

    return load_checkpoint(path)


def predict(checkpoint: str | Path, images, top: int = 3, batch_size: int = 32, data_dir: str | None = None,
            demo: bool = False) -> list:  # fmt: skip
    """The top classes of image files and folders (walked recursively), one Prediction per file: `.path`, `.ranked`
    ((class, probability) pairs) or `.error` for a file that could not be read. Class names come from the run's
    split.json (or `data_dir` / `demo`)."""
    from .config import PredictOptions
    from .serving.predict import predictor

    paths = [str(images)] if isinstance(images, (str, Path)) else [str(p) for p in images]
    options = PredictOptions(checkpoint=str(checkpoint), images=paths, top=top, batch_size=batch_size,
                             data_dir=data_dir, demo=demo)  # fmt: skip
    options.validate()
    return list(predictor(options).rows())


def evaluate(checkpoint: str | Path, data_dir: str | None = None, demo: bool = False, output_dir: str | None = None,
             tta: bool = False) -> tuple[Path, dict]:  # fmt: skip
    """`run.py evaluate`: the run's own test list (or `data_dir`'s val/), metrics, predictions.csv and pictures in a
    new folder; returns (that folder, metrics)."""
    from .config import EvaluateOptions
    from .serving.evaluate import evaluate_checkpoint

    options = EvaluateOptions(checkpoint=str(checkpoint), data_dir=data_dir, demo=demo, output_dir=output_dir, tta=tta)
    options.validate()
    return evaluate_checkpoint(options)
