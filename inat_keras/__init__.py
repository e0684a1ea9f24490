"""inat-keras: Keras 3 multi-backend training, tuning and fine-tuning on iNaturalist-12K.

Importing the package changes nothing in the process (no environment variable, no subprocess): the CPU
tuning that the benchmarks justified is applied by the command-line entry point (inat_keras.__main__).
"""

__version__ = "0.1.0"
