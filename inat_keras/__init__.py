"""inat-keras: Keras 3 multi-backend training, tuning and fine-tuning on iNaturalist-12K.

Importing the package changes nothing in the process (no environment variable, no subprocess): the CPU
tuning that the benchmarks justified is applied by the command-line entry point (inat_keras.__main__).
The one thing it does is let TensorFlow Datasets find the `inaturalist12k` builder (tfds_registration).
"""

from . import tfds_registration  # noqa: F401

__version__ = "0.1.0"
