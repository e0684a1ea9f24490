"""`python -m inat_keras`, `inat-keras` and `run.py`: one start-up for every way of calling the CLI."""

import sys


def main() -> int:
    from .jax_cpu import restart_with_malloc_tunables

    restart_with_malloc_tunables()  # glibc reads them only at start-up; before TensorFlow and JAX load
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
