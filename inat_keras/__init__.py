"""inat-keras: Keras 3 multi-backend training, tuning and fine-tuning on iNaturalist-12K."""

import os

from .jax_cpu import configure_xla_flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter hides our output
configure_xla_flags()  # before JAX starts its CPU client

__version__ = "0.1.0"
