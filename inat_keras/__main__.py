"""`python -m inat_keras`, `inat-keras` and `run.py`: one start-up for every way of calling the CLI.

Only here does the package change its process, before TensorFlow or JAX load:
- TF_CPP_MIN_LOG_LEVEL=2 hides TensorFlow's C++ start-up chatter (a failed cuInit on CPU-only machines
  reads like an error); set it yourself to see it.
- The glibc malloc tunable (perf.cpu_tuning), which glibc reads only at process start: the process
  restarts itself once with it. A GLIBC_TUNABLES the user sets wins.
The XLA:CPU flags per model family are set by cli.main once it knows the command (perf.cpu_tuning).
"""

import os
import sys


def main() -> int:
    from .perf.cpu_tuning import restart_with_malloc_tunables

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    restart_with_malloc_tunables()
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
