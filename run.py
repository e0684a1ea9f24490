"""Entry point: `python run.py scratch|finetune|info|evaluate|predict ...` (see README.md)."""

import sys

from inat_keras.jax_cpu import restart_with_malloc_tunables

if __name__ == "__main__":
    restart_with_malloc_tunables()  # glibc reads them only at start-up; before TensorFlow and JAX load
    from inat_keras.cli import main

    sys.exit(main())
