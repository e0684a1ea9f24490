"""inat-keras: Keras 3 multi-backend training, tuning and fine-tuning on iNaturalist-12K."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter hides our output

__version__ = "0.1.0"
