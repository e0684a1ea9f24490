"""inat-keras: Keras 3 multi-backend training, tuning and fine-tuning on iNaturalist-12K.

Importing the package is fast and changes nothing in the process (no environment variable, no subprocess, no
TensorFlow): the CPU tuning that the benchmarks justified is applied by the command-line entry point
(inat_keras.__main__). It only lets TFDS and Keras find the project's parts when they load (registration).

The Python API (docs/python.md) loads on first use: load_model, predict, train, evaluate, load_config.
"""

from . import registration  # noqa: F401

__version__ = "0.1.0"
API = ("load_model", "predict", "train", "evaluate", "load_config")


def __getattr__(name: str):
    if name in API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'inat_keras' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *API])
